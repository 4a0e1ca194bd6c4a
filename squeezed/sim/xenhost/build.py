"""Compile the stand-in libxenctrl (libxenctrl_stub.c) for the simulated host."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

STUB_SOURCE = Path(__file__).with_name("libxenctrl_stub.c")
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-std=gnu11")


class StubBuildError(RuntimeError):
    """The stub could not be compiled (no compiler, no Xen headers, or a compile error)."""


def _compiler(cc: str | None) -> str:
    name = cc or os.environ.get("CC") or "gcc"
    path = shutil.which(name)
    if path is None:
        raise StubBuildError(
            f"cannot build the simulated libxenctrl: C compiler {name!r} not found "
            "(install gcc, e.g. apt-get install gcc)"
        )
    return path


def build_stub(out_dir: str | os.PathLike[str], *, cc: str | None = None) -> Path:
    """Build the stub into ``out_dir`` and return the shared object's path.

    The file name carries a hash of the source, compiler and flags, so an
    unchanged stub is reused; it is compiled to a temporary name and renamed,
    so concurrent builders never see a half-written library.
    """
    compiler = _compiler(cc)
    source = STUB_SOURCE.read_bytes()
    digest = hashlib.sha256()
    for part in (source, compiler.encode(), " ".join(CFLAGS).encode()):
        digest.update(part)
        digest.update(b"\0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"libxenctrl-stub-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target

    fd, tmp_name = tempfile.mkstemp(prefix=".libxenctrl-stub-", suffix=".so", dir=out)
    os.close(fd)
    try:
        # Compiling from the source bytes we hashed, via stdin, so the cache key
        # always matches what was built.
        proc = subprocess.run(
            [compiler, *CFLAGS, "-x", "c", "-o", tmp_name, "-"],
            input=source, capture_output=True, check=False,
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            if "xenctrl.h" in err and "No such file" in err:
                raise StubBuildError(
                    "cannot build the simulated libxenctrl: <xenctrl.h> not found "
                    "(install the Xen development headers, e.g. apt-get install libxen-dev)"
                )
            raise StubBuildError(
                f"cannot build the simulated libxenctrl from {STUB_SOURCE}:\n{err}"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target
