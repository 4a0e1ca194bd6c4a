"""The simulated hypervisor: host and domain memory, shared with the stub libxenctrl.

State lives in a file that this module creates and mmaps and that the stand-in
libxenctrl (libxenctrl_stub.c, found through env SQUEEZED_SIM_XC_STATE) maps
too, so squeezed's production binding reads it through the real C ABI.

Layout (native byte order; must match the C header comment in libxenctrl_stub.c,
and the stub refuses a file whose magic, version or sizes differ):

    header (64 bytes)
      0 u32 magic  4 u32 version  8 u64 generation
     16 u32 header_size  20 u32 record_size  24 u32 max_domains  28 u32 n_domains
     32 u32 page_size_bytes  36 u32 reserved
     40 u64 total_pages  48 u64 free_pages  56 u64 scrub_pages
    max_domains records (32 bytes each), records[0:n_domains] live and sorted by domid
      0 u32 domid  4 u32 flags (XEN_DOMINF_*)  8 u64 tot_pages
     16 u64 max_pages (pages; the stub's setmaxmem stores max_memkb >> 2)
     24 u32 shadow_mib  28 u32 reserved

Locking: every access holds flock(2) on the file (shared to read, exclusive to
write), the same lock the stub takes; a threading lock serialises this
object's threads, which share one descriptor that flock cannot tell apart.

Memory is conserved like Xen's heap: a domain's tot_pages and its shadow pool
come out of free_pages and go back when they shrink or the domain is destroyed;
growth fails past free memory or past max_pages (Xen refuses allocations above
max_pages, but lowering max_pages below tot_pages is allowed and frees nothing).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from squeezed.xen.xenctrl import (
    DOMID_FIRST_RESERVED,
    PAGE_SIZE_BYTES,
    PAGE_SIZE_KIB,
    XEN_DOMINF_DYING,
    XEN_DOMINF_HVM_GUEST,
    XEN_DOMINF_PAUSED,
    XEN_DOMINF_SHUTDOWN,
)

STATE_ENV = "SQUEEZED_SIM_XC_STATE"
MAGIC = 0x43585153  # b"SQXC" as a little-endian u32
VERSION = 1
MAX_DOMAINS = 4096
PAGES_PER_MIB = 1024 * 1024 // PAGE_SIZE_BYTES

_HEADER = struct.Struct("=IIQIIIIIIQQQ")
_RECORD = struct.Struct("=IIQQII")
HEADER_BYTES = _HEADER.size  # 64
RECORD_BYTES = _RECORD.size  # 32
STATE_FILE_BYTES = HEADER_BYTES + MAX_DOMAINS * RECORD_BYTES
_GENERATION_OFFSET = 8
_N_DOMAINS_OFFSET = 28
_PHYS_OFFSET = 40  # total, free, scrub pages
_PHYS = struct.Struct("=QQQ")


class SimHypervisorError(Exception):
    """A simulated-hypervisor operation was refused."""


class StateFileError(SimHypervisorError):
    """The state file exists but is not a compatible simulated-hypervisor file."""


class NoSuchDomain(SimHypervisorError, KeyError):
    def __init__(self, domid: int) -> None:
        super().__init__(f"no domain {domid}")
        self.domid = domid

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DomainExists(SimHypervisorError):
    pass


class InsufficientMemory(SimHypervisorError):
    pass


@dataclass(frozen=True, slots=True)
class SimPhysInfo:
    total_pages: int
    free_pages: int
    scrub_pages: int


@dataclass(frozen=True, slots=True)
class SimDomainInfo:
    domid: int
    tot_pages: int
    max_pages: int
    shadow_mib: int
    hvm: bool
    paused: bool
    shutdown: bool
    dying: bool

    @property
    def tot_kib(self) -> int:
        return self.tot_pages * PAGE_SIZE_KIB

    @property
    def max_kib(self) -> int:
        return self.max_pages * PAGE_SIZE_KIB

    @classmethod
    def _from_record(cls, domid: int, flags: int, tot: int, mx: int, shadow: int) -> SimDomainInfo:
        return cls(domid, tot, mx, shadow, bool(flags & XEN_DOMINF_HVM_GUEST),
                   bool(flags & XEN_DOMINF_PAUSED), bool(flags & XEN_DOMINF_SHUTDOWN),
                   bool(flags & XEN_DOMINF_DYING))


def _flags(hvm: bool, paused: bool, shutdown: bool, dying: bool) -> int:
    return ((XEN_DOMINF_HVM_GUEST if hvm else 0) | (XEN_DOMINF_PAUSED if paused else 0)
            | (XEN_DOMINF_SHUTDOWN if shutdown else 0) | (XEN_DOMINF_DYING if dying else 0))


def _check_pages(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be an integer number of pages in [0, 2**64), not {value!r}")


class SimHypervisor:
    """Owner-side view of the shared state file; attaches if it already exists."""

    def __init__(self, state_path: str | os.PathLike[str]) -> None:
        self.state_path = Path(state_path)
        self._tlock = threading.Lock()
        if not self.state_path.exists():
            self._create()
        self._fd = os.open(self.state_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._map = mmap.mmap(self._fd, STATE_FILE_BYTES)
        except ValueError as e:  # shorter than the layout needs
            os.close(self._fd)
            raise StateFileError(f"{self.state_path}: not a simulated-hypervisor state file") from e
        # A native u64 view, for the generation counter (always under the lock).
        self._words = memoryview(self._map).cast("Q")
        with self._locked(write=False):
            magic, version, _gen, hsize, rsize, maxd = _HEADER.unpack_from(self._map, 0)[:6]
        if (magic, version, hsize, rsize, maxd) != (
                MAGIC, VERSION, HEADER_BYTES, RECORD_BYTES, MAX_DOMAINS):
            self.close()
            raise StateFileError(
                f"{self.state_path}: incompatible state file (magic {magic:#x}, version "
                f"{version}, header {hsize}, record {rsize}, max_domains {maxd})")

    def _create(self) -> None:
        # Build the file aside and link it into place: the stub never sees a
        # half-initialised file, and a concurrent creator's file wins intact.
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".xcstate-", dir=self.state_path.parent)
        try:
            header = _HEADER.pack(MAGIC, VERSION, 0, HEADER_BYTES, RECORD_BYTES, MAX_DOMAINS,
                                  0, PAGE_SIZE_BYTES, 0, 0, 0, 0)
            os.write(fd, header)
            os.ftruncate(fd, STATE_FILE_BYTES)
            os.fsync(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.state_path)
        finally:
            os.close(fd)
            os.unlink(tmp)

    # --- locking -----------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, write: bool) -> Iterator[None]:
        with self._tlock:
            if self._map.closed:
                raise SimHypervisorError("the simulated hypervisor is closed")
            fcntl.flock(self._fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                yield
                if write:
                    self._words[_GENERATION_OFFSET // 8] += 1
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    # --- raw access (lock held) ---------------------------------------------

    def _n(self) -> int:
        n: int = struct.unpack_from("=I", self._map, _N_DOMAINS_OFFSET)[0]
        return n

    def _set_n(self, n: int) -> None:
        struct.pack_into("=I", self._map, _N_DOMAINS_OFFSET, n)

    def _phys(self) -> tuple[int, int, int]:
        return _PHYS.unpack_from(self._map, _PHYS_OFFSET)

    def _set_free(self, free_pages: int) -> None:
        struct.pack_into("=Q", self._map, _PHYS_OFFSET + 8, free_pages)

    def _record(self, i: int) -> tuple[int, int, int, int, int, int]:
        return _RECORD.unpack_from(self._map, HEADER_BYTES + i * RECORD_BYTES)

    def _put(self, i: int, domid: int, flags: int, tot: int, mx: int, shadow: int) -> None:
        _RECORD.pack_into(self._map, HEADER_BYTES + i * RECORD_BYTES, domid, flags, tot, mx,
                          shadow, 0)

    def _index(self, domid: int) -> tuple[int, bool]:
        """(position of domid or where it would go, whether it is there)."""
        lo, hi = 0, self._n()
        while lo < hi:
            mid = (lo + hi) // 2
            if self._record(mid)[0] < domid:
                lo = mid + 1
            else:
                hi = mid
        return lo, lo < self._n() and self._record(lo)[0] == domid

    def _find(self, domid: int) -> tuple[int, tuple[int, int, int, int, int, int]]:
        i, found = self._index(domid)
        if not found:
            raise NoSuchDomain(domid)
        return i, self._record(i)

    def _take(self, pages: int, why: str) -> None:
        """Move pages between free memory and a domain (negative gives back)."""
        free = self._phys()[1]
        if pages > free:
            raise InsufficientMemory(f"{why}: needs {pages} pages, {free} free")
        self._set_free(free - pages)

    # --- host ----------------------------------------------------------------

    def set_physinfo(self, total_pages: int, free_pages: int, scrub_pages: int = 0) -> None:
        """Set the host totals outright (no conservation check against domains)."""
        for name, v in (("total_pages", total_pages), ("free_pages", free_pages),
                        ("scrub_pages", scrub_pages)):
            _check_pages(name, v)
        with self._locked(write=True):
            _PHYS.pack_into(self._map, _PHYS_OFFSET, total_pages, free_pages, scrub_pages)

    def physinfo(self) -> SimPhysInfo:
        with self._locked(write=False):
            return SimPhysInfo(*self._phys())

    @property
    def total_pages(self) -> int:
        return self.physinfo().total_pages

    @property
    def free_pages(self) -> int:
        return self.physinfo().free_pages

    @property
    def scrub_pages(self) -> int:
        return self.physinfo().scrub_pages

    @property
    def generation(self) -> int:
        """Bumped by every write, from Python or from the stub's setmaxmem."""
        with self._locked(write=False):
            return int(self._words[_GENERATION_OFFSET // 8])

    # --- domains -------------------------------------------------------------

    def create_domain(self, domid: int, tot_pages: int, max_pages: int, hvm: bool = False,
                      paused: bool = False, shadow_mib: int = 0) -> SimDomainInfo:
        """Create a domain, taking tot_pages plus its shadow pool from free memory."""
        if not isinstance(domid, int) or not 0 <= domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"invalid domid {domid!r}")
        _check_pages("tot_pages", tot_pages)
        _check_pages("max_pages", max_pages)
        if not 0 <= shadow_mib < 1 << 32:
            raise ValueError(f"invalid shadow_mib {shadow_mib!r}")
        flags = _flags(hvm, paused, False, False)
        with self._locked(write=True):
            i, found = self._index(domid)
            if found:
                raise DomainExists(f"domain {domid} already exists")
            n = self._n()
            if n >= MAX_DOMAINS:
                raise SimHypervisorError(f"too many domains (max {MAX_DOMAINS})")
            self._take(tot_pages + shadow_mib * PAGES_PER_MIB, f"creating domain {domid}")
            start, end = HEADER_BYTES + i * RECORD_BYTES, HEADER_BYTES + n * RECORD_BYTES
            self._map[start + RECORD_BYTES:end + RECORD_BYTES] = self._map[start:end]
            self._put(i, domid, flags, tot_pages, max_pages, shadow_mib)
            self._set_n(n + 1)
        return SimDomainInfo._from_record(domid, flags, tot_pages, max_pages, shadow_mib)

    def destroy_domain(self, domid: int) -> None:
        """Remove a domain, returning its pages and shadow pool to free memory."""
        with self._locked(write=True):
            i, (_d, _f, tot, _m, shadow, _r) = self._find(domid)
            n = self._n()
            start, end = HEADER_BYTES + i * RECORD_BYTES, HEADER_BYTES + n * RECORD_BYTES
            self._map[start:end - RECORD_BYTES] = self._map[start + RECORD_BYTES:end]
            self._map[end - RECORD_BYTES:end] = bytes(RECORD_BYTES)
            self._set_n(n - 1)
            self._take(-(tot + shadow * PAGES_PER_MIB), f"destroying domain {domid}")

    def get_domain(self, domid: int) -> SimDomainInfo:
        with self._locked(write=False):
            _i, (d, flags, tot, mx, shadow, _r) = self._find(domid)
        return SimDomainInfo._from_record(d, flags, tot, mx, shadow)

    def domains(self) -> list[SimDomainInfo]:
        """All domains, ascending by domid."""
        with self._locked(write=False):
            raw = bytes(self._map[HEADER_BYTES:HEADER_BYTES + self._n() * RECORD_BYTES])
        return [SimDomainInfo._from_record(d, f, t, m, s) for d, f, t, m, s, _r in
                _RECORD.iter_unpack(raw)]

    def set_tot_pages(self, domid: int, pages: int) -> None:
        """Set a domain's allocation exactly; growth must fit free memory and max_pages."""
        _check_pages("pages", pages)
        with self._locked(write=True):
            i, (d, flags, tot, mx, shadow, _r) = self._find(domid)
            if pages > tot and pages > mx:
                raise InsufficientMemory(
                    f"domain {domid}: {pages} pages is above its max_pages {mx}")
            self._take(pages - tot, f"growing domain {domid}")
            self._put(i, d, flags, pages, mx, shadow)

    def balloon_to(self, domid: int, target_pages: int) -> int:
        """Move a domain's allocation toward target as far as Xen would allow.

        Shrinking always succeeds; growth stops at max_pages and at free memory.
        Returns the new tot_pages.
        """
        _check_pages("target_pages", target_pages)
        with self._locked(write=True):
            i, (d, flags, tot, mx, shadow, _r) = self._find(domid)
            new = target_pages
            if target_pages > tot:
                new = min(target_pages, max(tot, mx), tot + self._phys()[1])
            self._take(new - tot, f"ballooning domain {domid}")
            self._put(i, d, flags, new, mx, shadow)
        return new

    def balloon_many(self, targets: list[tuple[int, int]]) -> dict[int, int]:
        """`balloon_to` for many domains under one lock (the simulated guests'
        shared timer): shrinking ones first, so growth can use what they give
        back. Domains that are gone are left out of the result, which maps
        domid to its new tot_pages."""
        for _domid, pages in targets:
            _check_pages("target_pages", pages)
        out: dict[int, int] = {}
        with self._locked(write=True):
            todo = []
            for domid, target_pages in targets:
                i, found = self._index(domid)
                if found:
                    rec = self._record(i)
                    todo.append((target_pages >= rec[2], i, rec, target_pages))
            todo.sort(key=lambda t: t[0])
            for _grows, i, (d, flags, tot, mx, shadow, _r), target_pages in todo:
                new = target_pages
                if target_pages > tot:
                    new = min(target_pages, max(tot, mx), tot + self._phys()[1])
                self._take(new - tot, f"ballooning domain {d}")
                self._put(i, d, flags, new, mx, shadow)
                out[d] = new
        return out

    def set_max_pages(self, domid: int, pages: int) -> None:
        """What xc_domain_setmaxmem does, from the hypervisor side."""
        _check_pages("pages", pages)
        with self._locked(write=True):
            i, (d, flags, tot, _mx, shadow, _r) = self._find(domid)
            self._put(i, d, flags, tot, pages, shadow)

    def set_shadow_mib(self, domid: int, mib: int) -> None:
        """Resize the shadow pool, moving the difference from or to free memory."""
        if not 0 <= mib < 1 << 32:
            raise ValueError(f"invalid shadow_mib {mib!r}")
        with self._locked(write=True):
            i, (d, flags, tot, mx, shadow, _r) = self._find(domid)
            self._take((mib - shadow) * PAGES_PER_MIB, f"resizing shadow of domain {domid}")
            self._put(i, d, flags, tot, mx, mib)

    def set_state(self, domid: int, *, paused: bool | None = None, shutdown: bool | None = None,
                  dying: bool | None = None) -> None:
        """Change run-state flags; None leaves a flag as it is."""
        with self._locked(write=True):
            i, (d, flags, tot, mx, shadow, _r) = self._find(domid)
            for value, bit in ((paused, XEN_DOMINF_PAUSED), (shutdown, XEN_DOMINF_SHUTDOWN),
                               (dying, XEN_DOMINF_DYING)):
                if value is not None:
                    flags = flags | bit if value else flags & ~bit
            self._put(i, d, flags, tot, mx, shadow)

    # --- lifetime ------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment the stub needs to find this state file."""
        return {STATE_ENV: str(self.state_path)}

    def close(self) -> None:
        with self._tlock:
            if self._map.closed:
                return
            self._words.release()
            self._map.close()
            os.close(self._fd)

    def __enter__(self) -> SimHypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
