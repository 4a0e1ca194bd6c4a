"""The request connection to xenstored: requests matched to replies,
transactions retried on conflict, lazy reconnection with back-off
(docs/xenstore.md)."""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from squeezed.xen.xs_link import (
    REQ_ID_MASK,
    Backoff,
    Link,
    XenstoreConnectionError,
    XenstoreError,
    connect,
    default_socket_path,
)
from squeezed.xen.xs_ops import Ops, Transaction
from squeezed.xen.xs_pipeline import DEFAULT_WINDOW, Outcome, Pipeline, Request
from squeezed.xen.xs_wire import (
    Op,
    Packet,
    ProtocolError,
    decode_value,
    encode,
    join_strings,
    split_strings,
)

log = logging.getLogger("squeezed.xen.xenstore")
T = TypeVar("T")

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


class XenstoreClient(Ops):
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
        self._backoff = Backoff(backoff_initial_s, backoff_max_s, self._closed)
        self._on_watch_event = on_watch_event
        self._lock = threading.RLock()
        self._link: Link | None = None
        self._epoch = 0  # bumped at each (re)connection: transactions die with their link
        self._req_ids = itertools.count(1)
        self.reconnects = 0
        # failed requests for metrics: error reply name (ENOENT, the normal
        # answer for an absent key, is not counted) or "connection"
        self.errors: collections.Counter[str] = collections.Counter()

    @property
    def timeout_s(self) -> float | None:
        """How long a request waits for its reply (None: forever)."""
        return self._timeout_s

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
        (outcome unknown), as does a request xenstored did not answer in time
        (``timed_out``: never tried again).  No try starts later than one client
        timeout after the first.  If ``fn`` raises, the transaction is abandoned."""
        last: XenstoreError | None = None
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        for attempt in range(max_retries + 1):
            if attempt and deadline is not None and time.monotonic() >= deadline:
                log.info("xenstore transaction: giving up after %d tries in %g s",
                         attempt, self._timeout_s)
                break
            try:
                with self._lock:  # re-entrant: the epoch must be the one the start ran on
                    reply = self._request(Op.TRANSACTION_START, b"\0", None)
                    tx = Transaction(self, int(split_strings(reply.payload)[0]), self._epoch)
            except XenstoreConnectionError as e:
                if e.in_flight and not e.timed_out:  # it may have started on a now-dead link
                    last = e
                    continue
                raise
            try:
                result = fn(tx)
            except XenstoreError as e:
                self._end(tx, commit=False)
                timed_out = isinstance(e, XenstoreConnectionError) and e.timed_out
                if not timed_out and (
                        e.errno_name == "EAGAIN" or isinstance(e, XenstoreConnectionError)):
                    last = e
                    continue
                raise
            except BaseException:
                self._end(tx, commit=False)
                raise
            try:
                self._request(Op.TRANSACTION_END, b"T\0", None, tx_id=tx.tx_id, epoch=tx._epoch)
            except XenstoreConnectionError as e:
                if e.in_flight or e.timed_out:
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

    # pipelined requests (xs_pipeline.py)

    def pipeline(
        self,
        requests: Sequence[Request],
        *,
        epoch: int | None = None,
        timeout_s: float | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> tuple[int, list[Outcome]]:
        """Send ``requests`` without waiting for each reply; return the epoch
        of the connection they went on and one outcome per request, in order:
        its reply or its error (a failure is reported per request, never raised).

        ``epoch`` (from an earlier call) says the requests belong to
        transactions of that connection: if it has since been replaced, nothing
        is sent and every request fails with :class:`XenstoreConnectionError`
        (``in_flight`` False).  The whole batch waits at most ``timeout_s``
        (default: the client's timeout); then, or if the connection fails, the
        connection is dropped and the unanswered requests fail with
        :class:`XenstoreConnectionError` (``in_flight`` True for those sent).
        Only failing to connect at all raises."""
        with self._lock:
            pl = Pipeline(requests, lambda: next(self._req_ids) & REQ_ID_MASK, window)
            if epoch is not None and self._link is None:
                # that connection was dropped: no need to open another to say so
                pl.fail_unanswered("transaction lost with its connection")
                return epoch, pl.outcomes()
            link = self._ensure_link(requests[0].path if requests else None)
            if epoch is not None and epoch != self._epoch:
                pl.fail_unanswered("transaction lost with its connection")
                return epoch, pl.outcomes()  # nothing went on the current connection
            limit_s = self._timeout_s if timeout_s is None else timeout_s
            deadline = None if limit_s is None else time.monotonic() + limit_s
            try:
                while not pl.done:
                    data = pl.next_bytes()
                    if data:
                        link.sock.sendall(data)
                    if not link.backlog and deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimeoutError(f"timed out: no reply within {limit_s:g} s")
                        link.sock.settimeout(left)
                    event = pl.receive(link.recv())
                    if event is not None:
                        self._route_event(event)
                link.sock.settimeout(self._timeout_s)
            except (OSError, ProtocolError) as e:
                self.errors["connection"] += 1
                self._drop()
                log.info("xenstore connection lost during a pipeline of %d requests: %s",
                         len(requests), e)
                pl.fail_unanswered(str(e) or type(e).__name__,
                                   timed_out=isinstance(e, TimeoutError))
            outcomes = pl.outcomes()
            for o in outcomes:
                if isinstance(o, XenstoreError) and not isinstance(o, XenstoreConnectionError):
                    if o.errno_name != "ENOENT":
                        self.errors[o.errno_name] += 1
            return self._epoch, outcomes

    def read_many(self, paths: Sequence[str]) -> list[str | None]:
        """Read many nodes in one pipeline (None for an absent one).  Reads
        are idempotent: a batch cut by a lost connection is sent again once;
        any other error raises, as `read` does."""
        for attempt in range(2):
            _, outcomes = self.pipeline([Request(Op.READ, join_strings([p]), 0, p) for p in paths])
            values: list[str | None] = []
            lost: XenstoreConnectionError | None = None
            for o in outcomes:
                if isinstance(o, Packet):
                    values.append(decode_value(o.payload))
                elif isinstance(o, XenstoreConnectionError):
                    if o.timed_out:
                        raise o  # xenstored hung: another try would wait as long
                    lost = o
                    break
                elif o.errno_name == "ENOENT":
                    values.append(None)
                else:
                    raise o
            if lost is None:
                return values
            if attempt == 0:
                log.info("xenstore connection lost during %d reads; reading again", len(paths))
        assert lost is not None
        raise lost

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
                req_id = next(self._req_ids) & REQ_ID_MASK
                try:
                    link.sock.sendall(encode(op, req_id, tx_id, payload))
                    reply = self._await_reply(link, req_id)
                except (OSError, ProtocolError) as e:
                    self.errors["connection"] += 1
                    self._drop()
                    if isinstance(e, TimeoutError):  # hung: another try would wait as long
                        raise XenstoreConnectionError(
                            path, f"{op.name}: no reply within {self._timeout_s} s",
                            in_flight=True, timed_out=True) from e
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

    def _await_reply(self, link: Link, req_id: int) -> Packet:
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

    def _ensure_link(self, path: str | None) -> Link:
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
                sock = connect(self.path, self._timeout_s)
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
        self._link = Link(sock)
        return self._link

    def _drop(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
