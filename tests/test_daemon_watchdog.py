"""The daemon pings systemd's watchdog when systemd asks for it
($WATCHDOG_USEC): READY=1, then WATCHDOG=1 about every half interval."""

from __future__ import annotations

import socket
import time

import pytest

from tests.daemon_harness import DaemonProcess, make_sim


@pytest.fixture
def notify(short_tmp):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(short_tmp / "notify"))
    s.settimeout(1.0)
    yield s
    s.close()


def _messages(sock: socket.socket, until: str, timeout_s: float = 20.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            seen.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            continue
        if until in seen:
            return seen
    raise AssertionError(f"no {until} within {timeout_s} s; got {seen}")


def test_watchdog_pings_once_ready(short_tmp, notify, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    sim = make_sim(short_tmp)
    d = DaemonProcess(short_tmp, sim)
    try:
        d.start()
        seen = _messages(notify, "WATCHDOG=1")
        assert "READY=1" in seen and seen.index("READY=1") < seen.index("WATCHDOG=1")
        # and again: a thread pings every 0.2 s, not a one-off
        assert "WATCHDOG=1" in _messages(notify, "WATCHDOG=1")
    finally:
        d.stop()
        sim.stop()
