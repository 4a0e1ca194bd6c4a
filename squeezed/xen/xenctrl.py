"""The hypervisor binding: libxenctrl (Xen 4.17) through cffi in ABI mode.

ABI mode (``ffi.dlopen``) means nothing is compiled at install time: the library is
found at run time, so the same code drives the real ``libxenctrl.so.4.17`` on a
dom0 and the stand-in ``libxenctrl_stub.c`` on the simulated host. The price is
that the struct layouts below are declared by hand; ``tests/test_xenctrl_abi.py``
compiles a probe against the real headers and compares every size and offset
used here, so drift in a new Xen release fails a test instead of corrupting
memory.

Only what squeezed needs is bound: physinfo (host free/scrub/total pages),
domain_getinfolist (per-domain pages and state flags), domain_setmaxmem (the
balloon ceiling) and the shadow allocation query (HVM/PVH overhead).

libxenctrl reports errors through xentoollog, by default onto stderr. We hand it
a ``xentoollog_logger`` whose ``vmessage`` is a cffi callback that formats the
message with libc ``vsnprintf`` and forwards it to the Python logger
``squeezed.xen.xenctrl`` with the level mapped, keeping the structured level,
errno and context that parsing a stdio stream would lose.
"""

from __future__ import annotations

import collections
import ctypes.util
import errno as errno_mod
import logging
import os
import platform
import threading
from dataclasses import dataclass
from typing import Any

import cffi

log = logging.getLogger(__name__)

LIB_ENV = "SQUEEZED_LIBXENCTRL"
LIB_NAMES = ("libxenctrl.so.4.17", "libxenctrl.so")

PAGE_SIZE_BYTES = 4096
PAGE_SIZE_KIB = PAGE_SIZE_BYTES // 1024

# xen/domctl.h (XEN_DOMCTL_INTERFACE_VERSION 0x15, Xen 4.17); checked by the ABI test.
XEN_DOMINF_DYING = 1 << 0
XEN_DOMINF_HVM_GUEST = 1 << 1
XEN_DOMINF_SHUTDOWN = 1 << 2
XEN_DOMINF_PAUSED = 1 << 3
XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION = 30
# xen/xen.h: ids at or above this are special (DOMID_SELF, DOMID_IO, ...).
DOMID_FIRST_RESERVED = 0x7FF0

# Domains fetched per xc_domain_getinfolist call (each record is 112 bytes on x86-64).
DOMAIN_BATCH = 256

# Xen's struct xen_arch_domainconfig differs per architecture; it is the tail of
# xc_domaininfo_t, so it decides the array stride.
_ARCH_DOMAINCONFIG = {
    "x86_64": """
        struct xen_arch_domainconfig {
            uint32_t emulation_flags;
            uint32_t misc_flags;
        };""",
    "aarch64": """
        struct xen_arch_domainconfig {
            uint8_t gic_version;
            uint16_t tee_type;
            uint32_t nr_spis;
            uint32_t clock_frequency;
        };""",
}
_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}.get(
    platform.machine().lower(), platform.machine().lower()
)
SUPPORTED_ARCH = _MACHINE in _ARCH_DOMAINCONFIG

# The libxenctrl functions bound. Kept apart so the ABI test can compile them
# next to <xenctrl.h>: a prototype that disagrees with the header is an error.
FUNCTION_CDEF = """
    xc_interface *xc_interface_open(xentoollog_logger *logger,
                                    xentoollog_logger *dombuild_logger,
                                    unsigned open_flags);
    int xc_interface_close(xc_interface *xch);
    int xc_physinfo(xc_interface *xch, xc_physinfo_t *info);
    int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain,
                              unsigned int max_domains, xc_domaininfo_t *info);
    int xc_domain_setmaxmem(xc_interface *xch, uint32_t domid, uint64_t max_memkb);
    /* 4.17 signature (older releases had dirty_bitmap/pages/stats arguments). */
    int xc_shadow_control(xc_interface *xch, uint32_t domid, unsigned int sop,
                          unsigned int *mb, unsigned int mode);
"""

# uint64_aligned_t is uint64_t with 8-byte alignment, which is the natural
# alignment on both supported (64-bit) architectures, so plain uint64_t matches.
CDEF = (
    """
    typedef uint16_t domid_t;
    typedef struct xc_interface_core xc_interface;

    /* xentoollog.h. The level enum is passed as int; va_list is passed as a
       pointer on x86-64 (array type) and on aarch64 (large aggregate passed by
       reference), so void * is ABI-correct where we run. */
    typedef struct xentoollog_logger xentoollog_logger;
    struct xentoollog_logger {
        void (*vmessage)(xentoollog_logger *logger, int level, int errnoval,
                         const char *context, const char *format, void *al);
        void (*progress)(xentoollog_logger *logger, const char *context,
                         const char *doing_what, int percent,
                         unsigned long done, unsigned long total);
        void (*destroy)(xentoollog_logger *logger);
    };

    /* xen/sysctl.h, whole struct (libxc copies all of it in and out). */
    struct xen_sysctl_physinfo {
        uint32_t threads_per_core;
        uint32_t cores_per_socket;
        uint32_t nr_cpus;
        uint32_t max_cpu_id;
        uint32_t nr_nodes;
        uint32_t max_node_id;
        uint32_t cpu_khz;
        uint32_t capabilities;
        uint32_t arch_capabilities;
        uint32_t pad;
        uint64_t total_pages;
        uint64_t free_pages;
        uint64_t scrub_pages;
        uint64_t outstanding_pages;
        uint64_t max_mfn;
        uint32_t hw_cap[8];
    };
    typedef struct xen_sysctl_physinfo xc_physinfo_t;
    """
    + _ARCH_DOMAINCONFIG.get(_MACHINE, _ARCH_DOMAINCONFIG["x86_64"])
    + """
    /* xen/domctl.h, whole struct: it is an array element. */
    struct xen_domctl_getdomaininfo {
        domid_t  domain;
        uint16_t pad1;
        uint32_t flags;
        uint64_t tot_pages;
        uint64_t max_pages;
        uint64_t outstanding_pages;
        uint64_t shr_pages;
        uint64_t paged_pages;
        uint64_t shared_info_frame;
        uint64_t cpu_time;
        uint32_t nr_online_vcpus;
        uint32_t max_vcpu_id;
        uint32_t ssidref;
        uint8_t  handle[16];
        uint32_t cpupool;
        uint8_t  gpaddr_bits;
        uint8_t  pad2[7];
        struct xen_arch_domainconfig arch_config;
    };
    typedef struct xen_domctl_getdomaininfo xc_domaininfo_t;

"""
    + FUNCTION_CDEF
    + """
    /* libc, to format xentoollog messages. */
    int vsnprintf(char *str, size_t size, const char *format, void *ap);
    """
)

# Any: cdata fields and the RTLD_* flags come from the cdef, which no stub can see.
ffi: Any = cffi.FFI()
ffi.cdef(CDEF)

# Types whose layout the binding declares by hand; the ABI test compares the
# sizeof and every field's offset and size with the real headers.
ABI_STRUCTS = (
    "xc_physinfo_t",
    "xc_domaininfo_t",
    "struct xen_arch_domainconfig",
    "xentoollog_logger",
)
# Constants the binding hard-codes, by their C names; also checked by the ABI test.
ABI_CONSTANTS: dict[str, int] = {
    "XEN_DOMINF_dying": XEN_DOMINF_DYING,
    "XEN_DOMINF_hvm_guest": XEN_DOMINF_HVM_GUEST,
    "XEN_DOMINF_shutdown": XEN_DOMINF_SHUTDOWN,
    "XEN_DOMINF_paused": XEN_DOMINF_PAUSED,
    "XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION": XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION,
    "DOMID_FIRST_RESERVED": DOMID_FIRST_RESERVED,
}


class XenCtrlError(Exception):
    """A libxenctrl call failed; ``op`` is the C function, ``errno`` its errno."""

    def __init__(self, op: str, errno: int, message: str | None = None) -> None:
        self.op = op
        self.errno = errno
        if message is None:
            name = errno_mod.errorcode.get(errno, "?")
            message = f"{op} failed: {os.strerror(errno)} ({name}, errno {errno})"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the custom __init__
        return (type(self), (self.op, self.errno, str(self)))


class XenCtrlUnavailable(XenCtrlError):
    """No usable Xen control interface: not a dom0, not privileged, or no library."""


@dataclass(frozen=True, slots=True)
class PhysInfo:
    """Host memory, in 4 KiB pages, as reported by xc_physinfo."""

    total_pages: int
    free_pages: int
    scrub_pages: int

    @property
    def total_kib(self) -> int:
        return self.total_pages * PAGE_SIZE_KIB

    @property
    def free_kib(self) -> int:
        return self.free_pages * PAGE_SIZE_KIB

    @property
    def scrub_kib(self) -> int:
        return self.scrub_pages * PAGE_SIZE_KIB


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """One domain as reported by xc_domain_getinfolist.

    ``hvm`` is XEN_DOMINF_hvm_guest, which Xen also sets for PVH guests: both
    have a shadow/HAP allocation to account for.
    """

    domid: int
    dying: bool
    shutdown: bool
    paused: bool
    hvm: bool
    tot_pages: int
    max_pages: int

    @property
    def tot_kib(self) -> int:
        return self.tot_pages * PAGE_SIZE_KIB

    @property
    def max_kib(self) -> int:
        return self.max_pages * PAGE_SIZE_KIB


# --- library loading -------------------------------------------------------

_libs: dict[str, Any] = {}
_libs_lock = threading.Lock()


def _candidates(lib_path: str | os.PathLike[str] | None) -> list[str]:
    if lib_path is not None:
        return [os.fspath(lib_path)]
    env = os.environ.get(LIB_ENV)
    if env:
        return [env]
    names = list(LIB_NAMES)
    found = ctypes.util.find_library("xenctrl")
    if found and found not in names:
        names.append(found)
    return names


def load_library(lib_path: str | os.PathLike[str] | None = None) -> Any:
    """dlopen libxenctrl (explicit path, else $SQUEEZED_LIBXENCTRL, else the system one)."""
    errors: list[str] = []
    for name in _candidates(lib_path):
        with _libs_lock:
            lib = _libs.get(name)
            if lib is not None:
                return lib
            try:
                # RTLD_LOCAL: the stub and the real library may both be loaded in
                # one process (tests); neither may interpose the other's symbols.
                lib = ffi.dlopen(name, ffi.RTLD_NOW | ffi.RTLD_LOCAL)
            except OSError as e:
                errors.append(str(e))
                continue
            _libs[name] = lib
            return lib
    raise XenCtrlUnavailable(
        "dlopen",
        errno_mod.ENOENT,
        "cannot load libxenctrl: " + "; ".join(errors) + "; is libxenctrl installed?",
    )


# --- xentoollog -> logging -------------------------------------------------

# xentoollog_level: XTL_NONE, DEBUG, VERBOSE, DETAIL, PROGRESS, INFO, NOTICE,
# WARN, ERROR, CRITICAL.
_XTL_TO_LOGGING = (
    logging.DEBUG,
    logging.DEBUG,
    logging.DEBUG,
    logging.DEBUG,
    logging.INFO,
    logging.INFO,
    logging.INFO,
    logging.WARNING,
    logging.ERROR,
    logging.CRITICAL,
)
_MESSAGE_BUF_BYTES = 4096
_libc: Any = None
_xtl_logger: Any = None  # the struct; its callbacks must outlive every handle
_xtl_callbacks: list[Any] = []
_xtl_lock = threading.Lock()


def _format_message(fmt: Any, al: Any) -> str:
    buf = ffi.new("char[]", _MESSAGE_BUF_BYTES)
    # A va_list can be consumed only once and cannot be copied from here, so an
    # over-long message is truncated rather than re-formatted.
    n = _libc.vsnprintf(buf, _MESSAGE_BUF_BYTES, fmt, al)
    raw: bytes = ffi.string(fmt if n < 0 else buf)
    return raw.decode(errors="replace")


def _vmessage(_logger: Any, level: int, errnoval: int, context: Any, fmt: Any, al: Any) -> None:
    try:
        text = _format_message(fmt, al) if fmt != ffi.NULL else ""
        if context != ffi.NULL:
            text = f"{ffi.string(context).decode(errors='replace')}: {text}"
        if errnoval >= 0:
            text = f"{text}: {os.strerror(errnoval)}"
        py_level = _XTL_TO_LOGGING[level] if 0 <= level < len(_XTL_TO_LOGGING) else logging.ERROR
        if errnoval == errno_mod.ESRCH:
            # "no such domain": a domain destroyed under us, which is expected
            # (the caller decides whether it matters), not an error to report.
            py_level = min(py_level, logging.INFO)
        log.log(py_level, "%s", text)
    except Exception:  # an exception must never unwind into C
        pass


def _progress(
    _logger: Any, context: Any, doing_what: Any, percent: int, done: int, total: int
) -> None:
    pass  # only domain building reports progress; squeezed never builds


def _destroy(_logger: Any) -> None:
    pass  # static, owned by this module


def _logger() -> Any:
    global _libc, _xtl_logger
    with _xtl_lock:
        if _xtl_logger is None:
            _libc = ffi.dlopen(None)
            cbs = [
                ffi.callback(
                    "void(xentoollog_logger *, int, int, const char *, const char *, void *)",
                    _vmessage,
                ),
                ffi.callback(
                    "void(xentoollog_logger *, const char *, const char *, int,"
                    " unsigned long, unsigned long)",
                    _progress,
                ),
                ffi.callback("void(xentoollog_logger *)", _destroy),
            ]
            logger = ffi.new("xentoollog_logger *")
            logger.vmessage, logger.progress, logger.destroy = cbs
            _xtl_callbacks.extend(cbs)
            _xtl_logger = logger
        return _xtl_logger


# --- the handle ------------------------------------------------------------


class XenCtrl:
    """An open libxenctrl handle.

    Calls may come from several threads at once (libxc handles are reentrant and
    cffi releases the GIL during calls), but close() must not race them.
    """

    def __init__(self, lib: Any, xch: Any) -> None:
        """Use :meth:`open`."""
        self._lib = lib
        self._xch = xch
        self._lock = threading.Lock()  # makes close() idempotent
        self.errors: collections.Counter[str] = collections.Counter()  # failed calls, for metrics

    def _failed(self, op: str) -> XenCtrlError:
        err = XenCtrlError(op, ffi.errno)  # read errno before anything else runs
        self.errors[op] += 1
        return err

    @classmethod
    def open(cls, lib_path: str | os.PathLike[str] | None = None) -> XenCtrl:
        """Open the control interface via the library at ``lib_path`` (see load_library)."""
        lib = load_library(lib_path)
        if not SUPPORTED_ARCH:
            raise XenCtrlUnavailable(
                "xc_interface_open",
                errno_mod.ENOTSUP,
                f"cannot open the Xen control interface: unsupported architecture {_MACHINE}",
            )
        logger = _logger()
        xch = lib.xc_interface_open(logger, logger, 0)
        if xch == ffi.NULL:
            err = ffi.errno or errno_mod.EIO
            raise XenCtrlUnavailable(
                "xc_interface_open",
                err,
                f"cannot open the Xen control interface: {os.strerror(err)}; is this a Xen dom0?",
            )
        return cls(lib, xch)

    def _handle(self, op: str) -> Any:
        xch = self._xch
        if xch is None:
            raise XenCtrlError(op, errno_mod.EBADF, f"{op}: the xenctrl handle is closed")
        return xch

    def physinfo(self) -> PhysInfo:
        info = ffi.new("xc_physinfo_t *")
        if self._lib.xc_physinfo(self._handle("xc_physinfo"), info) != 0:
            raise self._failed("xc_physinfo")
        return PhysInfo(int(info.total_pages), int(info.free_pages), int(info.scrub_pages))

    def domain_info(self, domid: int) -> DomainInfo | None:
        """One domain (None if there is none with this domid): one hypercall."""
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"invalid domid {domid}")
        found = self.domain_list(1, first=domid, limit=1)
        return found[0] if found and found[0].domid == domid else None

    def domain_list(self, batch: int = DOMAIN_BATCH, *, first: int = 0,
                    limit: int | None = None) -> list[DomainInfo]:
        """Every domain from `first` (at most `limit` of them), ascending by domid.

        Paged in batches, so it is not one atomic snapshot (nor is it in Xen).
        """
        if batch < 1:
            raise ValueError(f"batch must be positive, not {batch}")
        buf = ffi.new("xc_domaininfo_t[]", batch)
        out: list[DomainInfo] = []
        while first < DOMID_FIRST_RESERVED and (limit is None or len(out) < limit):
            n = self._lib.xc_domain_getinfolist(
                self._handle("xc_domain_getinfolist"), first, batch, buf
            )
            if n < 0:
                raise self._failed("xc_domain_getinfolist")
            for i in range(n):
                di = buf[i]
                flags = int(di.flags)
                out.append(
                    DomainInfo(
                        domid=int(di.domain),
                        dying=bool(flags & XEN_DOMINF_DYING),
                        shutdown=bool(flags & XEN_DOMINF_SHUTDOWN),
                        paused=bool(flags & XEN_DOMINF_PAUSED),
                        hvm=bool(flags & XEN_DOMINF_HVM_GUEST),
                        tot_pages=int(di.tot_pages),
                        max_pages=int(di.max_pages),
                    )
                )
            if n < batch:
                break
            first = int(buf[n - 1].domain) + 1
        return out

    def set_maxmem_kib(self, domid: int, kib: int) -> None:
        """Set the domain's memory ceiling (Xen stores it in pages, rounding down)."""
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"invalid domid {domid}")
        if not 0 <= kib < 1 << 64:
            raise ValueError(f"invalid max memory {kib} KiB")
        if self._lib.xc_domain_setmaxmem(self._handle("xc_domain_setmaxmem"), domid, kib) != 0:
            raise self._failed("xc_domain_setmaxmem")

    def shadow_allocation_mib(self, domid: int) -> int:
        """The domain's shadow (HAP/shadow paging) pool, in MiB; 0 for PV domains.

        The same query as OCaml Xenctrl.shadow_allocation_get in Xen 4.17.
        """
        if not 0 <= domid < DOMID_FIRST_RESERVED:
            raise ValueError(f"invalid domid {domid}")
        mb = ffi.new("unsigned int *", 0)
        ret = self._lib.xc_shadow_control(
            self._handle("xc_shadow_control"), domid, XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION, mb, 0
        )
        if ret != 0:
            raise self._failed("xc_shadow_control")
        return int(mb[0])

    def close(self) -> None:
        with self._lock:
            xch, self._xch = self._xch, None
        if xch is not None:
            self._lib.xc_interface_close(xch)

    def __enter__(self) -> XenCtrl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
