"""The virtual-time host at scale: a thousand guests in virtual time, the work
per tick and per write counted (not timed: speed is in bench/bench_scale.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from squeezed.sim import scenario
from squeezed.sim.drivers import Ideal
from squeezed.sim.virtual import runner
from squeezed.sim.virtual.host import SimulatedHost, VirtualDomain

MIB = 1024
GIB = 1024 * MIB
STEPS = [0]  # driver steps taken, by every CountingIdeal


@dataclass(frozen=True, slots=True)
class CountingIdeal(Ideal):
    kind: ClassVar[str] = "ideal"

    def step(self, now_s: float, dt_s: float, actual_kib: int, target_kib: int,
             maxmem_kib: int, host_free_kib: int) -> int:
        STEPS[0] += 1
        return Ideal.step(self, now_s, dt_s, actual_kib, target_kib, maxmem_kib, host_free_kib)


class ManualClock:
    """Not a VirtualClock: the host treats it as a real clock (writes may
    fall between ticks), but the test sets the time."""

    def __init__(self) -> None:
        self.t_s = 0.0

    def now(self) -> float:
        return self.t_s

    def sleep_until(self, t_s: float) -> None:
        self.t_s = max(self.t_s, t_s)


def thousand_guests_scenario(n: int = 1000) -> scenario.Scenario:
    """The issue's case: n ideal balloons at 2 GiB, dynamic-min 512 MiB, host
    free 0, 1 MiB/s each, free n MiB with no kept reserve; then idle."""
    doms = "".join(
        f"[[domain]]\ndomid = {i}\ndynamic_min_kib = {512 * MIB}\ndynamic_max_kib = {2 * GIB}\n"
        f"target_kib = {2 * GIB}\nactual_kib = {2 * GIB}\n"
        f"driver = {{ kind = \"ideal\", rate_kib_s = {MIB} }}\n"
        for i in range(1, n + 1)
    )
    steps = (f"[[step]]\nop = \"reserve\"\nkib = {n * MIB}\n"
             "[[step]]\nop = \"advance\"\nseconds = 600\n")
    return scenario.loads(f"[host]\nfree_kib = 0\nreserved_kib = 0\n{doms}{steps}")


def test_a_thousand_guests_free_memory_in_virtual_time_with_bounded_work():
    sc = thousand_guests_scenario()
    host = runner.build_host(sc)
    for d in host.domains:
        d.driver = CountingIdeal(d.driver.rate_kib_s)  # type: ignore[attr-defined]
    per_step: list[int] = []

    def on_step(_result: dict) -> None:
        per_step.append(STEPS[0])
        STEPS[0] = 0

    STEPS[0] = 0
    result = runner.run(sc, host, on_step=on_step)
    assert result["ok"], result["steps"][0]["failures"] or result["violations"]
    reserve, idle = result["steps"]
    limit_s = 1000 * MIB / (1000 * MIB)  # X / (N * R), in virtual seconds
    assert reserve["outcome"] == "success" and reserve["sim_seconds"] <= 1.2 * limit_s + 0.1
    assert host.physical_free_kib >= 1000 * MIB and host.free_kib >= 0  # held by the reservation
    # Each tick steps each moving domain once (10 ms ticks); no work per write.
    ticks = reserve["sim_seconds"] / 0.01 + 2
    assert per_step[0] <= 1000 * ticks
    # Ten idle minutes of a thousand domains at their targets: nothing to step.
    assert idle["outcome"] == "success" and per_step[1] == 0


def test_a_write_costs_no_physics_and_the_old_target_holds_until_it():
    clock = ManualClock()
    doms = [VirtualDomain(i, 0, 4000, 1000, 1000, 4000, 4, True, CountingIdeal(1000))
            for i in range(1, 101)]
    host = SimulatedHost(0, doms, clock=clock, tick_s=0.01)
    host.release(10_000)
    STEPS[0] = 0
    clock.t_s = 0.5
    host.set_maxmem(2, 1100)  # domain 2 may grow to 1100 only
    for i in range(1, 101):
        host.set_target(i, 0 if i % 2 else 2000 if i != 2 else 1100)  # half give, half take
    assert STEPS[0] == 0  # the writes advanced no physics
    host.wait(0.5)  # to t = 1.0: each moved for 0.5 s at 1000 KiB/s
    assert host.domain(1).actual_kib == 500
    assert host.domain(3).actual_kib == 500
    assert host.domain(2).actual_kib == 1100
    assert host.domain(4).actual_kib == 1500
    assert host.violations == []
    assert host.total_kib() == 100 * 1000 + 10_000


# ---- the real-interface host: event-driven guests --------------------------------------


def _wait_for(pred, timeout_s: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_idle_guests_of_the_real_interface_host_are_not_moved(tmp_path, monkeypatch):
    import time

    from squeezed.sim.xenhost.host import PAGE_KIB, SimulatedXenHost

    sim = SimulatedXenHost(tmp_path, total_kib=(200 * 64 + 2048) * MIB).start()
    try:
        for i in range(1, 201):
            sim.add_running_domain(i, actual_kib=64 * MIB, target_kib=64 * MIB,
                                   dynamic_min_kib=32 * MIB, dynamic_max_kib=64 * MIB)
        _wait_for(lambda: not sim._active)  # every guest looked at once, found at rest
        moves = [0]  # ticks that looked at any guest (each reads the domain list once)
        real_domains = sim.hv.domains

        def counting_domains():  # type: ignore[no-untyped-def]
            moves[0] += 1
            return real_domains()

        monkeypatch.setattr(sim.hv, "domains", counting_domains)
        time.sleep(0.3)  # 30 ticks' worth of idle time
        assert moves[0] == 0
        # A target write wakes that guest alone, and it moves there.
        sim.xenstored.write("/local/domain/7/memory/target", str(48 * MIB))
        _wait_for(lambda: sim.hv.get_domain(7).tot_pages * PAGE_KIB == 48 * MIB)
        _wait_for(lambda: not sim._active)
        assert 0 < moves[0] < 50
        assert sim.hv.get_domain(8).tot_pages * PAGE_KIB == 64 * MIB
    finally:
        sim.stop()


# ---- the watcher's queue under thousands of watches --------------------------------------


def test_queue_collapses_once_for_a_burst_from_thousands_of_watches():
    from squeezed.xen.xenstore import CoalescingQueue, WatchEvent

    q = CoalescingQueue(max_pending=1024)
    watches: dict[tuple[str, str], None] = {}
    for domid in range(1, 1001):  # as XenHost registers them: initial events one by one
        for key in ("memory/target", "memory/dynamic-min", "control/feature-balloon"):
            path, token = f"/local/domain/{domid}/{key}", f"domain-{domid}"
            watches[(path, token)] = None
            q.push(WatchEvent(path, token), watches)
            q.push(WatchEvent(path, token), watches)  # a change right after: coalesced
    assert q.stats["overflows"] == 1  # not one per event after the first
    assert len(q) <= len(watches) + 1
    assert set(q.drain()) == {WatchEvent(p, t) for p, t in watches}  # nothing lost
    q.push(WatchEvent("/local/domain/5/memory/target", "domain-5"), watches)
    assert len(q) == 1  # drained: no longer collapsed


# ---- XenHost: a quiet host's snapshot rebuilds no domain ---------------------------------


def test_snapshot_reuses_unchanged_domains_and_sees_every_change(tmp_path, monkeypatch):
    import threading

    from squeezed.sim.xenhost.host import SimulatedXenHost
    from squeezed.xen.host import XenHost
    from squeezed.xen.xenctrl import XenCtrl
    from squeezed.xen.xenstore import Watcher, XenstoreClient

    sim = SimulatedXenHost(tmp_path, total_kib=(20 * 64 + 2048) * MIB).start()
    stop = threading.Event()
    try:
        for i in range(1, 21):
            sim.add_running_domain(i, actual_kib=64 * MIB, target_kib=64 * MIB,
                                   dynamic_min_kib=32 * MIB, dynamic_max_kib=64 * MIB)
        for k, v in sim.env().items():
            monkeypatch.setenv(k, v)
        host = XenHost(XenCtrl.open(sim.libxenctrl_path), XenstoreClient(sim.xenstored_path))
        watcher = Watcher(sim.xenstored_path)
        t = threading.Thread(target=host.run_watcher, args=(watcher, stop), daemon=True)
        t.start()
        _wait_for(lambda: host._watching)
        host.observe()
        rebuilt: list[int] = []  # domids whose view was rebuilt
        real_view = host._domain_view

        def counting_view(di, *args):  # type: ignore[no-untyped-def]
            rebuilt.append(di.domid)
            return real_view(di, *args)

        monkeypatch.setattr(host, "_domain_view", counting_view)

        quiet_in_a_row = [0]

        def quiet() -> bool:  # the watches' initial events have all been handled
            rebuilt.clear()
            ok = len(host.observe().domains) == 20 and not rebuilt
            quiet_in_a_row[0] = quiet_in_a_row[0] + 1 if ok else 0
            return quiet_in_a_row[0] >= 5

        _wait_for(quiet)  # snapshots of a quiet host rebuild nothing
        rebuilt.clear()
        # A key changes (seen through its watch) and a guest's allocation moves.
        sim.xenstored.write("/local/domain/3/memory/dynamic-min", str(16 * MIB))
        _wait_for(lambda: host._cache[3].keys.get("memory/dynamic-min") == str(16 * MIB))
        sim.hv.balloon_to(5, 60 * MIB // 4)
        doms = {d.domid: d for d in host.observe().domains}
        assert doms[3].dynamic_min_kib == 16 * MIB and doms[5].memory_actual_kib == 60 * MIB
        assert sorted(rebuilt) == [3, 5]
        # A change to one key is one READ, not one per key of the domain.
        _wait_for(quiet)
        sim.xenstored.requests.clear()
        sim.xenstored.write("/local/domain/4/memory/dynamic-max", str(60 * MIB))
        _wait_for(lambda: host._cache[4].keys.get("memory/dynamic-max") == str(60 * MIB))
        assert sim.xenstored.requests["READ"] == 1
        assert {d.domid: d for d in host.observe().domains}[4].dynamic_max_kib == 60 * MIB
        watcher.close()
    finally:
        stop.set()
        sim.stop()
