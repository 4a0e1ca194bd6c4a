"""The thin I/O shell: HTTP/1.1 POST on a Unix socket, one thread per
connection (stdlib socketserver + http.server), our codecs in the middle.

- `XmlRpcServer` serves the ocaml-rpc XML-RPC dialect (xenopsd's socket,
  /var/xapi/memory); `JsonRpcServer` serves JSON-RPC with the same HTTP framing
  and also accepts a bare JSON object without any HTTP (`socat`-friendly).
- Framing: Content-Length only (chunked is refused), keep-alive unless the
  client says `Connection: close`, bodies capped (default 1 MiB).
- The accept loop never waits: each connection gets its own thread at once.
  A connection must send its first byte within `first_byte_timeout_s` (5 s;
  also between keep-alive requests) or it is closed quietly, and each
  request must arrive completely within `request_timeout` seconds of its
  first byte being awaited, so an idle or stalled client holds a thread only
  that long (issue 11 #6: 300 idle connections made a call wait 57 s).
- At most `max_connections` (128) requests are served at once; a slot is
  taken when a request's first byte arrives, so idle connections hold none.
  A request beyond that waits up to `slot_wait_s` (60 s) for a slot, then
  gets a 503 reply with `Internal_error "server busy: ..."`. Beyond
  `max_open` (1024) open connections, new ones are refused at once with 503.
- A reply to a reserve that cannot be delivered (the caller hung up) undoes
  the reservation (issue 11 #8).
- Every malformed request gets a well-formed Internal_error reply in the
  server's dialect (with a 4xx/5xx status when HTTP itself was wrong), and the
  server keeps serving.

We build on http.server.BaseHTTPRequestHandler, the same base as
xmlrpc.server.SimpleXMLRPCRequestHandler, rather than SimpleXMLRPCServer
itself: its do_POST reads any Content-Length without a cap, accepts gzip
bodies (a decompression bomb), and speaks Python's XML-RPC flavour (typed
ints, <fault>), not ocaml-rpc's.
"""

from __future__ import annotations

import contextlib
import grp
import http.server
import io
import logging
import os
import re
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from squeezed.errors import InternalError, MemoryInterfaceError
from squeezed.rpc import CodecError, jsonrpc, xmlrpc
from squeezed.rpc.dispatch import Dispatcher
from squeezed.supervisor import Heartbeats

log = logging.getLogger("squeezed.rpc")

MAX_BODY = 1 << 20
_JSON_SPACE = (b" ", b"\t", b"\r", b"\n")
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_FIRST_BYTE_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 128
DEFAULT_MAX_OPEN = 1024
# The accept loop wakes at least this often, to beat its heartbeat.
POLL_INTERVAL_S = 0.5
HEARTBEAT_SILENCE_S = 30.0
_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")
# A caller beyond the connection cap waits this long for a slot before it is
# refused: in a boot storm, queueing beats failing a VM start.
DEFAULT_SLOT_WAIT_S = 60.0


class SocketInUseError(RuntimeError):
    """Another live server owns the socket path (or it is not a socket)."""


# ------------------------------------------------------------------ codecs

Undo = Callable[[], None] | None  # gives back what a call made, if its reply is lost


class _XmlCodec:
    content_type = "text/xml"

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def failure(self, message: str, rid: Any = None) -> bytes:
        return xmlrpc.encode_failure(InternalError(message).wire())

    def handle(self, body: bytes) -> bytes:
        return self.handle_undoable(body)[0]

    def handle_undoable(self, body: bytes) -> tuple[bytes, Undo]:
        try:
            method, params = xmlrpc.parse_call(body)
        except CodecError as e:
            log.info("malformed XML-RPC request: %s", e)
            return self.failure(f"malformed request: {e}"), None
        undo: Undo = None
        try:
            result, undo = self.dispatcher.call_undoable(method, params)
            return xmlrpc.encode_success(result), undo
        except MemoryInterfaceError as e:
            log.debug("%s -> %s", method, e.wire())
            try:
                return xmlrpc.encode_failure(e.wire()), None
            except CodecError as ce:
                return self.failure(f"cannot encode error {e.name}: {ce}"), None
        except CodecError as e:
            if undo is not None:
                undo()
            return self.failure(f"cannot encode result: {e}"), None


class _JsonCodec:
    content_type = "application/json"

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def failure(self, message: str, rid: Any = None) -> bytes:
        return jsonrpc.encode_failure(InternalError(message).wire(), rid)

    def handle(self, body: bytes) -> bytes:
        return self.handle_undoable(body)[0]

    def handle_undoable(self, body: bytes) -> tuple[bytes, Undo]:
        try:
            method, params, rid = jsonrpc.parse_call(body)
        except CodecError as e:
            log.info("malformed JSON-RPC request: %s", e)
            return self.failure(f"malformed request: {e}"), None
        undo: Undo = None
        try:
            result, undo = self.dispatcher.call_undoable(method, params)
            return jsonrpc.encode_success(result, rid), undo
        except MemoryInterfaceError as e:
            log.debug("%s -> %s", method, e.wire())
            try:
                return jsonrpc.encode_failure(e.wire(), rid), None
            except CodecError as ce:
                return self.failure(f"cannot encode error {e.name}: {ce}", rid), None
        except CodecError as e:
            if undo is not None:
                undo()
            return self.failure(f"cannot encode result: {e}", rid), None


# ------------------------------------------------------------------ I/O bits


class _DeadlineReader(io.RawIOBase):
    """Socket reads that fail once the current request's deadline passes,
    however slowly the bytes trickle in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = time.monotonic()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        self.sock.settimeout(remaining)
        return self.sock.recv_into(b)


class _Writer(io.RawIOBase):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.sock.sendall(b)
        return len(b)


_REASONS = {code.value: code.phrase for code in http.HTTPStatus}
_JSON_SPECIAL = re.compile(rb'["{}\[\]]')  # outside strings
_STR_SPECIAL = re.compile(rb'["\\]')  # inside strings


def http_reply(status: int, content_type: str, body: bytes, close: bool) -> bytes:
    """The whole HTTP response; deterministic (no Date/Server headers)."""
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode("ascii") + body


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default
    server: _Server
    rfile: io.BufferedReader  # type: ignore[assignment]  # peekable, set in setup()
    wfile: _Writer  # type: ignore[assignment]

    def setup(self) -> None:
        self.connection = self.request
        self.reader = _DeadlineReader(self.request)
        self.rfile = io.BufferedReader(self.reader, 65536)
        self.wfile = _Writer(self.request)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.rfile.close()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("rpc %s: " + format, self.server.server_address, *args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("rpc %s: " + format, self.server.server_address, *args)

    def _send(self, status: int, body: bytes, close: bool = False) -> None:
        self.request.settimeout(self.server.rpc.request_timeout)
        close = close or self.close_connection
        self.wfile.write(http_reply(status, self.server.codec.content_type, body, close))
        if close:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server calls this for garbage request lines and headers
        msg = message or _REASONS.get(code, "error")
        self.log_error("HTTP %d: %s", code, msg)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._send(code, self.server.codec.failure(f"HTTP {code}: {msg}"), close=True)

    def handle_one_request(self) -> None:
        self.close_connection = True
        rpc = self.server.rpc
        self.reader.deadline = time.monotonic() + min(rpc.first_byte_timeout_s,
                                                      rpc.request_timeout)
        try:
            first = self._first_byte()
        except TimeoutError:
            return  # idle connection: close quietly, nothing to answer
        except (ConnectionError, BrokenPipeError):
            return
        if not first:
            return  # the client closed the connection
        self.reader.deadline = time.monotonic() + rpc.request_timeout
        # A slot per request, taken once it has started to arrive.
        if not self.server.slots.acquire(timeout=rpc.slot_wait_s):
            log.warning("rpc %s: too many requests at once; refusing one", rpc.path)
            self.send_error(503, "server busy: too many requests")
            return
        try:
            self._one_request(first)
        finally:
            self.server.slots.release()

    def _first_byte(self) -> bytes:
        """Peek the request's first byte; skip whitespace between bare JSON objects."""
        first = self.rfile.peek(1)[:1]
        if self.server.rpc.raw_json:
            while first and first in _JSON_SPACE:
                data = self.rfile.peek(65536)  # a whole run of whitespace at once
                n = len(data) - len(data.lstrip(b" \t\r\n"))
                self.rfile.read(n)
                first = self.rfile.peek(1)[:1]
        return first

    def _one_request(self, first: bytes) -> None:
        try:
            if first == b"{" and self.server.rpc.raw_json:
                self.close_connection = False
                self._raw_json()
                return
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():
                return  # parse_request already replied via send_error
            if self.command != "POST":
                self.send_error(405, f"method {self.command[:20]} not allowed; POST a call")
                return
            self._post()
        except TimeoutError:
            self.send_error(408, "request not received in time")
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - never let one request kill the server
            log.exception("unexpected error serving a request")
            self.send_error(500, "internal server error")

    def _post(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.send_error(501, "Transfer-Encoding not supported; send Content-Length")
            return
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            self.send_error(411, "Content-Length required")
            return
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
        if len(set(lengths)) != 1 or not _ASCII_DIGITS.fullmatch(lengths[0].strip()):
            self.send_error(400, "bad Content-Length")
            return
        n = int(lengths[0])
        if n > self.server.rpc.max_body:
            self.send_error(413, f"body larger than {self.server.rpc.max_body} bytes")
            return
        body = self.rfile.read(n)
        if len(body) < n:
            self.close_connection = True  # the client went away mid-body
            return
        with self.server.rpc.in_flight():
            reply, undo = self.server.codec.handle_undoable(body)
            self._deliver(undo, lambda: self._send(200, reply))

    def _deliver(self, undo: Undo, send: Callable[[], None]) -> None:
        """Send a reply; if it cannot be delivered, undo what the call made."""
        try:
            send()
        except OSError:
            if undo is not None:
                undo()
            raise

    def _raw_json(self) -> None:
        """A bare JSON object, no HTTP: read exactly one object (tracking
        strings and nesting), reply with the JSON reply and a newline."""
        codec, cap = self.server.codec, self.server.rpc.max_body
        depth, in_str, esc, size, done = 0, False, False, 0, False
        chunks: list[bytes] = []
        try:
            while not done:
                data = self.rfile.peek(65536)
                if not data:
                    self.close_connection = True
                    return  # EOF inside the object: nobody to answer
                i, n = 0, len(data)
                while i < n and not done:
                    if esc:
                        esc, i = False, i + 1
                    elif in_str:
                        m = _STR_SPECIAL.search(data, i)
                        i = n if m is None else m.end()
                        if m is not None:
                            esc, in_str = m.group() == b"\\", m.group() != b'"'
                    else:
                        m = _JSON_SPECIAL.search(data, i)
                        i = n if m is None else m.end()
                        c = b"" if m is None else m.group()
                        if c == b'"':
                            in_str = True
                        elif c in (b"{", b"["):
                            depth += 1
                        elif c in (b"}", b"]"):
                            depth -= 1
                            done = depth == 0
                size += i
                if size > cap:
                    self.close_connection = True
                    self.wfile.write(codec.failure(f"body larger than {cap} bytes") + b"\n")
                    return
                chunks.append(self.rfile.read(i))
        except TimeoutError:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.request.settimeout(self.server.rpc.request_timeout)
                self.wfile.write(codec.failure("request not received in time") + b"\n")
            return
        with self.server.rpc.in_flight():
            reply, undo = codec.handle_undoable(b"".join(chunks))

            def send() -> None:
                self.request.settimeout(self.server.rpc.request_timeout)
                self.wfile.write(reply + b"\n")

            self._deliver(undo, send)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False  # shutdown must not wait for stalled clients
    # A boot storm connects dozens of callers at once while the engine holds
    # the GIL: a short backlog refused them with EAGAIN (bench/bench_scale.py).
    request_queue_size = socket.SOMAXCONN

    def __init__(self, rpc: RpcServer) -> None:
        self.rpc = rpc
        self.codec = rpc.codec
        self.slots = threading.BoundedSemaphore(rpc.max_connections)
        self._open = 0  # connections with a thread
        self._live: set[socket.socket] = set()
        self._live_lock = threading.Lock()
        self.ident: tuple[int, int] | None = None
        super().__init__(rpc.path, _Handler)

    def server_bind(self) -> None:
        path = self.rpc.path
        _claim(path)
        self.socket.bind(path)
        # Permissions are set before listen(): until then connects are refused.
        os.chmod(path, self.rpc.mode)
        if self.rpc.group is not None:
            os.chown(path, -1, _gid(self.rpc.group))
        st = os.stat(path)
        self.ident = (st.st_dev, st.st_ino)
        self.server_address = path

    def service_actions(self) -> None:
        if self.rpc.beat is not None:
            self.rpc.beat()

    def process_request(self, request: Any, client_address: Any) -> None:
        # Never waits: the accept loop must keep accepting (and beating).
        with self._live_lock:
            full = self._open >= self.rpc.max_open
            if not full:
                self._open += 1
        if full:
            log.warning("rpc %s: %d connections open; refusing one", self.rpc.path,
                        self.rpc.max_open)
            with contextlib.suppress(OSError):
                request.settimeout(0)  # never blocks the accept loop
                request.sendall(
                    http_reply(
                        503,
                        self.codec.content_type,
                        self.codec.failure("server busy: too many connections"),
                        True,
                    )
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._live_lock:
                self._open -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._live_lock:
            self._live.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.discard(request)
                self._open -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("rpc %s: error handling a connection", self.rpc.path)

    def drop_connections(self) -> None:
        with self._live_lock:
            live = list(self._live)
        for s in live:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _gid(group: str | int) -> int:
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise


def _claim(path: str) -> None:
    """Make way for our socket: remove a stale one, refuse to steal a live one."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, 0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUseError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as e:
        raise SocketInUseError(f"{path}: cannot tell whether it is in use ({e})") from None
    finally:
        probe.close()
    raise SocketInUseError(f"{path}: another server is answering there (squeezed already running?)")


class RpcServer:
    """One listening Unix socket serving the Memory interface."""

    codec_class: type[_XmlCodec] | type[_JsonCodec] = _XmlCodec
    raw_json = False

    def __init__(
        self,
        path: str,
        dispatcher: Dispatcher,
        *,
        mode: int = 0o600,
        group: str | int | None = None,
        max_body: int = MAX_BODY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        slot_wait_s: float = DEFAULT_SLOT_WAIT_S,
        first_byte_timeout_s: float = DEFAULT_FIRST_BYTE_TIMEOUT,
        max_open: int = DEFAULT_MAX_OPEN,
        heartbeats: Heartbeats | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.dispatcher = dispatcher
        self.codec = self.codec_class(dispatcher)
        self.mode = mode
        self.group = group
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.slot_wait_s = slot_wait_s
        self.first_byte_timeout_s = first_byte_timeout_s
        self.max_open = max(max_open, max_connections)
        self.heartbeats = heartbeats
        self.beat: Callable[[], None] | None = None
        self._busy = 0  # requests between decoding and their reply being sent
        self._busy_cond = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def bind(self) -> None:
        """Create the socket (raises SocketInUseError, OSError)."""
        if self._server is None:
            self._server = _Server(self)
            log.info("listening on %s", self.path)

    def start(self) -> None:
        """Bind if needed and serve in a background thread."""
        self.bind()
        assert self._server is not None
        if self._thread is None:
            if self.heartbeats is not None:
                self.beat = self.heartbeats.register(f"rpc {self.path}", HEARTBEAT_SILENCE_S)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": POLL_INTERVAL_S},
                name=f"rpc {self.path}",
                daemon=True,
            )
            self._thread.start()

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        with self._busy_cond:
            self._busy += 1
        try:
            yield
        finally:
            with self._busy_cond:
                self._busy -= 1
                self._busy_cond.notify_all()

    def shutdown(self, drain_s: float = 10.0) -> None:
        """Stop accepting, let requests in progress send their replies (up to
        `drain_s`), drop open connections, remove our socket file."""
        srv, self._server = self._server, None
        if srv is None:
            return
        if self._thread is not None:
            srv.shutdown()
            self._thread.join()
            self._thread = None
            if self.heartbeats is not None:
                self.heartbeats.unregister(f"rpc {self.path}")
                self.beat = None
        with self._busy_cond:
            if not self._busy_cond.wait_for(lambda: self._busy == 0, drain_s):
                log.warning("rpc %s: %d requests still running at shutdown", self.path,
                            self._busy)
        srv.server_close()
        srv.drop_connections()
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == srv.ident:  # not a successor's socket
                os.unlink(self.path)

    def __enter__(self) -> RpcServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class XmlRpcServer(RpcServer):
    """XML-RPC (ocaml-rpc dialect) on a Unix socket: the `socket` setting."""

    codec_class = _XmlCodec


class JsonRpcServer(RpcServer):
    """JSON-RPC on a Unix socket (the `json-socket` setting): HTTP framing, or
    a bare JSON object."""

    codec_class = _JsonCodec
    raw_json = True
