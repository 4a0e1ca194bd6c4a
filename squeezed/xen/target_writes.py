"""Many domains' keys written "only if the domain still exists", pipelined.

Each write is a xenstore transaction (start, read the domain's directory,
write, commit), so that a write never resurrects the directory of a domain
destroyed meanwhile (upstream checks the same way).  One at a time that is four
round trips a domain; here the transactions of many domains go in phases, each
one pipeline (`XenstoreClient.pipeline`): every start; then every read; then
every write with its commit (an abort for a domain found gone).  So N writes
cost three round-trip waits per `chunk` domains instead of 4·N.

A commit that meets EAGAIN (a conflicting change), or a start refused with
ENOSPC (xenstored's limit on open transactions), is run again for that domain
alone, for at most `max_retries` rounds that settle nothing; a gone domain is
reported (False), as the single write reports it; any other failure raises
`XenstoreError`, after abandoning the transactions still open.  A connection
lost before the commits were sent reruns the batch (xenstored drops a closed
connection's transactions, so nothing was applied); lost while commits were in
flight, the outcome is unknown and `XenstoreConnectionError` is raised.

Bounded: a request xenstored did not answer within the client's timeout
(``timed_out``) is never run again, and no round starts later than one client
timeout (``xs.timeout_s``, if it has one) after the batch's first.  The error
raised carries in ``written`` the domains settled before it (their writes did
happen: the caller's cache must know them).

A client without `pipeline` (a test's fake) gets the same result one
transaction at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from squeezed.xen.values import domain_path
from squeezed.xen.xs_link import XenstoreConnectionError, XenstoreError
from squeezed.xen.xs_ops import Transaction
from squeezed.xen.xs_pipeline import Outcome, Request
from squeezed.xen.xs_wire import Op, Packet, join_strings, split_strings, write_payload

log = logging.getLogger("squeezed.xen.host")

# Domains per batch: bounds the transactions a batch holds open at once. dom0 is
# exempt from C xenstored's and oxenstored's limit, but the simulated xenstored
# allows 64 per connection: half of it is left to transactions that other
# threads run on the same connection meanwhile (a transfer, the switch's records).
DEFAULT_CHUNK = 32
DEFAULT_MAX_RETRIES = 16  # as XenstoreClient.transaction


class Pipelining(Protocol):
    """What the batch needs of the request connection (`XenstoreClient`)."""

    def pipeline(
        self, requests: Sequence[Request], *, epoch: int | None = None
    ) -> tuple[int, list[Outcome]]: ...


class Transacting(Protocol):
    """The one-at-a-time fallback's needs (`XenstoreClient.transaction`)."""

    def transaction(self, fn: Callable[[Transaction], Any], max_retries: int = 16) -> Any: ...


def write_targets(xs: Transacting, targets: Mapping[int, int]) -> dict[int, bool]:
    """Each domain's ``memory/target`` (KiB), if the domain still exists:
    domid -> True if written, False if the domain is gone.  Raises ValueError
    for a negative target (nothing written) and `XenstoreError` as above."""
    bad = {domid: t for domid, t in targets.items() if t < 0}
    if bad:
        raise ValueError(f"refusing negative targets (KiB) {bad}")
    return write_if_domains_exist(xs, "memory/target", {d: str(t) for d, t in targets.items()})


def write_if_domains_exist(
    xs: Transacting,
    key: str,
    values: Mapping[int, str],
    *,
    chunk: int = DEFAULT_CHUNK,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> dict[int, bool]:
    """Write each domain's ``key``; domid -> True if written, False if gone."""
    pipelined = getattr(xs, "pipeline", None)
    written: dict[int, bool] = {}
    items = list(values.items())
    try:
        for start in range(0, len(items), max(1, chunk)):
            part = dict(items[start:start + max(1, chunk)])
            if pipelined is None:
                written.update(_one_at_a_time(xs, key, part, max_retries))
            else:
                written.update(_batch(xs, key, part, max_retries))  # type: ignore[arg-type]
    except XenstoreError as e:
        e.written = {**written, **e.written}  # the earlier chunks' too
        raise
    for domid, done in written.items():
        if not done:
            log.info("domain %d is gone: %s not written", domid, key)
    return written


def write_if_domain_exists(xs: Transacting, domid: int, key: str, value: str,
                           max_retries: int = DEFAULT_MAX_RETRIES) -> bool:
    """One domain's ``key``, in one transaction, only if the domain's directory
    still exists (a write must not resurrect a destroyed domain's): False if gone."""
    base = domain_path(domid)

    def txn(t: Transaction) -> bool:
        if t.read(base) is None:
            return False
        t.write(f"{base}/{key}", value)
        return True

    return bool(xs.transaction(txn, max_retries))


def _one_at_a_time(
    xs: Transacting, key: str, values: Mapping[int, str], max_retries: int
) -> dict[int, bool]:
    written: dict[int, bool] = {}
    for domid, value in values.items():
        try:
            written[domid] = write_if_domain_exists(xs, domid, key, value, max_retries)
        except XenstoreError as e:
            e.written = dict(written)
            raise
    return written


class _Retry(Exception):
    """This round failed in a way that applied nothing: run it again."""

    def __init__(self, cause: XenstoreError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _batch(
    xs: Pipelining, key: str, values: Mapping[int, str], max_retries: int
) -> dict[int, bool]:
    # A round that settles no domain counts against max_retries; one that
    # settles some cannot repeat more often than there are domains.
    # A hung xenstored ends the batch at its first timeout, and a slow one
    # at the deadline: rounds must not add up to many timeouts.
    timeout_s = getattr(xs, "timeout_s", None)  # a fake link may have none
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = dict(values)
    written: dict[int, bool] = {}
    last: XenstoreError | None = None
    idle_rounds = 0
    while pending:
        try:
            done, again = _round(xs, key, pending)
        except _Retry as r:
            done, again = {}, r.cause
        except XenstoreError as e:
            e.written = {**written, **e.written}
            raise
        written.update(done)
        for domid in done:
            del pending[domid]
        if pending:
            log.debug("xenstore: %d of the batch's writes to run again (%s)", len(pending), again)
            last = again or last
            idle_rounds = 0 if done else idle_rounds + 1
            timed_out = isinstance(again, XenstoreConnectionError) and again.timed_out
            late = deadline is not None and time.monotonic() >= deadline
            if timed_out or late or idle_rounds > max_retries:
                assert last is not None
                if late and not timed_out:
                    log.info("xenstore: %d of the batch's writes not done within %g s",
                             len(pending), timeout_s)
                last.written = dict(written)
                raise last
    return written


def _round(
    xs: Pipelining, key: str, pending: Mapping[int, str]
) -> tuple[dict[int, bool], XenstoreError | None]:
    """One try at every pending domain: (domid -> written or gone for the
    domains settled, why the others must run again if any)."""
    # 1. every transaction starts (xenstored may limit how many are open:
    # ENOSPC defers a domain to the next round)
    starts = [Request(Op.TRANSACTION_START, b"\0", 0, domain_path(d)) for d in pending]
    epoch, outcomes = xs.pipeline(starts)
    txs: dict[int, int] = {}
    failure: XenstoreError | None = None
    again: XenstoreError | None = None
    for domid, o in zip(pending, outcomes, strict=True):
        if isinstance(o, Packet):
            tx = _tx_id(o)
            if tx is not None:
                txs[domid] = tx
            elif failure is None:
                failure = XenstoreError("EIO", domain_path(domid),
                                        f"bad transaction id in reply {o.payload[:40]!r}")
        elif o.errno_name == "ENOSPC" and not isinstance(o, XenstoreConnectionError):
            again = again or o
        elif failure is None:
            failure = o
    if failure is not None:
        _abandon(xs, epoch, txs.values())
        raise _Retry(failure) if isinstance(failure, XenstoreConnectionError) else failure
    if not txs:
        assert again is not None
        raise _Retry(again)
    domids = list(txs)
    bases = [domain_path(d) for d in domids]

    # 2. does each domain's directory still exist?  (Every later request
    # names the epoch of the starts: never a transaction id on another connection.)
    _, outcomes = xs.pipeline(
        [Request(Op.READ, join_strings([b]), txs[d], b)
         for d, b in zip(domids, bases, strict=True)],
        epoch=epoch,
    )
    exists: dict[int, bool] = {}
    for domid, o in zip(domids, outcomes, strict=True):
        if isinstance(o, Packet):
            exists[domid] = True
        elif o.errno_name == "ENOENT" and not isinstance(o, XenstoreConnectionError):
            exists[domid] = False
        elif failure is None:
            failure = o
    if failure is not None:
        _abandon(xs, epoch, txs.values())
        if isinstance(failure, XenstoreConnectionError) or failure.errno_name == "EAGAIN":
            raise _Retry(failure)
        raise failure

    # 3. write and commit where it exists; abandon where it is gone
    requests: list[Request] = []
    for domid, base in zip(domids, bases, strict=True):
        path = f"{base}/{key}"
        if exists[domid]:
            requests.append(
                Request(Op.WRITE, write_payload(path, pending[domid]), txs[domid], path))
        requests.append(Request(Op.TRANSACTION_END, b"T\0" if exists[domid] else b"F\0",
                                txs[domid], path))
    _, outcomes = xs.pipeline(requests, epoch=epoch)
    settled: dict[int, bool] = {}
    replies = iter(outcomes)
    for domid in domids:
        wrote = next(replies) if exists[domid] else None
        end = next(replies)
        if not exists[domid]:
            settled[domid] = False  # ended, or died with its connection: either way gone
            continue
        if isinstance(wrote, XenstoreError) and not isinstance(wrote, XenstoreConnectionError):
            failure = failure or wrote  # the commit then applied nothing of ours
        elif isinstance(end, Packet):
            settled[domid] = True
        elif isinstance(end, XenstoreConnectionError):
            if end.in_flight:
                failure = failure or end  # committed or not: nobody can tell
            else:
                again = again or end  # never sent: rerun
        elif end.errno_name == "EAGAIN":
            again = again or end
        else:
            failure = failure or end
    if failure is not None:
        failure.written = settled  # committed before the failure: they happened
        raise failure
    return settled, again


def _tx_id(reply: Packet) -> int | None:
    """The transaction id a TRANSACTION_START reply names, None if not one."""
    fields = split_strings(reply.payload)
    if len(fields) != 1 or not fields[0].isascii() or not fields[0].isdigit():
        return None
    tx = int(fields[0])
    return tx if 0 < tx <= 0xFFFFFFFF else None


def _abandon(xs: Pipelining, epoch: int, tx_ids: Iterable[int]) -> None:
    """End transactions without committing; best effort (a dead connection
    took them with it)."""
    requests = [Request(Op.TRANSACTION_END, b"F\0", tx) for tx in tx_ids]
    if not requests:
        return
    try:
        xs.pipeline(requests, epoch=epoch)
    except XenstoreError as e:
        log.debug("abandoning %d xenstore transactions: %s", len(requests), e)
