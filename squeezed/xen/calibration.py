"""memory-offset: what separates a domain's allocation from its balloon
target when it is not ballooning (video memory, firmware, ...). Measured
once, at first sight of a booted domain, and kept in xenstore under
memory/memory-offset, as upstream does; the engine then sees every domain
net of it."""

from __future__ import annotations

import logging

from squeezed.xen.keycache import KeyCache
from squeezed.xen.protocols import XenCtrlLike, XenstoreLike
from squeezed.xen.values import PAGE_KIB, domain_path, parse_int
from squeezed.xen.writes import write_failed
from squeezed.xen.xenstore import Transaction, XenstoreError

log = logging.getLogger("squeezed.xen.host")


def measure_offset_kib(xc: XenCtrlLike, domid: int, target_kib: int) -> int | None:
    """Allocation less target now, assuming the domain is not ballooning;
    None if the domain is gone."""
    fresh = [di for di in xc.domain_list() if di.domid == domid]
    if not fresh:
        return None
    return fresh[0].tot_pages * PAGE_KIB - target_kib


def store_offset_once(xs: XenstoreLike, domid: int, measured_kib: int) -> int | None:
    """Write the measured offset unless one is there already (then that one
    holds); None if the domain's directory is gone. Raises XenstoreError."""
    base = domain_path(domid)

    def txn(t: Transaction) -> int | None:
        if t.read(base) is None:
            return None
        stored = parse_int(t.read(f"{base}/memory/memory-offset"))
        if stored is not None:
            return stored
        t.write(f"{base}/memory/memory-offset", str(measured_kib))
        return measured_kib

    return xs.transaction(txn)


def calibrate_offset(xc: XenCtrlLike, xs: XenstoreLike, cache: KeyCache, domid: int,
                     target_kib: int) -> int | None:
    """First sight of a booted domain: it is assumed not to be ballooning,
    so whatever separates its allocation from its target is constant.
    None if the domain is gone; raises XenHostError if it cannot be stored."""
    measured_kib = measure_offset_kib(xc, domid, target_kib)
    if measured_kib is None:
        return None
    try:  # a domain destroyed meanwhile is seen inside (no directory): None
        offset_kib = store_offset_once(xs, domid, measured_kib)
    except XenstoreError as e:
        raise write_failed(f"{domain_path(domid)}/memory/memory-offset",
                           str(measured_kib), e) from e
    if offset_kib is not None:
        log.info("domain %d booted; memory-offset = %d KiB", domid, offset_kib)
        cache.set_key(domid, "memory/memory-offset", str(offset_kib))
    return offset_kib
