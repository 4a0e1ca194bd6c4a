"""XenHost: the engine's HostIO and the service's Backend on a real dom0.

Memory figures come from the hypervisor (libxenctrl through cffi) and the
per-domain policy keys from xenstore, cached and refreshed by watches
(`keycache`, `watching`); each domain's engine view is built by `views`.
The reservation table lives in xenstore under /squeezed/state, kept in
memory and written through (`reservations`), so that a restarted daemon
finds every reservation, counted once.

A quiet host is cheap (issue 12): a full snapshot that finds every
balloonable domain at its target leaves a mark; while no watched key and no
domain changes (the cache's epoch), `quick_free_kib` answers host free
memory from one physinfo and the table in memory, and `set_maxmem` skips
hypercalls that would not change maxmem. A guest that balloons itself below
its target changes no key: host free memory rising above the mark's figure
voids the fast answer (docs/architecture.md, "fast path").
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from squeezed.backend import Reservation
from squeezed.engine.errors import OperationAbandoned
from squeezed.engine.model import Domain, Host
from squeezed.xen.calibration import calibrate_offset
from squeezed.xen.cooperation import CooperationTracker, write_flags
from squeezed.xen.domain_zero import DomainZero
from squeezed.xen.keycache import Cached, KeyCache
from squeezed.xen.protocols import WatcherLike, XenCtrlLike, XenstoreLike
from squeezed.xen.reading import HostReader, Reading
from squeezed.xen.reservations import STATE_PATH as STATE_PATH
from squeezed.xen.reservations import ReservationTable
from squeezed.xen.target_writes import write_targets
from squeezed.xen.values import DOMAIN_KEYS as DOMAIN_KEYS
from squeezed.xen.values import PAGE_KIB as PAGE_KIB
from squeezed.xen.values import InvalidValue, checked, domain_path
from squeezed.xen.views import (
    Policy,
    booted_view,
    domain_type,
    is_booted,
    policy_of,
    reserved_kib,
    unbooted_view,
)
from squeezed.xen.watching import WatcherDied, WatchSync
from squeezed.xen.writes import DomainWrites, write_failed
from squeezed.xen.writes import XenHostError as XenHostError
from squeezed.xen.xenctrl import DomainInfo, PhysInfo, XenCtrlError
from squeezed.xen.xenstore import Transaction, XenstoreError

log = logging.getLogger("squeezed.xen.host")


MAX_SCRUB_WAIT_S = 30.0
SCRUB_WAIT_PAGES = 1024  # upstream waits while the scrubber has this many pages or more


@dataclass(frozen=True)
class _QuietMark:
    """Left by a snapshot that found every balloonable domain at its target:
    valid while the key cache's epoch stands and the host's figure before
    reservations does not rise above `unreserved_kib`."""
    epoch: int
    total_kib: int
    # Free + scrub - the unallocated part of domains being built, as last seen
    # (lowered by each quick answer): guests at their targets with maxmem
    # lowered to them can only give memory back, so a rise means one went
    # below its target (and may take the pages back), or a domain went.
    unreserved_kib: int
    live: frozenset[int]  # every domain the hypervisor listed
    left_alone: frozenset[int]  # domains left out for bad values
    unbooted: frozenset[int]  # domains not booted: looked at afresh by each quick answer


F = TypeVar("F", bound=Callable[..., Any])


def _xenstore_failures(fn: F) -> F:
    """xenstore failing under a Backend call (xenstored gone, a request
    refused) fails the call with Internal_error saying what failed."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except XenstoreError as e:
            if args and isinstance(args[0], XenHost) and args[0]._stop.is_set():
                # The daemon is stopping and closed the client under us: the
                # caller's answer is "shutting down", not a xenstore fault.
                raise OperationAbandoned() from e
            log.error("%s: xenstore failed: %s", fn.__name__, e)
            raise XenHostError(f"xenstore failed ({fn.__name__}): {e}") from e
    return wrapper  # type: ignore[return-value]


class XenHost:
    """HostIO + Backend over libxenctrl and xenstore."""

    def __init__(
        self,
        xc: XenCtrlLike,
        xs: XenstoreLike,
        *,
        manage_domain_zero: bool = False,
        uncooperative_after_s: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.xs = xs
        self.manage_domain_zero = manage_domain_zero
        self.uncooperative_after_s = uncooperative_after_s
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the tables below
        # Held across a snapshot's accounting and across a transfer, so that a
        # reservation is seen either before its transfer or after, never half.
        self._accounting = threading.RLock()
        # Held across a batch of target writes, whose transactions may use up
        # the connection's quota, and across a transfer's transaction, which
        # runs beside operations: it would be refused (ENOSPC).
        self._transactions = threading.Lock()
        self.cache = KeyCache(lambda domid: self._read_keys(domid), xs.read)
        self._watch = WatchSync(self.cache, xc, self.forget_gone)
        self._writes = DomainWrites(xc, xs, self.cache, manage_domain_zero)
        self._table = ReservationTable(xs)
        self._reader = HostReader(xc, self.cache, self._writes, self._table,
                                  lambda *a: self._domain_view(*a), manage_domain_zero)
        self.xc = xc
        self._cooperation = CooperationTracker()  # under _lock
        self._dom0_maxmem_kib = 0  # domain 0's maxmem as Xen has it (engine frame)
        self._quiet: _QuietMark | None = None
        self._transfers = 0  # under _accounting
        # A booted domain's keys as parsed, while they stay as they are.
        self._policies: dict[int, tuple[tuple[int, int], Policy | None]] = {}

    @property
    def xc(self) -> XenCtrlLike:
        return self._xc

    @xc.setter
    def xc(self, xc: XenCtrlLike) -> None:  # tests swap in a failing libxenctrl
        self._xc = self._watch.xc = self._writes.xc = self._reader.xc = xc

    @property
    def _types(self) -> dict[int, str]:
        return self._writes.types

    @property
    def _tot_kib(self) -> dict[int, int]:
        return self._writes.tot_kib

    # -- cache (kept by watches) ------------------------------------------------

    def _read_keys(self, domid: int) -> dict[str, str | None]:
        paths = [f"{domain_path(domid)}/{k}" for k in DOMAIN_KEYS]
        read_many = getattr(self.xs, "read_many", None)  # pipelined: one round trip, not nine
        values = read_many(paths) if read_many is not None else [self.xs.read(p) for p in paths]
        return dict(zip(DOMAIN_KEYS, values, strict=True))

    @property
    def _cache(self) -> dict[int, Cached]:
        return self.cache.entries

    @property
    def _watching(self) -> bool:
        return self.cache.watching

    def refresh_domain(self, domid: int) -> dict[str, str | None]:
        return self.cache.refresh_domain(domid)

    def refresh_key(self, domid: int, key: str) -> None:
        self.cache.refresh_key(domid, key)

    def _keys(self, domid: int) -> dict[str, str | None]:
        return self.cache.keys(domid)

    def _set_cached(self, domid: int, key: str, value: str | None) -> None:
        self.cache.set_key(domid, key, value)

    def forget_gone(self, live: set[int]) -> None:
        self.cache.forget(live)
        self._writes.forget(live)
        self._reader.forget(live)
        with self._lock:
            for domid in [d for d in self._policies if d not in live]:
                del self._policies[domid]
            self._cooperation.forget(live)

    def run_watcher(
        self, watcher: WatcherLike, stop: threading.Event,
        beat: Callable[[], None] | None = None,
    ) -> None:
        """Keep the cache fresh from xenstore watches until `stop` is set
        (`watching.WatchSync.run`). Raises if the watcher's reader thread
        dies: the supervisor then starts a fresh watcher."""
        try:
            self._watch.run(watcher, stop, beat)
        except WatcherDied as e:
            raise XenHostError(str(e)) from e

    @_xenstore_failures
    def begin_operation(self) -> None:
        """Make this operation see every xenstore write made before it (e.g.
        xenopsd's dynamic-max write just before balance_memory); if the
        watcher cannot vouch for that, read every domain afresh."""
        if self._watch.caught_up() is False:
            for domid in self.cache.domids():
                self.refresh_domain(domid)

    # -- HostIO --------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def wait(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise OperationAbandoned()

    def abandon(self) -> None:
        """Make every running and future wait() raise (daemon shutdown)."""
        self._stop.set()

    def _wait_for_scrubber(self) -> PhysInfo:
        """Upstream waits while the scrubber holds SCRUB_WAIT_PAGES pages or
        more, so that the domain builder finds pages it can use at once; we
        wait too, but at most MAX_SCRUB_WAIT_S, and say so when we give up."""
        phys = self.xc.physinfo()
        if phys.scrub_pages < SCRUB_WAIT_PAGES:
            return phys
        deadline = self._clock() + MAX_SCRUB_WAIT_S
        while phys.scrub_pages >= SCRUB_WAIT_PAGES:
            if self._clock() >= deadline:
                log.warning("the scrubber still has %d pages to scrub after %.0f s; "
                            "going on without waiting for it", phys.scrub_pages, MAX_SCRUB_WAIT_S)
                break
            self.wait(0.25)
            phys = self.xc.physinfo()
        return phys

    @_xenstore_failures
    def snapshot(self) -> Host:
        """The host for an operation: waits for the scrubber, calibrates new
        domains' offsets, keeps the uncooperative flags and lowers maxmem.
        Leaves the quiet mark when every balloonable domain is at its target."""
        with self._accounting:
            self._quiet = None  # until this snapshot has seen the host quiet
            epoch, transfers = self.cache.epoch, self._transfers
        phys_before = self._wait_for_scrubber()
        reading = self._read_host(True, phys_before)
        host, all_domids = reading.host, reading.all_domids
        self._update_cooperative(host, all_domids)
        host = self._with_flags(host)
        for d in host.domains:
            maxmem_kib = self._dom0_maxmem_kib if d.domid == 0 else d.memory_max_kib
            if d.can_balloon and maxmem_kib > d.target_kib:
                self.set_maxmem(d.domid, d.target_kib)  # always safe to lower
        quiet = self.cache.watching and all(d.hit_target for d in host.domains if d.can_balloon)
        with self._accounting:  # a transfer since the reading: the next snapshot looks
            if quiet and transfers == self._transfers:
                self._quiet = _QuietMark(
                    epoch, self._reader.last_phys[2], reading.unreserved_kib, frozenset(all_domids),
                    frozenset(reading.left_alone), frozenset(reading.unbooted))
        return host

    @_xenstore_failures
    def quick_free_kib(self) -> int | None:
        """Host free memory exactly as `snapshot()` would count it, without
        reading every domain, when every balloonable domain is known to be at
        its target; None when that is not known (the caller takes a snapshot).

        Known: the last snapshot found it so and left its mark, and since
        then no watched key of a booted domain changed and no domain came or
        went (the cache's epoch; the operation's watch barrier has applied
        every event sent before it). A domain at its target has maxmem lowered
        to it, so it cannot take free memory; a moving one voids the mark.
        One that balloons itself down changes no key, but its pages raise
        host free memory (less what domains being built have yet to
        allocate) above the mark's figure: None then, and the snapshot
        looks. Domains not booted (few: being built) are looked at afresh, as
        the snapshot does: one hypercall and one read each."""
        with self._accounting:
            mark, epoch = self._quiet, self.cache.epoch
            if mark is None or not self.cache.watching or mark.epoch != epoch:
                return None
            phys_before = self.xc.physinfo()
            if (phys_before.scrub_pages >= SCRUB_WAIT_PAGES
                    or phys_before.total_pages * PAGE_KIB != mark.total_kib):
                return None  # the scrubber is to be waited for; or a different host
            booted_left_alone = mark.left_alone - mark.unbooted
            entries = self._table.entries()
            if any(r.in_transfer_domid in booted_left_alone for r in entries):
                return None  # whether that one counts hangs on its allocation now
            live, left_alone = set(mark.live), set(booted_left_alone)
            unaccounted = 0
            for domid in sorted(mark.unbooted):
                di = self._domain_info(domid)
                if di is None:
                    live.discard(domid)  # destroyed: a reservation to it counts in full
                    continue
                try:
                    unaccounted += self._domain_view(di, False, mark.total_kib)[1]
                except InvalidValue:
                    left_alone.add(domid)
            phys = self.xc.physinfo() if mark.unbooted else phys_before
            if self.cache.epoch != epoch:
                return None  # e.g. a domain booted meanwhile
            if (phys_before.free_pages + phys_before.scrub_pages
                    < phys.free_pages + phys.scrub_pages):
                phys = phys_before  # as the snapshot: never count a page twice
            free_kib, scrub_kib = phys.free_pages * PAGE_KIB, phys.scrub_pages * PAGE_KIB
            unreserved_kib = free_kib + scrub_kib - unaccounted
            if unreserved_kib > mark.unreserved_kib:
                return None  # pages given back: a guest below its target, or a domain gone
            if unreserved_kib < mark.unreserved_kib:  # taken (dom0): measure a rise from here
                self._quiet = dataclasses.replace(mark, unreserved_kib=unreserved_kib)
            reserved = unaccounted + reserved_kib(entries, live, left_alone)
            self._reader.last_reserved_kib = reserved
            self._reader.last_phys = (free_kib, scrub_kib, mark.total_kib)
            return free_kib + scrub_kib - reserved

    def _domain_info(self, domid: int) -> DomainInfo | None:
        one = getattr(self.xc, "domain_info", None)  # one hypercall, where offered
        if one is not None:
            info: DomainInfo | None = one(domid)
            return info
        return next((di for di in self.xc.domain_list() if di.domid == domid), None)

    @_xenstore_failures
    def observe(self) -> Host:
        """The host for queries and diagnostics: no waiting, no writes, so
        it can run beside an operation without disturbing it."""
        return self._with_flags(self._read_host(False, None).host)

    def _with_flags(self, host: Host) -> Host:
        with self._lock:
            flagged = set(self._cooperation.uncooperative)
        if not flagged:
            return host
        return dataclasses.replace(host, domains=tuple(
            dataclasses.replace(d, uncooperative=True) if d.domid in flagged else d
            for d in host.domains
        ))

    def _read_host(self, calibrate: bool, phys_before: PhysInfo | None) -> Reading:
        with self._accounting:
            self._table.load(lambda: self.xc.physinfo().total_pages * PAGE_KIB)
            return self._reader.read(calibrate, phys_before)

    def _domain_view(self, di: DomainInfo, calibrate: bool, total_kib: int
                     ) -> tuple[Domain | None, int]:
        """The engine's view of one domain and the part of its initial
        reservation not allocated yet; (None, 0) for a domain upstream skips.
        Raises InvalidValue for values outside what the host could hold."""
        keys = self._keys(di.domid)
        dtype = domain_type(keys, di.hvm)
        with self._writes.lock:
            self._types[di.domid] = dtype
        if not is_booted(keys):
            # Read fresh, not from the cache: a transfer may have just written it.
            initial_kib = checked(
                {"memory/initial-reservation":
                 self.xs.read(f"{domain_path(di.domid)}/memory/initial-reservation")},
                "memory/initial-reservation", 0, total_kib)
            if initial_kib is None:
                return None, 0  # as upstream: not ours until its reservation is transferred
            shadow_kib = 0
            if dtype != "pv":
                try:
                    shadow_kib = self.xc.shadow_allocation_mib(di.domid) * 1024
                except XenCtrlError as e:  # destroyed meanwhile, or no shadow pool
                    log.debug("shadow allocation of domain %d: %s", di.domid, e)
            return unbooted_view(di, dtype, initial_kib, shadow_kib)
        c = self.cache.get(di.domid)
        memo = (c.version, total_kib) if c is not None and self.cache.watching else None
        with self._lock:
            seen = self._policies.get(di.domid)
        if memo is not None and seen is not None and seen[0] == memo:
            policy = seen[1]  # keys unchanged: parsed already
        else:
            policy = policy_of(keys, total_kib)
            if memo is not None:
                with self._lock:
                    self._policies[di.domid] = (memo, policy)
        if policy is None:
            return None, 0
        offset_kib = policy.offset_kib
        if offset_kib is None:
            if not calibrate:
                return None, 0  # a query does not calibrate: the next operation will
            offset_kib = self._calibrate_offset(di.domid, policy.target_kib)
            if offset_kib is None:
                return None, 0
        d, maxmem_kib = booted_view(di, policy, dtype, offset_kib, total_kib)
        if di.domid == 0:
            self._dom0_maxmem_kib = maxmem_kib
        return d, 0

    def _calibrate_offset(self, domid: int, target_kib: int) -> int | None:
        return calibrate_offset(self.xc, self.xs, self.cache, domid, target_kib)

    def _flagged_in_xenstore(self, domid: int) -> bool:  # as last read; no I/O
        c = self.cache.get(domid)
        return c is not None and c.keys.get("memory/uncooperative") is not None

    def _update_cooperative(self, host: Host, all_domids: set[int]) -> None:
        with self._lock:
            mark, clear = self._cooperation.update(
                host, all_domids, self._clock(), self.uncooperative_after_s,
                self._flagged_in_xenstore)
        write_flags(self._writes, mark, clear, self.uncooperative_after_s)

    # -- writes (xen/writes.py) ---------------------------------------------------

    def set_target(self, domid: int, target_kib: int) -> None:
        self._writes.set_target(domid, target_kib)

    def set_targets(self, targets: Mapping[int, int]) -> None:
        """HostIO's optional batch: many targets, pipelined (`target_writes`)."""
        failure: ValueError | XenstoreError | None = None
        try:
            with self._transactions:
                written = write_targets(self.xs, targets)
        except (ValueError, XenstoreError) as e:
            # What a failed batch did write is cached before the failure is
            # raised (else the next snapshot would see those domains' old targets).
            failure = e
            written = e.written if isinstance(e, XenstoreError) else {}
        for domid, done in written.items():
            if done:
                self.cache.set_key(domid, "memory/target", str(targets[domid]))
        if failure is not None:
            raise write_failed(f"memory/target of {len(targets)} domains", "(batch)",
                               failure) from failure

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None:
        """See `DomainWrites.set_maxmem`: never below the allocation, and no
        hypercall when Xen has that maxmem already."""
        self._writes.set_maxmem(domid, maxmem_kib)

    # -- Backend: reservations -------------------------------------------------

    def _load_table(self) -> None:
        self._table.load(
            lambda: self._reader.last_phys[2] or self.xc.physinfo().total_pages * PAGE_KIB)

    @_xenstore_failures
    def reservations(self) -> list[Reservation]:
        self._load_table()
        return self._table.entries()

    @_xenstore_failures
    def add_reservation(self, r: Reservation) -> None:
        self._load_table()
        self._table.add(r)

    @_xenstore_failures
    def remove_reservation(self, session: str, reservation_id: str) -> None:
        self._load_table()
        self._table.remove(session, reservation_id)

    @_xenstore_failures
    def transfer_reservation(self, r: Reservation, domid: int) -> None:
        base = domain_path(domid)

        def txn(t: Transaction) -> None:
            # One transaction: never a moment where it is counted twice or not at all.
            t.write(f"{base}/memory/initial-reservation", str(r.kib))
            t.write(f"{base}/memory/reservation-id", r.reservation_id)
            self._table.mark_in_transfer(t, r, domid)

        self._load_table()
        # _transactions first, as every path that holds both: waiting for a
        # batch of target writes must not hold up snapshots and queries.
        with self._transactions, self._accounting:
            self.xs.transaction(txn)
            self._table.transferred(r, domid)
            self._set_cached(domid, "memory/initial-reservation", str(r.kib))
            self._set_cached(domid, "memory/reservation-id", r.reservation_id)
            try:
                self.set_maxmem(domid, r.kib)  # so the domain builder can allocate it
            finally:
                # After the raise, under the lock: no snapshot leaves a mark
                # that does not know this domain may grow.
                self._transfers += 1
                if self._quiet is not None and domid not in self._quiet.unbooted:
                    self._quiet = None  # a domain the mark does not know: a snapshot looks

    @_xenstore_failures
    def domain_reservation_id(self, domid: int) -> str | None:
        return self.xs.read(f"{domain_path(domid)}/memory/reservation-id")

    def domain_exists(self, domid: int) -> bool:
        return any(di.domid == domid for di in self.xc.domain_list())

    def describe(self) -> dict[str, Any]:
        free_kib, scrub_kib, total_kib = self._reader.last_phys
        with self._lock:
            uncooperative = sorted(self._cooperation.uncooperative)
        with self._reader.lock:
            invalid = dict(sorted(self._reader.invalid.items()))
        with self.cache.lock:
            names = {domid: c.keys["name"] for domid, c in self.cache.entries.items()
                     if c.keys.get("name")}
        bad = self._table.invalid()
        return {
            "xen_free_kib": free_kib,
            "xen_scrub_kib": scrub_kib,
            "xen_total_kib": total_kib,
            "reservations_kib": self._reader.last_reserved_kib,
            "uncooperative_domids": uncooperative,
            # domid -> why its values were left out of the arithmetic
            "invalid_domains": invalid,
            # /squeezed/state path -> why the entry is not counted
            "invalid_reservations": bad,
            "domain_names": names,
            # error counts for metrics, if the clients keep them (fakes may not)
            "xenstore_errors": dict(getattr(self.xs, "errors", {})),
            "hypercall_errors": dict(getattr(self.xc, "errors", {})),
        }

    # -- start-up (xen/domain_zero.py) ----------------------------------------------

    def boot_time_free_bytes(self) -> int:
        return DomainZero(self.xc, self.xs, self._writes).boot_time_free_bytes()

    def dom0_total_bytes(self) -> int:
        return DomainZero(self.xc, self.xs, self._writes).total_bytes()

    def configure_domain_zero(self, dynamic_min_bytes: int, dynamic_max_bytes: int | None) -> None:
        DomainZero(self.xc, self.xs, self._writes).configure(dynamic_min_bytes, dynamic_max_bytes)
