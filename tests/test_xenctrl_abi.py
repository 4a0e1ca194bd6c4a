"""The hand-written cffi declarations in squeezed.xen.xenctrl against the real Xen headers.

A probe is compiled against <xenctrl.h> at test time and prints the sizeof of
every struct the binding declares, the offset and size of every field, and the
value of every hard-coded constant; the binding's function prototypes are also
compiled next to the header, where any disagreement is a compile error. Skipped
only when gcc or the Xen headers (Debian: libxen-dev) are missing.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from squeezed.xen import xenctrl
from squeezed.xen.xenctrl import (
    ABI_CONSTANTS,
    ABI_STRUCTS,
    FUNCTION_CDEF,
    XenCtrl,
    XenCtrlUnavailable,
    ffi,
)

GCC = shutil.which("gcc")


def _compile(tmp_path: Path, name: str, source: str, *args: str) -> subprocess.CompletedProcess:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    return subprocess.run([GCC or "gcc", "-Wall", "-Werror", "-std=gnu11", *args, str(src)],
                          capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def headers_present(tmp_path_factory: pytest.TempPathFactory) -> None:
    if GCC is None:
        pytest.skip("gcc is not installed")
    tmp = tmp_path_factory.mktemp("hdr")
    proc = _compile(tmp, "hdr", "#include <xenctrl.h>\nint main(void) { return 0; }\n",
                    "-fsyntax-only")
    if proc.returncode != 0 and "xenctrl.h" in proc.stderr and "No such file" in proc.stderr:
        pytest.skip("the Xen headers (<xenctrl.h>, Debian libxen-dev) are not installed")
    assert proc.returncode == 0, proc.stderr


def _binding_layout() -> dict[str, int]:
    """What the cdef says: sizeof per struct, offset and size per field, constants."""
    out: dict[str, int] = {}
    for t in ABI_STRUCTS:
        ct = ffi.typeof(t)
        out[f"sizeof {t}"] = ffi.sizeof(ct)
        for fname, field in ct.fields:
            out[f"offset {t}.{fname}"] = field.offset
            out[f"size {t}.{fname}"] = ffi.sizeof(field.type)
    for cname, value in ABI_CONSTANTS.items():
        out[f"const {cname}"] = value
    return out


def _probe_source() -> str:
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <xenctrl.h>",
        "#include <xentoollog.h>",
        "int main(void) {",
    ]
    for t in ABI_STRUCTS:
        lines.append(f'    printf("sizeof {t} %zu\\n", sizeof({t}));')
        for fname, _field in ffi.typeof(t).fields:
            lines.append(f'    printf("offset {t}.{fname} %zu\\n", offsetof({t}, {fname}));')
            lines.append(f'    printf("size {t}.{fname} %zu\\n", sizeof((({t} *)0)->{fname}));')
    for cname in ABI_CONSTANTS:
        lines.append(f'    printf("const {cname} %lld\\n", (long long)({cname}));')
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


def test_struct_layouts_and_constants_match_headers(headers_present: None,
                                                    tmp_path: Path) -> None:
    exe = tmp_path / "probe"
    proc = _compile(tmp_path, "probe", _probe_source(), "-o", str(exe))
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    real = {}
    for line in run.stdout.splitlines():
        key, value = line.rsplit(" ", 1)
        real[key] = int(value)
    ours = _binding_layout()
    assert set(real) == set(ours)
    mismatches = {k: (ours[k], real[k]) for k in ours if ours[k] != real[k]}
    assert not mismatches, f"binding vs <xenctrl.h> (ours, real): {mismatches}"
    # The array stride of getinfolist is what matters most; make a mismatch obvious.
    assert ffi.sizeof("xc_domaininfo_t") == real["sizeof xc_domaininfo_t"]


def test_function_prototypes_match_headers(headers_present: None, tmp_path: Path) -> None:
    # Re-declaring a function with a different type is a compile error in C.
    proc = _compile(tmp_path, "protos", "#include <xenctrl.h>\n" + FUNCTION_CDEF,
                    "-fsyntax-only")
    assert proc.returncode == 0, proc.stderr


def test_prototype_check_catches_drift(headers_present: None, tmp_path: Path) -> None:
    # The pre-4.16 xc_shadow_control, to show the check above has teeth.
    old = ("int xc_shadow_control(xc_interface *xch, uint32_t domid, unsigned int sop,"
           " void *dirty_bitmap, unsigned long pages, unsigned long *mb, uint32_t mode,"
           " void *stats);\n")
    proc = _compile(tmp_path, "old", "#include <xenctrl.h>\n" + old, "-fsyntax-only")
    assert proc.returncode != 0
    assert "xc_shadow_control" in proc.stderr


def test_real_libxenctrl_fails_cleanly_without_xen(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(xenctrl.LIB_ENV, raising=False)
    try:
        xenctrl.load_library()
    except XenCtrlUnavailable:
        pytest.skip("libxenctrl is not installed")
    if os.path.exists("/dev/xen/privcmd"):
        pytest.skip("this is a Xen dom0: the real interface would open")
    caplog.set_level(logging.DEBUG, logger="squeezed.xen.xenctrl")
    with pytest.raises(XenCtrlUnavailable) as info:
        XenCtrl.open()
    e = info.value
    assert e.op == "xc_interface_open"
    assert e.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENXIO)
    assert str(e) == (f"cannot open the Xen control interface: {os.strerror(e.errno)}; "
                      "is this a Xen dom0?")
    # The library's own complaint (libxencall: "Could not obtain handle on
    # privileged command interface") went to logging, not to stderr.
    messages = [r.getMessage() for r in caplog.records if r.name == "squeezed.xen.xenctrl"]
    assert messages
    err = capfd.readouterr().err
    assert not any(m.split(": ", 1)[-1] in err for m in messages), err


def test_missing_library_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(XenCtrlUnavailable, match="cannot load libxenctrl"):
        XenCtrl.open(lib_path=tmp_path / "no-such-libxenctrl.so")
