"""The engine's view of one Xen domain, and what the host's reservations
hold back: pure functions of the hypervisor's figures and the domain's keys.

Frames of reference: the engine sees a domain's memory net of its
memory-offset (what the guest's balloon driver calls its allocation) and
maxmem net of Xen's per-type overhead and the offset."""

from __future__ import annotations

from collections.abc import Iterable

from squeezed.backend import Reservation
from squeezed.engine.model import Domain
from squeezed.xen.values import PAGE_KIB, InvalidValue, checked, xen_overhead_kib
from squeezed.xen.xenctrl import DomainInfo


def domain_type(keys: dict[str, str | None], hvm: bool) -> str:
    t = keys.get("domain-type")
    if t in ("hvm", "pv", "pv-in-pvh", "pvh"):
        return t
    return "hvm" if hvm else "pv"  # upgrade case: key not written yet


def is_booted(keys: dict[str, str | None]) -> bool:
    """A guest that advertised ballooning or wrote data/updated has booted."""
    return (keys.get("control/feature-balloon") is not None
            or keys.get("data/updated") is not None)


def unbooted_view(di: DomainInfo, dtype: str, initial_kib: int, shadow_kib: int
                  ) -> tuple[Domain, int]:
    """Pinned until it boots; the part of its initial reservation not yet
    allocated (shadow memory aside) stays reserved: (view, that part)."""
    unaccounted_kib = max(0, initial_kib - di.tot_pages * PAGE_KIB - shadow_kib)
    pinned_kib = max(0, di.max_pages * PAGE_KIB - xen_overhead_kib(dtype))
    return Domain(di.domid, False, pinned_kib, pinned_kib, pinned_kib, pinned_kib,
                  pinned_kib), unaccounted_kib


def booted_view(di: DomainInfo, keys: dict[str, str | None], dtype: str, target_kib: int,
                offset_kib: int, total_kib: int) -> tuple[Domain, int]:
    """(view, maxmem in the engine's frame before domain 0's clamp). Raises
    InvalidValue for values outside what the host could hold."""
    actual_raw_kib = di.tot_pages * PAGE_KIB
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
    maxmem_kib = max(0, di.max_pages * PAGE_KIB - xen_overhead_kib(dtype) - offset_kib)
    view_maxmem_kib = maxmem_kib
    if di.domid == 0:
        # Domain 0's maxmem is often unlimited: count it as what the
        # snapshot lowers it to, as for any ballooning domain.
        view_maxmem_kib = min(maxmem_kib, max(target_kib, actual_kib))
    can_balloon = keys.get("control/feature-balloon") is not None
    return Domain(di.domid, can_balloon, dmin_kib, target_kib, dmax_kib, actual_kib,
                  view_maxmem_kib), maxmem_kib


def reserved_kib(reservations: Iterable[Reservation], live: set[int] | frozenset[int],
                 left_alone: set[int] | frozenset[int]) -> int:
    """What the reservation table holds back from host free memory. A
    reservation transferred to a domain that exists counts through that
    domain's unallocated initial-reservation instead; one transferred to a
    domain left alone for bad values cannot, so it counts here."""
    return sum(r.kib for r in reservations
               if r.in_transfer_domid is None or r.in_transfer_domid not in live
               or r.in_transfer_domid in left_alone)
