"""A xenstore client over xenstored's Unix socket, built on :mod:`squeezed.xen.xs_wire`.

Two objects, two connections (as upstream squeezed does): :class:`XenstoreClient`
for requests and :class:`Watcher` for watches.  A dedicated watch connection
means a burst of events can never delay or interleave with a request's reply.

Reconnection (documented in docs/xenstore.md):

* The client reconnects lazily, with exponential back-off, on the next request
  after the connection died.  Before each request it checks the idle socket for
  EOF, so a xenstored restart between requests is invisible.  A request that was
  *in flight* when the connection died is retried once if it is an idempotent
  read outside a transaction; otherwise it raises :class:`XenstoreConnectionError`
  (``errno_name == "EIO"``), because a mutation may or may not have been applied.
* The watcher's reader thread reconnects by itself, re-registers every watch,
  and queues :data:`RECONNECTED` so the owner knows to refresh its cache.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Collection
from typing import NamedTuple, TypeVar

from squeezed.xen.xs_wire import (
    Op,
    Packet,
    Parser,
    ProtocolError,
    decode_value,
    encode,
    join_strings,
    split_strings,
    write_payload,
)

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/run/xenstored/socket"
T = TypeVar("T")

_REQ_ID_MASK = 0xFFFFFFFF
_IDEMPOTENT = frozenset(
    {
        Op.READ,
        Op.DIRECTORY,
        Op.DIRECTORY_PART,
        Op.GET_PERMS,
        Op.GET_DOMAIN_PATH,
        Op.IS_DOMAIN_INTRODUCED,
    }
)


def default_socket_path() -> str:
    """``$XENSTORED_PATH`` (honoured by libxenstore too), else the standard socket."""
    return os.environ.get("XENSTORED_PATH") or DEFAULT_SOCKET


class XenstoreError(Exception):
    """xenstored answered XS_ERROR (``errno_name`` is e.g. "ENOENT"), or the link failed."""

    def __init__(self, errno_name: str, path: str | None = None, detail: str | None = None):
        msg = f"{errno_name}: {path}" if path is not None else errno_name
        if detail:
            msg = f"{msg} ({detail})"
        super().__init__(msg)
        self.errno_name = errno_name
        self.path = path


class XenstoreConnectionError(XenstoreError, ConnectionError):
    """The connection to xenstored was lost or could not be made (``errno_name`` "EIO").

    ``in_flight`` is True when the request had been sent, so xenstored may or may
    not have acted on it; False when it certainly never reached xenstored."""

    def __init__(
        self, path: str | None = None, detail: str | None = None, *, in_flight: bool = False
    ) -> None:
        XenstoreError.__init__(self, "EIO", path, detail)
        self.in_flight = in_flight


class _Backoff:
    """Exponential back-off whose sleeps end early when ``stop`` is set."""

    def __init__(self, initial_s: float, max_s: float, stop: threading.Event) -> None:
        self._initial, self._max, self._stop = initial_s, max_s, stop
        self._delay = initial_s

    def reset(self) -> None:
        self._delay = self._initial

    def sleep(self) -> bool:
        """Sleep one step; False if ``stop`` was set meanwhile."""
        stopped = self._stop.wait(self._delay)
        self._delay = min(self._max, self._delay * 2)
        return not stopped


def _connect(path: str, timeout_s: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class _Link:
    """One connected socket and its parser.  Not thread-safe: the owner serialises."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = Parser()
        self.backlog: collections.deque[Packet] = collections.deque()

    def _fill(self, data: bytes) -> None:
        if not data:
            raise ConnectionResetError("xenstored closed the connection")
        self.backlog.extend(self.parser.feed(data))

    def recv(self) -> Packet:
        while not self.backlog:
            self._fill(self.sock.recv(65536))
        return self.backlog.popleft()

    def poll_alive(self) -> bool:
        """Drain whatever is already readable without blocking; False on EOF/error."""
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        try:
            while p.poll(0):
                self._fill(self.sock.recv(65536))
        except (OSError, ProtocolError):
            return False
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Ops:
    """read/write/... in terms of ``_call``; shared by the client and transactions."""

    def _call(self, op: Op, payload: bytes, path: str | None) -> Packet:
        raise NotImplementedError

    def read(self, path: str) -> str | None:
        """The node's value, or None if it does not exist."""
        try:
            return decode_value(self._call(Op.READ, join_strings([path]), path).payload)
        except XenstoreError as e:
            if e.errno_name == "ENOENT":
                return None
            raise

    def exists(self, path: str) -> bool:
        return self.read(path) is not None

    def write(self, path: str, value: str | bytes) -> None:
        """Set a node's value, creating it and any missing ancestors."""
        self._call(Op.WRITE, write_payload(path, value), path)

    def mkdir(self, path: str) -> None:
        """Create a node (and ancestors) with an empty value; existing nodes are kept."""
        self._call(Op.MKDIR, join_strings([path]), path)

    def rm(self, path: str) -> None:
        """Remove a node and its whole subtree; an absent node is not an error."""
        try:
            self._call(Op.RM, join_strings([path]), path)
        except XenstoreError as e:
            if e.errno_name != "ENOENT":
                raise

    def directory(self, path: str) -> list[str]:
        """The names of a node's children ([] if the node does not exist)."""
        try:
            try:
                return split_strings(self._call(Op.DIRECTORY, join_strings([path]), path).payload)
            except XenstoreError as e:
                if e.errno_name != "E2BIG":
                    raise
            return self._directory_part(path)
        except XenstoreError as e:
            if e.errno_name == "ENOENT":
                return []
            raise

    def _directory_part(self, path: str) -> list[str]:
        # Listing too big for one reply: page through it by byte offset, restarting if
        # the directory's generation changes between pages (as libxenstore does).
        for _ in range(16):
            chunks: list[bytes] = []
            gen: bytes | None = None
            offset = 0
            while True:
                reply = self._call(
                    Op.DIRECTORY_PART, join_strings([path, str(offset)]), path
                ).payload
                g, _, chunk = reply.partition(b"\0")
                if gen is None:
                    gen = g
                elif g != gen:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                if len(chunk) <= 1 or chunk.endswith(b"\0\0"):
                    return split_strings(b"".join(chunks)[:-1])
        raise XenstoreError("EAGAIN", path, "directory kept changing while paging")

    def get_perms(self, path: str) -> list[str]:
        """Permission strings, owner first, e.g. ["n0", "r3"]."""
        return split_strings(self._call(Op.GET_PERMS, join_strings([path]), path).payload)

    def set_perms(self, path: str, perms: list[str]) -> None:
        self._call(Op.SET_PERMS, join_strings([path, *perms]), path)


class Transaction(_Ops):
    """Handle passed to the function given to :meth:`XenstoreClient.transaction`."""

    def __init__(self, client: XenstoreClient, tx_id: int, epoch: int) -> None:
        self._client = client
        self.tx_id = tx_id
        self._epoch = epoch

    def _call(self, op: Op, payload: bytes, path: str | None) -> Packet:
        return self._client._request(op, payload, path, tx_id=self.tx_id, epoch=self._epoch)


class XenstoreClient(_Ops):
    """Synchronous, thread-safe request connection to xenstored.

    One lock serialises each request with its reply, matched by req_id; watch
    events that arrive on this connection are passed to ``on_watch_event``
    (dropped if None).  Connection happens lazily on the first request, retried
    with back-off for up to ``reconnect_timeout_s`` (None: forever).
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        timeout_s: float | None = 30.0,
        reconnect_timeout_s: float | None = 30.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        on_watch_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.path = path or default_socket_path()
        self._timeout_s = timeout_s
        self._reconnect_timeout_s = reconnect_timeout_s
        self._closed = threading.Event()
        self._backoff = _Backoff(backoff_initial_s, backoff_max_s, self._closed)
        self._on_watch_event = on_watch_event
        self._lock = threading.RLock()
        self._link: _Link | None = None
        self._epoch = 0  # bumped at each (re)connection: transactions die with their link
        self._req_ids = itertools.count(1)
        self.reconnects = 0
        # failed requests for metrics: error reply name (ENOENT, the normal
        # answer for an absent key, is not counted) or "connection"
        self.errors: collections.Counter[str] = collections.Counter()

    # lifecycle

    def set_reconnect_timeout(self, seconds: float | None) -> None:
        """How long a request keeps trying to (re)connect; 0 fails at once."""
        self._reconnect_timeout_s = seconds

    def connect(self) -> None:
        """Connect now (normally done by the first request); raises if impossible."""
        with self._lock:
            self._ensure_link(None)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._drop()

    def __enter__(self) -> XenstoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # requests

    def get_domain_path(self, domid: int) -> str:
        return split_strings(
            self._request(Op.GET_DOMAIN_PATH, join_strings([str(domid)]), None).payload
        )[0]

    def transaction(self, fn: Callable[[Transaction], T], max_retries: int = 16) -> T:
        """Run ``fn(t)`` in a transaction and commit it; return what ``fn`` returned.

        ``fn`` runs again (so it must be safe to repeat), up to ``max_retries`` times,
        when the commit meets EAGAIN (a conflicting change) and when the connection
        is lost before the commit was sent: xenstored discards the transactions of
        a closed connection, so nothing was applied.  Losing the connection while
        the commit itself is in flight raises :class:`XenstoreConnectionError`
        (outcome unknown).  If ``fn`` raises, the transaction is abandoned."""
        last: XenstoreError | None = None
        for _ in range(max_retries + 1):
            try:
                with self._lock:  # re-entrant: the epoch must be the one the start ran on
                    reply = self._request(Op.TRANSACTION_START, b"\0", None)
                    tx = Transaction(self, int(split_strings(reply.payload)[0]), self._epoch)
            except XenstoreConnectionError as e:
                if e.in_flight:  # a transaction may have started on a now-dead link
                    last = e
                    continue
                raise
            try:
                result = fn(tx)
            except XenstoreError as e:
                self._end(tx, commit=False)
                if e.errno_name == "EAGAIN" or isinstance(e, XenstoreConnectionError):
                    last = e
                    continue
                raise
            except BaseException:
                self._end(tx, commit=False)
                raise
            try:
                self._request(Op.TRANSACTION_END, b"T\0", None, tx_id=tx.tx_id, epoch=tx._epoch)
            except XenstoreConnectionError as e:
                if e.in_flight:
                    raise
                last = e  # never sent: the transaction died with its connection
                continue
            except XenstoreError as e:
                if e.errno_name != "EAGAIN":
                    raise
                log.debug("xenstore transaction %d conflicted; retrying", tx.tx_id)
                last = e
                continue
            return result
        assert last is not None
        raise last

    def _end(self, tx: Transaction, commit: bool) -> None:
        try:
            self._request(
                Op.TRANSACTION_END,
                b"T\0" if commit else b"F\0",
                None,
                tx_id=tx.tx_id,
                epoch=tx._epoch,
            )
        except XenstoreError:
            pass  # abandoning: nothing useful to do if it is already gone

    def _call(self, op: Op, payload: bytes, path: str | None) -> Packet:
        return self._request(op, payload, path)

    def _request(
        self, op: Op, payload: bytes, path: str | None, *, tx_id: int = 0, epoch: int | None = None
    ) -> Packet:
        with self._lock:
            retry = op in _IDEMPOTENT and tx_id == 0
            while True:
                link = self._ensure_link(path)
                if epoch is not None and epoch != self._epoch:
                    # The transaction lived on a connection that has since been replaced.
                    raise XenstoreConnectionError(path, "transaction lost with its connection")
                req_id = next(self._req_ids) & _REQ_ID_MASK
                try:
                    link.sock.sendall(encode(op, req_id, tx_id, payload))
                    reply = self._await_reply(link, req_id)
                except (OSError, ProtocolError) as e:
                    self.errors["connection"] += 1
                    self._drop()
                    if retry:
                        retry = False
                        log.info("xenstore connection lost during %s %s; retrying", op.name, path)
                        continue
                    raise XenstoreConnectionError(path, f"{op.name}: {e}", in_flight=True) from e
                name = reply.error_name()
                if name is not None:
                    if name != "ENOENT":
                        self.errors[name] += 1
                    raise XenstoreError(name, path)
                return reply

    def _await_reply(self, link: _Link, req_id: int) -> Packet:
        while True:
            pkt = link.recv()
            if pkt.type == Op.WATCH_EVENT:
                self._route_event(pkt)
            elif pkt.req_id == req_id:
                return pkt
            else:
                log.warning("xenstore: dropping reply to unknown req_id %d", pkt.req_id)

    def _route_event(self, pkt: Packet) -> None:
        parts = split_strings(pkt.payload)
        if self._on_watch_event is not None and len(parts) >= 2:
            self._on_watch_event(parts[0], parts[1])

    def _ensure_link(self, path: str | None) -> _Link:
        # Caller holds the lock.
        link = self._link
        if link is not None:
            if link.poll_alive():
                # Unsolicited packets read while polling can only be watch events.
                while link.backlog:
                    pkt = link.backlog.popleft()
                    if pkt.type == Op.WATCH_EVENT:
                        self._route_event(pkt)
                return link
            log.info("xenstore connection to %s was closed; reconnecting", self.path)
            self._drop()
        if self._closed.is_set():
            raise XenstoreConnectionError(path, "client closed")
        deadline = (
            None
            if self._reconnect_timeout_s is None
            else time.monotonic() + self._reconnect_timeout_s
        )
        self._backoff.reset()
        while True:
            try:
                sock = _connect(self.path, self._timeout_s)
                break
            except OSError as e:
                if deadline is not None and time.monotonic() >= deadline:
                    self.errors["connection"] += 1
                    detail = f"cannot connect to {self.path}: {e}"
                    raise XenstoreConnectionError(path, detail) from e
                log.debug("xenstore connect to %s failed (%s); backing off", self.path, e)
                if not self._backoff.sleep():
                    raise XenstoreConnectionError(path, "client closed") from e
        if self._epoch:
            self.reconnects += 1
        self._epoch += 1
        self._link = _Link(sock)
        return self._link

    def _drop(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None


# --- watches -------------------------------------------------------------------------------


class WatchEvent(NamedTuple):
    path: str
    token: str


RECONNECTED = WatchEvent("@reconnected", "@reconnected")
"""Queued by :class:`Watcher` after it reconnected and re-registered its watches: every
cached value may be stale.  (Each watch's initial event follows, as on registration.)"""


class CoalescingQueue:
    """The watcher's event queue, without threads or sockets (so it is testable alone).

    * An event equal to one still pending is dropped (coalesced): xenstore events
      mean "look again", so one pending copy carries all the information.
    * When ``max_pending`` distinct events are pending, the queue is replaced by
      one event per registered watch (its own path and token), telling the owner
      to re-read everything it watches.  Until the owner drains it, later events
      under those roots are coalesced into them (so that a burst of events
      from thousands of watches costs one collapse, not one per event).
      Length stays at most ``max(max_pending, number of watches) + 1``.
    """

    def __init__(self, max_pending: int = 1024) -> None:
        self.max_pending = max(1, max_pending)
        self._q: dict[WatchEvent, None] = {}  # insertion-ordered set
        self._roots: dict[str, list[str]] | None = None  # token -> queued roots, once collapsed
        self.stats = {"received": 0, "coalesced": 0, "overflows": 0, "high_water": 0}

    def push(self, ev: WatchEvent, watches: Collection[tuple[str, str]] = ()) -> None:
        self.stats["received"] += 1
        if ev in self._q or self._covered(ev):
            self.stats["coalesced"] += 1
            return
        collapsed_len = len(watches) + 1 if self._roots is not None else 0
        if len(self._q) >= max(self.max_pending, collapsed_len):
            self.stats["overflows"] += 1
            self._q.clear()
            self._roots = {}
            for p, t in watches:
                self._q[WatchEvent(p, t)] = None
                self._roots.setdefault(t, []).append(p)
            if not self._covered(ev):
                self._q[ev] = None  # not covered by any watch root: keep it
        else:
            self._q[ev] = None
        self.stats["high_water"] = max(self.stats["high_water"], len(self._q))

    def _covered(self, ev: WatchEvent) -> bool:
        """Collapsed, and a queued watch root already stands for this event."""
        if self._roots is None or ev == RECONNECTED:
            return False
        return any(_is_subpath(p, ev.path) for p in self._roots.get(ev.token, ()))

    def drain(self) -> list[WatchEvent]:
        out = list(self._q)
        self._q.clear()
        self._roots = None
        return out

    def discard(self, pred: Callable[[WatchEvent], bool]) -> None:
        for ev in [e for e in self._q if pred(e)]:
            del self._q[ev]

    def __len__(self) -> int:
        return len(self._q)


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
        self._backoff = _Backoff(backoff_initial_s, backoff_max_s, self._closed)
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
            self._queue.discard(lambda e: e.token == token and _is_subpath(path, e.path))
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
            req_id = next(self._req_ids) & _REQ_ID_MASK
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
                sock = _connect(self.path, None)
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
                req_id = next(self._req_ids) & _REQ_ID_MASK
                internal.add(req_id)
                msgs.append(encode(Op.WATCH, req_id, 0, join_strings([p, t])))
        link = _Link(sock)
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


def _is_subpath(parent: str, child: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")
