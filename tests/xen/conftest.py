"""Fixtures for the real-Xen tier (docs/real-xen.md).

The tier is opt-in: it runs only with ``SQUEEZED_TEST_XEN=1`` in the
environment or an explicit ``-m xen`` selection (``SQUEEZED_TEST_XEN=0`` turns
it off even then); otherwise every test here is skipped with an ordinary
message and QEMU is never started.

``xen_vm`` (session scope) builds the images (cached, tests/xen/build_images.py)
and boots Xen once.  When that cannot work on this machine (no QEMU, apt
cannot provide the Xen 4.17 packages, QEMU exits, Xen panics, no dom0 prompt
in time) the tests are skipped with
``SKIPPED: QEMU CANNOT BOOT XEN HERE: <REASON>`` -- or fail instead when
``SQUEEZED_XEN_REQUIRE=1``.

Environment knobs: SQUEEZED_XEN_CACHE (image cache dir), SQUEEZED_XEN_LOGDIR
(where console logs go; default $TMPDIR), SQUEEZED_XEN_BOOT_TIMEOUT (s,
default 300), SQUEEZED_XEN_XENSTORED (oxenstored | xenstored),
SQUEEZED_XEN_PROJECT_DIR (checkout to import in dom0; default this one),
SQUEEZED_XEN_KEEP_LOGS=1 (keep the console and daemon logs after a pass).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import pytest

from . import build_images
from .qemu import XenBootUnavailable, XenVM

PROJECT_DIR = Path(
    os.environ.get("SQUEEZED_XEN_PROJECT_DIR") or Path(__file__).resolve().parents[2]
)

_failed_xen_tests: list[str] = []
_summary: list[str] = []  # printed by pytest_terminal_summary


def xen_tier_enabled(config: pytest.Config) -> bool:
    env = os.environ.get("SQUEEZED_TEST_XEN", "")
    if env == "0":
        return False
    if env == "1":
        return True
    markexpr = config.getoption("markexpr", "") or ""
    return re.search(r"(?<!not )\bxen\b", markexpr) is not None


@pytest.fixture(autouse=True)
def _xen_tier_gate(request: pytest.FixtureRequest) -> None:
    if not xen_tier_enabled(request.config):
        pytest.skip("real-Xen tier not requested (set SQUEEZED_TEST_XEN=1 or use -m xen)")


def _unavailable(reason: str, log_path: str | None = None) -> None:
    first = reason.strip().splitlines()[0] if reason.strip() else "unknown reason"
    msg = f"SKIPPED: QEMU CANNOT BOOT XEN HERE: {first.upper()}"
    if log_path:
        msg += f" (console log: {log_path})"
    if os.environ.get("SQUEEZED_XEN_REQUIRE") == "1":
        pytest.fail(msg.replace("SKIPPED: ", "") + "\n" + reason, pytrace=False)
    pytest.skip(msg)


def keep_logs() -> bool:
    """SQUEEZED_XEN_KEEP_LOGS=1: keep the logs even when every test passed."""
    return os.environ.get("SQUEEZED_XEN_KEEP_LOGS") == "1"


def _report(line: str) -> None:
    _summary.append(line)


def pytest_terminal_summary(terminalreporter) -> None:
    if _summary:
        terminalreporter.section("real Xen (QEMU)")
        for line in _summary:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def xen_manifest(request: pytest.FixtureRequest) -> dict:
    if not xen_tier_enabled(request.config):
        pytest.skip("real-Xen tier not requested (set SQUEEZED_TEST_XEN=1 or use -m xen)")
    t0 = time.monotonic()
    try:
        manifest = build_images.ensure_images(quiet=True)
    except build_images.BuildError as e:
        _unavailable(f"cannot build the Xen images: {e}")
    manifest = dict(manifest)
    manifest["_ensure_seconds"] = round(time.monotonic() - t0, 1)
    return manifest


@pytest.fixture(scope="session")
def xen_vm(request: pytest.FixtureRequest, xen_manifest: dict):
    """A booted Xen host (XenVM), shared by the whole session."""
    logdir = Path(os.environ.get("SQUEEZED_XEN_LOGDIR") or tempfile.gettempdir())
    logdir.mkdir(parents=True, exist_ok=True)
    log_path = logdir / f"squeezed-xen-console-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    vm = XenVM(
        xen_manifest,
        log_path=log_path,
        xenstored=os.environ.get("SQUEEZED_XEN_XENSTORED", "oxenstored"),
    )
    timeout = float(os.environ.get("SQUEEZED_XEN_BOOT_TIMEOUT", "300"))
    try:
        vm.boot(timeout_s=timeout)
    except XenBootUnavailable as e:
        if e.log_path:
            _report(f"boot failed; console log kept: {e.log_path}")
        if e.console_tail:
            _report("console tail:\n" + e.console_tail)
        _unavailable(e.reason, e.log_path)
    vm.timings["images_ready_s"] = xen_manifest["_ensure_seconds"]
    yield vm
    peak = vm.qemu_peak_rss_mb()
    if peak is not None:
        vm.timings["qemu_peak_rss_mib"] = round(peak)
    vm.shutdown()
    _report(f"timings: {vm.timings}")
    if _failed_xen_tests or keep_logs():
        _report(f"console log kept: {vm.log_path}")
    else:
        try:
            os.unlink(vm.log_path)
        except OSError:
            pass


@pytest.fixture(scope="session")
def xen_report():
    """report(line): add a line to the "real Xen (QEMU)" terminal summary."""
    return _report


@pytest.fixture(scope="session")
def project_dir() -> Path:
    """The checkout that dom0's Python imports (same path inside dom0's chroot)."""
    return PROJECT_DIR


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and "xen_vm" in getattr(item, "fixturenames", ()):
        _failed_xen_tests.append(item.nodeid)
        vm = item.funcargs.get("xen_vm") if hasattr(item, "funcargs") else None
        if isinstance(vm, XenVM):
            rep.sections.append(("xen console log", vm.log_path))
