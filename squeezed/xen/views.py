"""The engine's view of one Xen domain, and what the host's reservations
hold back: pure functions of the hypervisor's figures and the domain's keys.

Frames of reference: the engine sees a domain's memory net of its
memory-offset (what the guest's balloon driver calls its allocation) and
maxmem net of Xen's per-type overhead and the offset."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Policy:
    """A booted domain's keys, checked: what its view needs besides the
    hypervisor's figures. Parsed once per change of the keys."""
    target_kib: int
    offset_kib: int | None  # None: not calibrated yet
    dmin_kib: int
    dmax_kib: int
    can_balloon: bool
    invalid: str | None = None  # dynamic-min/max unusable: raised after calibration


def policy_of(keys: dict[str, str | None], total_kib: int) -> Policy | None:
    """None without a target (upstream skips the domain). Raises
    InvalidValue for a target or offset outside what the host could hold."""
    target_kib = checked(keys, "memory/target", 0, total_kib)
    if target_kib is None:
        return None
    offset_kib = checked(keys, "memory/memory-offset", -total_kib, total_kib)
    can_balloon = keys.get("control/feature-balloon") is not None
    try:
        dmin_kib = checked(keys, "memory/dynamic-min", 0, total_kib)
        dmax_kib = checked(keys, "memory/dynamic-max", 0, total_kib)
    except InvalidValue as e:
        return Policy(target_kib, offset_kib, 0, 0, can_balloon, str(e))
    if dmin_kib is None or dmax_kib is None:
        dmin_kib = dmax_kib = target_kib  # written separately; not both there yet
    elif dmin_kib > dmax_kib:
        return Policy(target_kib, offset_kib, 0, 0, can_balloon,
                      f"memory/dynamic-min = {dmin_kib} is above "
                      f"memory/dynamic-max = {dmax_kib}")
    return Policy(target_kib, offset_kib, dmin_kib, dmax_kib, can_balloon)


def booted_view(di: DomainInfo, p: Policy, dtype: str, offset_kib: int, total_kib: int
                ) -> tuple[Domain, int]:
    """(view, maxmem in the engine's frame before domain 0's clamp). Raises
    InvalidValue for values outside what the host could hold."""
    if p.invalid is not None:
        raise InvalidValue(p.invalid)
    actual_raw_kib = di.tot_pages * PAGE_KIB
    actual_kib = actual_raw_kib - offset_kib
    if not 0 <= actual_kib <= total_kib:
        raise InvalidValue(f"memory/memory-offset = {offset_kib} does not fit the domain's "
                           f"allocation of {actual_raw_kib} KiB")
    maxmem_kib = max(0, di.max_pages * PAGE_KIB - xen_overhead_kib(dtype) - offset_kib)
    view_maxmem_kib = maxmem_kib
    if di.domid == 0:
        # Domain 0's maxmem is often unlimited: count it as what the
        # snapshot lowers it to, as for any ballooning domain.
        view_maxmem_kib = min(maxmem_kib, max(p.target_kib, actual_kib))
    return Domain(di.domid, p.can_balloon, p.dmin_kib, p.target_kib, p.dmax_kib, actual_kib,
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
