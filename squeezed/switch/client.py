"""A message-switch client behaving as upstream's Protocol_unix.Client
(xen-api ocaml/message-switch/unix/protocol_unix.ml).

Two connections logged in with the token ``<program>:<pid>``; a transient reply
queue named by that token; each call creates the destination queue (persistent,
so a request waits there for a server that is not up yet), sends a Request
naming the reply queue, and waits for the Response that an events thread
collects by transferring the reply queue and acking. Unlike upstream, a
missing switch is a clear error at once rather than a retry for ever, every
call has a timeout, and a lost connection fails the calls waiting on it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from typing import Any

from squeezed.switch import protocol as p


class SwitchError(OSError):
    """Talking to the message-switch failed."""


class SwitchUnavailable(SwitchError):
    """The switch's socket is absent or refuses connections."""


class SwitchTimeout(SwitchError):
    """No response within the call's timeout: the request may still be served."""


class SwitchConnectionLost(SwitchError):
    """The switch closed a connection or answered garbage."""


def whoami() -> str:
    """Upstream's token: basename of argv[0], a colon, the pid."""
    return f"{os.path.basename(sys.argv[0]) or 'python'}:{os.getpid()}"


class Connection:
    """One keep-alive HTTP connection to the switch, one request at a time."""

    def __init__(self, path: str, timeout_s: float | None = None) -> None:
        self.path = path
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout_s)
        try:
            s.connect(path)
        except OSError as e:
            s.close()
            raise SwitchUnavailable(f"no message-switch at {path}: {e.strerror or e}") from e
        self.sock = s
        self.reader = p.HttpReader("response")

    def rpc(self, req: p.In, timeout_s: float | None = None) -> bytes:
        """Send a frame and return the 200 reply's body."""
        try:
            if timeout_s is not None:
                self.sock.settimeout(timeout_s)
            self.sock.sendall(p.encode_request(req))
            while True:
                ev = self.reader.next_event()
                if isinstance(ev, p.HttpResponse):
                    break
                if isinstance(ev, p.Closed):
                    raise SwitchConnectionLost(f"message-switch at {self.path} closed the "
                                               "connection")
                self.reader.receive_data(self.sock.recv(65536))
        except p.SwitchProtocolError as e:
            raise SwitchConnectionLost(f"bad reply from the message-switch: {e}") from e
        except TimeoutError as e:
            raise SwitchTimeout(f"message-switch at {self.path} did not answer in time") from e
        except OSError as e:
            if isinstance(e, SwitchError):
                raise
            raise SwitchConnectionLost(f"message-switch at {self.path}: {e}") from e
        if ev.status != 200:
            raise SwitchConnectionLost(
                f"message-switch refused {type(req).__name__}: HTTP {ev.status} "
                f"{ev.body[:80]!r}")
        return ev.body

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class SwitchClient:
    """`rpc(queue, payload, timeout_s)` returns the response payload; safe to
    share between threads. The reply queue is named by the token, so keep one
    client per process (as upstream does) or give each its own token."""

    def __init__(self, path: str = p.DEFAULT_SWITCH_PATH, *, token: str | None = None,
                 io_timeout_s: float = 10.0) -> None:
        self.path = path
        self.token = token or whoami()
        self.io_timeout_s = io_timeout_s
        self._lock = threading.Lock()  # the requests connection and the waiters
        self._waiters: dict[p.MessageId, _Waiter] = {}
        self._dead: SwitchError | None = None
        self.requests = Connection(path, io_timeout_s)
        try:
            self.requests.rpc(p.Login(self.token))
            self.events = Connection(path, io_timeout_s)
            self.events.rpc(p.Login(self.token))
            self.reply_queue = self.requests.rpc(p.CreateTransient(self.token)).decode()
        except BaseException:
            self.close()
            raise
        self._closing = False
        self._thread = threading.Thread(target=self._events, name="switch-client-events",
                                        daemon=True)
        self._thread.start()

    def _events(self) -> None:
        from_: str | None = None
        try:
            while True:
                body = self.events.rpc(p.Transfer(from_, p.TRANSFER_TIMEOUT_S,
                                                  (self.reply_queue,)),
                                       timeout_s=p.TRANSFER_TIMEOUT_S + self.io_timeout_s)
                reply = p.parse_transfer_reply(body)
                for mid, msg in reply.messages:
                    if not isinstance(msg.kind, p.Response):
                        continue
                    with self._lock:
                        w = self._waiters.pop(msg.kind.request, None)
                    if w is not None:
                        self.events.rpc(p.Ack(mid))
                        w.fill(msg.payload)
                if reply.messages:
                    from_ = reply.next
        except (SwitchError, p.SwitchProtocolError) as e:
            err = e if isinstance(e, SwitchError) else SwitchConnectionLost(str(e))
            with self._lock:
                if not self._closing:
                    self._dead = SwitchConnectionLost(f"lost the message-switch: {err}")
                waiters, self._waiters = list(self._waiters.values()), {}
            for w in waiters:
                w.fail(self._dead or err)

    def rpc(self, queue: str, payload: str, timeout_s: float | None = None) -> str:
        w = _Waiter()
        with self._lock:
            if self._dead is not None:
                raise self._dead
            self.requests.rpc(p.CreatePersistent(queue))
            sent = self.requests.rpc(p.Send(queue, p.Message(payload, p.Request(self.reply_queue))))
            mid = p.parse_send_reply(sent)
            if mid is None:
                raise SwitchError(f"queue {queue} was deleted")
            self._waiters[mid] = w
        if not w.done.wait(timeout_s):
            with self._lock:
                self._waiters.pop(mid, None)
            raise SwitchTimeout(f"no reply on queue {queue} within {timeout_s:g} s "
                                "(is its server running?)")
        return w.result()

    def frame(self, req: p.In) -> bytes:
        """Any other frame on the requests connection (list, diagnostics...)."""
        with self._lock:
            return self.requests.rpc(req)

    def close(self) -> None:
        self._closing = True
        for name in ("requests", "events"):
            c = getattr(self, name, None)
            if c is not None:
                c.close()
        t = getattr(self, "_thread", None)
        if t is not None and t is not threading.current_thread():
            t.join(5)

    def __enter__(self) -> SwitchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self._value: str | None = None
        self._error: BaseException | None = None

    def fill(self, value: str) -> None:
        self._value = value
        self.done.set()

    def fail(self, e: BaseException) -> None:
        self._error = e
        self.done.set()

    def result(self) -> str:
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class SwitchMemoryClient:
    """The Memory interface through the switch, as xenopsd and xapi call it
    (Xcp_client.json_switch_rpc): JSON-RPC payloads on `queue`. `call` has
    the same contract as squeezed.rpc.client.MemoryClient.call."""

    def __init__(self, path: str = p.DEFAULT_SWITCH_PATH, *, queue: str = p.QUEUE_NAME,
                 timeout: float | None = None, client: SwitchClient | None = None) -> None:
        self.path = path
        self.queue = queue
        self.timeout = timeout
        self._client = client  # shared (one per process, as upstream) or made on first call
        self._owns = client is None
        self._next_id = 0

    def call_raw(self, method: str, *params: Any) -> tuple[str, Any]:
        from squeezed.rpc import CodecError, jsonrpc
        from squeezed.rpc.client import ConnectionFailed, NoReply, ProtocolError

        self._next_id += 1
        body = jsonrpc.encode_call(method, list(params), self._next_id).decode()
        try:
            if self._client is None:
                self._client = SwitchClient(self.path)
            reply = self._client.rpc(self.queue, body, self.timeout)
        except SwitchUnavailable as e:
            raise ConnectionFailed(self.path, str(e)) from e
        except SwitchTimeout as e:
            raise NoReply(self.path, str(e)) from e
        except SwitchError as e:
            self.close()
            raise NoReply(self.path, f"{e}; the call may still complete") from e
        try:
            return jsonrpc.parse_response(reply)
        except CodecError as e:
            raise ProtocolError(f"malformed reply on {self.queue}: {e}") from None

    def call(self, method: str, *params: Any) -> Any:
        from squeezed.errors import from_wire

        status, value = self.call_raw(method, *params)
        if status == "Success":
            return value
        raise from_wire(value)

    def close(self) -> None:
        if self._client is not None and self._owns:
            self._client.close()
            self._client = None

    def __enter__(self) -> SwitchMemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
