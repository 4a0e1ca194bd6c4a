"""The thin I/O shell: HTTP/1.1 POST on a Unix socket, one thread per
connection (stdlib socketserver), the sans-I/O `framing.RequestFramer` and `codec.py`'s
codecs in the middle; this module owns sockets, deadlines, slots and threads.

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

The framer keeps http.server's request-line and header rules (and statuses)
that this server was first built on; we never used SimpleXMLRPCServer: its
do_POST reads any Content-Length without a cap, accepts gzip bodies (a
decompression bomb), and speaks Python's XML-RPC flavour (typed ints,
<fault>), not ocaml-rpc's.
"""

from __future__ import annotations

import contextlib
import grp
import http
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from squeezed.fifolock import arrived
from squeezed.rpc import framing
from squeezed.rpc.codec import JsonCodec, Undo, XmlCodec
from squeezed.rpc.dispatch import Dispatcher
from squeezed.supervisor import Heartbeats

log = logging.getLogger("squeezed.rpc")

MAX_BODY = 1 << 20
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_FIRST_BYTE_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 128
DEFAULT_MAX_OPEN = 1024
# The accept loop wakes at least this often, to beat its heartbeat.
POLL_INTERVAL_S = 0.5
HEARTBEAT_SILENCE_S = 30.0
# A caller beyond the connection cap waits this long for a slot before it is
# refused: in a boot storm, queueing beats failing a VM start.
DEFAULT_SLOT_WAIT_S = 60.0


class SocketInUseError(RuntimeError):
    """Another live server owns the socket path (or it is not a socket)."""


# ------------------------------------------------------------------ I/O bits


_REASONS = {code.value: code.phrase for code in http.HTTPStatus}


def http_reply(status: int, content_type: str, body: bytes, close: bool) -> bytes:
    """The whole HTTP response; deterministic (no Date/Server headers)."""
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode("ascii") + body


class _Handler(socketserver.BaseRequestHandler):
    """The shell around one connection's RequestFramer: reads with deadlines,
    takes a slot per request, sends replies."""

    server: _Server
    request: socket.socket

    def setup(self) -> None:
        rpc = self.server.rpc
        self.framer = framing.RequestFramer(rpc.max_body, bare_json=rpc.raw_json)
        self.deadline = time.monotonic()
        self.close_connection = True
        # The first request arrived when the accept loop took the connection
        # (in connect order); a later one when its first bytes came.
        self.arrived_s: float | None = self.server.accepted_at(self.request)

    def _recv(self) -> None:
        """Feed the framer what the socket has, failing once the deadline
        passes, however slowly the bytes trickle in."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received in time")
        self.request.settimeout(remaining)
        self.framer.receive_data(self.request.recv(65536))

    def _write(self, data: bytes) -> None:
        self.request.settimeout(self.server.rpc.request_timeout)
        self.request.sendall(data)

    def handle(self) -> None:
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("rpc %s: " + format, self.server.server_address, *args)

    def _send(self, status: int, body: bytes, close: bool = False) -> None:
        close = close or self.close_connection
        self._write(http_reply(status, self.server.codec.content_type, body, close))
        if close:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None) -> None:
        msg = message or _REASONS.get(code, "error")
        self.log_error("HTTP %d: %s", code, msg)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._send(code, self.server.codec.failure(f"HTTP {code}: {msg}"), close=True)

    def handle_one_request(self) -> None:
        self.close_connection = True
        rpc = self.server.rpc
        self.deadline = time.monotonic() + min(rpc.first_byte_timeout_s, rpc.request_timeout)
        try:
            if not self._await_start():
                return  # the client closed the connection
        except TimeoutError:
            return  # idle connection: close quietly, nothing to answer
        except (ConnectionError, BrokenPipeError):
            return
        self.deadline = time.monotonic() + rpc.request_timeout
        arrived_s, self.arrived_s = self.arrived_s or time.monotonic(), None
        # A slot per request, taken once it has started to arrive.
        if not self.server.slots.acquire(timeout=rpc.slot_wait_s):
            log.warning("rpc %s: too many requests at once; refusing one", rpc.path)
            self.send_error(503, "server busy: too many requests")
            return
        try:
            with arrived(arrived_s):
                self._one_request()
        finally:
            self.server.slots.release()

    def _await_start(self) -> bool:
        """Read until a request begins (whitespace between bare JSON objects,
        dropped by the framer a run at a time, does not count) or the stream ends."""
        while not self.framer.started():
            if self.framer.eof:
                return False
            self._recv()
        return True

    def _next_event(self) -> framing.Event:
        while True:
            event = self.framer.next_event()
            if event is framing.NEED_DATA:
                self._recv()
            elif event is framing.CONTINUE:
                self._write(framing.CONTINUE_REPLY)
            else:
                return event

    def _one_request(self) -> None:
        codec = self.server.codec
        try:
            try:
                event = self._next_event()
            except TimeoutError:
                if not self.framer.in_bare_json:
                    raise
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self._write(codec.failure("request not received in time") + b"\n")
                return
            if isinstance(event, framing.BareJson):
                self.close_connection = False
                with self.server.rpc.in_flight():
                    reply, undo = codec.handle_undoable(event.body)
                    self._deliver(undo, lambda: self._write(reply + b"\n"))
            elif isinstance(event, framing.Request):
                self.close_connection = not event.keep_alive
                with self.server.rpc.in_flight():
                    reply, undo = codec.handle_undoable(event.body)
                    self._deliver(undo, lambda: self._send(200, reply))
            elif isinstance(event, framing.FramingError):
                if self.framer.in_bare_json:
                    self.close_connection = True
                    self._write(codec.failure(event.message) + b"\n")
                else:
                    self.send_error(event.status, event.message)
            else:  # CLOSED: the stream ended, or an empty request line
                self.close_connection = True
        except TimeoutError:
            self.send_error(408, "request not received in time")
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - never let one request kill the server
            log.exception("unexpected error serving a request")
            self.send_error(500, "internal server error")

    def _deliver(self, undo: Undo, send: Callable[[], None]) -> None:
        """Send a reply; if it cannot be delivered, undo what the call made."""
        try:
            send()
        except OSError:
            if undo is not None:
                undo()
            raise


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
        self._accepted_s: dict[socket.socket, float] = {}
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
        with self._live_lock:
            self._accepted_s[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._live_lock:
                self._open -= 1
                self._accepted_s.pop(request, None)
            raise

    def accepted_at(self, request: socket.socket) -> float | None:
        """When the accept loop took this connection (once: later requests
        on it have their own arrival)."""
        with self._live_lock:
            return self._accepted_s.pop(request, None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._live_lock:
            self._live.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.discard(request)
                self._accepted_s.pop(request, None)
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

    codec_class: type[XmlCodec] | type[JsonCodec] = XmlCodec
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

    codec_class = XmlCodec


class JsonRpcServer(RpcServer):
    """JSON-RPC on a Unix socket (the `json-socket` setting): HTTP framing, or
    a bare JSON object."""

    codec_class = JsonCodec
    raw_json = True
