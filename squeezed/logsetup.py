"""Logging set-up: syslog (``/dev/log``) or stderr, on the root logger.

Under systemd, stderr goes to the journal (``$JOURNAL_STREAM`` is set): there lines carry
a ``<N>`` syslog priority prefix, which journald turns into the entry's priority, and no
timestamp, since the journal adds its own. On a terminal, lines get ISO 8601 timestamps.

Every line carries upstream's fields (xapi's debug.ml), so habits such as grepping
xensource.log-style files for a task id keep working::

    syslog:    squeezed[812]: [ info||2291 rpc-3|VM.start R:1a2b|squeezed.service] reservation ...
    terminal:  [20261201T12:15:39.123Z| info|host1|2291 rpc-3|VM.start R:1a2b|squeezed.service] ...
    journal:   <6>[ info|host1|2291 rpc-3|VM.start R:1a2b|squeezed.service] ...

i.e. [time|level|host|thread-id thread-name|task|component] message. syslog adds the time
and host itself, as upstream leaves them to it. The task is the caller's dbg string
(its log part and trace id); control characters in messages are escaped, so nobody can
forge a line.

The syslog handler's socket is opened here, so when daemonizing (python-daemon closes
every file descriptor) call `setup_logging` after detaching, or preserve the handler's
socket.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from logging.handlers import SysLogHandler
from typing import NamedTuple, TextIO

from squeezed import debuginfo

SYSLOG_ADDRESS = "/dev/log"
IDENT = "squeezed"
DEFAULT_FACILITY = "local5"  # upstream's (squeezed.ml: Debug.set_facility Syslog.Local5)

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Python level -> syslog priority, for the journal's "<N>" line prefix.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

_MARK = "_squeezed_handler"  # set on handlers we install, so a re-setup replaces them

# upstream's level names (Syslog.string_of_level), right-aligned in 5 columns
_UPSTREAM_LEVEL = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "crit",
}
_FIELDS = "%(ulevel)5s|{host}|%(tid)d %(threadName)s|%(task)s|%(name)s] %(message)s"


class _UpstreamFields(logging.Filter):
    """Adds upstream's fields to each record and escapes control characters in
    the message (a traceback, logged separately, keeps its lines)."""

    def __init__(self) -> None:
        super().__init__()
        self.host = socket.gethostname()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_squeezed_fields", False):
            record.ulevel = _UPSTREAM_LEVEL.get(record.levelno, record.levelname.lower())
            record.tid = threading.get_native_id()
            record.task = debuginfo.current_task()
            record.host = self.host
            record.msg, record.args = debuginfo.escape(record.getMessage()), ()
            record._squeezed_fields = True
        return True


def line_format(kind: str) -> str:
    """The format of a log line: kind is "syslog", "journal" or "terminal"."""
    host = "" if kind == "syslog" else "%(host)s"
    fields = _FIELDS.format(host=host)
    if kind == "syslog":
        return f"{IDENT}[%(process)d]: [{fields}"
    if kind == "journal":
        return f"[{fields}"
    return f"[%(asctime)s|{fields}"


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{prio}>{super().format(record)}"


class _UpstreamTimeFormatter(logging.Formatter):
    """Upstream's timestamp: 20261201T12:15:39.123Z (UTC)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        return stamp.strftime("%Y%m%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _level(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}"
        ) from None


def on_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is connected to the journal, as sd_journal_stream_fd(3) advises:
    ``$JOURNAL_STREAM`` names the device and inode of the journal's stream socket."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return True  # no descriptor to compare (e.g. a test stream): trust the variable
    return value == f"{st.st_dev}:{st.st_ino}"


def _stderr_handler(stream: TextIO, environ: Mapping[str, str] | None) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    if on_journal(stream, environ):
        handler.setFormatter(_JournalFormatter(line_format("journal")))
    else:
        handler.setFormatter(_UpstreamTimeFormatter(line_format("terminal")))
    return handler


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


class LogTarget(NamedTuple):
    kind: str  # "syslog" or "stderr"
    facility: str  # the syslog facility (unused for stderr)
    ident: str  # the syslog identifier


def log_target(log: str, facility: str = DEFAULT_FACILITY) -> LogTarget:
    """What the ``log`` and ``log-facility`` settings mean; the one reading of them.

    ``log`` is ``"stderr"``, ``"syslog"`` or ``"syslog:NAME"``: a facility name as NAME
    overrides `facility` (``syslog:local5``), any other NAME is the syslog identifier
    (upstream's shipped ``log=syslog:squeezed``). Raises ValueError for anything else.
    """
    kind, _, suffix = log.partition(":")
    ident = IDENT
    if kind == "syslog" and suffix in SysLogHandler.facility_names:
        facility = suffix
    elif kind == "syslog" and suffix:
        ident = debuginfo.escape(suffix)[:32]
    if kind not in ("syslog", "stderr"):
        raise ValueError(f"unknown log target {kind!r}; expected syslog or stderr")
    if kind == "syslog" and facility not in SysLogHandler.facility_names:
        raise ValueError(f"unknown syslog facility {facility!r}")
    return LogTarget(kind, facility, ident)


def setup_logging(
    target: str = "syslog",
    level: str = "info",
    facility: str = DEFAULT_FACILITY,
    *,
    syslog_address: str = SYSLOG_ADDRESS,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Route the root logger to `target` at `level`; returns the handler installed.

    `target` and `facility` are the ``log`` and ``log-facility`` configuration values,
    read by `log_target`.
    Replaces any handler a previous call installed, so it is safe to call again
    (after daemonizing, on reload).
    """
    numeric_level = _level(level)
    target, facility, ident = log_target(target, facility)
    out = sys.stderr if stream is None else stream
    fallback: str | None = None
    handler: logging.Handler
    if target == "syslog" and not _is_socket(syslog_address):
        # SysLogHandler would accept a missing socket silently and then print a traceback
        # for every message; say so once and use stderr instead.
        fallback = f"cannot log to syslog: no socket at {syslog_address}; logging to stderr"
        target = "stderr"
    if target == "syslog":
        handler = SysLogHandler(
            address=syslog_address, facility=SysLogHandler.facility_names[facility]
        )
        # The pid is formatted per record, so it stays right after a daemonizing fork.
        handler.setFormatter(logging.Formatter(
            line_format("syslog").replace(IDENT, ident.replace("%", "%%"), 1)))
    else:
        handler = _stderr_handler(out, environ)
    handler.addFilter(_UpstreamFields())
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    if fallback:
        logging.getLogger("squeezed").warning("%s", fallback)
    return handler


def set_level(level: str) -> None:
    """Change the level at run time (SIGHUP reload of ``loglevel``)."""
    logging.getLogger().setLevel(_level(level))
