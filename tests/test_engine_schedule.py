"""The engine's clocks: when a driver counts as stuck (exactly at
stuck_after_s and just past it), and the poll schedule of the operation loop
(back-off, and the wake-ups at a stuck deadline and at the operation
timeout), recorded wait by wait on the virtual-time host. Then the squeezer's
step on hand-built snapshots: the two-phase hold, what it passes to its
success test, and the fields of its decision.

Every expected value is worked out by hand from the scenario. Poll intervals
are powers of two (0.125 s ...) so that virtual time adds up exactly.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from squeezed.engine import operations as ops
from squeezed.engine.model import Action, Domain, Host
from squeezed.engine.operations import EngineConfig
from squeezed.engine.squeezer import Squeezer, StucknessMonitor, Verdict
from squeezed.sim.drivers import Ideal, Stuck
from squeezed.sim.virtual.clock import VirtualClock
from squeezed.sim.virtual.host import SimulatedHost, VirtualDomain

MIB = 1024


def d(domid: int, actual: int, target: int, *, dmin: int = 0, dmax: int = 10_000,
      maxmem: int | None = None, inacc: int = 0, can_balloon: bool = True,
      uncooperative: bool = False) -> Domain:
    return Domain(domid, can_balloon, dmin, target, dmax, actual,
                  target if maxmem is None else maxmem, inacc, uncooperative)


# ------------------------------------------------------------------ stuckness

def test_stuck_only_strictly_after_stuck_after() -> None:
    m = StucknessMonitor(5.0)
    busy = Host((d(1, 1000, 500),), 0)  # must free 500, never moves
    m.update(busy, 10.0)  # first seen: progress counted from now
    assert m.is_active(1) and m.next_deadline_s(busy) == 15.0
    m.update(busy, 15.0)  # exactly stuck_after without progress: not yet stuck
    assert m.is_active(1) and m.next_deadline_s(busy) == 15.0
    m.update(busy, 15.001)
    assert not m.is_active(1)
    assert m.next_deadline_s(busy) is None  # a stuck domain has no deadline left


def test_progress_only_towards_the_target() -> None:
    m = StucknessMonitor(1.0)
    m.update(Host((d(1, 1000, 500), d(2, 100, 500)), 0.0), 0.0)
    # 1 must free and grows, 2 must allocate and shrinks: neither is progress
    m.update(Host((d(1, 1010, 500), d(2, 90, 500)), 0), 2.0)
    assert not m.is_active(1) and not m.is_active(2)
    # moving the right way makes them active again, the clock restarted
    m.update(Host((d(1, 990, 500), d(2, 95, 500)), 0), 3.0)
    assert m.is_active(1) and m.is_active(2)
    assert m.next_deadline_s(Host((d(1, 990, 500), d(2, 95, 500)), 0)) == 4.0
    m.update(Host((d(1, 990, 500), d(2, 95, 500)), 0), 4.0)
    assert m.is_active(1) and m.is_active(2)
    # one KiB is progress too, either way
    m.update(Host((d(1, 989, 500), d(2, 96, 500)), 0), 4.5)
    m.update(Host((d(1, 989, 500), d(2, 96, 500)), 0), 5.25)
    assert m.is_active(1) and m.is_active(2)


def test_idle_at_target_restarts_the_clock() -> None:
    m = StucknessMonitor(5.0)
    m.update(Host((d(1, 1000, 1000),), 0), 0.0)
    m.update(Host((d(1, 1000, 1000),), 0), 100.0)  # at target: no work, no deadline
    assert m.next_deadline_s(Host((d(1, 1000, 1000),), 0)) is None
    work = Host((d(1, 1000, 500),), 0)
    m.update(work, 101.0)  # work appears: 101 - 100 is not more than 5
    assert m.is_active(1) and m.next_deadline_s(work) == 105.0


def test_within_inaccuracy_counts_as_at_target() -> None:
    m = StucknessMonitor(1.0)
    near = Host((d(1, 504, 500, inacc=4),), 0)
    m.update(near, 0.0)
    m.update(near, 10.0)
    assert m.is_active(1) and m.next_deadline_s(near) is None
    off = Host((d(1, 505, 500, inacc=4),), 0)
    m.update(off, 20.0)
    m.update(off, 21.5)
    assert not m.is_active(1)


def test_flagged_uncooperative_newcomer() -> None:
    m = StucknessMonitor(5.0)
    m.update(Host((d(1, 1000, 500, uncooperative=True), d(2, 500, 500, uncooperative=True)),
                  0), 0.0)
    assert not m.is_active(1)  # flagged and off target: inactive at once
    assert m.is_active(2)  # flagged but with nothing to do
    assert not m.is_active(3)  # never seen


def test_departed_domains_are_forgotten() -> None:
    m = StucknessMonitor(1.0)
    m.update(Host((d(1, 1000, 500),), 0), 0.0)
    m.update(Host((d(1, 1000, 500),), 0), 2.0)
    assert not m.is_active(1)
    m.update(Host((), 0), 3.0)
    assert not m.is_active(1)
    back = Host((d(1, 1000, 500),), 0)
    m.update(back, 4.0)  # a new domain with the same id starts afresh
    assert m.is_active(1) and m.next_deadline_s(back) == 5.0


def test_earliest_deadline_over_domains() -> None:
    m = StucknessMonitor(2.0)
    m.update(Host((d(1, 1000, 500),), 0), 1.0)
    both = Host((d(1, 1000, 500), d(2, 1000, 500)), 0)
    m.update(both, 1.5)
    assert m.next_deadline_s(both) == 3.0  # domain 1's: 1.0 + 2.0, not 2's 3.5


# ------------------------------------------------------------- poll schedule

class WaitRecorder(SimulatedHost):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.waits: list[float] = []
        self.snapshots_taken = 0

    def snapshot(self) -> Host:
        self.snapshots_taken += 1
        return super().snapshot()

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        super().wait(seconds)


def guest(domid: int, actual: int, dmin: int, driver, **kw) -> VirtualDomain:
    return VirtualDomain(domid=domid, dynamic_min_kib=dmin, dynamic_max_kib=actual,
                         target_kib=actual, actual_kib=actual, maxmem_kib=actual, driver=driver,
                         inaccuracy_kib=0, **kw)


POLL = dict(reserve_kib=0, min_poll_s=0.125, max_poll_s=1.0)


def test_back_off_then_wake_at_the_stuck_deadline() -> None:
    # A stuck guest asked to free: after the write, nothing moves, so the poll
    # doubles (0.125, 0.25, 0.5, 1.0) up to max_poll_s; the guest's stuck
    # deadline is 3.0 s (its clock started at 0, when it was at its target),
    # so the loop wakes at 3.0 + min_poll = 3.125, sees it stuck and fails.
    # (The clock starts at 1000 s: durations are differences, not readings.)
    host = WaitRecorder(0, [guest(1, 1000 * MIB, 100 * MIB, Stuck())], clock=VirtualClock(1000.0))
    stats = ops.OpStats()
    with pytest.raises(Exception, match=r"refused to cooperate: \[1\]"):
        ops.free_memory(host, EngineConfig(**POLL, stuck_after_s=3.0), 300 * MIB, stats)
    assert host.waits == [0.125, 0.25, 0.5, 1.0, 1.0, 0.25]
    assert host.now() == 1003.125
    assert stats.elapsed_s == 3.125 and stats.iterations == 7  # filled in on failure too


def test_wake_at_the_operation_deadline() -> None:
    # The same, but the operation times out at 2.0 s long before the guest
    # would count as stuck: the last wait stops at 2.0 + min_poll.
    host = WaitRecorder(0, [guest(1, 1000 * MIB, 100 * MIB, Stuck())])
    with pytest.raises(Exception, match=r"^operation timed out after 2\.1 s \(operation-timeout "
                       r"2 s\) aiming at 307200 KiB free; last seen F0 R0$"):
        ops.free_memory(host, EngineConfig(**POLL, stuck_after_s=100.0, operation_timeout_s=2.0),
                        300 * MIB)
    assert host.waits == [0.125, 0.25, 0.5, 1.0, 0.25]
    assert host.now() == 2.125


def test_stuck_after_shorter_than_min_poll() -> None:
    # stuck_after 0.0625 s is shorter than min_poll: the first look after the
    # write (at 0.125 s) already finds the guest stuck.
    host = WaitRecorder(0, [guest(1, 1000 * MIB, 100 * MIB, Stuck())])
    with pytest.raises(Exception, match="refused to cooperate"):
        ops.free_memory(host, EngineConfig(**POLL, stuck_after_s=0.0625), 300 * MIB)
    assert host.waits == [0.125]


class CoarseWait(WaitRecorder):
    """Oversleeps to the next whole second, as a busy machine may."""

    def wait(self, seconds: float) -> None:
        now = self.now()
        super().wait(math.ceil(now + seconds) - now)


def test_the_operation_may_run_until_its_deadline_inclusive() -> None:
    # timeout 2 s; looks at 0, 1 and 2 s (not yet past the deadline), fails at 3
    host = CoarseWait(0, [guest(1, 1000 * MIB, 100 * MIB, Stuck())])
    with pytest.raises(Exception, match=r"^operation timed out after 3\.0 s"):
        ops.free_memory(host, EngineConfig(**POLL, stuck_after_s=100.0, operation_timeout_s=2.0),
                        300 * MIB)
    assert host.now() == 3.0


def test_polls_fast_while_memory_moves() -> None:
    # 512 MiB/s freeing 256 MiB: half a second of steady movement, every poll
    # at min_poll (moving resets the back-off), four polls of 0.125 s.
    host = WaitRecorder(0, [guest(1, 1024 * MIB, 0, Ideal(512 * MIB))])
    stats = ops.free_memory(host, EngineConfig(**POLL), 256 * MIB)
    assert host.waits == [0.125] * 4
    assert stats.iterations == 5 and stats.elapsed_s == 0.5
    assert host.snapshots_taken == 5  # one a poll: the first reuses the operation's own
    assert host.domain(1).actual_kib == 768 * MIB


def test_back_off_resets_when_memory_moves_again() -> None:
    # A slow start: the driver does nothing for 1 s, then frees at 1 GiB/s.
    from squeezed.sim.drivers import SlowStart

    host = WaitRecorder(0, [guest(1, 1024 * MIB, 0, SlowStart(1024 * MIB, 1.0))])
    ops.free_memory(host, EngineConfig(**POLL, stuck_after_s=10.0), 256 * MIB)
    # idle: 0.125 (after the write), 0.25, 0.5 (t = 0.875), 1.0 (t = 1.875:
    # 0.875 s of work done, 896 MiB moved, more than the 256 needed)
    assert host.waits[:4] == [0.125, 0.25, 0.5, 1.0]
    assert host.waits[4:] == [0.125] * (len(host.waits) - 4)


# ------------------------------------------------------------ squeezer step

class Calls:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.seen: list[int] = []

    def __call__(self, free_kib: int) -> bool:
        self.seen.append(free_kib)
        return self.answer


def test_two_phase_holds_a_growing_domain_where_it_is() -> None:
    # no free memory; A holds 1500 (min 100, max 2000), B 500 still growing
    # towards an old target of 800. Shares: max_free = 1400 + 400 = 1800 over
    # ranges 1900 + 1900: 100 + 1900 * 1800 / 3800 = 1000 each. A frees, so
    # B is held at what it holds (500), not left at 800.
    a = d(1, 1500, 1500, dmin=100, dmax=2000)
    b = d(2, 500, 800, dmin=100, dmax=2000, maxmem=800)
    dec = Squeezer(StucknessMonitor(5.0)).step(Host((a, b), 0), 0, Calls(False), 0.0)
    assert dec.verdict is Verdict.ADJUST
    assert dec.actions == (Action(1, 1000), Action(2, 500))
    assert dec.max_free_kib == 1800 and dec.allocating is False
    assert dec.active == frozenset({1, 2})
    # without two phases B is sent straight to its share
    dec1 = Squeezer(StucknessMonitor(5.0), two_phase=False).step(
        Host((a, b), 0), 0, Calls(False), 0.0)
    assert dec1.actions == (Action(1, 1000), Action(2, 1000))


def test_two_phase_hold_clamped_to_the_dynamic_range() -> None:
    # B below its dynamic_min (50 < 100) is held at dynamic_min, not lower
    a = d(1, 1500, 1500, dmin=100, dmax=2000)
    b = d(2, 50, 800, dmin=100, dmax=2000, maxmem=800)
    dec = Squeezer(StucknessMonitor(5.0)).step(Host((a, b), 0), 0, Calls(False), 0.0)
    # max_free = 1400 + (0 - 0) = 1400... B holds less than its min: its
    # min_freeable is max(0, 50 - 100) = 0; shares 100 + 1900 * 1400 / 3800 = 800
    assert dec.actions == (Action(1, 800), Action(2, 100))
    # B just above its dynamic_max (by less than inaccuracy) and growing: held at max
    a4 = d(1, 2100, 2100, dmin=100, dmax=2000, inacc=4)
    b4 = d(2, 2003, 2012, dmin=100, dmax=2000, maxmem=2012, inacc=4)
    dec4 = Squeezer(StucknessMonitor(5.0)).step(Host((a4, b4), 0), 0, Calls(False), 0.0)
    # gamma 1: A to 2000 (frees), B's share 2000 >= 2003 - 4 (allocating), held at 2000
    assert dec4.actions == (Action(1, 2000), Action(2, 2000))


def test_two_phase_does_not_hold_a_domain_within_inaccuracy_of_its_target() -> None:
    a = d(1, 1500, 1500, dmin=100, dmax=2000, inacc=4)
    # B at 500 with target 504: within inaccuracy, not growing: left alone
    b = d(2, 500, 504, dmin=100, dmax=2000, maxmem=504, inacc=4)
    dec = Squeezer(StucknessMonitor(5.0)).step(Host((a, b), 0), 0, Calls(False), 0.0)
    assert [x.domid for x in dec.actions] == [1]
    # at 505 it is growing: held at 500
    b5 = dataclasses.replace(b, target_kib=505, memory_max_kib=505)
    dec5 = Squeezer(StucknessMonitor(5.0)).step(Host((a, b5), 0), 0, Calls(False), 0.0)
    assert dec5.actions[1] == Action(2, 500)


def test_allocation_phase_when_nobody_frees() -> None:
    # 400 free, B at 500 (min 100, max 2000): its share is 100 + min(1900, 400 + 400) = 900
    b = d(2, 500, 500, dmin=100, dmax=2000)
    dec = Squeezer(StucknessMonitor(5.0)).step(Host((b,), 400), 0, Calls(False), 0.0)
    assert dec.actions == (Action(2, 900),) and dec.allocating is True
    assert dec.max_free_kib == 800
    # A, fixed at 1000 (its share, what it holds), frees nothing: B may still grow
    a = d(1, 1000, 1000, dmin=1000, dmax=1000, inacc=4)
    b4 = d(2, 500, 500, dmin=100, dmax=2000, inacc=4)
    dec = Squeezer(StucknessMonitor(5.0)).step(Host((a, b4), 400), 0, Calls(False), 0.0)
    # max_free = 400 + (0 - 8) + (400 - 8) = 784: B's share 100 + 784 = 884
    assert dec.actions == (Action(2, 884),) and dec.allocating is True


def test_success_judged_on_memory_that_stays_free() -> None:
    # every active domain within inaccuracy of its target: the success test
    # sees free memory minus what they may still grow, up to maxmem.
    a = d(1, 997, 1000, dmin=1000, dmax=1000, maxmem=1010, inacc=4)  # may grow 1004 - 997 = 7
    b = d(2, 998, 1000, dmin=1000, dmax=1000, maxmem=1001, inacc=4)  # up to maxmem: 3
    c = d(3, 1003, 1000, dmin=1000, dmax=1000, maxmem=1003, inacc=4)  # above: 0
    ok = Calls(True)
    dec = Squeezer(StucknessMonitor(5.0)).step(Host((a, b, c), 100), 0, ok, 0.0)
    assert ok.seen == [100 - 7 - 3]
    assert dec.verdict is Verdict.SUCCESS and dec.actions == ()


def test_inactive_domains_room_to_grow_is_not_free() -> None:
    # 1 is flagged uncooperative and off target (inactive from the start) with
    # maxmem 1200 above its 1000; 2 cannot balloon, maxmem above actual too;
    # 3 is at dynamic_max. Only the balloonable inactive domain's 200 is
    # taken from the 500 free; the step fails and blames it alone.
    one = d(1, 1000, 1100, dmin=100, dmax=2000, maxmem=1200, uncooperative=True)
    two = d(2, 300, 300, maxmem=900, can_balloon=False)
    three = d(3, 700, 700, dmin=700, dmax=700)
    # 4: flagged and off target too, but already at its maxmem: no room
    four = d(4, 600, 500, dmin=100, dmax=2000, maxmem=600, uncooperative=True)
    seen = Calls(False)
    dec = Squeezer(StucknessMonitor(5.0)).step(Host((one, two, three, four), 500), 0, seen, 0.0)
    assert seen.seen == [300]
    assert dec.verdict is Verdict.FAILED and dec.blamed == (1, 4)
    assert dec.active == frozenset({3})
    assert [x.domid for x in dec.declared_inactive] == [1, 2, 4]
    assert dec.max_free_kib == 300  # 300 free + 3's (700 - 700) - 0


def test_declared_active_when_a_stuck_driver_wakes_up() -> None:
    sq = Squeezer(StucknessMonitor(1.0))
    sq.step(Host((d(1, 1000, 500, dmin=500, dmax=1000), d(2, 1000, 500, dmin=500, dmax=1000)),
                 0), 0, Calls(False), 0.0)
    dec = sq.step(Host((d(1, 1000, 500, dmin=500, dmax=1000),
                        d(2, 1000, 500, dmin=500, dmax=1000)), 0), 0, Calls(False), 2.0)
    assert [x.domid for x in dec.declared_inactive] == [1, 2] and dec.active == frozenset()
    dec = sq.step(Host((d(1, 900, 500, dmin=500, dmax=1000),
                        d(2, 990, 500, dmin=500, dmax=1000)), 0), 0, Calls(False), 3.0)
    assert dec.declared_active == (1, 2) and dec.declared_inactive == ()
    again = sq.step(Host((d(1, 800, 500, dmin=500, dmax=1000),
                          d(2, 980, 500, dmin=500, dmax=1000)), 0), 0, Calls(False), 3.5)
    assert again.declared_active == ()
