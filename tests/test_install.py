"""`make install` / `make uninstall` into a staging tree, and the man page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

INSTALLED = [
    "usr/sbin/squeezed",
    "usr/bin/squeezectl",
    "lib/systemd/system/squeezed.service",
    "etc/squeezed.conf",
    "usr/share/man/man8/squeezed.8",
    "usr/share/man/man1/squeezectl.1",
    "usr/share/bash-completion/completions/squeezectl",
    "usr/lib/squeezed/squeezed/__init__.py",
    "usr/lib/squeezed/squeezed/config/__init__.py",
    "usr/lib/squeezed/squeezed/config/keys.py",
    "usr/lib/squeezed/squeezed/daemon/__init__.py",
    "usr/lib/squeezed/squeezed/daemon/__main__.py",
]


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def _install(dest: Path) -> None:
    # PYTHON: the interpreter the wrappers run with; this venv has the dependencies.
    _make("install", f"DESTDIR={dest}", "PREFIX=/usr", f"PYTHON={sys.executable}")


def test_install_and_uninstall(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    _install(dest)
    for rel in INSTALLED:
        assert (dest / rel).is_file(), rel
    for rel in ("usr/sbin/squeezed", "usr/bin/squeezectl"):
        assert os.access(dest / rel, os.X_OK), rel
    unit = (dest / "lib/systemd/system/squeezed.service").read_text()
    assert "ExecStart=/usr/sbin/squeezed " in unit and not re.findall(r"@[A-Z]+@", unit)
    assert (dest / "etc/squeezed.conf").read_text() == (ROOT / "squeezed.conf").read_text()
    assert (dest / "usr/share/man/man8/squeezed.8").read_text() == (
        ROOT / "docs/squeezed.8").read_text()
    assert (dest / "usr/share/man/man1/squeezectl.1").read_text() == (
        ROOT / "docs/squeezectl.1").read_text()
    assert (dest / "usr/share/bash-completion/completions/squeezectl").read_text() == (
        ROOT / "squeezectl.bash-completion").read_text()

    # The wrapper puts the installed copy, found relative to itself, first on sys.path.
    probe = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='probe'); "
             "import squeezed; print(squeezed.__file__)")
    for wrapper in ("usr/sbin/squeezed", "usr/bin/squeezectl"):
        r = subprocess.run([sys.executable, "-I", "-c", probe, str(dest / wrapper)],
                           capture_output=True, text=True, timeout=60, check=True)
        assert Path(r.stdout.strip()).resolve() == (
            dest / "usr/lib/squeezed/squeezed/__init__.py").resolve()

    # The installed squeezectl finds the IDL it is built from (a symlink in the tree).
    assert (dest / "usr/lib/squeezed/squeezed/_idl/memory.json").read_text() == (
        ROOT / "idl/memory.json").read_text()
    r = subprocess.run([str(dest / "usr/bin/squeezectl"), "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "top" in r.stdout, r.stderr

    r = subprocess.run([str(dest / "usr/sbin/squeezed"), "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("squeezed ")

    _make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr")
    assert _files(dest) == []


def test_existing_configuration_is_kept(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    conf = dest / "etc/squeezed.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("loglevel = debug\n")
    _install(dest)
    assert conf.read_text() == "loglevel = debug\n"
    _make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr")
    assert _files(dest) == ["etc/squeezed.conf"]  # the administrator's file stays


def test_prefix_and_unitdir(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    _make("install", f"DESTDIR={dest}", f"PYTHON={sys.executable}", "UNITDIR=/etc/systemd/system")
    assert (dest / "usr/local/sbin/squeezed").is_file()
    assert (dest / "usr/local/share/man/man8/squeezed.8").is_file()
    assert (dest / "usr/local/share/man/man1/squeezectl.1").is_file()
    assert (dest / "usr/local/share/bash-completion/completions/squeezectl").is_file()
    unit = (dest / "etc/systemd/system/squeezed.service").read_text()
    assert "ExecStart=/usr/local/sbin/squeezed " in unit
    _make("uninstall", f"DESTDIR={dest}", "UNITDIR=/etc/systemd/system")
    assert _files(dest) == []


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize(("page", "expected"), [("docs/squeezed.8", "balance-check-interval"),
                                                ("docs/squeezectl.1", "squeezectl top")])
def test_man_page_renders_without_warnings(page: str, expected: str) -> None:
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(ROOT / page)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-l", str(ROOT / page)],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat",
                                "PAGER": "cat"})
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert expected in r.stdout
