"""Sans-I/O framing rules of the RPC sockets: pure functions and a small
state machine over bytes, no sockets, no clocks (the shell in server.py
feeds them and owns deadlines, threads and replies).

- `content_length` applies the HTTP body rules: Content-Length only (a
  Transfer-Encoding such as chunked is refused with 501), exactly one value
  of ASCII digits (400 otherwise; `str.isdigit` would accept "²"), 411 when
  missing, 413 beyond the body cap.
- `JsonObjectScanner` finds the end of one bare JSON object (the JSON
  socket's no-HTTP mode) by tracking strings, escapes and nesting, a chunk
  at a time; `json_space_run` measures the whitespace between objects so the
  shell skips it in runs, not a byte at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JSON_SPACE = b" \t\r\n"
_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")
_JSON_SPECIAL = re.compile(rb'["{}\[\]]')  # outside strings
_STR_SPECIAL = re.compile(rb'["\\]')  # inside strings


@dataclass(frozen=True)
class FramingError:
    """Bytes that break the framing rules, with the HTTP status they deserve."""

    status: int
    message: str


def content_length(
    lengths: list[str], transfer_encoding: str | None, max_body: int
) -> int | FramingError:
    """The body length a request's headers announce, or why it is refused."""
    if transfer_encoding:
        return FramingError(501, "Transfer-Encoding not supported; send Content-Length")
    if not lengths:
        return FramingError(411, "Content-Length required")
    if len(set(lengths)) != 1 or not _ASCII_DIGITS.fullmatch(lengths[0].strip()):
        return FramingError(400, "bad Content-Length")
    n = int(lengths[0])
    if n > max_body:
        return FramingError(413, f"body larger than {max_body} bytes")
    return n


def json_space_run(data: bytes) -> int:
    """How many bytes of whitespace (between bare JSON objects) `data` starts with."""
    return len(data) - len(data.lstrip(JSON_SPACE))


class JsonObjectScanner:
    """Finds where one bare JSON object ends, fed a chunk at a time.

    `feed(data)` returns how many leading bytes of `data` belong to the
    object (all of them, or up to and including its closing brace); `done`
    says the object is complete; `size` counts the bytes taken so far, so the
    shell can enforce its body cap before reading more."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_str = False
        self.esc = False
        self.done = False
        self.size = 0

    def feed(self, data: bytes) -> int:
        i, n = 0, len(data)
        while i < n and not self.done:
            if self.esc:
                self.esc, i = False, i + 1
            elif self.in_str:
                m = _STR_SPECIAL.search(data, i)
                i = n if m is None else m.end()
                if m is not None:
                    self.esc, self.in_str = m.group() == b"\\", m.group() != b'"'
            else:
                m = _JSON_SPECIAL.search(data, i)
                i = n if m is None else m.end()
                c = b"" if m is None else m.group()
                if c == b'"':
                    self.in_str = True
                elif c in (b"{", b"["):
                    self.depth += 1
                elif c in (b"}", b"]"):
                    self.depth -= 1
                    self.done = self.depth == 0
        self.size += i
        return i
