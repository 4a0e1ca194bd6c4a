"""XenHost: the engine's HostIO and the service's Backend on a real dom0.

Memory figures come from the hypervisor (libxenctrl through cffi) and the
per-domain policy keys from xenstore, cached and refreshed by watches. The
reservation table lives in xenstore under /squeezed/state so that a
restarted daemon finds every reservation, counted once.

Frames of reference: the engine sees a domain's memory net of its
memory-offset (what the guest's balloon driver calls its allocation) and
maxmem net of Xen's per-type overhead and the offset; `set_maxmem` adds both
back before the hypercall.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from squeezed.backend import Reservation
from squeezed.engine.errors import HostFailed, OperationAbandoned
from squeezed.engine.model import Domain, Host
from squeezed.errors import InternalError
from squeezed.xen.calibration import measure_offset_kib, store_offset_once
from squeezed.xen.cooperation import CooperationTracker
from squeezed.xen.protocols import WatcherLike, XenCtrlLike, XenstoreLike
from squeezed.xen.reservations import STATE_PATH as STATE_PATH
from squeezed.xen.reservations import ReservationTable
from squeezed.xen.target_writes import write_targets
from squeezed.xen.values import DOMAIN_KEYS as DOMAIN_KEYS
from squeezed.xen.values import PAGE_KIB as PAGE_KIB
from squeezed.xen.values import InvalidValue, checked, domain_path, parse_int, xen_overhead_kib
from squeezed.xen.xenctrl import DomainInfo, PhysInfo, XenCtrlError
from squeezed.xen.xenstore import Transaction, XenstoreError

log = logging.getLogger("squeezed.xen.host")


class XenHostError(InternalError, HostFailed):
    """The Xen host failed (xenstore or a hypercall refused, the watcher dead):
    for the engine a HostFailed (the operation gives back what it freed), for
    the service's own calls (transfer, the reservation table) Internal_error
    on the wire, with this message."""


INTRODUCE_TOKEN = "squeezed:introduce"
RELEASE_TOKEN = "squeezed:release"
MAX_SCRUB_WAIT_S = 30.0
SCRUB_WAIT_PAGES = 1024  # upstream waits while the scrubber has this many pages or more
BARRIER_TIMEOUT_S = 5.0  # how long an operation waits for the watcher to catch up


@dataclass
class _Cached:
    keys: dict[str, str | None] = field(default_factory=dict)
    writes: int = 0  # bumped by our own writes: a read older than one is stale
    version: int = 0  # bumped whenever keys change (a refresh or our own write)


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
        self.xc = xc
        self.xs = xs
        self.manage_domain_zero = manage_domain_zero
        self.uncooperative_after_s = uncooperative_after_s
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the key cache and the cooperation table
        # Held across a snapshot's accounting and across a transfer, so that a
        # reservation is seen either before its transfer or after, never half.
        self._accounting = threading.RLock()
        self._cache: dict[int, _Cached] = {}
        self._types: dict[int, str] = {}  # domain-type as last resolved
        self._watching = False  # True while a watcher keeps the cache fresh
        self._cooperation = CooperationTracker()  # under _lock
        self._table = ReservationTable(xs)
        self._last_reserved_kib = 0
        self._last_phys = (0, 0, 0)
        self._tot_kib: dict[int, int] = {}  # each domain's allocation at the last reading
        self._dom0_maxmem_kib = 0  # domain 0's maxmem as Xen has it (engine frame)
        # Values left out of the arithmetic, each logged once: domid -> why,
        # and reservation path -> why.
        self._invalid: dict[int, str] = {}
        # The watcher's progress, for begin_operation's barrier.
        self._watcher: WatcherLike | None = None
        self._sync = threading.Condition()
        self._processed_seq = 0
        # A booted domain's engine view, kept while neither its hypervisor
        # figures nor its cached keys change: a snapshot of a quiet host of
        # a thousand domains rebuilds none of them (issue 12).
        self._views: dict[int, tuple[tuple[Any, ...], Domain]] = {}

    # -- cache -------------------------------------------------------------

    def _read_keys(self, domid: int) -> dict[str, str | None]:
        paths = [f"{domain_path(domid)}/{k}" for k in DOMAIN_KEYS]
        read_many = getattr(self.xs, "read_many", None)  # pipelined: one round trip, not nine
        values = read_many(paths) if read_many is not None else [self.xs.read(p) for p in paths]
        return dict(zip(DOMAIN_KEYS, values, strict=True))

    def refresh_domain(self, domid: int) -> dict[str, str | None]:
        """Re-read a domain's keys into the cache. If we wrote one of them while
        reading, the read may predate the write: read again rather than let an
        older value win (it would, e.g., lower maxmem below a raised target)."""
        for _ in range(8):
            with self._lock:
                before = self._cache.setdefault(domid, _Cached()).writes
            keys = self._read_keys(domid)
            with self._lock:
                c = self._cache.setdefault(domid, _Cached())
                if c.writes == before:
                    c.keys = keys
                    c.version += 1
                    return keys
        return keys

    def refresh_key(self, domid: int, key: str) -> None:
        """Re-read one of a domain's keys into the cache (the whole domain if
        it was never read), with the same guard against our own writes as
        `refresh_domain`."""
        for _ in range(8):
            with self._lock:
                c = self._cache.get(domid)
                if c is None or not c.keys:
                    break
                before = c.writes
            value = self.xs.read(f"{domain_path(domid)}/{key}")
            with self._lock:
                c = self._cache.get(domid)
                if c is None:
                    break
                if c.writes == before:
                    c.keys[key] = value
                    c.version += 1
                    return
        self.refresh_domain(domid)

    def _keys(self, domid: int) -> dict[str, str | None]:
        with self._lock:
            c = self._cache.get(domid)
            if c is not None and self._watching:
                return c.keys
        return self.refresh_domain(domid)

    def _set_cached(self, domid: int, key: str, value: str | None) -> None:
        with self._lock:
            c = self._cache.get(domid)
            if c is not None:
                c.keys[key] = value
                c.writes += 1
                c.version += 1

    def forget_gone(self, live: set[int]) -> None:
        with self._lock:
            for domid in [d for d in self._cache if d not in live]:
                del self._cache[domid]
                self._types.pop(domid, None)
                self._views.pop(domid, None)
            self._cooperation.forget(live)
            for domid in [d for d in self._invalid if d not in live]:
                del self._invalid[domid]

    # -- watches (run by the daemon's supervised watcher thread) -------------

    def run_watcher(
        self, watcher: WatcherLike, stop: threading.Event,
        beat: Callable[[], None] | None = None,
    ) -> None:
        """Keep the cache fresh from xenstore watches until `stop` is set.

        An event for one of a domain's keys re-reads that key; any other event
        for the domain re-reads all its keys. `beat` is
        called every time round (at least every 0.5 s while healthy). Raises
        if the watcher's reader thread dies: events would stop for ever and
        the cache go stale, so the supervisor starts a fresh watcher, which
        re-reads every domain."""
        watched: set[int] = set()

        def sync_domains() -> None:
            live = {di.domid for di in self.xc.domain_list() if not di.shutdown}
            for domid in sorted(live - watched):
                for k in DOMAIN_KEYS:
                    watcher.watch(f"{domain_path(domid)}/{k}", f"squeezed:domain-{domid}")
                watched.add(domid)
                self.refresh_domain(domid)
            for domid in sorted(watched - live):
                for k in DOMAIN_KEYS:
                    try:
                        watcher.unwatch(f"{domain_path(domid)}/{k}", f"squeezed:domain-{domid}")
                    except XenstoreError as e:  # the watch died with the domain
                        log.debug("unwatch for gone domain %d: %s", domid, e)
                watched.discard(domid)
            self.forget_gone(live)

        watcher.watch("@introduceDomain", INTRODUCE_TOKEN)
        watcher.watch("@releaseDomain", RELEASE_TOKEN)
        sync_domains()
        with self._sync:  # a new watcher counts its events from 0
            self._processed_seq = watcher.drained_seq
        with self._lock:
            self._watching = True
            self._watcher = watcher
        try:
            while not stop.is_set():
                if beat is not None:
                    beat()
                if not watcher.alive():
                    raise XenHostError("the xenstore watcher's reader thread died")
                events = watcher.events(0.5)
                seq = watcher.drained_seq
                dirty: set[int] = set()
                changed: set[tuple[int, str]] = set()  # (domid, key) whose watch fired
                resync = False
                for path, token in events:
                    if token in (INTRODUCE_TOKEN, RELEASE_TOKEN):
                        resync = True
                    elif token.startswith("squeezed:domain-"):
                        domid = int(token.rsplit("-", 1)[1])
                        key = path[len(domain_path(domid)) + 1:]
                        if path.startswith(domain_path(domid) + "/") and key in DOMAIN_KEYS:
                            changed.add((domid, key))
                        else:
                            dirty.add(domid)
                    else:  # e.g. the watcher's reconnection marker
                        resync = True
                        dirty.update(watched)
                if resync:
                    sync_domains()
                for domid in dirty & watched:
                    self.refresh_domain(domid)
                # Each key has its own watch: re-read only the keys that fired
                # (the echo of our own target write is one read, not nine).
                for domid, key in sorted(changed):
                    if domid in watched and domid not in dirty:
                        self.refresh_key(domid, key)
                with self._sync:
                    self._processed_seq = seq
                    self._sync.notify_all()
        finally:
            with self._lock:
                self._watching = False
                self._watcher = None
            with self._sync:
                self._sync.notify_all()

    @_xenstore_failures
    def begin_operation(self) -> None:
        """Make this operation see every xenstore write made before it (e.g.
        xenopsd's dynamic-max write just before balance_memory): a round trip
        on the watch connection proves every earlier event has been sent to
        us; then wait until the watcher thread has applied them. If it cannot
        (watch connection down, watcher behind), read every domain afresh."""
        with self._lock:
            watcher = self._watcher if self._watching else None
        if watcher is None:
            return  # no watcher: every read goes to xenstore anyway
        try:
            target = watcher.barrier(BARRIER_TIMEOUT_S)
        except XenstoreError as e:
            log.warning("xenstore watch connection unusable (%s); reading every domain afresh", e)
            self._refresh_all()
            return
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        watching = True
        with self._sync:
            while self._processed_seq < target:
                left = deadline - time.monotonic()
                with self._lock:
                    watching = self._watching
                if left <= 0 or not watching:
                    break
                self._sync.wait(min(left, 0.5))
            caught_up = self._processed_seq >= target
        if not caught_up:
            log.warning("xenstore watcher is %s; reading every domain afresh",
                        "behind" if watching else "not running")
            self._refresh_all()

    def _refresh_all(self) -> None:
        with self._lock:
            domids = list(self._cache)
        for domid in domids:
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

    @staticmethod
    def _domain_type(keys: dict[str, str | None], hvm: bool) -> str:
        t = keys.get("domain-type")
        if t in ("hvm", "pv", "pv-in-pvh", "pvh"):
            return t
        return "hvm" if hvm else "pv"  # upgrade case: key not written yet

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
        domains' offsets, keeps the uncooperative flags and lowers maxmem."""
        phys_before = self._wait_for_scrubber()
        host, all_domids = self._read_host(calibrate=True, phys_before=phys_before)
        self._update_cooperative(host, all_domids)
        host = self._with_flags(host)
        for d in host.domains:
            maxmem_kib = self._dom0_maxmem_kib if d.domid == 0 else d.memory_max_kib
            if d.can_balloon and maxmem_kib > d.target_kib:
                self.set_maxmem(d.domid, d.target_kib)  # always safe to lower
        return host

    @_xenstore_failures
    def observe(self) -> Host:
        """The host for queries and diagnostics: no waiting, no writes, so
        it can run beside an operation without disturbing it."""
        return self._with_flags(self._read_host(calibrate=False)[0])

    def _with_flags(self, host: Host) -> Host:
        with self._lock:
            flagged = set(self._cooperation.uncooperative)
        if not flagged:
            return host
        return dataclasses.replace(host, domains=tuple(
            dataclasses.replace(d, uncooperative=True) if d.domid in flagged else d
            for d in host.domains
        ))

    def _read_host(self, calibrate: bool, phys_before: PhysInfo | None = None
                   ) -> tuple[Host, set[int]]:
        with self._accounting:
            return self._read_host_locked(calibrate, phys_before)

    def _read_host_locked(self, calibrate: bool, phys_before: PhysInfo | None
                          ) -> tuple[Host, set[int]]:
        # Pages freed between reading the domains and the host would count
        # twice (in tot_pages and as free): take the smaller of a reading
        # before the domain list (the scrubber check's, if any) and one after.
        if phys_before is None:
            phys_before = self.xc.physinfo()
        total_kib = phys_before.total_pages * PAGE_KIB
        infos = self.xc.domain_list()
        all_domids = {di.domid for di in infos}
        reserved_kib = 0
        domains: list[Domain] = []
        tot_kib: dict[int, int] = {}
        left_alone: set[int] = set()
        # Dying domains are read like any other, as upstream does: once their
        # xenstore directory is gone they drop out for lack of keys.
        for di in infos:
            tot_kib[di.domid] = di.tot_pages * PAGE_KIB
            if di.domid == 0 and not self.manage_domain_zero:
                continue
            try:
                d, unaccounted_kib = self._domain(di, calibrate, total_kib)
            except InvalidValue as e:
                self._flag_invalid(di.domid, str(e))
                left_alone.add(di.domid)
                continue
            self._flag_invalid(di.domid, None)
            if d is not None:
                domains.append(d)
                reserved_kib += unaccounted_kib
        phys = self.xc.physinfo()
        if phys_before.free_pages + phys_before.scrub_pages < phys.free_pages + phys.scrub_pages:
            phys = phys_before
        free_kib = phys.free_pages * PAGE_KIB
        scrub_kib = phys.scrub_pages * PAGE_KIB
        for r in self._table.read(total_kib):
            # A reservation transferred to a domain left alone for bad values
            # cannot count through that domain: it counts here instead.
            if (r.in_transfer_domid is None or r.in_transfer_domid not in all_domids
                    or r.in_transfer_domid in left_alone):
                reserved_kib += r.kib
        with self._lock:
            self._tot_kib = tot_kib
            for domid in [d for d in self._invalid if d not in all_domids]:
                del self._invalid[domid]
        self._last_reserved_kib = reserved_kib
        self._last_phys = (free_kib, scrub_kib, phys.total_pages * PAGE_KIB)
        host = Host(
            tuple(domains),
            free_kib + scrub_kib - reserved_kib,
            detail=f"F{free_kib} S{scrub_kib} R{reserved_kib} T{phys.total_pages * PAGE_KIB}",
        )
        return host, all_domids

    def _flag_invalid(self, domid: int, why: str | None) -> None:
        """Remember (and log once) a domain left alone for bad values."""
        with self._lock:
            before = self._invalid.get(domid)
            if why is None:
                self._invalid.pop(domid, None)
            else:
                self._invalid[domid] = why
        if why is not None and why != before:
            log.warning("domain %d left alone (not ballooned, not counted on): %s", domid, why)
        elif why is None and before is not None:
            log.info("domain %d: memory values valid again; balancing it", domid)

    def _domain(self, di: DomainInfo, calibrate: bool, total_kib: int) -> tuple[Domain | None, int]:
        """The engine's view of one domain and the part of its initial
        reservation not allocated yet; (None, 0) for a domain upstream skips.
        Raises InvalidValue for values outside what the host could hold."""
        with self._lock:
            c = self._cache.get(di.domid)
            memo = None
            if c is not None and self._watching and di.domid != 0:
                memo = (di.tot_pages, di.max_pages, di.hvm, total_kib, c.version)
                seen = self._views.get(di.domid)
                if seen is not None and seen[0] == memo:
                    return seen[1], 0
        d, unaccounted_kib = self._domain_view(di, calibrate, total_kib)
        if memo is not None and d is not None and c is not None and (
                c.keys.get("control/feature-balloon") is not None
                or c.keys.get("data/updated") is not None):
            # Booted (an unbooted domain's view reads xenstore afresh).
            with self._lock:
                self._views[di.domid] = (memo, d)
        return d, unaccounted_kib

    def _domain_view(self, di: DomainInfo, calibrate: bool, total_kib: int
                     ) -> tuple[Domain | None, int]:
        keys = self._keys(di.domid)
        dtype = self._domain_type(keys, di.hvm)
        with self._lock:
            self._types[di.domid] = dtype
        overhead_kib = xen_overhead_kib(dtype)
        actual_raw_kib = di.tot_pages * PAGE_KIB
        maxmem_raw_kib = di.max_pages * PAGE_KIB
        can_balloon = keys.get("control/feature-balloon") is not None
        booted = can_balloon or keys.get("data/updated") is not None
        if not booted:
            # Pinned until it boots; the part of its initial reservation not
            # yet allocated (shadow memory aside) stays reserved.
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
            unaccounted_kib = max(0, initial_kib - actual_raw_kib - shadow_kib)
            pinned_kib = max(0, maxmem_raw_kib - overhead_kib)
            return Domain(
                di.domid, False, pinned_kib, pinned_kib, pinned_kib, pinned_kib, pinned_kib
            ), unaccounted_kib
        target_kib = checked(keys, "memory/target", 0, total_kib)
        if target_kib is None:
            return None, 0
        offset_kib = checked(keys, "memory/memory-offset", -total_kib, total_kib)
        if offset_kib is None:
            if not calibrate:
                return None, 0  # a query does not calibrate: the next operation will
            offset_kib = self._calibrate_offset(di.domid, target_kib)
            if offset_kib is None:
                return None, 0
        dmin_kib = checked(keys, "memory/dynamic-min", 0, total_kib)
        dmax_kib = checked(keys, "memory/dynamic-max", 0, total_kib)
        if dmin_kib is None or dmax_kib is None:
            dmin_kib = dmax_kib = target_kib  # written separately; not both there yet
        elif dmin_kib > dmax_kib:
            raise InvalidValue(f"memory/dynamic-min = {dmin_kib} is above "
                           f"memory/dynamic-max = {dmax_kib}")
        actual_kib = actual_raw_kib - offset_kib
        if not 0 <= actual_kib <= total_kib:
            raise InvalidValue(f"memory/memory-offset = {offset_kib} does not fit the domain's "
                           f"allocation of {actual_raw_kib} KiB")
        maxmem_kib = max(0, maxmem_raw_kib - overhead_kib - offset_kib)
        if di.domid == 0:
            # Domain 0's maxmem is often unlimited: count it as what the
            # snapshot lowers it to, as for any ballooning domain.
            self._dom0_maxmem_kib = maxmem_kib
            maxmem_kib = min(maxmem_kib, max(target_kib, actual_kib))
        return Domain(
            di.domid,
            can_balloon,
            dmin_kib,
            target_kib,
            dmax_kib,
            actual_kib,
            maxmem_kib,
        ), 0

    def _calibrate_offset(self, domid: int, target_kib: int) -> int | None:
        """First sight of a booted domain: it is assumed not to be ballooning,
        so whatever separates its allocation from its target is constant."""
        measured_kib = measure_offset_kib(self.xc, domid, target_kib)
        if measured_kib is None:
            return None
        try:  # a domain destroyed meanwhile is seen inside (no directory): None
            offset_kib = store_offset_once(self.xs, domid, measured_kib)
        except XenstoreError as e:
            raise self._write_failed(f"{domain_path(domid)}/memory/memory-offset",
                                     str(measured_kib), e) from e
        if offset_kib is not None:
            log.info("domain %d booted; memory-offset = %d KiB", domid, offset_kib)
            self._set_cached(domid, "memory/memory-offset", str(offset_kib))
        return offset_kib

    def _update_cooperative(self, host: Host, all_domids: set[int]) -> None:
        now = self._clock()

        def flagged_in_xenstore(domid: int) -> bool:  # called under _lock
            c = self._cache.get(domid)
            return c is not None and c.keys.get("memory/uncooperative") is not None

        with self._lock:
            mark, clear = self._cooperation.update(
                host, all_domids, now, self.uncooperative_after_s, flagged_in_xenstore)
        for domid in mark:
            log.warning("domain %d has missed its balloon target for over %.0f s: "
                        "marking it uncooperative", domid, self.uncooperative_after_s)
            self._write_domain_key(domid, "memory/uncooperative", "")
        for domid in clear:
            log.info("domain %d cooperates again", domid)
            self._rm_domain_key(domid, "memory/uncooperative")

    @staticmethod
    def _write_failed(what: str, value: str, e: Exception) -> XenHostError:
        """A write squeezed cannot do (refused, quota, xenstored gone): never
        blamed on the guest, never taken as done."""
        log.error("xenstore write %s = %s failed: %s", what, value, e)
        return XenHostError(f"xenstore write {what} = {value} failed: {e}")

    def _write_domain_key(self, domid: int, key: str, value: str) -> bool:
        """Write only if the domain still exists in xenstore: a write to a
        just-destroyed domain must not resurrect its directory. False if it
        is gone (expected: logged at INFO); any other failure raises
        Internal_error."""
        base = domain_path(domid)

        def txn(t: Transaction) -> bool:
            if t.read(base) is None:
                return False
            t.write(f"{base}/{key}", value)
            return True

        try:
            done = self.xs.transaction(txn)
        except XenstoreError as e:
            raise self._write_failed(f"{base}/{key}", value, e) from e
        if done:
            self._set_cached(domid, key, value)
        else:
            log.info("domain %d is gone: %s not written", domid, key)
        return bool(done)

    def _rm_domain_key(self, domid: int, key: str) -> None:
        path = f"{domain_path(domid)}/{key}"
        try:
            self.xs.rm(path)  # an absent node (or domain) is not an error
        except XenstoreError as e:
            raise self._write_failed(path, "(removed)", e) from e
        self._set_cached(domid, key, None)

    def set_target(self, domid: int, target_kib: int) -> None:
        if target_kib < 0:
            log.error("refusing negative target %d for domain %d", target_kib, domid)
            raise XenHostError(f"refusing negative target {target_kib} KiB for domain {domid}")
        self._write_domain_key(domid, "memory/target", str(target_kib))

    def set_targets(self, targets: Mapping[int, int]) -> None:
        """HostIO's optional batch: many targets, pipelined (`target_writes`)."""
        try:
            written = write_targets(self.xs, targets)
        except (ValueError, XenstoreError) as e:
            raise self._write_failed(f"memory/target of {len(targets)} domains",
                                     "(batch)", e) from e
        for domid, done in written.items():
            if done:
                self._set_cached(domid, "memory/target", str(targets[domid]))

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None:
        """Set maxmem (in the engine's frame: offset and Xen's overhead are
        added), never below the domain's allocation at the last reading: a
        guest that has not yet freed what it was asked keeps what it has
        rather than meet a ceiling under its feet. Domain 0's is changed only
        when squeezed manages domain 0 (as upstream)."""
        if domid == 0 and not self.manage_domain_zero:
            return
        keys = self._keys(domid)
        offset_kib = parse_int(keys.get("memory/memory-offset")) or 0
        with self._lock:
            dtype = self._types.get(domid)
            tot_kib = self._tot_kib.get(domid)
        if dtype is None or tot_kib is None:  # not seen by a snapshot yet (e.g. a transfer)
            infos = [di for di in self.xc.domain_list() if di.domid == domid]
            if not infos:
                log.info("domain %d is gone: maxmem not set", domid)
                return
            dtype = dtype or self._domain_type(keys, infos[0].hvm)
            tot_kib = infos[0].tot_pages * PAGE_KIB
        kib = max(maxmem_kib + offset_kib + xen_overhead_kib(dtype), tot_kib)
        try:
            self.xc.set_maxmem_kib(domid, kib)
        except XenCtrlError as e:
            if e.errno == errno.ESRCH:
                log.info("domain %d was destroyed mid-operation: maxmem not set", domid)
                return
            log.error("setting maxmem of domain %d to %d KiB failed: %s", domid, kib, e)
            raise XenHostError(f"setting maxmem of domain {domid} to {kib} KiB failed: {e}"
                                ) from e
        except ValueError as e:  # out of the hypercall's range
            log.error("setting maxmem of domain %d to %d KiB refused: %s", domid, kib, e)
            raise XenHostError(f"setting maxmem of domain {domid} to {kib} KiB: {e}") from e

    # -- Backend: reservations -------------------------------------------------

    @_xenstore_failures
    def reservations(self) -> list[Reservation]:
        total_kib = self._last_phys[2] or self.xc.physinfo().total_pages * PAGE_KIB
        return self._table.read(total_kib)

    @_xenstore_failures
    def add_reservation(self, r: Reservation) -> None:
        self._table.add(r)

    @_xenstore_failures
    def remove_reservation(self, session: str, reservation_id: str) -> None:
        self._table.remove(session, reservation_id)

    @_xenstore_failures
    def transfer_reservation(self, r: Reservation, domid: int) -> None:
        base = domain_path(domid)

        def txn(t: Transaction) -> None:
            # One transaction: never a moment where it is counted twice or not at all.
            t.write(f"{base}/memory/initial-reservation", str(r.kib))
            t.write(f"{base}/memory/reservation-id", r.reservation_id)
            self._table.mark_in_transfer(t, r, domid)

        with self._accounting:
            self.xs.transaction(txn)
            self._set_cached(domid, "memory/initial-reservation", str(r.kib))
            self._set_cached(domid, "memory/reservation-id", r.reservation_id)
        self.set_maxmem(domid, r.kib)  # so the domain builder can allocate it

    @_xenstore_failures
    def domain_reservation_id(self, domid: int) -> str | None:
        return self.xs.read(f"{domain_path(domid)}/memory/reservation-id")

    def domain_exists(self, domid: int) -> bool:
        return any(di.domid == domid for di in self.xc.domain_list())

    def describe(self) -> dict[str, Any]:
        free_kib, scrub_kib, total_kib = self._last_phys
        with self._lock:
            uncooperative = sorted(self._cooperation.uncooperative)
            invalid = dict(sorted(self._invalid.items()))
            names = {domid: c.keys["name"] for domid, c in self._cache.items()
                     if c.keys.get("name")}
        bad = self._table.invalid()
        return {
            "xen_free_kib": free_kib,
            "xen_scrub_kib": scrub_kib,
            "xen_total_kib": total_kib,
            "reservations_kib": self._last_reserved_kib,
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

    # -- start-up ----------------------------------------------------------------

    def boot_time_free_bytes(self) -> int:
        """free + scrub + domain 0's allocation: the host's memory less Xen's
        own, assuming domain 0 unballooned and no other domain started."""
        phys = self.xc.physinfo()
        dom0 = [di for di in self.xc.domain_list() if di.domid == 0]
        dom0_pages = dom0[0].tot_pages if dom0 else 0
        return (phys.free_pages + phys.scrub_pages + dom0_pages) * PAGE_KIB * 1024

    def dom0_total_bytes(self) -> int:
        dom0 = [di for di in self.xc.domain_list() if di.domid == 0]
        if not dom0:
            raise XenHostError("domain 0 is missing from the hypervisor's domain list")
        return dom0[0].tot_pages * PAGE_KIB * 1024

    def dom0_dynamic_max_bytes(self) -> int | None:
        """Domain 0's published dynamic-max, if squeezed manages it."""
        kib = parse_int(self.xs.read(f"{domain_path(0)}/memory/dynamic-max"))
        return None if kib is None else kib * 1024

    def configure_domain_zero(self, dynamic_min_bytes: int, dynamic_max_bytes: int | None) -> None:
        """manage-domain-zero: publish dom0's policy so it balloons like a guest."""
        self.xs.mkdir(domain_path(0))

        def kib_of_bytes(b: int) -> int:
            return -(-b // 1024)

        self._write_domain_key(0, "memory/dynamic-min", str(kib_of_bytes(dynamic_min_bytes)))
        if dynamic_max_bytes is not None:
            dmax_kib = kib_of_bytes(dynamic_max_bytes)
        else:  # "auto": keep what an earlier run chose, else its allocation now
            earlier_kib = parse_int(self.xs.read(f"{domain_path(0)}/memory/dynamic-max"))
            total_kib = self.xc.physinfo().total_pages * PAGE_KIB
            if earlier_kib is not None and 0 < earlier_kib <= total_kib:
                dmax_kib = earlier_kib
            else:  # none yet, or not a value the host could hold
                dmax_kib = self.dom0_total_bytes() // 1024
        self._write_domain_key(0, "memory/dynamic-max", str(dmax_kib))
        if self.xs.read(f"{domain_path(0)}/memory/target") is None:
            self._write_domain_key(0, "memory/target", str(dmax_kib))
        self._write_domain_key(0, "control/feature-balloon", "1")
