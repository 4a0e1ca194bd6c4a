"""Domain 0 at start-up: the host's memory at boot (get_host_initial_free_memory),
domain 0's total, and under manage-domain-zero the policy keys that make it
balloon like a guest."""

from __future__ import annotations

from squeezed.xen.protocols import XenCtrlLike, XenstoreLike
from squeezed.xen.values import PAGE_KIB, domain_path, parse_int
from squeezed.xen.writes import DomainWrites, XenHostError


class DomainZero:
    def __init__(self, xc: XenCtrlLike, xs: XenstoreLike, writes: DomainWrites) -> None:
        self.xc = xc
        self.xs = xs
        self.writes = writes

    def boot_time_free_bytes(self) -> int:
        """free + scrub + domain 0's allocation: the host's memory less Xen's
        own, assuming domain 0 unballooned and no other domain started."""
        phys = self.xc.physinfo()
        dom0 = [di for di in self.xc.domain_list() if di.domid == 0]
        dom0_pages = dom0[0].tot_pages if dom0 else 0
        return (phys.free_pages + phys.scrub_pages + dom0_pages) * PAGE_KIB * 1024

    def total_bytes(self) -> int:
        dom0 = [di for di in self.xc.domain_list() if di.domid == 0]
        if not dom0:
            raise XenHostError("domain 0 is missing from the hypervisor's domain list")
        return dom0[0].tot_pages * PAGE_KIB * 1024

    def configure(self, dynamic_min_bytes: int, dynamic_max_bytes: int | None) -> None:
        """manage-domain-zero: publish dom0's policy so it balloons like a guest."""
        self.xs.mkdir(domain_path(0))

        def kib_of_bytes(b: int) -> int:
            return -(-b // 1024)

        self.writes.write_key(0, "memory/dynamic-min", str(kib_of_bytes(dynamic_min_bytes)))
        if dynamic_max_bytes is not None:
            dmax_kib = kib_of_bytes(dynamic_max_bytes)
        else:  # "auto": keep what an earlier run chose, else its allocation now
            earlier_kib = parse_int(self.xs.read(f"{domain_path(0)}/memory/dynamic-max"))
            total_kib = self.xc.physinfo().total_pages * PAGE_KIB
            if earlier_kib is not None and 0 < earlier_kib <= total_kib:
                dmax_kib = earlier_kib
            else:  # none yet, or not a value the host could hold
                dmax_kib = self.total_bytes() // 1024
        self.writes.write_key(0, "memory/dynamic-max", str(dmax_kib))
        if self.xs.read(f"{domain_path(0)}/memory/target") is None:
            self.writes.write_key(0, "memory/target", str(dmax_kib))
        self.writes.write_key(0, "control/feature-balloon", "1")
