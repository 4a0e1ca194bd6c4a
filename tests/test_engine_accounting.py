"""The engine's bookkeeping and what it tells an operator, on the virtual-time
simulated host: the order of target/maxmem writes, OpStats, the log
lines of its decisions and failures, and the periodic balancer's check.
Expected values are worked out by hand from each scenario.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from squeezed.engine import operations as ops
from squeezed.engine.errors import CannotFree, DeadlineExceeded, DomainsRefused, InvalidAmount
from squeezed.engine.model import Domain, Host
from squeezed.engine.operations import EngineConfig, OpStats
from squeezed.sim.drivers import Ideal, Stuck
from squeezed.sim.virtual.host import SimulatedHost, VirtualDomain

MIB = 1024


class Recorder:
    """A HostIO that only records writes (for _write)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def set_target(self, domid: int, kib: int) -> None:
        self.calls.append(("target", domid, kib))

    def set_maxmem(self, domid: int, kib: int) -> None:
        self.calls.append(("maxmem", domid, kib))


class RecordingHost(SimulatedHost):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls: list[tuple[str, int, int]] = []

    def set_target(self, domid: int, kib: int) -> None:
        self.calls.append(("target", domid, kib))
        super().set_target(domid, kib)

    def set_maxmem(self, domid: int, kib: int) -> None:
        self.calls.append(("maxmem", domid, kib))
        super().set_maxmem(domid, kib)


def dom(target: int, maxmem: int) -> Domain:
    return Domain(1, True, 0, target, 10_000, target, maxmem)


@pytest.mark.parametrize("d,target,maxmem,calls", [
    # raising: maxmem first, so that maxmem >= target at every instant
    (dom(100, 150), 200, 200, [("maxmem", 1, 200), ("target", 1, 200)]),
    (dom(100, 300), 200, 300, [("target", 1, 200)]),
    # lowering: the target first
    (dom(200, 200), 100, 100, [("target", 1, 100), ("maxmem", 1, 100)]),
    (dom(200, 200), 100, 200, [("target", 1, 100)]),
    # same target: only maxmem if it differs
    (dom(200, 300), 200, 200, [("maxmem", 1, 200)]),
    (dom(200, 200), 200, 200, []),
])
def test_write_order_and_counts(d, target, maxmem, calls) -> None:
    io = Recorder()
    ops._write(io, d, target, maxmem)  # type: ignore[arg-type]
    assert io.calls == calls


def guest(domid: int, actual: int, dmin: int, driver=None, **kw) -> VirtualDomain:
    # inaccuracy 0: targets are exactly the proportional shares (no allowance)
    return VirtualDomain(domid=domid, dynamic_min_kib=dmin, dynamic_max_kib=actual,
                         target_kib=actual, actual_kib=actual, maxmem_kib=actual,
                         driver=driver or Ideal(100 * MIB), inaccuracy_kib=0, **kw)


def test_one_guest_squeezed_once() -> None:
    # 0 free, one guest of 1000 MiB (min 100) at 100 MiB/s; free 300 MiB:
    # one target write (to 700 MiB) with maxmem following it down, then waits.
    host = RecordingHost(0, [guest(1, 1000 * MIB, 100 * MIB)])
    stats = ops.free_memory(host, EngineConfig(reserve_kib=0), 300 * MIB)
    assert host.calls == [("target", 1, 700 * MIB), ("maxmem", 1, 700 * MIB)]
    assert stats.iterations >= 2  # at least: write, then see it done
    assert 2.9 <= stats.elapsed_s <= 3.5  # 300 MiB at 100 MiB/s, within a poll
    assert stats.elapsed_s == pytest.approx(host.now())


def test_fast_path_touches_nothing() -> None:
    host = RecordingHost(500 * MIB, [guest(1, 1000 * MIB, 100 * MIB)])
    stats = ops.free_memory(host, EngineConfig(reserve_kib=0), 500 * MIB)
    assert host.calls == [] and stats == OpStats()


def test_fail_fast_log_and_arguments(caplog) -> None:
    host = RecordingHost(10 * MIB, [guest(1, 1000 * MIB, 600 * MIB)])
    with caplog.at_level(logging.INFO, logger="squeezed.engine"), \
            pytest.raises(CannotFree) as e:
        ops.free_memory(host, EngineConfig(reserve_kib=0), 500 * MIB)
    # at most 10 + (1000 - 600) = 410 MiB
    assert (e.value.needed_kib, e.value.free_kib) == (500 * MIB, 410 * MIB)
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot free {500 * MIB} KiB: {10 * MIB} KiB free, at most {410 * MIB} KiB with every"
        " domain at dynamic_min"]
    assert host.calls == []
    # exactly reachable is not refused up front
    ok = RecordingHost(10 * MIB, [guest(1, 1000 * MIB, 600 * MIB)])
    ops.free_memory(ok, EngineConfig(reserve_kib=0), 410 * MIB - 64)


def test_flagged_uncooperative_fail_fast_log(caplog) -> None:
    host = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB), guest(2, 1000 * MIB, 900 * MIB)])
    real = host.snapshot

    def flagged() -> Host:
        h = real()
        return Host(tuple(d if d.domid != 1 else dataclasses.replace(d, uncooperative=True)
                          for d in h.domains), h.free_mem_kib, h.detail)

    host.snapshot = flagged  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="squeezed.engine"), \
            pytest.raises(DomainsRefused) as e:
        ops.free_memory(host, EngineConfig(reserve_kib=0), 500 * MIB)
    assert e.value.domids == [1]
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot free {500 * MIB} KiB without domains flagged uncooperative [1]: at most"
        f" {100 * MIB} KiB from the others"]


def test_stuck_guest_is_capped_and_logged(caplog) -> None:
    # guest 1 stuck at 1000 MiB (min 100), guest 2 ideal (min 100): free 1500 MiB
    # needs 750 MiB from each (targets 250 MiB); guest 1 never moves, is declared
    # inactive and capped at min(target, actual) = 250 MiB.
    host = RecordingHost(0, [guest(1, 1000 * MIB, 100 * MIB, Stuck()),
                             guest(2, 1000 * MIB, 100 * MIB)])
    host.deadline_s = 600.0
    with caplog.at_level(logging.INFO, logger="squeezed.engine"), \
            pytest.raises(DomainsRefused) as e:
        ops.free_memory(host, EngineConfig(reserve_kib=0, stuck_after_s=2.0), 1500 * MIB)
    assert e.value.domids == [1]
    lines = [r.getMessage() for r in caplog.records]
    assert f"domain 1 declared inactive (stuck balloon driver); maxmem {250 * MIB} KiB" in lines
    assert any(x.startswith("operation failed (") and
               x.endswith("giving back memory to 1 domain(s)") for x in lines), lines


def test_decision_lines_show_each_domain(caplog) -> None:
    host = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB)])
    with caplog.at_level(logging.INFO, logger="squeezed.engine"):
        ops.free_memory(host, EngineConfig(reserve_kib=0), 300 * MIB)
    first = caplog.records[0].getMessage()
    assert first.startswith("F0 R0; 1 T") and first.endswith("v")  # target going down
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="squeezed.engine"):
        ops.free_memory(SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB)]),
                        EngineConfig(reserve_kib=0), 300 * MIB)
    assert caplog.records == []  # not formatted when not shown


def test_operation_timeout_message() -> None:
    host = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB, Ideal(1))])
    with pytest.raises(DeadlineExceeded) as e:
        ops.free_memory(host, EngineConfig(reserve_kib=0, operation_timeout_s=5.0,
                                           stuck_after_s=1000.0), 300 * MIB)
    msg = str(e.value)
    assert msg.startswith("operation timed out after 5.") and \
        f"(operation-timeout 5 s) aiming at {300 * MIB} KiB free; last seen F" in msg
    assert 5.0 < host.now() <= 6.0


def test_is_unbalanced() -> None:
    cfg = EngineConfig(reserve_kib=8 * MIB, tolerance_kib=512)
    # a guest below its dynamic_max and free memory to give: unbalanced
    low = VirtualDomain(1, 100 * MIB, 2000 * MIB, 1000 * MIB, 1000 * MIB, 2000 * MIB,
                        driver=Ideal(100 * MIB))
    assert ops.is_unbalanced(SimulatedHost(500 * MIB, [low]), cfg) is True
    # everything at dynamic_max: nothing to change
    full = VirtualDomain(1, 100 * MIB, 1000 * MIB, 1000 * MIB, 1000 * MIB, 1000 * MIB,
                         driver=Ideal(100 * MIB))
    assert ops.is_unbalanced(SimulatedHost(500 * MIB, [full]), cfg) is False
    # free memory already at the reserve, maxmem at the target: balanced
    settled = VirtualDomain(1, 100 * MIB, 2000 * MIB, 1000 * MIB, 1000 * MIB, 1000 * MIB,
                            inaccuracy_kib=0, driver=Ideal(100 * MIB))
    assert ops.is_unbalanced(SimulatedHost(8 * MIB, [settled]), cfg) is False
    # ... but a maxmem above the target is something to write
    assert ops.is_unbalanced(SimulatedHost(8 * MIB, [low]), cfg) is True


def test_balance_gives_free_memory_to_guests() -> None:
    low = VirtualDomain(1, 100 * MIB, 2000 * MIB, 1000 * MIB, 1000 * MIB, 1000 * MIB,
                        inaccuracy_kib=0, driver=Ideal(100 * MIB))
    host = RecordingHost(508 * MIB, [low])
    stats = ops.balance(host, EngineConfig(reserve_kib=8 * MIB))
    # all but the reserve goes to the guest: maxmem raised first, then the target
    assert host.calls == [("maxmem", 1, 1500 * MIB), ("target", 1, 1500 * MIB)]
    assert stats is not None
    full = VirtualDomain(1, 100 * MIB, 1000 * MIB, 1000 * MIB, 1000 * MIB, 1000 * MIB,
                         inaccuracy_kib=0, driver=Ideal(100 * MIB))
    idle = RecordingHost(508 * MIB, [full])
    ops.balance(idle, EngineConfig(reserve_kib=8 * MIB))
    assert idle.calls == []  # every guest at dynamic_max: nothing to write


# ------------------------------------------------------------ second batch
# (from the mutation run's survivors: clocks not starting at 0, the begin hook,
# limits exactly reached, what balance logs and does not do)


class BeginCounting(SimulatedHost):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.begins = 0

    def begin_operation(self) -> None:
        self.begins += 1


def test_each_operation_begins_once() -> None:
    for op in (lambda h, c: ops.free_memory(h, c, 300 * MIB),
               lambda h, c: ops.reserve(h, c, 300 * MIB),
               lambda h, c: ops.free_memory_range(h, c, 100 * MIB, 300 * MIB),
               lambda h, c: ops.balance(h, c),
               lambda h, c: ops.is_unbalanced(h, c)):
        host = BeginCounting(0, [guest(1, 1000 * MIB, 100 * MIB)])
        op(host, EngineConfig(reserve_kib=0))
        assert host.begins == 1


def test_clock_not_starting_at_zero() -> None:
    from squeezed.sim.virtual.clock import VirtualClock

    host = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB)], clock=VirtualClock(1000.0))
    stats = ops.free_memory(host, EngineConfig(reserve_kib=0), 300 * MIB)
    assert 2.9 <= stats.elapsed_s <= 3.5 and host.now() > 1000
    slow = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB, Ideal(1))], clock=VirtualClock(1000.0))
    with pytest.raises(DeadlineExceeded) as e:
        ops.free_memory(slow, EngineConfig(reserve_kib=0, operation_timeout_s=5.0,
                                           stuck_after_s=1000.0), 300 * MIB)
    assert str(e.value).startswith("operation timed out after 5.")
    assert 1005.0 < slow.now() <= 1005.2  # the deadline wakes the loop in time
    failed = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB, Stuck())],
                           clock=VirtualClock(1000.0))
    with pytest.raises(DomainsRefused):
        ops.free_memory(failed, EngineConfig(reserve_kib=0, stuck_after_s=2.0), 300 * MIB)
    assert 1002.0 <= failed.now() <= 1002.2  # stuck is noticed on time


def test_two_guests_counts() -> None:
    host = RecordingHost(0, [guest(1, 1000 * MIB, 100 * MIB), guest(2, 1000 * MIB, 100 * MIB)])
    ops.free_memory(host, EngineConfig(reserve_kib=0), 600 * MIB)
    assert sorted(host.calls) == [("maxmem", 1, 700 * MIB), ("maxmem", 2, 700 * MIB),
                                  ("target", 1, 700 * MIB), ("target", 2, 700 * MIB)]


def test_invalid_amounts_carry_the_value() -> None:
    host = SimulatedHost(0, [])
    for call, bad in [(lambda: ops.free_memory(host, EngineConfig(), -5), -5),
                      (lambda: ops.reserve(host, EngineConfig(), -6), -6),
                      (lambda: ops.free_memory_range(host, EngineConfig(), -7, 1), -7),
                      (lambda: ops.free_memory_range(host, EngineConfig(), 9, 8), 8)]:
        with pytest.raises(InvalidAmount) as e:
            call()
        assert e.value.value_kib == bad


def test_fail_fast_limits_exactly() -> None:
    # a guest exactly at dynamic_min gives nothing: 10 MiB free is the ceiling
    at_min = RecordingHost(10 * MIB, [guest(1, 500 * MIB, 500 * MIB)])
    with pytest.raises(CannotFree) as e:
        ops.free_memory(at_min, EngineConfig(reserve_kib=0), 10 * MIB + 1)
    assert (e.value.needed_kib, e.value.free_kib) == (10 * MIB + 1, 10 * MIB)
    assert at_min.calls == [] and at_min.now() == 0


def test_flagged_guest_at_dynamic_min_is_not_blamed() -> None:
    host = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB), guest(2, 500 * MIB, 500 * MIB),
                             guest(3, 1000 * MIB, 900 * MIB)])
    real = host.snapshot
    host.snapshot = lambda: Host(  # type: ignore[method-assign]
        tuple(dataclasses.replace(d, uncooperative=d.domid in (1, 2)) for d in real().domains),
        real().free_mem_kib)
    with pytest.raises(DomainsRefused) as e:
        ops.free_memory(host, EngineConfig(reserve_kib=0), 500 * MIB)
    assert e.value.domids == [1]  # 2 is flagged but has nothing to give
    # exactly what the cooperative guest can give is not refused up front
    ok = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB), guest(3, 1000 * MIB, 900 * MIB)])
    real_ok = ok.snapshot
    ok.snapshot = lambda: Host(  # type: ignore[method-assign]
        tuple(dataclasses.replace(d, uncooperative=d.domid == 1) for d in real_ok().domains),
        real_ok().free_mem_kib)
    ops.free_memory(ok, EngineConfig(reserve_kib=0), 100 * MIB)


def test_balance_logs_and_never_gives_back(caplog) -> None:
    full = VirtualDomain(1, 100 * MIB, 1000 * MIB, 1000 * MIB, 1000 * MIB, 1000 * MIB,
                         inaccuracy_kib=0, driver=Ideal(100 * MIB))
    with caplog.at_level(logging.DEBUG, logger="squeezed.engine"):
        assert ops.balance(SimulatedHost(508 * MIB, [full]), EngineConfig(reserve_kib=8 * MIB)) \
            is None
    msgs = [r.getMessage() for r in caplog.records]
    assert f"balance: every domain is at its dynamic_max; {508 * MIB} KiB stay free" in msgs


def test_short_form() -> None:
    assert Domain(3, True, 0, 100, 200, 100, 150, 0).short() == "3 T100 A100 M150 Bx"
    assert Domain(3, False, 0, 100, 200, 90, 150, 4).short() == "3 T100 A90 M150 ?^"
    assert Domain(3, True, 0, 100, 200, 110, 150, 4).short() == "3 T100 A110 M150 Bv"


def test_inactive_reason_for_a_flagged_guest(caplog) -> None:
    host = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB, Stuck()),
                             guest(2, 1000 * MIB, 100 * MIB)])
    host.deadline_s = 600.0
    real = host.snapshot
    host.snapshot = lambda: Host(  # type: ignore[method-assign]
        tuple(dataclasses.replace(d, uncooperative=d.domid == 1) for d in real().domains),
        real().free_mem_kib)
    with caplog.at_level(logging.INFO, logger="squeezed.engine"):
        ops.free_memory(host, EngineConfig(reserve_kib=0, stuck_after_s=2.0), 800 * MIB)
    assert any(r.getMessage().startswith("domain 1 declared inactive (flagged uncooperative)")
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_two_phase_frees_before_it_allocates() -> None:
    # no free memory; A holds 1500 MiB, B 500 MiB, both min 100 max 2000: the
    # balanced shares are 1000 MiB each. A must free 500 before B may grow.
    a = VirtualDomain(1, 100 * MIB, 2000 * MIB, 1500 * MIB, 1500 * MIB, 1500 * MIB,
                      inaccuracy_kib=0, driver=Ideal(100 * MIB))
    b = VirtualDomain(2, 100 * MIB, 2000 * MIB, 500 * MIB, 500 * MIB, 500 * MIB,
                      inaccuracy_kib=0, driver=Ideal(100 * MIB))
    host = RecordingHost(0, [a, b])
    ops.balance(host, EngineConfig(reserve_kib=0))
    assert host.calls == [("target", 1, 1000 * MIB), ("maxmem", 1, 1000 * MIB),
                          ("maxmem", 2, 1000 * MIB), ("target", 2, 1000 * MIB)]
    assert 10.0 <= host.now() <= 10.5  # 5 s for A to free, then 5 s for B to grow
    assert host.violations == []


def test_ideal_share_of_a_new_domain() -> None:
    # one guest 1000 MiB (min 100, max 1000), nothing free, a newcomer asking
    # 100..500 MiB. As upstream, what would be free with every domain at its
    # minimum (900 MiB; the newcomer, holding nothing, counts as 0, not -100)
    # is shared in proportion to the ranges (900 and 400 MiB): the newcomer
    # gets 100 + 400 * 900 / 1300 MiB.
    host = SimulatedHost(0, [VirtualDomain(1, 100 * MIB, 1000 * MIB, 1000 * MIB, 1000 * MIB,
                                           1000 * MIB, inaccuracy_kib=0)])
    expected_kib = 100 * MIB + 400 * MIB * 900 // 1300
    got = ops.ideal_new_domain_kib(host.snapshot(), EngineConfig(reserve_kib=0), 100 * MIB,
                                   500 * MIB)
    assert abs(got - expected_kib) <= 1, (got, expected_kib)
    # with the reserve kept back, the share shrinks: 100 + 400 * (900 - 8) / 1300 MiB
    got_r = ops.ideal_new_domain_kib(host.snapshot(), EngineConfig(reserve_kib=8 * MIB),
                                     100 * MIB, 500 * MIB)
    assert abs(got_r - (100 * MIB + 400 * MIB * 892 // 1300)) <= 1, got_r


def test_range_reservation_amount() -> None:
    # as above, through free_memory_range: the caller may use what is free
    # above the reserve, between min and max
    host = SimulatedHost(0, [guest(1, 1000 * MIB, 100 * MIB)])
    amount, _ = ops.free_memory_range(host, EngineConfig(reserve_kib=8 * MIB), 100 * MIB,
                                      500 * MIB)
    assert amount == host.snapshot().free_mem_kib - 8 * MIB
    assert 100 * MIB <= amount <= 500 * MIB
