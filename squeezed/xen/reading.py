"""One reading of the host for a snapshot: the hypervisor's domain list and
physinfo, each domain's engine view (a booted domain's kept while neither its
hypervisor figures nor its watched keys change, so that a snapshot of a quiet
host of a thousand domains rebuilds none), what the reservations hold back,
and the domains left alone for bad values (each logged once)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from squeezed.engine.model import Domain, Host
from squeezed.xen.keycache import KeyCache
from squeezed.xen.protocols import XenCtrlLike
from squeezed.xen.reservations import ReservationTable
from squeezed.xen.values import PAGE_KIB, InvalidValue
from squeezed.xen.views import is_booted, reserved_kib
from squeezed.xen.writes import DomainWrites
from squeezed.xen.xenctrl import DomainInfo, PhysInfo

log = logging.getLogger("squeezed.xen.host")

# The engine's view of one domain and the part of its initial reservation
# not allocated yet: XenHost._domain_view (domain, calibrate, host total KiB).
ViewOf = Callable[[DomainInfo, bool, int], tuple[Domain | None, int]]


@dataclass(frozen=True)
class Reading:
    host: Host
    all_domids: set[int]  # every domain the hypervisor listed
    left_alone: set[int]  # for bad values
    unbooted: set[int]
    # Free and scrub less the unallocated part of domains being built: the
    # host's figure before the reservation table (the quiet mark's).
    unreserved_kib: int


class HostReader:
    """Called under XenHost's accounting lock; `xc` is XenHost's."""

    def __init__(self, xc: XenCtrlLike, cache: KeyCache, writes: DomainWrites,
                 table: ReservationTable, view_of: ViewOf, manage_domain_zero: bool) -> None:
        self.xc = xc
        self.cache = cache
        self.writes = writes
        self.table = table
        self.view_of = view_of
        self.manage_domain_zero = manage_domain_zero
        self.lock = threading.Lock()
        self.views: dict[int, tuple[tuple[Any, ...], Domain]] = {}
        self.invalid: dict[int, str] = {}  # domid -> why it is left alone
        self.last_reserved_kib = 0
        self.last_phys = (0, 0, 0)  # free, scrub, total KiB

    def read(self, calibrate: bool, phys_before: PhysInfo | None) -> Reading:
        # Pages freed between reading the domains and the host would count
        # twice (in tot_pages and as free): take the smaller of a reading
        # before the domain list (the scrubber check's, if any) and one after.
        if phys_before is None:
            phys_before = self.xc.physinfo()
        total_kib = phys_before.total_pages * PAGE_KIB
        infos = self.xc.domain_list()
        all_domids = {di.domid for di in infos}
        unaccounted = 0
        unbooted: set[int] = set()
        domains: list[Domain] = []
        left_alone: dict[int, str] = {}
        entries, watching = self.cache.entries, self.cache.watching
        with self.lock:
            views = dict(self.views)
        # Dying domains are read like any other, as upstream does: once their
        # xenstore directory is gone they drop out for lack of keys.
        for di in infos:
            domid = di.domid
            if domid == 0 and not self.manage_domain_zero:
                continue
            c = entries.get(domid)
            memo = None
            if c is not None and watching and domid != 0:
                memo = (di.tot_pages, di.max_pages, di.hvm, total_kib, c.version)
                seen = views.get(domid)
                if seen is not None and seen[0] == memo:
                    domains.append(seen[1])  # booted, valid, unchanged
                    continue
            try:
                d, unaccounted_kib = self.view_of(di, calibrate, total_kib)
            except InvalidValue as e:
                left_alone[domid] = str(e)
                d, unaccounted_kib = None, 0
            c = entries.get(domid)
            booted = c is not None and is_booted(c.keys)
            if not booted:
                unbooted.add(domid)
            if d is None:
                continue
            domains.append(d)
            unaccounted += unaccounted_kib
            if booted and memo is not None:
                with self.lock:
                    self.views[domid] = (memo, d)
        phys = self.xc.physinfo()
        if phys_before.free_pages + phys_before.scrub_pages < phys.free_pages + phys.scrub_pages:
            phys = phys_before
        free_kib = phys.free_pages * PAGE_KIB
        scrub_kib = phys.scrub_pages * PAGE_KIB
        reserved = unaccounted + reserved_kib(self.table.entries(), all_domids, set(left_alone))
        self._note_invalid(left_alone, all_domids)
        self.writes.seen(infos)
        self.last_reserved_kib = reserved
        self.last_phys = (free_kib, scrub_kib, phys.total_pages * PAGE_KIB)
        host = Host(
            tuple(domains),
            free_kib + scrub_kib - reserved,
            detail=f"F{free_kib} S{scrub_kib} R{reserved} T{phys.total_pages * PAGE_KIB}",
        )
        return Reading(host, all_domids, set(left_alone), unbooted,
                       free_kib + scrub_kib - unaccounted)

    def _note_invalid(self, now: dict[int, str], all_domids: set[int]) -> None:
        """Remember (and log once) the domains left alone for bad values."""
        with self.lock:
            before = self.invalid
            self.invalid = dict(now)
        for domid, why in now.items():
            if before.get(domid) != why:
                log.warning("domain %d left alone (not ballooned, not counted on): %s",
                            domid, why)
        for domid in before:
            if domid not in now and domid in all_domids:
                log.info("domain %d: memory values valid again; balancing it", domid)

    def forget(self, live: set[int]) -> None:
        with self.lock:
            for table in (self.views, self.invalid):
                for domid in [d for d in table if d not in live]:
                    del table[domid]
