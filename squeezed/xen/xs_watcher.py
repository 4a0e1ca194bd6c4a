"""Watches on a dedicated connection: a reader thread that reconnects by
itself, re-registers every watch, and queues events through a
`CoalescingQueue`; `barrier()` for an operation's fresh view."""

from __future__ import annotations

import itertools
import logging
import socket
import threading

from squeezed.xen.xs_link import (
    REQ_ID_MASK,
    Backoff,
    Link,
    XenstoreConnectionError,
    XenstoreError,
    connect,
    default_socket_path,
)
from squeezed.xen.xs_queue import RECONNECTED, CoalescingQueue, WatchEvent, is_subpath
from squeezed.xen.xs_wire import (
    Op,
    Packet,
    ProtocolError,
    encode,
    join_strings,
    split_strings,
)

log = logging.getLogger("squeezed.xen.xenstore")


class _Waiter:
    __slots__ = ("reply", "error")

    def __init__(self) -> None:
        self.reply: Packet | None = None
        self.error: BaseException | None = None


class Watcher:
    """Watches on a dedicated connection, delivered through a :class:`CoalescingQueue`.

    A reader thread owns the socket; on disconnection it reconnects with back-off,
    re-registers every watch and queues :data:`RECONNECTED`.  ``stats`` counts
    received/coalesced events, queue overflows, reconnects and the queue's
    high-water mark.
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        max_pending: int = 1024,
        timeout_s: float = 30.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
    ) -> None:
        self.path = path or default_socket_path()
        self._timeout_s = timeout_s
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._backoff = Backoff(backoff_initial_s, backoff_max_s, self._closed)
        self._watches: dict[tuple[str, str], None] = {}  # insertion-ordered set
        self._queue = CoalescingQueue(max_pending)
        self._sock: socket.socket | None = None
        self._connected = False
        self._waiters: dict[int, _Waiter] = {}
        self._req_ids = itertools.count(1)
        self._reconnects = 0
        self._seq = 0  # events pushed so far (coalesced ones too)
        self.drained_seq = 0  # _seq as of the last events() drain
        self._thread = threading.Thread(target=self._run, name="xenstore-watcher", daemon=True)
        self._thread.start()

    # public API

    def wait_connected(self, timeout_s: float | None = None) -> bool:
        with self._cond:
            return (
                self._cond.wait_for(lambda: self._connected or self._closed.is_set(), timeout_s)
                and self._connected
            )

    def watch(self, path: str, token: str) -> None:
        """Register a watch; its initial event arrives like any other.

        Raises :class:`XenstoreError` if xenstored refuses it.  If the connection is
        down (or drops before the reply) the watch is kept and registered on
        reconnection, where a refusal can only be logged."""
        with self._cond:
            self._watches[(path, token)] = None
        try:
            self._request(Op.WATCH, join_strings([path, token]), path)
        except XenstoreConnectionError:
            log.info("watch %s %s deferred until xenstored is back", path, token)
        except XenstoreError as e:
            if e.errno_name != "EEXIST":  # already registered by a concurrent reconnect
                with self._cond:
                    self._watches.pop((path, token), None)
                raise

    def unwatch(self, path: str, token: str) -> None:
        """Remove a watch and any of its events still queued; unknown watches are ignored."""
        with self._cond:
            self._watches.pop((path, token), None)
            self._queue.discard(lambda e: e.token == token and is_subpath(path, e.path))
        try:
            self._request(Op.UNWATCH, join_strings([path, token]), path)
        except XenstoreConnectionError:
            pass  # the new connection will simply not re-register it
        except XenstoreError as e:
            if e.errno_name != "ENOENT":
                raise

    def events(self, timeout_s: float | None = None) -> list[WatchEvent]:
        """Wait until at least one event is queued (or timeout/close), then take them all."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._queue) or self._closed.is_set(), timeout_s)
            self.drained_seq = self._seq
            return self._queue.drain()

    def barrier(self, timeout_s: float = 5.0) -> int:
        """A round trip on the watch connection. xenstored sends a connection's
        watch events and replies in order, so once the reply is in, every event
        caused by a change made before this call has been queued. Returns the
        sequence number of the last queued event: the owner has seen them all
        once an events() drain reports `drained_seq` >= it. Raises
        XenstoreConnectionError when the connection is down."""
        self._request(Op.GET_DOMAIN_PATH, join_strings(["0"]), None, timeout_s)
        with self._cond:
            return self._seq

    def alive(self) -> bool:
        """False once the reader thread has died (other than by close())."""
        return self._thread.is_alive() or self._closed.is_set()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def watches(self) -> list[tuple[str, str]]:
        with self._cond:
            return list(self._watches)

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            sock = self._sock
            self._cond.notify_all()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader out of recv()
            except OSError:
                pass
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # requests, answered by the reader thread

    def _request(
        self, op: Op, payload: bytes, path: str | None, timeout_s: float | None = None
    ) -> Packet:
        timeout_s = self._timeout_s if timeout_s is None else timeout_s
        with self._cond:
            if (
                not self._cond.wait_for(
                    lambda: self._connected or self._closed.is_set(), timeout_s
                )
                or not self._connected
            ):
                raise XenstoreConnectionError(path, "watch connection is down")
            sock = self._sock
            assert sock is not None
            req_id = next(self._req_ids) & REQ_ID_MASK
            waiter = _Waiter()
            self._waiters[req_id] = waiter
        try:
            with self._send_lock:
                sock.sendall(encode(op, req_id, 0, payload))
        except OSError as e:
            with self._cond:
                self._waiters.pop(req_id, None)
            raise XenstoreConnectionError(path, str(e)) from e
        with self._cond:
            done = self._cond.wait_for(
                lambda: waiter.reply is not None or waiter.error is not None, timeout_s
            )
            self._waiters.pop(req_id, None)
        if not done:
            raise XenstoreConnectionError(path, f"no reply to {op.name} in {timeout_s}s")
        if waiter.error is not None:
            raise XenstoreConnectionError(path, str(waiter.error))
        assert waiter.reply is not None
        name = waiter.reply.error_name()
        if name is not None:
            raise XenstoreError(name, path)
        return waiter.reply

    # reader thread

    @property
    def stats(self) -> dict[str, int]:
        with self._cond:
            return {**self._queue.stats, "reconnects": self._reconnects}

    def _enqueue(self, ev: WatchEvent) -> None:
        # Caller holds the condition.
        self._seq += 1
        self._queue.push(ev, self._watches)
        self._cond.notify_all()

    def _run(self) -> None:
        first = True
        while not self._closed.is_set():
            try:
                sock = connect(self.path, None)
            except OSError as e:
                log.debug("watcher: connect to %s failed (%s); backing off", self.path, e)
                self._backoff.sleep()
                continue
            self._backoff.reset()
            try:
                self._serve(sock, first)
            finally:
                sock.close()
            first = False

    def _serve(self, sock: socket.socket, first: bool) -> None:
        internal: set[int] = set()
        with self._cond:
            if self._closed.is_set():
                return
            self._sock = sock
            if not first:
                self._reconnects += 1
                self._enqueue(RECONNECTED)
            # Re-register before anyone else may send, so watch() after a reconnect
            # can only meet EEXIST, never a missing registration.
            msgs = []
            for p, t in self._watches:
                req_id = next(self._req_ids) & REQ_ID_MASK
                internal.add(req_id)
                msgs.append(encode(Op.WATCH, req_id, 0, join_strings([p, t])))
        link = Link(sock)
        try:
            with self._send_lock:
                for m in msgs:
                    sock.sendall(m)
            with self._cond:
                self._connected = True
                self._cond.notify_all()
            while True:
                pkt = link.recv()
                with self._cond:
                    if pkt.type == Op.WATCH_EVENT:
                        parts = split_strings(pkt.payload)
                        if len(parts) >= 2:
                            self._enqueue(WatchEvent(parts[0], parts[1]))
                    elif pkt.req_id in internal:
                        internal.discard(pkt.req_id)
                        name = pkt.error_name()
                        if name not in (None, "EEXIST"):
                            log.warning("watcher: re-registering a watch failed: %s", name)
                    elif (w := self._waiters.get(pkt.req_id)) is not None:
                        w.reply = pkt
                        self._cond.notify_all()
                    else:
                        log.warning("watcher: reply to unknown req_id %d", pkt.req_id)
        except (OSError, ProtocolError) as e:
            if not self._closed.is_set():
                log.info("watcher: connection to %s lost (%s); reconnecting", self.path, e)
        finally:
            with self._cond:
                self._sock = None
                self._connected = False
                for w in self._waiters.values():
                    if w.reply is None:
                        w.error = ConnectionResetError("watch connection lost")
                self._cond.notify_all()
