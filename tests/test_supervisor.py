"""Supervised threads: a crash is logged and the thread restarted with back-off."""

from __future__ import annotations

import logging
import threading

from squeezed.supervisor import Supervisor


def test_crashing_thread_is_restarted_with_its_traceback_logged(caplog):
    sup = Supervisor(min_backoff_s=0.01, max_backoff_s=0.05)
    runs = []
    recovered = threading.Event()

    def body(stop: threading.Event) -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        recovered.set()
        stop.wait()

    with caplog.at_level(logging.ERROR, logger="squeezed.supervisor"):
        sup.spawn("worker", body)
        assert recovered.wait(5)
    assert len(runs) == 3
    status = sup.status()["worker"]
    assert status["restarts"] == 2 and status["alive"]
    assert "RuntimeError: boom 2" in status["last_error"]
    assert sum("thread worker crashed" in r.message for r in caplog.records) == 2
    assert all(r.exc_info for r in caplog.records if "crashed" in r.message)
    assert sup.healthy()
    sup.stop.set()
    sup.join(2)
    assert not sup.status()["worker"]["alive"]


def test_a_thread_that_returns_unexpectedly_is_restarted():
    sup = Supervisor(min_backoff_s=0.01)
    runs = []
    again = threading.Event()

    def body(stop: threading.Event) -> None:
        runs.append(1)
        if len(runs) == 2:
            again.set()
            stop.wait()

    sup.spawn("returner", body)
    assert again.wait(5)
    sup.stop.set()
    sup.join(2)


def test_one_shot_thread_finishing_is_healthy():
    sup = Supervisor()
    sup.spawn("once", lambda stop: None, once=True)
    sup.join(2)
    assert sup.healthy() and sup.status()["once"]["done"]
    sup.stop.set()


def test_backoff_grows_then_is_capped():
    pauses: list[float] = []
    sup = Supervisor(min_backoff_s=0.01, max_backoff_s=0.04,
                     pause=lambda s: pauses.append(s) or False)
    done = threading.Event()
    runs = []

    def body(stop: threading.Event) -> None:
        runs.append(1)
        if len(runs) >= 6:
            done.set()
            stop.wait()
        raise ValueError("again")

    sup.spawn("flappy", body)
    assert done.wait(5)
    assert pauses == [0.01, 0.02, 0.04, 0.04, 0.04]  # doubling, then capped
    sup.stop.set()
    sup.join(2)


class _Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_heartbeats_name_a_loop_silent_longer_than_it_declared():
    from squeezed.supervisor import Heartbeats

    clock = _Clock()
    hb = Heartbeats(clock)
    beat_a = hb.register("a", 5.0)
    hb.register("b", 1.0)
    clock.now_s += 0.5
    assert hb.late() == []
    clock.now_s += 1.0  # b silent 1.5 s > 1 s; a 1.5 s < 5 s
    assert hb.late() == ["b"]
    clock.now_s += 4.0
    assert hb.late() == ["a", "b"]
    beat_a()
    assert hb.late() == ["b"]
    hb.unregister("b")
    assert hb.late() == []
    assert hb.status() == {"a": 0.0}


def test_a_late_heartbeat_makes_the_supervisor_unhealthy():
    from squeezed.supervisor import Heartbeats

    clock = _Clock()
    sup = Supervisor(heartbeats=Heartbeats(clock))
    beat = sup.heartbeats.register("watcher", 2.0)
    assert sup.healthy()
    clock.now_s += 3.0
    assert not sup.healthy()
    beat()
    assert sup.healthy()
