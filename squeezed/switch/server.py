"""squeezed as a message-switch server: the queue org.xen.xapi.memory.

As upstream's Protocol_unix.Server.listen: two connections logged in with the
token ``<program>:<pid>``, the persistent queue created, a long-poll
`transfer` loop on the request connection, each message processed in its own
thread, its reply sent as a Response to the request's reply queue and the
message acked after the reply, both on the reply connection under a lock.

Where upstream is wrong, better: after any reconnect the loop transfers from
the start (upstream keeps its `from`, so a restarted switch, which numbers
from 0 again, would see its new requests ignored until the numbers catch up).
Messages still unacked then come again; a message already being processed is
not started twice, and `exactly_once` answers a repeat of a finished one.
A missing or restarted switch is retried with capped back-off while the
daemon keeps serving its sockets; each loss and each recovery is logged once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from squeezed.fifolock import arrived
from squeezed.supervisor import Heartbeats
from squeezed.switch import protocol as p
from squeezed.switch.client import Connection, SwitchError
from squeezed.switch.exactly_once import RequestIdentity, current

log = logging.getLogger("squeezed.switch")

HEARTBEAT = "message-switch"


def server_token() -> str:
    return f"{os.path.basename(sys.argv[0]) or 'squeezed'}:{os.getpid()}"


class SwitchServer:
    """`process(payload) -> reply payload` for each request on `queue`.

    While `process` runs, `exactly_once.current` holds the request's identity.
    `run(stop)` is a supervised loop body; `shutdown()` stops it and lets the
    requests in progress send their replies."""

    def __init__(
        self,
        path: str,
        process: Callable[[str], str],
        *,
        queue: str = p.QUEUE_NAME,
        token: str | None = None,
        heartbeats: Heartbeats | None = None,
        transfer_timeout_s: float = p.TRANSFER_TIMEOUT_S,
        io_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 2.0,
        on_idle: Callable[[], None] | None = None,
        hold: Callable[[str], None] | None = None,
        max_in_flight: int = 128,
        pause: Callable[[float], bool] | None = None,
    ) -> None:
        self.path = path
        self.process = process
        self.queue = queue
        self.token = token or server_token()
        self.heartbeats = heartbeats
        self.transfer_timeout_s = transfer_timeout_s
        self.io_timeout_s = io_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.on_idle = on_idle
        self._hold = hold  # test hook: called at "before-reply"
        self._pause = pause  # how to wait before a retry; True = stop (tests record it)
        self.connected = threading.Event()  # serving the queue right now
        self.connections = 0  # successful (re)connections, for tests and diagnostics
        self.attempts = 0  # connection attempts, successful or not
        self.served = 0
        self._stop = threading.Event()
        self._lock = threading.Condition()  # the fields below
        self._request_conn: Connection | None = None
        self._reply_conn: Connection | None = None
        self._reply_lock = threading.Lock()  # one Send/Ack at a time on the reply connection
        self._in_progress: set[str] = set()
        self._deferred: dict[str, tuple[p.MessageId, p.Message]] = {}
        self._busy = 0
        # At most this many requests run at once (a thread each, as upstream); beyond
        # that the loop stops transferring and the requests wait in the switch.
        self._slots = threading.BoundedSemaphore(max_in_flight)

    # -- the loop -----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        beat: Callable[[], None] = lambda: None  # noqa: E731
        if self.heartbeats is not None:
            silence_s = self.transfer_timeout_s + self.io_timeout_s + self.backoff_max_s + 5
            beat = self.heartbeats.register(HEARTBEAT, silence_s)
        down_since: float | None = None
        backoff_s = self.backoff_initial_s
        try:
            while not (stop.is_set() or self._stop.is_set()):
                beat()
                try:
                    self._connect()
                except SwitchError as e:
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("message-switch at %s unavailable (%s): serving the "
                                    "sockets only, retrying", self.path, e)
                    if (self._pause or stop.wait)(backoff_s) or self._stop.is_set():
                        return
                    backoff_s = min(backoff_s * 2, self.backoff_max_s)
                    continue
                backoff_s = self.backoff_initial_s
                if down_since is None:
                    log.info("serving queue %s on the message-switch at %s", self.queue,
                             self.path)
                else:
                    log.info("message-switch back after %.1f s: serving queue %s on %s",
                             time.monotonic() - down_since, self.queue, self.path)
                down_since = None
                try:
                    self._serve(stop, beat)
                except (SwitchError, p.SwitchProtocolError) as e:
                    if stop.is_set() or self._stop.is_set():
                        return
                    down_since = time.monotonic()
                    log.warning("lost the message-switch at %s (%s): serving the sockets "
                                "only, reconnecting", self.path, e)
                finally:
                    if not self._stop.is_set():  # at shutdown, replies in progress need it
                        self._disconnect()
        finally:
            if self.heartbeats is not None:
                self.heartbeats.unregister(HEARTBEAT)

    def _connect(self) -> None:
        self.attempts += 1
        req = Connection(self.path, self.io_timeout_s)
        rep: Connection | None = None
        try:
            req.rpc(p.Login(self.token))
            rep = Connection(self.path, self.io_timeout_s)
            rep.rpc(p.Login(self.token))
            req.rpc(p.CreatePersistent(self.queue))
        except SwitchError:
            req.close()
            if rep is not None:
                rep.close()
            raise
        with self._lock:
            self._request_conn, self._reply_conn = req, rep
        self.connections += 1
        self.connected.set()

    def _disconnect(self) -> None:
        self.connected.clear()
        with self._lock:
            conns = (self._request_conn, self._reply_conn)
            self._request_conn = self._reply_conn = None
        for c in conns:
            if c is not None:
                c.close()

    def _serve(self, stop: threading.Event, beat: Callable[[], None]) -> None:
        from_: str | None = None  # from the start after every (re)connection
        while not (stop.is_set() or self._stop.is_set()):
            beat()
            conn = self._request_conn
            if conn is None:
                raise SwitchError("disconnected")
            body = conn.rpc(p.Transfer(from_, self.transfer_timeout_s, (self.queue,)),
                            timeout_s=self.transfer_timeout_s + self.io_timeout_s)
            reply = p.parse_transfer_reply(body)
            for mid, msg in reply.messages:
                while not self._slots.acquire(timeout=1.0):
                    beat()  # waiting for a slot is not being stuck
                    if stop.is_set() or self._stop.is_set():
                        return
                self._dispatch(mid, msg, slot=True)
            if reply.messages:
                from_ = reply.next
            if self.on_idle is not None:
                self.on_idle()

    # -- one message ----------------------------------------------------------------

    def _dispatch(self, mid: p.MessageId, msg: p.Message, slot: bool = False) -> None:
        """Start processing a message in its own thread; `slot`: the caller took
        a slot for it (a deferred repeat runs in the slot its first run left)."""
        reply_to = msg.kind.reply_to if isinstance(msg.kind, p.Request) else ""
        ident = RequestIdentity.of(mid[0], mid[1], reply_to, msg.payload)
        with self._lock:
            if ident.key in self._in_progress:
                # delivered again while still running: answer it when that run ends
                self._deferred[ident.key] = (mid, msg)
                if slot:
                    self._slots.release()
                return
            self._in_progress.add(ident.key)
            self._busy += 1
            conn = self._reply_conn
        threading.Thread(target=self._process, args=(mid, msg, ident, conn, time.monotonic()),
                         name=f"switch {mid[0]}/{mid[1]}", daemon=True).start()

    def _process(self, mid: p.MessageId, msg: p.Message, ident: RequestIdentity,
                 conn: Connection | None, arrived_s: float) -> None:
        answered = False
        try:
            current.set(ident)
            with arrived(arrived_s):  # served in the order the reader took them in
                reply = self.process(msg.payload)
            if self._hold is not None:
                self._hold("before-reply")
            if conn is None:
                raise SwitchError("disconnected")
            with self._reply_lock:
                if isinstance(msg.kind, p.Request):
                    conn.rpc(p.Send(msg.kind.reply_to, p.Message(reply, p.Response(mid))))
                # else: a response where a request should be; nothing to answer
                conn.rpc(p.Ack(mid))
            answered = True
            self.served += 1
        except SwitchError as e:
            log.info("request %s/%d done but not acked (%s): the switch will deliver it "
                     "again and it will be answered from its record", mid[0], mid[1], e)
        finally:
            with self._lock:
                self._in_progress.discard(ident.key)
                again = self._deferred.pop(ident.key, None)
                self._busy -= 1
                self._lock.notify_all()
            if again is not None and not answered and not self._stop.is_set():
                self._dispatch(*again)  # keeps this run's slot
            else:
                self._slots.release()

    # -- stopping -------------------------------------------------------------------

    def shutdown(self, drain_s: float = 10.0) -> None:
        """Stop the loop; requests in progress may still reply (up to drain_s)."""
        self._stop.set()
        with self._lock:
            conn = self._request_conn
        if conn is not None:
            conn.close()  # ends the long-poll at once
        with self._lock:
            if not self._lock.wait_for(lambda: self._busy == 0, drain_s):
                log.warning("message-switch: %d requests still running at shutdown", self._busy)
        self._disconnect()

    @property
    def busy(self) -> int:
        with self._lock:
            return self._busy


