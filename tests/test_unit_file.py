"""squeezed.service: systemd accepts it, and it keeps the properties squeezed relies on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "squeezed.service"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order (repeated keys accumulate)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key), []).append(value)
    return out


@pytest.fixture
def installed_unit(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The unit with @SBINDIR@/@BINDIR@ pointing at a real executable, and an
    environment whose MANPATH finds squeezed(8) (verify checks Documentation=)."""
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    program = sbin / "squeezed"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    unit = tmp_path / "squeezed.service"
    unit.write_text(
        UNIT.read_text().replace("@SBINDIR@", str(sbin)).replace("@BINDIR@", str(tmp_path))
    )
    man8 = tmp_path / "man" / "man8"
    man8.mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "squeezed.8", man8)
    env = {**os.environ, "MANPATH": str(tmp_path / "man"), "SYSTEMD_LOG_COLOR": "0"}
    return unit, env


def test_placeholders_are_the_installed_paths() -> None:
    text = UNIT.read_text()
    assert set(re.findall(r"@[A-Z]+@", text)) <= {"@SBINDIR@", "@BINDIR@"}
    assert "ExecStart=@SBINDIR@/squeezed " in text


@needs_analyze
def test_systemd_analyze_verify(installed_unit: tuple[Path, dict[str, str]]) -> None:
    unit, env = installed_unit
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, env=env, timeout=60)
    # Only complaints about the xenstored.service and message-switch.service
    # dependencies (absent outside a dom0) are tolerated.
    deps = ("xenstored.service", "message-switch.service")
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if line.strip() and not any(s in line for s in deps)]
    assert problems == [], "\n".join(problems)
    if r.returncode != 0:
        assert any(s in r.stdout + r.stderr for s in deps), (r.returncode, r.stderr)


@needs_analyze
def test_systemd_analyze_verify_catches_a_missing_program(tmp_path: Path) -> None:
    # The check above means something: a missing ExecStart program is reported.
    unit = tmp_path / "squeezed.service"
    unit.write_text(UNIT.read_text().replace("@SBINDIR@", str(tmp_path / "nowhere")))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "nowhere/squeezed" in r.stderr


@needs_analyze
def test_security_exposure_stays_low(installed_unit: tuple[Path, dict[str, str]]) -> None:
    unit, env = installed_unit
    # --threshold=20: fail if the overall exposure exceeds 2.0 (it is 1.2 on systemd 252).
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20",
                        "--no-pager", str(unit)], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert re.search(r"Overall exposure level for squeezed.service: \d\.\d OK", r.stdout)


def test_service_properties() -> None:
    d = _directives(UNIT.read_text())

    def one(section: str, key: str) -> str:
        values = d.get((section, key), [])
        assert len(values) == 1, (section, key, values)
        return values[0]

    assert "xenstored.service" in one("Unit", "After")
    assert "xenstored.service" in one("Unit", "Wants")
    # the bus xenopsd and xapi call squeezed on: ordered after it, not bound to it
    assert "message-switch.service" in one("Unit", "After").split()
    assert "message-switch.service" in one("Unit", "Wants").split()
    assert ("Unit", "Requires") not in d and ("Unit", "BindsTo") not in d
    assert one("Unit", "StartLimitIntervalSec") and one("Unit", "StartLimitBurst")
    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    assert one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Service", "Restart") == "on-failure"
    assert one("Service", "RestartSec") and one("Service", "WatchdogSec")
    assert one("Install", "WantedBy") == "multi-user.target"
    # Hardening that still lets squeezed reach Xen.
    assert one("Service", "ProtectSystem") == "strict"
    assert one("Service", "ProtectHome") == "yes"
    assert one("Service", "NoNewPrivileges") == "yes"
    assert one("Service", "RestrictAddressFamilies") == "AF_UNIX"
    assert one("Service", "ProtectKernelTunables") == "yes"
    assert ("Service", "PrivateDevices") not in d  # would hide /dev/xen
    assert ("Service", "ProcSubset") not in d  # would hide /proc/xen
    assert ("Service", "PrivateUsers") not in d  # root must stay root for /dev/xen
    allowed = d[("Service", "DeviceAllow")]
    assert "/dev/xen/privcmd rw" in allowed and "/dev/xen/xenbus rw" in allowed
    writable = " ".join(d[("Service", "ReadWritePaths")]).split()
    assert "/var/xapi" in writable and "/run/nonpersistent" in writable
    # ioctl() (hypercalls) must survive the system call filter.
    assert d[("Service", "SystemCallFilter")][0] == "@system-service"


@needs_analyze
def test_ioctl_and_chown_pass_the_system_call_filter() -> None:
    groups = {}
    for group in ("@system-service", "@chown"):
        r = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True,
                           text=True, timeout=60)
        groups[group] = r.stdout
    assert re.search(r"^\s+ioctl$", groups["@system-service"], re.M)
    assert re.search(r"^\s+fchown$", groups["@chown"], re.M)
