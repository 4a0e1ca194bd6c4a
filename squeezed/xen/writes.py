"""What XenHost writes to a domain: xenstore keys (never resurrecting a
destroyed domain's directory) and maxmem (never below the allocation, and
no hypercall when Xen has that maxmem already, as upstream).

Failures: a domain that is gone is expected (logged at INFO, skipped); any
other refused write raises XenHostError, never blamed on the guest."""

from __future__ import annotations

import errno
import logging
import threading

from squeezed.engine.errors import HostFailed
from squeezed.errors import InternalError
from squeezed.xen.keycache import KeyCache
from squeezed.xen.protocols import XenCtrlLike, XenstoreLike
from squeezed.xen.target_writes import write_if_domain_exists
from squeezed.xen.values import PAGE_KIB, domain_path, parse_int, xen_overhead_kib
from squeezed.xen.views import domain_type
from squeezed.xen.xenctrl import DomainInfo, XenCtrlError
from squeezed.xen.xenstore import XenstoreError

log = logging.getLogger("squeezed.xen.host")


class XenHostError(InternalError, HostFailed):
    """The Xen host failed (xenstore or a hypercall refused, the watcher dead):
    for the engine a HostFailed (the operation gives back what it freed), for
    the service's own calls (transfer, the reservation table) Internal_error
    on the wire, with this message."""


def write_failed(what: str, value: str, e: Exception) -> XenHostError:
    """A write squeezed cannot do (refused, quota, xenstored gone): never
    blamed on the guest, never taken as done."""
    log.error("xenstore write %s = %s failed: %s", what, value, e)
    return XenHostError(f"xenstore write {what} = {value} failed: {e}")


class DomainWrites:
    """Writes, and the hypervisor figures set_maxmem needs from the last
    reading (`seen`): each domain's type, allocation and maxmem."""

    def __init__(self, xc: XenCtrlLike, xs: XenstoreLike, cache: KeyCache,
                 manage_domain_zero: bool) -> None:
        self.xc = xc
        self.xs = xs
        self.cache = cache
        self.manage_domain_zero = manage_domain_zero
        self.lock = threading.Lock()
        self.types: dict[int, str] = {}  # domain-type as last resolved
        self.tot_kib: dict[int, int] = {}  # each domain's allocation at the last reading
        self.maxmem_raw_kib: dict[int, int] = {}  # Xen's maxmem as last read or set

    def seen(self, infos: list[DomainInfo]) -> None:
        """A snapshot's domain list: the figures set_maxmem starts from."""
        with self.lock:
            self.tot_kib.clear()
            self.tot_kib.update((di.domid, di.tot_pages * PAGE_KIB) for di in infos)
            self.maxmem_raw_kib.clear()
            self.maxmem_raw_kib.update((di.domid, di.max_pages * PAGE_KIB) for di in infos)

    def forget(self, live: set[int]) -> None:
        with self.lock:
            for table in (self.types, self.maxmem_raw_kib):
                for domid in [d for d in table if d not in live]:
                    del table[domid]

    def write_key(self, domid: int, key: str, value: str) -> bool:
        """Write only if the domain still exists in xenstore: a write to a
        just-destroyed domain must not resurrect its directory. False if it
        is gone (expected: logged at INFO); any other failure raises."""
        try:
            done = write_if_domain_exists(self.xs, domid, key, value)
        except XenstoreError as e:
            raise write_failed(f"{domain_path(domid)}/{key}", value, e) from e
        if done:
            self.cache.set_key(domid, key, value)
        else:
            log.info("domain %d is gone: %s not written", domid, key)
        return bool(done)

    def rm_key(self, domid: int, key: str) -> None:
        path = f"{domain_path(domid)}/{key}"
        try:
            self.xs.rm(path)  # an absent node (or domain) is not an error
        except XenstoreError as e:
            raise write_failed(path, "(removed)", e) from e
        self.cache.set_key(domid, key, None)

    def set_target(self, domid: int, target_kib: int) -> None:
        if target_kib < 0:
            log.error("refusing negative target %d for domain %d", target_kib, domid)
            raise XenHostError(f"refusing negative target {target_kib} KiB for domain {domid}")
        self.write_key(domid, "memory/target", str(target_kib))

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None:
        """Set maxmem (in the engine's frame: offset and Xen's overhead are
        added), never below the domain's allocation at the last reading: a
        guest that has not yet freed what it was asked keeps what it has
        rather than meet a ceiling under its feet. Domain 0's is changed only
        when squeezed manages domain 0 (as upstream). No hypercall when Xen
        has that maxmem already (as last read or set; as upstream)."""
        if domid == 0 and not self.manage_domain_zero:
            return
        keys = self.cache.keys(domid)
        offset_kib = parse_int(keys.get("memory/memory-offset")) or 0
        with self.lock:
            dtype = self.types.get(domid)
            tot_kib = self.tot_kib.get(domid)
            had_kib = self.maxmem_raw_kib.get(domid)
        if dtype is None or tot_kib is None:  # not seen by a snapshot yet (e.g. a transfer)
            infos = [di for di in self.xc.domain_list() if di.domid == domid]
            if not infos:
                log.info("domain %d is gone: maxmem not set", domid)
                return
            dtype = dtype or domain_type(keys, infos[0].hvm)
            tot_kib = infos[0].tot_pages * PAGE_KIB
            had_kib = infos[0].max_pages * PAGE_KIB
        kib = max(maxmem_kib + offset_kib + xen_overhead_kib(dtype), tot_kib)
        if had_kib == kib - kib % PAGE_KIB:
            return  # Xen keeps whole pages: this is what it has
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
        with self.lock:
            self.maxmem_raw_kib[domid] = kib - kib % PAGE_KIB
