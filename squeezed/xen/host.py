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

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from squeezed.backend import Reservation
from squeezed.engine.model import Domain, Host
from squeezed.engine.operations import OperationAbandoned
from squeezed.errors import InternalError

log = logging.getLogger("squeezed.xen.host")

PAGE_KIB = 4
STATE_PATH = "/squeezed/state"
DOMAIN_KEYS = (
    "domain-type",
    "memory/initial-reservation",
    "memory/target",
    "memory/memory-offset",
    "memory/uncooperative",
    "memory/dynamic-min",
    "memory/dynamic-max",
    "control/feature-balloon",
    "data/updated",
    "name",  # for operators only (squeezectl top)
)
INTRODUCE_TOKEN = "squeezed:introduce"
RELEASE_TOKEN = "squeezed:release"
MAX_SCRUB_WAIT_S = 30.0


def xen_overhead_kib(domain_type: str) -> int:
    """What Xen adds to maxmem beyond the guest's own memory."""
    return 0 if domain_type == "pv" else 1024


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass
class _Cached:
    keys: dict[str, str | None] = field(default_factory=dict)
    writes: int = 0  # bumped by our own writes: a read older than one is stale


class XenHost:
    """HostIO + Backend over libxenctrl and xenstore."""

    def __init__(
        self,
        xc: Any,
        xs: Any,
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
        self._last_cooperative_s: dict[int, float] = {}
        self._uncooperative: set[int] = set()
        self._last_reserved_kib = 0
        self._last_phys = (0, 0, 0)

    # -- cache -------------------------------------------------------------

    def _read_keys(self, domid: int) -> dict[str, str | None]:
        base = domain_path(domid)
        return {k: self.xs.read(f"{base}/{k}") for k in DOMAIN_KEYS}

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
                    return keys
        return keys

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

    def forget_gone(self, live: set[int]) -> None:
        with self._lock:
            for domid in [d for d in self._cache if d not in live]:
                del self._cache[domid]
                self._types.pop(domid, None)
            for domid in [d for d in self._last_cooperative_s if d not in live]:
                self._last_cooperative_s.pop(domid, None)
                self._uncooperative.discard(domid)

    # -- watches (run by the daemon's supervised watcher thread) -------------

    def run_watcher(self, watcher: Any, stop: threading.Event) -> None:
        """Keep the cache fresh from xenstore watches until `stop` is set.

        Only the tokens are used: any event for a domain re-reads its keys,
        which also coalesces bursts into one refresh per domain."""
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
                    except Exception:  # the watch died with the domain
                        pass
                watched.discard(domid)
            self.forget_gone(live)

        watcher.watch("@introduceDomain", INTRODUCE_TOKEN)
        watcher.watch("@releaseDomain", RELEASE_TOKEN)
        sync_domains()
        with self._lock:
            self._watching = True
        try:
            while not stop.is_set():
                events = watcher.events(0.5)
                dirty: set[int] = set()
                resync = False
                for _path, token in events:
                    if token in (INTRODUCE_TOKEN, RELEASE_TOKEN):
                        resync = True
                    elif token.startswith("squeezed:domain-"):
                        dirty.add(int(token.rsplit("-", 1)[1]))
                    else:  # e.g. the watcher's reconnection marker
                        resync = True
                        dirty.update(watched)
                if resync:
                    sync_domains()
                for domid in dirty & watched:
                    self.refresh_domain(domid)
        finally:
            with self._lock:
                self._watching = False

    # -- HostIO --------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def wait(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise OperationAbandoned()

    def abandon(self) -> None:
        """Make every running and future wait() raise (daemon shutdown)."""
        self._stop.set()

    def _domain_type(self, keys: dict[str, str | None], hvm: bool) -> str:
        t = keys.get("domain-type")
        if t in ("hvm", "pv", "pv-in-pvh", "pvh"):
            return t
        return "hvm" if hvm else "pv"  # upgrade case: key not written yet

    def _wait_for_scrubber(self) -> Any:
        deadline = self._clock() + MAX_SCRUB_WAIT_S
        phys = self.xc.physinfo()
        # Wait for the scrubber rather than squeeze guests because it is slow.
        while phys.scrub_pages * PAGE_KIB >= 1024 and self._clock() < deadline:
            self.wait(0.25)
            phys = self.xc.physinfo()
        return phys

    def snapshot(self) -> Host:
        """The host for an operation: waits for the scrubber, calibrates new
        domains' offsets, keeps the uncooperative flags and lowers maxmem."""
        phys_before = self._wait_for_scrubber()
        host, all_domids = self._read_host(calibrate=True, phys_before=phys_before)
        self._update_cooperative(host, all_domids)
        for d in host.domains:
            if d.can_balloon and d.domid != 0 and d.memory_max_kib > d.target_kib:
                self.set_maxmem(d.domid, d.target_kib)  # always safe to lower
        return host

    def observe(self) -> Host:
        """The host for queries and diagnostics: no waiting, no writes, so
        it can run beside an operation without disturbing it."""
        return self._read_host(calibrate=False)[0]

    def _read_host(self, calibrate: bool, phys_before: Any = None) -> tuple[Host, set[int]]:
        with self._accounting:
            return self._read_host_locked(calibrate, phys_before)

    def _read_host_locked(self, calibrate: bool, phys_before: Any) -> tuple[Host, set[int]]:
        # Pages freed between reading the domains and the host would count
        # twice (in tot_pages and as free): take the smaller of a reading
        # before the domain list (the scrubber check's, if any) and one after.
        if phys_before is None:
            phys_before = self.xc.physinfo()
        infos = self.xc.domain_list()
        all_domids = {di.domid for di in infos}
        reserved_kib = 0
        domains: list[Domain] = []
        for di in infos:
            if di.dying or (di.domid == 0 and not self.manage_domain_zero):
                continue
            d, unaccounted_kib = self._domain(di, calibrate)
            if d is not None:
                domains.append(d)
                reserved_kib += unaccounted_kib
        phys = self.xc.physinfo()
        if phys_before.free_pages + phys_before.scrub_pages < phys.free_pages + phys.scrub_pages:
            phys = phys_before
        free_kib = phys.free_pages * PAGE_KIB
        scrub_kib = phys.scrub_pages * PAGE_KIB
        for r in self.reservations():
            if r.in_transfer_domid is None or r.in_transfer_domid not in all_domids:
                reserved_kib += r.kib
        self._last_reserved_kib = reserved_kib
        self._last_phys = (free_kib, scrub_kib, phys.total_pages * PAGE_KIB)
        host = Host(
            tuple(domains),
            free_kib + scrub_kib - reserved_kib,
            detail=f"F{free_kib} S{scrub_kib} R{reserved_kib} T{phys.total_pages * PAGE_KIB}",
        )
        return host, all_domids

    def _domain(self, di: Any, calibrate: bool) -> tuple[Domain | None, int]:
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
            shadow_kib = 0
            if dtype != "pv":
                try:
                    shadow_kib = self.xc.shadow_allocation_mib(di.domid) * 1024
                except Exception:
                    shadow_kib = 0
            # Read fresh, not from the cache: a transfer may have just written it.
            initial_kib = _int(self.xs.read(f"{domain_path(di.domid)}/memory/initial-reservation"))
            initial_kib = initial_kib or 0
            unaccounted_kib = max(0, initial_kib - actual_raw_kib - shadow_kib)
            pinned_kib = max(0, maxmem_raw_kib - overhead_kib)
            return Domain(
                di.domid, False, pinned_kib, pinned_kib, pinned_kib, pinned_kib, pinned_kib
            ), unaccounted_kib
        target_kib = _int(keys.get("memory/target"))
        if target_kib is None:
            return None, 0
        offset_kib = _int(keys.get("memory/memory-offset"))
        if offset_kib is None:
            if not calibrate:
                return None, 0  # a query does not calibrate: the next operation will
            offset_kib = self._calibrate_offset(di.domid, target_kib)
            if offset_kib is None:
                return None, 0
        dmin_kib = _int(keys.get("memory/dynamic-min"))
        dmax_kib = _int(keys.get("memory/dynamic-max"))
        if dmin_kib is None or dmax_kib is None:
            dmin_kib = dmax_kib = target_kib  # written separately; not both there yet
        maxmem_kib = max(0, maxmem_raw_kib - overhead_kib - offset_kib)
        if di.domid == 0:
            maxmem_kib = target_kib  # domain 0's maxmem is never ours to change
        return Domain(
            di.domid,
            can_balloon,
            dmin_kib,
            target_kib,
            dmax_kib,
            actual_raw_kib - offset_kib,
            maxmem_kib,
        ), 0

    def _calibrate_offset(self, domid: int, target_kib: int) -> int | None:
        """First sight of a booted domain: it is assumed not to be ballooning,
        so whatever separates its allocation from its target is constant."""
        fresh = [di for di in self.xc.domain_list() if di.domid == domid]
        if not fresh:
            return None
        measured_kib = fresh[0].tot_pages * PAGE_KIB - target_kib
        base = domain_path(domid)

        def txn(t: Any) -> int | None:
            # Once only: if an offset is there already (our cache was stale), keep it.
            if t.read(base) is None:
                return None
            stored = _int(t.read(f"{base}/memory/memory-offset"))
            if stored is not None:
                return stored
            t.write(f"{base}/memory/memory-offset", str(measured_kib))
            return measured_kib

        try:
            offset_kib = self.xs.transaction(txn)
        except Exception as e:  # destroyed meanwhile
            log.debug("calibrating domain %d skipped: %s", domid, e)
            return None
        if offset_kib is not None:
            log.info("domain %d booted; memory-offset = %d KiB", domid, offset_kib)
            self._set_cached(domid, "memory/memory-offset", str(offset_kib))
        return offset_kib

    def _update_cooperative(self, host: Host, all_domids: set[int]) -> None:
        now = self._clock()
        mark: list[int] = []
        clear: list[int] = []
        with self._lock:
            for d in host.domains:
                if d.domid not in self._last_cooperative_s:
                    # First sight (also after a restart): trust xenstore's flag.
                    c = self._cache.get(d.domid)
                    if c is not None and c.keys.get("memory/uncooperative") is not None:
                        self._uncooperative.add(d.domid)
                if d.domid not in self._last_cooperative_s or not d.can_balloon or d.hit_target:
                    self._last_cooperative_s[d.domid] = now
            for domid, last in list(self._last_cooperative_s.items()):
                if domid not in all_domids:
                    self._last_cooperative_s.pop(domid, None)
                    self._uncooperative.discard(domid)
                    continue
                bad = now - last > self.uncooperative_after_s
                if bad and domid not in self._uncooperative:
                    self._uncooperative.add(domid)
                    mark.append(domid)
                elif not bad and domid in self._uncooperative:
                    self._uncooperative.discard(domid)
                    clear.append(domid)
        for domid in mark:
            log.warning("domain %d has missed its balloon target for over %.0f s: "
                        "marking it uncooperative", domid, self.uncooperative_after_s)
            self._write_domain_key(domid, "memory/uncooperative", "")
        for domid in clear:
            log.info("domain %d cooperates again", domid)
            self._rm_domain_key(domid, "memory/uncooperative")

    def _write_domain_key(self, domid: int, key: str, value: str) -> bool:
        """Write only if the domain still exists in xenstore: a write to a
        just-destroyed domain must not resurrect its directory."""
        base = domain_path(domid)

        def txn(t: Any) -> bool:
            if t.read(base) is None:
                return False
            t.write(f"{base}/{key}", value)
            return True

        try:
            done = self.xs.transaction(txn)
        except Exception as e:  # the domain went away under us: harmless
            log.debug("write %s/%s skipped: %s", base, key, e)
            return False
        if done:
            self._set_cached(domid, key, value)
        return bool(done)

    def _rm_domain_key(self, domid: int, key: str) -> None:
        try:
            self.xs.rm(f"{domain_path(domid)}/{key}")
        except Exception as e:
            log.debug("rm %s/%s skipped: %s", domain_path(domid), key, e)
        self._set_cached(domid, key, None)

    def set_target(self, domid: int, target_kib: int) -> None:
        if target_kib < 0:
            log.error("refusing negative target %d for domain %d", target_kib, domid)
            return
        self._write_domain_key(domid, "memory/target", str(target_kib))

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None:
        if domid == 0:
            return
        keys = self._keys(domid)
        offset_kib = _int(keys.get("memory/memory-offset")) or 0
        with self._lock:
            dtype = self._types.get(domid)
        if dtype is None:  # not seen by a snapshot yet (e.g. a transfer)
            infos = [di for di in self.xc.domain_list() if di.domid == domid]
            dtype = self._domain_type(keys, bool(infos and infos[0].hvm))
        kib = maxmem_kib + offset_kib + xen_overhead_kib(dtype)
        try:
            self.xc.set_maxmem_kib(domid, kib)
        except Exception as e:  # destroyed meanwhile: drop it from this round
            log.debug("setmaxmem %d %d KiB skipped: %s", domid, kib, e)

    # -- Backend: reservations -------------------------------------------------

    def reservations(self) -> list[Reservation]:
        out: list[Reservation] = []
        for session in self.xs.directory(STATE_PATH):
            for rid in self.xs.directory(f"{STATE_PATH}/{session}"):
                base = f"{STATE_PATH}/{session}/{rid}"
                kib = _int(self.xs.read(base))
                if kib is None:
                    continue
                domid = _int(self.xs.read(f"{base}/in-transfer"))
                out.append(Reservation(session, rid, kib, domid))
        return out

    def add_reservation(self, r: Reservation) -> None:
        self.xs.write(f"{STATE_PATH}/{r.session}/{r.reservation_id}", str(r.kib))

    def remove_reservation(self, session: str, reservation_id: str) -> None:
        self.xs.rm(f"{STATE_PATH}/{session}/{reservation_id}")
        if not self.xs.directory(f"{STATE_PATH}/{session}"):
            self.xs.rm(f"{STATE_PATH}/{session}")

    def transfer_reservation(self, r: Reservation, domid: int) -> None:
        base = domain_path(domid)

        def txn(t: Any) -> None:
            # One transaction: never a moment where it is counted twice or not at all.
            t.write(f"{base}/memory/initial-reservation", str(r.kib))
            t.write(f"{base}/memory/reservation-id", r.reservation_id)
            t.write(f"{STATE_PATH}/{r.session}/{r.reservation_id}/in-transfer", str(domid))

        with self._accounting:
            self.xs.transaction(txn)
            self._set_cached(domid, "memory/initial-reservation", str(r.kib))
            self._set_cached(domid, "memory/reservation-id", r.reservation_id)
        self.set_maxmem(domid, r.kib)  # so the domain builder can allocate it

    def domain_reservation_id(self, domid: int) -> str | None:
        return self.xs.read(f"{domain_path(domid)}/memory/reservation-id")

    def domain_exists(self, domid: int) -> bool:
        return any(di.domid == domid for di in self.xc.domain_list())

    def describe(self) -> dict[str, Any]:
        free_kib, scrub_kib, total_kib = self._last_phys
        with self._lock:
            uncooperative = sorted(self._uncooperative)
            names = {domid: c.keys["name"] for domid, c in self._cache.items()
                     if c.keys.get("name")}
        return {
            "xen_free_kib": free_kib,
            "xen_scrub_kib": scrub_kib,
            "xen_total_kib": total_kib,
            "reservations_kib": self._last_reserved_kib,
            "uncooperative_domids": uncooperative,
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
            raise InternalError("domain 0 is missing from the hypervisor's domain list")
        return dom0[0].tot_pages * PAGE_KIB * 1024

    def dom0_dynamic_max_bytes(self) -> int | None:
        """Domain 0's published dynamic-max, if squeezed manages it."""
        kib = _int(self.xs.read(f"{domain_path(0)}/memory/dynamic-max"))
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
            dmax_kib = _int(self.xs.read(f"{domain_path(0)}/memory/dynamic-max")) or (
                self.dom0_total_bytes() // 1024
            )
        self._write_domain_key(0, "memory/dynamic-max", str(dmax_kib))
        if self.xs.read(f"{domain_path(0)}/memory/target") is None:
            self._write_domain_key(0, "memory/target", str(dmax_kib))
        self._write_domain_key(0, "control/feature-balloon", "1")
