"""A simulated message-switch speaking the real protocol (squeezed.switch.protocol).

Semantics as xen-api's switch (ocaml/message-switch/switch/): queues are
persistent or transient (owned by a session, removed when the session's last
connection closes); message ids count from 0 per queue; a message stays
until acked, so a transfer from the start hands out every unacked message
again; `transfer` long-polls until a message is there or its timeout passes;
sending to a missing queue drops the message (reply: None). `GET /` returns
the diagnostics. State lives in memory only: a restarted switch starts empty
and numbers from 0 again, like the real one whose runtime directory is wiped.

`SwitchState` is the pure part (no I/O, no clock of its own); `SimulatedSwitch`
is the thin threaded Unix-socket shell around it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from squeezed.switch import protocol as p

log = logging.getLogger("squeezed.sim.switch")


@dataclass
class _Entry:
    origin: list[str]  # ["Name", session] or ["Anonymous", connection]
    time_ns: int
    message: p.Message


@dataclass
class _Queue:
    owner: str | None
    next_id: int = 0
    entries: dict[int, _Entry] = field(default_factory=dict)


class SwitchState:
    """The switch's queues and sessions; every method is a pure state change
    returning (status, body) as Out.to_response would."""

    def __init__(self, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.now_ns = now_ns
        self.start_ns = now_ns()
        self.queues: dict[str, _Queue] = {}
        self.sessions: dict[str, str] = {}  # connection id -> session
        self.next_transfer_expected: dict[str, int] = {}
        self.shutdown_requested = False

    def pending(self, from_id: int, names: tuple[str, ...]) -> list[tuple[p.MessageId, p.Message]]:
        out = []
        for name in names:
            q = self.queues.get(name)
            if q is not None:
                out += [((name, i), e.message) for i, e in sorted(q.entries.items()) if i > from_id]
        return out

    def handle(self, conn: str, req: p.In) -> tuple[int, bytes]:
        session = self.sessions.get(conn)
        if isinstance(req, p.Login):
            self.sessions[conn] = req.token
            return 200, b""
        if isinstance(req, p.Diagnostics):
            return 200, p.dumps(self.diagnostics())
        if session is None:
            return 404, p.NOT_LOGGED_IN
        if isinstance(req, p.List):
            names = sorted(n for n in self.queues if n.startswith(req.prefix))
            if req.alive_only:
                names = [n for n in names if n in self.next_transfer_expected]
            return 200, p.dumps(names)
        if isinstance(req, p.CreatePersistent | p.CreateTransient):
            if req.name not in self.queues:
                owner = session if isinstance(req, p.CreateTransient) else None
                self.queues[req.name] = _Queue(owner)
            return 200, req.name.encode()
        if isinstance(req, p.Destroy):
            self.queues.pop(req.name, None)
            return 200, b""
        if isinstance(req, p.Ack):
            q = self.queues.get(req.id[0])
            if q is not None:
                q.entries.pop(req.id[1], None)
            return 200, b""
        if isinstance(req, p.Transfer):
            deadline = self.now_ns() + int(req.timeout_s * 1e9)
            for n in req.queues:
                self.next_transfer_expected[n] = deadline
            from_id = -1 if req.from_ is None else int(req.from_)
            msgs = self.pending(from_id, req.queues)
            nxt = max((i[1] for i, _ in msgs), default=from_id)
            return 200, p.dumps(p.transfer_reply_to_rpc(p.TransferReply(tuple(msgs), str(nxt))))
        if isinstance(req, p.Send):
            q = self.queues.get(req.queue)
            if q is None:
                return 200, p.send_reply_body(None)
            mid = q.next_id
            q.next_id += 1
            q.entries[mid] = _Entry(["Name", session], self.now_ns(), req.message)
            return 200, p.send_reply_body((req.queue, mid))
        if isinstance(req, p.Shutdown):
            self.shutdown_requested = True
            return 200, b""
        raise TypeError(f"unhandled frame {req!r}")

    def connection_closed(self, conn: str) -> None:
        """The session's transient queues go with its last connection."""
        session = self.sessions.pop(conn, None)
        if session is not None and session not in self.sessions.values():
            for name in [n for n, q in self.queues.items() if q.owner == session]:
                del self.queues[name]

    def diagnostics(self) -> dict[str, Any]:
        def queue(name: str, q: _Queue) -> dict[str, Any]:
            d: dict[str, Any] = {}
            if name in self.next_transfer_expected:
                d["next_transfer_expected"] = self.next_transfer_expected[name]
            d["queue_contents"] = [
                [[name, i], {"origin": e.origin, "time": e.time_ns,
                             "message": p.message_to_rpc(e.message)}]
                for i, e in sorted(q.entries.items())
            ]
            return d

        return {
            "start_time": self.start_ns,
            "current_time": self.now_ns(),
            "permanent_queues": {n: queue(n, q) for n, q in sorted(self.queues.items())
                                 if q.owner is None},
            "transient_queues": {n: queue(n, q) for n, q in sorted(self.queues.items())
                                 if q.owner is not None},
        }


class SimulatedSwitch:
    """The socket shell: a thread per connection; transfers long-poll on a
    condition variable signalled by every change of the queues."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state = SwitchState()
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conn_names: dict[socket.socket, str] = {}
        self._ids = itertools.count(1)
        self._stopping = False

    def start(self) -> SimulatedSwitch:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)
        s.listen(64)
        self._sock = s
        self._thread = threading.Thread(target=self._accept, name="sim-switch", daemon=True)
        self._thread.start()
        log.info("simulated message-switch on %s", self.path)
        return self

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return  # closed by stop()
            with self._cond:
                if self._stopping:
                    c.close()
                    return
                self._conns.add(c)
                name = self._conn_names[c] = f"conn-{next(self._ids)}"
            threading.Thread(target=self._serve, args=(c, name),
                             name="sim-switch-conn", daemon=True).start()

    def _serve(self, c: socket.socket, conn: str) -> None:
        reader = p.HttpReader("request")
        try:
            while True:
                ev = reader.next_event()
                if isinstance(ev, p.NeedData):
                    reader.receive_data(c.recv(65536))
                    continue
                if isinstance(ev, p.Closed):
                    return
                assert isinstance(ev, p.HttpRequest)
                req = p.parse_request(ev.method, ev.path, ev.body)
                if req is None:
                    c.sendall(p.encode_response(404, b"Not found"))
                    continue
                status, body = self._handle(conn, req)
                c.sendall(p.encode_response(status, body))
                if self.state.shutdown_requested:
                    threading.Thread(target=self.stop, daemon=True).start()
        except (OSError, p.SwitchProtocolError):
            return
        finally:
            with self._cond:
                self._conns.discard(c)
                self._conn_names.pop(c, None)
                self.state.connection_closed(conn)
                self._cond.notify_all()
            with contextlib.suppress(OSError):
                c.close()

    def _handle(self, conn: str, req: p.In) -> tuple[int, bytes]:
        with self._cond:
            if isinstance(req, p.Transfer) and conn in self.state.sessions:
                from_id = -1 if req.from_ is None else int(req.from_)
                deadline = time.monotonic() + max(0.0, req.timeout_s)
                while not self._stopping and not self.state.pending(from_id, req.queues):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            result = self.state.handle(conn, req)
            self._cond.notify_all()
            return result

    def drop_connections(self, session: str) -> int:
        """Close the connections of one session, keeping the queues (a broken
        connection, not a restart); returns how many were closed."""
        with self._cond:
            conns = [c for c, name in self._conn_names.items()
                     if self.state.sessions.get(name) == session]
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        return len(conns)

    def stop(self) -> None:
        """Close everything at once, as a killed switch would."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            conns = list(self._conns)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> SimulatedSwitch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(path: str) -> None:
    """`squeezed-sim switch --socket PATH`: until SIGTERM/SIGINT or POST /shutdown."""
    import signal

    sw = SimulatedSwitch(path).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"squeezed-sim: message-switch on {path}", flush=True)
    while not done.wait(0.5):
        if sw.state.shutdown_requested:
            break
    sw.stop()
