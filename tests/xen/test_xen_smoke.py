"""Smoke checks of the real-Xen tier: the toolstack, xenstore, a PV guest that
balloons, and the host's Python reaching the hypervisor from dom0.

Opt-in: SQUEEZED_TEST_XEN=1 (or -m xen); see docs/real-xen.md.
"""

from __future__ import annotations

import ast
import time

import pytest

from .qemu import DEFAULT_GUEST_CFG, XenVM

pytestmark = pytest.mark.xen

MiB = 1024


def test_xl_info_reports_host_memory(xen_vm: XenVM):
    info = xen_vm.xl_info()
    assert info["xen_major"] == "4" and info["xen_minor"] == "17", info
    total, free = int(info["total_memory"]), int(info["free_memory"])
    # QEMU -m 2048, dom0_mem=768M: ~1.2 GiB left for guests.
    assert 1900 <= total <= 2048, info
    assert 0 < free < total - xen_vm.dom0_mem_mb, info


def test_xl_list_shows_dom0(xen_vm: XenVM):
    doms = xen_vm.xl_list()
    assert doms["Domain-0"]["id"] == 0, doms
    assert doms["Domain-0"]["mem"] == xen_vm.dom0_mem_mb, doms


def test_xenstore_has_dom0(xen_vm: XenVM):
    out = xen_vm.run_ok("xenstore-ls /local/domain/0")
    assert 'name = "Domain-0"' in out, out
    assert 'domid = "0"' in out, out
    assert xen_vm.xenstore_read("/local/domain/0/name") == "Domain-0"


def _wait_mem(vm: XenVM, name: str, pred, timeout_s: float) -> tuple[int, float]:
    t0 = time.monotonic()
    mem = -1
    while time.monotonic() - t0 < timeout_s:
        doms = vm.xl_list()
        mem = doms[name]["mem"]
        if pred(mem):
            return mem, time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"{name}: memory stuck at {mem} MiB after {timeout_s}s")


def test_pv_guest_create_balloon_destroy(xen_vm: XenVM):
    vm = xen_vm
    name = "sqzsmoke"
    vm.run(f"xl destroy {name} 2>/dev/null")
    t0 = time.monotonic()
    vm.run_ok(f"xl create -p {DEFAULT_GUEST_CFG} 'name=\"{name}\"'", timeout_s=180)
    vm.timings["guest_create_paused_s"] = round(time.monotonic() - t0, 1)
    try:
        doms = vm.xl_list()
        assert name in doms, doms
        domid = doms[name]["id"]
        assert "p" in doms[name]["state"], doms  # created paused
        assert doms[name]["mem"] == 128, doms
        base = f"/local/domain/{domid}/memory"
        assert vm.xenstore_read(f"{base}/target") == str(128 * MiB)
        assert vm.xenstore_read(f"{base}/static-max") == str(256 * MiB)

        vm.run_ok(f"xl unpause {name}")
        t1 = time.monotonic()
        # The guest's /init prints its marker once userspace runs (xenconsoled logs it).
        log = f"/var/log/xen/console/guest-{name}.log"
        while True:
            rc, _ = vm.run(f"grep -q {vm.manifest['guest_ready_marker']} {log}")
            if rc == 0:
                break
            assert time.monotonic() - t1 < 180, vm.run(f"cat {log}; xl list")[1]
            time.sleep(1)
        vm.timings["guest_boot_after_unpause_s"] = round(time.monotonic() - t1, 1)

        # Lower the balloon target: the guest's balloon driver gives pages back
        # to Xen and tot_pages (xl list "Mem") follows.
        vm.run_ok(f"xenstore-write {base}/target {96 * MiB}")
        mem, dt = _wait_mem(vm, name, lambda m: m <= 97, 60)
        vm.timings["balloon_128_to_96_s"] = round(dt, 1)
        info = vm.xl_info()
        assert int(info["free_memory"]) > 0

        # ...and back up (within maxmem? no: xl sets Xen's max_pages to
        # memory+1MiB at create, so only up to the original 128 MiB).
        vm.run_ok(f"xenstore-write {base}/target {128 * MiB}")
        _wait_mem(vm, name, lambda m: m >= 127, 60)
    finally:
        vm.run(f"xl destroy {name}", timeout_s=120)
    assert name not in vm.xl_list()


def test_host_python_imports_project_in_dom0(xen_vm: XenVM, project_dir):
    if not xen_vm.host_mounted:
        pytest.fail("host filesystem (9p) not mounted in dom0; see console log")
    t0 = time.monotonic()
    rc, out = xen_vm.python(
        "import sys, squeezed; print(squeezed.__file__); print(sys.version_info[:2])",
        project_dir=project_dir,
        timeout_s=300,
    )
    xen_vm.timings.setdefault("dom0_python_first_run_s", round(time.monotonic() - t0, 1))
    assert rc == 0, out
    lines = out.strip().splitlines()
    assert lines[0] == str(project_dir / "squeezed" / "__init__.py"), out
    assert ast.literal_eval(lines[1]) >= (3, 11), out


XC_PROBE = r"""
import ctypes, os
xc = ctypes.CDLL("libxenctrl.so.4.17")
xc.xc_interface_open.restype = ctypes.c_void_p
xc.xc_interface_open.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
xc.xc_interface_close.argtypes = [ctypes.c_void_p]
h = xc.xc_interface_open(None, None, 0)
print("xc_interface_open", "OK" if h else "NULL errno=%d" % ctypes.get_errno())
assert h
print("xc_interface_close", xc.xc_interface_close(h))

xs = ctypes.CDLL("libxenstore.so.4")
xs.xs_open.restype = ctypes.c_void_p
xs.xs_open.argtypes = [ctypes.c_ulong]
xs.xs_read.restype = ctypes.c_void_p
xs.xs_read.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p,
                       ctypes.POINTER(ctypes.c_uint)]
xs.xs_close.argtypes = [ctypes.c_void_p]
libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]
x = xs.xs_open(0)
assert x
n = ctypes.c_uint()
p = xs.xs_read(x, 0, b"/local/domain/0/name", ctypes.byref(n))
assert p
print("xs_read", ctypes.string_at(p, n.value).decode())
libc.free(p)
xs.xs_close(x)
print("socket", os.path.exists("/var/run/xenstored/socket"))
"""


def test_libxenctrl_from_dom0_python(xen_vm: XenVM, project_dir):
    """The real hypercall path: libxenctrl (privcmd) and libxenstore (the
    xenstored socket) from the host's Python inside dom0."""
    if not xen_vm.host_mounted:
        pytest.fail("host filesystem (9p) not mounted in dom0; see console log")
    rc, out = xen_vm.python(XC_PROBE, project_dir=project_dir, timeout_s=300)
    assert rc == 0, out
    assert "xc_interface_open OK" in out, out
    assert "xc_interface_close 0" in out, out
    assert "xs_read Domain-0" in out, out
    assert "socket True" in out, out
