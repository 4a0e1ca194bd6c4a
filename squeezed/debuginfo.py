"""The dbg string every call carries, and the task it names in log lines.

xapi and xenopsd send ``log + "\\n" + trace context`` (xapi-idl's
debug_info.ml): the trace context is a W3C traceparent or a JSON object
holding one. Logs and diagnostics show the log part and the trace id, never
the raw JSON or a newline; any other control character is escaped, so a
caller cannot forge log lines.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

SEPARATOR = "\n"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# C0 and C1 controls, DEL, the Unicode line/paragraph separators and backslash.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\\\\]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
MAX_SHOWN = 200  # characters of a dbg string shown in one log line


def escape(s: str) -> str:
    """Control characters and backslash as escapes: one logged string is one line."""
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"
                                            if ord(m.group()) < 0x100
                                            else f"\\u{ord(m.group()):04x}"), s)


@dataclass(frozen=True)
class DebugInfo:
    log: str  # the caller's task description (raw)
    trace_id: str | None = None  # from the trace context, if it had one

    def __str__(self) -> str:
        text = escape(self.log)
        if len(text) > MAX_SHOWN:
            text = text[: MAX_SHOWN - 3] + "..."
        return text if self.trace_id is None else f"{text} trace={self.trace_id}"


def _trace_id(context: str) -> str | None:
    try:
        obj = json.loads(context)
    except ValueError:
        obj = None
        traceparent: object = context.strip()  # not JSON: a bare traceparent
    else:
        traceparent = obj.get("traceparent") if isinstance(obj, dict) else None
    if not isinstance(traceparent, str):
        return None  # JSON, but no trace context in it: ignored, as upstream
    m = _TRACEPARENT.fullmatch(traceparent.strip())
    if m is None:
        # not a traceparent we understand: show it, escaped and bounded
        shown = escape(traceparent.strip())
        return shown[:64] if shown else None
    return m.group(1)


def parse(dbg: str) -> DebugInfo:
    """Split as upstream's Debug_info.of_string: exactly one separator means
    log + trace context; anything else is all log."""
    parts = dbg.split(SEPARATOR)
    if len(parts) == 2:
        return DebugInfo(parts[0], _trace_id(parts[1]))
    return DebugInfo(dbg)


def show(dbg: str) -> str:
    """The form of a dbg string in log lines and diagnostics."""
    return str(parse(dbg))


# ----------------------------------------------------------- the current task

_current = threading.local()


def current_task() -> str:
    """The task (dbg log part and trace id) of the call this thread serves, or ""."""
    return getattr(_current, "task", "")


@contextlib.contextmanager
def task(dbg: str) -> Iterator[None]:
    """Log lines of this thread carry `dbg`'s task while the block runs."""
    previous = current_task()
    _current.task = show(dbg)
    try:
        yield
    finally:
        _current.task = previous
