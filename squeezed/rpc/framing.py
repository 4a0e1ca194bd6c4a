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

import email.parser
import http
import http.client
import re
from dataclasses import dataclass
from email.message import Message

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


# ------------------------------------------------------------ the framer

MAX_LINE = 65536  # request line and each header line, as http.server/http.client
MAX_HEADERS = 100  # counting the blank line that ends them, as http.client


@dataclass(frozen=True)
class Request:
    """A whole POST request: head parsed, body read to its Content-Length."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    keep_alive: bool


@dataclass(frozen=True)
class BareJson:
    """One bare JSON object (the JSON socket's no-HTTP mode)."""

    body: bytes


class NeedData:
    """next_event(): feed more bytes with receive_data()."""


class Closed:
    """next_event(): the stream ended, or must be closed without a reply."""


class Continue:
    """next_event(): the client sent `Expect: 100-continue`; send the interim reply."""


NEED_DATA = NeedData()
CLOSED = Closed()
CONTINUE = Continue()
CONTINUE_REPLY = b"HTTP/1.1 100 Continue\r\n\r\n"

Event = Request | BareJson | NeedData | Closed | Continue | FramingError


class RequestFramer:
    """Frames one connection's bytes into requests, h11's shape:
    `receive_data(bytes)` (b"" = end of stream), then `next_event()` until
    NEED_DATA. After a FramingError or CLOSED the connection is done.

    The rules are those of http.server's request parsing as the server has
    always applied them (the same statuses), plus ours: POST only (405),
    Content-Length only (see `content_length`), bodies capped at `max_body`.
    With `bare_json`, whitespace between requests is skipped in runs and a
    request starting with `{` is one bare JSON object."""

    def __init__(self, max_body: int, bare_json: bool = False) -> None:
        self.max_body = max_body
        self.bare_json = bare_json
        self._buf = bytearray()
        self._eof = False
        self._scanner: JsonObjectScanner | None = None  # in a bare JSON object
        self._head: tuple[str, str, Message, bool, int] | None = None  # awaiting its body
        self._pending_error: FramingError | None = None

    @property
    def in_bare_json(self) -> bool:
        return self._scanner is not None

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def eof(self) -> bool:
        return self._eof

    def started(self) -> bool:
        """Whether a request has begun to arrive (whitespace between bare JSON
        objects is dropped first and does not count)."""
        if self.bare_json and self._scanner is None and self._head is None:
            del self._buf[:json_space_run(bytes(self._buf))]  # the whole run at once
        return bool(self._buf)

    def next_event(self) -> Event:
        if self._head is not None:
            return self._body()
        if self._scanner is None:
            if not self.started():
                return CLOSED if self._eof else NEED_DATA
            if self.bare_json and self._buf[:1] == b"{":
                self._scanner = JsonObjectScanner()
        if self._scanner is not None:
            return self._bare()
        return self._parse_head()

    def _bare(self) -> Event:
        s = self._scanner
        assert s is not None
        n = s.size + s.feed(bytes(self._buf[s.size:]))
        if s.size > self.max_body:
            return FramingError(413, f"body larger than {self.max_body} bytes")
        if not s.done:
            return CLOSED if self._eof else NEED_DATA
        body = bytes(self._buf[:n])
        del self._buf[:n]
        self._scanner = None
        return BareJson(body)

    def _line_at(self, pos: int) -> bytes | None:
        """The line at `pos` as readline(MAX_LINE + 1) would return it, or None
        if it has not all arrived (b"" at the end of the stream)."""
        nl = self._buf.find(b"\n", pos, pos + MAX_LINE + 1)
        if nl >= 0:
            return bytes(self._buf[pos:nl + 1])
        if len(self._buf) - pos > MAX_LINE:
            return bytes(self._buf[pos:pos + MAX_LINE + 1])
        return bytes(self._buf[pos:]) if self._eof else None

    def _parse_head(self) -> Event:
        # The request line is judged as soon as it is whole, before the headers.
        first = self._line_at(0)
        if first is None:
            return NEED_DATA
        if len(first) > MAX_LINE:
            return FramingError(414, http.HTTPStatus(414).phrase)
        requestline = first.decode("iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if not words:
            return CLOSED  # an empty request line: closed without a reply
        keep_alive = False
        version = "HTTP/0.9"
        if len(words) >= 3:
            version = words[-1]
            try:
                if not version.startswith("HTTP/"):
                    raise ValueError
                base = version.split("/", 1)[1]
                parts = base.split(".")
                if len(parts) != 2 or any(not p.isdigit() or len(p) > 10 for p in parts):
                    raise ValueError
                number = int(parts[0]), int(parts[1])
            except (ValueError, IndexError):
                return FramingError(400, f"Bad request version ({version!r})")
            keep_alive = number >= (1, 1)
            if number >= (2, 0):
                return FramingError(505, f"Invalid HTTP version ({base})")
        if not 2 <= len(words) <= 3:
            return FramingError(400, f"Bad request syntax ({requestline!r})")
        method, path = words[:2]
        if len(words) == 2:
            keep_alive = False
            if method != "GET":
                return FramingError(400, f"Bad HTTP/0.9 request type ({method!r})")
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        # Header lines as http.client reads them: each at most MAX_LINE, at
        # most MAX_HEADERS counting the blank line that ends them.
        lines: list[bytes] = []
        pos = len(first)
        while True:
            line = self._line_at(pos)
            if line is None:
                return NEED_DATA
            if len(line) > MAX_LINE:
                return FramingError(431, "Line too long")
            lines.append(line)
            pos += len(line)
            if len(lines) > MAX_HEADERS:
                return FramingError(431, "Too many headers")
            if line in (b"\r\n", b"\n", b""):
                break
        del self._buf[:pos]
        text = b"".join(lines).decode("iso-8859-1")
        headers = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text)
        conntype = headers.get("Connection", "").lower()
        if conntype == "close":
            keep_alive = False
        elif conntype == "keep-alive":
            keep_alive = True
        expect = headers.get("Expect", "").lower() == "100-continue" and version >= "HTTP/1.1"
        n = content_length(headers.get_all("Content-Length") or [],
                           headers.get("Transfer-Encoding"), self.max_body)
        if method != "POST":
            self._pending_error = FramingError(
                405, f"method {method[:20]} not allowed; POST a call")
        else:
            self._pending_error = n if isinstance(n, FramingError) else None
        self._head = (method, path, headers, keep_alive, n if isinstance(n, int) else 0)
        if expect:
            return CONTINUE
        return self._body()

    def _body(self) -> Event:
        assert self._head is not None
        if self._pending_error is not None:
            self._head = None
            return self._pending_error
        method, path, headers, keep_alive, n = self._head
        if len(self._buf) < n:
            if self._eof:
                self._head = None
                return CLOSED  # the client went away mid-body
            return NEED_DATA
        body = bytes(self._buf[:n])
        del self._buf[:n]
        self._head = None
        return Request(method, path, tuple(headers.items()), body, keep_alive)
