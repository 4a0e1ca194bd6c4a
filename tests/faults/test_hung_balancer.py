"""Issue 11 #5: a hung (not dead) loop was never detected. The balancer beats
a heartbeat every pass; one stuck inside a pass for longer than a whole
operation can last is late, so Supervisor.healthy() fails and the systemd
watchdog stops being pinged."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import SimpleNamespace

from squeezed.config import DEFAULTS
from squeezed.daemon import Daemon
from squeezed.supervisor import Heartbeats
from tests.faults.xenenv import wait_for


class HungService:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def balance_if_unbalanced(self) -> bool:
        self.entered.set()
        self.release.wait(30)
        return False


def test_hung_balancer_pass_makes_the_daemon_unhealthy():
    cfg = replace(DEFAULTS, balance_check_interval_s=0.01, operation_timeout_s=100.0)
    d = Daemon(cfg, SimpleNamespace(simulate=None), None)
    now = [0.0]
    d.sup.heartbeats = Heartbeats(clock=lambda: now[0])
    svc = HungService()
    d.service = svc  # type: ignore[assignment]
    stop = threading.Event()
    t = threading.Thread(target=d._balancer, args=(stop,))
    t.start()
    try:
        assert svc.entered.wait(10)
        assert d.sup.heartbeats.late() == []
        now[0] = 0.01 + 100.0 + 59.0  # within interval + operation-timeout + 60 s
        assert d.sup.heartbeats.late() == []
        now[0] = 0.01 + 100.0 + 61.0
        assert d.sup.heartbeats.late() == ["balancer"]
        assert not d.sup.healthy()
    finally:
        stop.set()
        svc.release.set()
        t.join(10)
    assert wait_for(lambda: "balancer" not in d.sup.heartbeats.status())


class HungHost:
    """run_watcher that beats once, then hangs (a blocked xenstore read, say)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def run_watcher(self, watcher, stop, beat=None) -> None:
        if beat is not None:
            beat()
        self.entered.set()
        self.release.wait(30)


def test_hung_watcher_loop_makes_the_daemon_unhealthy(monkeypatch):
    import squeezed.daemon.workers as daemon_mod
    import squeezed.xen.xenstore as xenstore_mod

    class NoWatcher:
        def __init__(self, path) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(xenstore_mod, "Watcher", NoWatcher)
    d = Daemon(DEFAULTS, SimpleNamespace(simulate=None), None)
    d.xs_path = "/nonexistent"
    now = [0.0]
    d.sup.heartbeats = Heartbeats(clock=lambda: now[0])
    host = HungHost()
    d.host = host
    stop = threading.Event()
    t = threading.Thread(target=d._watcher, args=(stop,))
    t.start()
    try:
        assert host.entered.wait(10)
        now[0] = daemon_mod.WATCHER_MAX_SILENCE_S - 1
        assert d.sup.heartbeats.late() == []
        now[0] = daemon_mod.WATCHER_MAX_SILENCE_S + 1
        assert d.sup.heartbeats.late() == ["xenstore-watcher"]
    finally:
        stop.set()
        host.release.set()
        t.join(10)
