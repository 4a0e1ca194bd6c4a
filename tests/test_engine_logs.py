"""What the engine tells an operator, word for word: the decision line of
`_apply`, the give-back and its failure in `_give_back`, `balance`'s debug
lines; and `is_unbalanced`'s answer where only part of its construction (two
phases, the stuckness clock, "a target would change") decides it.

Expected lines are written out by hand from each scenario (the simulated
host's detail is "F<free> R<reserved>"). Errors are matched by their
message, not their class.
"""

from __future__ import annotations

import logging

import pytest

from squeezed.engine import operations as ops
from squeezed.engine.model import Domain, Host
from squeezed.engine.operations import EngineConfig
from squeezed.sim.drivers import Ideal, Stuck
from squeezed.sim.virtual.host import SimulatedHost, VirtualDomain
from tests.test_engine_accounting import RecordingHost

MIB = 1024
ENGINE = "squeezed.engine"


def sim(domid: int, actual: int, *, dmin: int, dmax: int | None = None, target: int | None = None,
        maxmem: int | None = None, driver=None, can_balloon: bool = True) -> VirtualDomain:
    return VirtualDomain(domid=domid, dynamic_min_kib=dmin,
                         dynamic_max_kib=actual if dmax is None else dmax,
                         target_kib=actual if target is None else target, actual_kib=actual,
                         maxmem_kib=actual if maxmem is None else maxmem,
                         driver=driver or Ideal(100 * MIB), inaccuracy_kib=0,
                         can_balloon=can_balloon)


def messages(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == ENGINE]


def test_decision_line_word_for_word(caplog) -> None:
    # guest 1 (1000 MiB, min 100) gives 300 MiB; guest 2 sits at its
    # dynamic_min (nothing to give, no new target); 3 cannot balloon.
    host = SimulatedHost(0, [sim(1, 1000 * MIB, dmin=100 * MIB),
                             sim(2, 500 * MIB, dmin=500 * MIB),
                             sim(3, 200 * MIB, dmin=0, can_balloon=False)])
    with caplog.at_level(logging.INFO, logger=ENGINE):
        ops.free_memory(host, EngineConfig(reserve_kib=0), 300 * MIB)
    assert messages(caplog) == [
        ("INFO", "F0 R0; 1 T1024000 A1024000 M1024000 Bxv; 2 T512000 A512000 M512000 Bx; "
                 "3 T204800 A204800 M204800 ?x"),
    ]


def test_decision_line_marks_a_rising_target_and_plain_free(caplog) -> None:
    # balance on a host whose snapshot has no detail: "F<free>" stands in.
    # 508 MiB free, reserve 8: guest 1 (1000, max 2000) rises to 1500.
    host = SimulatedHost(508 * MIB, [sim(1, 1000 * MIB, dmin=100 * MIB, dmax=2000 * MIB)])
    real = host.snapshot
    host.snapshot = lambda: Host(real().domains, real().free_mem_kib)  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger=ENGINE):
        ops.balance(host, EngineConfig(reserve_kib=8 * MIB))
    assert messages(caplog) == [("INFO", "F520192; 1 T1024000 A1024000 M1024000 Bx^")]
    assert host.domain(1).actual_kib == 1500 * MIB


def test_stuck_guest_log_sequence(caplog) -> None:
    # guest 1 stuck, guest 2 ideal, both 1000 MiB min 100; free 1500 MiB:
    # targets 250 MiB each. 1 is declared stuck after 2 s (capped at 250),
    # 2 is then sent alone to its dynamic_min (100 MiB), the operation fails
    # with 900 MiB free, and that is handed back to 2, up to its dynamic_max.
    host = SimulatedHost(0, [sim(1, 1000 * MIB, dmin=100 * MIB, driver=Stuck()),
                             sim(2, 1000 * MIB, dmin=100 * MIB)])
    host.deadline_s = 600.0
    with caplog.at_level(logging.INFO, logger=ENGINE), \
            pytest.raises(Exception, match=r"^domains refused to cooperate: \[1\]$") as e:
        ops.free_memory(host, EngineConfig(reserve_kib=0, stuck_after_s=2.0), 1500 * MIB)
    got = messages(caplog)
    assert got[0] == ("INFO", "F0 R0; 1 T1024000 A1024000 M1024000 Bxv; "
                              "2 T1024000 A1024000 M1024000 Bxv")
    assert ("INFO", "domain 1 declared inactive (stuck balloon driver); maxmem 256000 KiB") in got
    assert got[-2] == ("INFO", f"operation failed ({e.value}): giving back memory to 1 domain(s)")
    # the give-back's own decision line: 2 back up to 1000 MiB
    assert got[-1] == ("INFO", "F921600 R0; 1 T256000 A1024000 M256000 Bv; "
                               "2 T102400 A102400 M102400 Bx^")
    assert host.domain(2).target_kib == 1000 * MIB


class RefusingHost(SimulatedHost):
    """Target writes fail (xenstore refused them) from the `fail_from`-th on."""

    def __init__(self, *a, fail_from: int, **kw) -> None:
        super().__init__(*a, **kw)
        self.fail_from = fail_from
        self.writes = 0

    def set_target(self, domid: int, target_kib: int) -> None:
        self.writes += 1
        if self.writes >= self.fail_from:
            raise OSError(f"write {self.writes} refused")
        super().set_target(domid, target_kib)


def test_give_back_failure_is_logged_and_the_first_error_raised(caplog) -> None:
    # the first target write succeeds, the second (guest 2's) is refused;
    # giving back then fails on the third: logged as an error, and the
    # caller sees the operation's own error.
    host = RefusingHost(0, [sim(1, 1000 * MIB, dmin=100 * MIB), sim(2, 1000 * MIB, dmin=100 * MIB)],
                        fail_from=2)
    with caplog.at_level(logging.INFO, logger=ENGINE), \
            pytest.raises(OSError, match="^write 2 refused$"):
        ops.free_memory(host, EngineConfig(reserve_kib=0), 600 * MIB)
    assert messages(caplog) == [
        ("INFO", "operation failed (write 2 refused): giving back memory to 1 domain(s)"),
        ("ERROR", "giving memory back after a failed operation failed: write 3 refused"),
    ]
    assert host.writes == 3


def test_give_back_without_actions_says_nothing(caplog) -> None:
    # the very first write is refused: nothing was lowered, nothing to give back
    host = RefusingHost(0, [sim(1, 1000 * MIB, dmin=100 * MIB)], fail_from=1)
    with caplog.at_level(logging.DEBUG, logger=ENGINE), pytest.raises(OSError):
        ops.free_memory(host, EngineConfig(reserve_kib=0), 300 * MIB)
    assert [m for m in messages(caplog) if "giving back" in m[1]] == []


def test_balance_ended_early_debug_line(caplog) -> None:
    # a guest flagged uncooperative and off its target is inactive at once;
    # 500 MiB above the reserve stay free, so balance fails and says why at
    # debug level, with the error's own message, and raises nothing.
    host = SimulatedHost(508 * MIB, [sim(1, 1000 * MIB, dmin=100 * MIB, dmax=2000 * MIB,
                                         target=1200 * MIB, driver=Stuck())])
    real = host.snapshot

    def flagged() -> Host:
        h = real()
        return Host(tuple(d.__class__(**{**{f: getattr(d, f) for f in d.__slots__},
                                          "uncooperative": True}) for d in h.domains),
                    h.free_mem_kib, h.detail)

    host.snapshot = flagged  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG, logger=ENGINE):
        assert ops.balance(host, EngineConfig(reserve_kib=8 * MIB)) is None
    got = messages(caplog)
    assert got[-1] == ("DEBUG", "balance ended early: domains refused to cooperate: [1]")
    assert ("INFO", "domain 1 declared inactive (flagged uncooperative); maxmem 1024000 KiB") \
        in got
    assert all("giving back" not in m for _, m in got)  # balance never gives back


def test_balance_raises_a_host_failure() -> None:
    host = RefusingHost(508 * MIB, [sim(1, 1000 * MIB, dmin=100 * MIB, dmax=2000 * MIB)],
                        fail_from=1)
    with pytest.raises(OSError, match="write 1 refused"):
        ops.balance(host, EngineConfig(reserve_kib=8 * MIB))
    assert host.writes == 1  # balance gives nothing back: it only ever gives
    timed = SimulatedHost(508 * MIB, [sim(1, 1000 * MIB, dmin=100 * MIB, dmax=2000 * MIB,
                                          driver=Ideal(1))])
    with pytest.raises(Exception, match="^operation timed out after"):
        ops.balance(timed, EngineConfig(reserve_kib=8 * MIB, operation_timeout_s=1.0,
                                        stuck_after_s=100.0))


# ----------------------------------------------------------- is_unbalanced

def freeing_and_held() -> SimulatedHost:
    # nothing free; A (1500 MiB, min 100, max 2000) already has its target
    # 1000 and is freeing; B at 500 (same range) has target 500. Balanced
    # shares are 1000 each, but B must wait until A has freed: with two
    # phases no target would change now.
    return SimulatedHost(0, [
        sim(1, 1500 * MIB, dmin=100 * MIB, dmax=2000 * MIB, target=1000 * MIB),
        sim(2, 500 * MIB, dmin=100 * MIB, dmax=2000 * MIB),
    ])


def test_is_unbalanced_waits_for_a_driver_that_is_moving() -> None:
    assert ops.is_unbalanced(freeing_and_held(), EngineConfig(reserve_kib=0)) is False
    # the periodic balancer follows the config's two_phase
    assert ops.is_unbalanced(freeing_and_held(), EngineConfig(reserve_kib=0, two_phase=False)) \
        is True


def test_is_unbalanced_aims_at_the_reserve_within_tolerance() -> None:
    # one guest at 1000 MiB (max 2000); free memory just above the reserve
    def host(free_kib: int) -> SimulatedHost:
        return SimulatedHost(free_kib, [sim(1, 1000 * MIB, dmin=100 * MIB, dmax=2000 * MIB)])

    cfg = EngineConfig(reserve_kib=8 * MIB, tolerance_kib=512)
    assert ops.is_unbalanced(host(8 * MIB), cfg) is False
    assert ops.is_unbalanced(host(8 * MIB + 1), cfg) is True  # a target of 1000 MiB + 1


# ------------------------------------- writes, stats and limits exactly met

Writes = RecordingHost  # target and maxmem writes, in order


def test_every_newly_inactive_domain_is_capped() -> None:
    # 1 cannot balloon (inactive, never written), 2 is flagged uncooperative
    # and off target (inactive at once): 2 is still capped at where it is.
    # 3 frees the 100 MiB asked for.
    host = Writes(0, [sim(1, 200 * MIB, dmin=0, can_balloon=False),
                      sim(2, 1000 * MIB, dmin=100 * MIB, target=800 * MIB, maxmem=1000 * MIB,
                          driver=Stuck()),
                      sim(3, 1000 * MIB, dmin=900 * MIB)])
    real = host.snapshot
    host.snapshot = lambda: Host(  # type: ignore[method-assign]
        tuple(d if d.domid != 2 else d.__class__(**{**{f: getattr(d, f) for f in d.__slots__},
                                                    "uncooperative": True})
              for d in real().domains), real().free_mem_kib, real().detail)
    ops.free_memory(host, EngineConfig(reserve_kib=0), 100 * MIB)
    # min(target 800, actual 1000) = 800 within [100, 1000]: maxmem to 800;
    # then 3 to its minimum
    assert host.calls == [("maxmem", 2, 800 * MIB), ("target", 3, 900 * MIB),
                          ("maxmem", 3, 900 * MIB)]


def test_active_domain_maxmem_follows_its_target() -> None:
    # 1's share is what it has (no free memory above the reserve), but its
    # maxmem is 1500: lowered to the target. 2's share rises to the maxmem it
    # already has: only the target is written.
    host = Writes(500 * MIB, [sim(1, 1000 * MIB, dmin=1000 * MIB, maxmem=1500 * MIB),
                              sim(2, 1000 * MIB, dmin=100 * MIB, dmax=1500 * MIB,
                                  maxmem=1500 * MIB)])
    stats = ops.balance(host, EngineConfig(reserve_kib=0))
    assert host.calls == [("maxmem", 1, 1000 * MIB), ("target", 2, 1500 * MIB)]
    assert stats is not None


def test_balanced_means_strictly_within_tolerance(caplog) -> None:
    # a guest at dynamic_max: free memory above the reserve stays free; at
    # exactly the tolerance balance reports it, one KiB less is balanced.
    def full(free_kib: int) -> SimulatedHost:
        return SimulatedHost(free_kib, [sim(1, 1000 * MIB, dmin=100 * MIB)])

    cfg = EngineConfig(reserve_kib=8 * MIB, tolerance_kib=512)
    assert ops.balance(full(8 * MIB + 511), cfg) is not None
    with caplog.at_level(logging.DEBUG, logger=ENGINE):
        assert ops.balance(full(8 * MIB + 512), cfg) is None
    assert messages(caplog) == [
        ("DEBUG", f"balance: every domain is at its dynamic_max; {8 * MIB + 512} KiB stay free")]


def test_fail_fast_exactly_at_dynamic_min_logs(caplog) -> None:
    # a guest at dynamic_min gives nothing, not even 1 KiB
    host = Writes(10 * MIB, [sim(1, 500 * MIB, dmin=500 * MIB)])
    with caplog.at_level(logging.INFO, logger=ENGINE), \
            pytest.raises(Exception, match="^cannot free"):
        ops.free_memory(host, EngineConfig(reserve_kib=0), 10 * MIB + 1)
    assert messages(caplog) == [
        ("INFO", f"cannot free {10 * MIB + 1} KiB: {10 * MIB} KiB free, at most {10 * MIB} KiB"
                 " with every domain at dynamic_min")]


def test_callers_stats_are_filled_in() -> None:
    from squeezed.engine.operations import OpStats

    def host() -> SimulatedHost:
        return SimulatedHost(0, [sim(1, 1000 * MIB, dmin=100 * MIB)])

    for call in (lambda h, s: ops.free_memory(h, EngineConfig(reserve_kib=0), 300 * MIB, s),
                 lambda h, s: ops.reserve(h, EngineConfig(reserve_kib=0), 300 * MIB, s),
                 lambda h, s: ops.free_memory_range(h, EngineConfig(reserve_kib=0), 300 * MIB,
                                                    300 * MIB, s)[1]):
        mine = OpStats()
        assert call(host(), mine) is mine
        assert mine.iterations >= 1 and mine.elapsed_s > 0
    mine = OpStats()
    grow = SimulatedHost(100 * MIB, [sim(1, 1000 * MIB, dmin=100 * MIB, dmax=2000 * MIB)])
    assert ops.balance(grow, EngineConfig(reserve_kib=0), mine) is mine
    assert mine.iterations >= 1


def test_range_reservation_exactly_at_its_minimum() -> None:
    # one guest 1000 MiB (min 100), nothing free, a newcomer asking exactly
    # 900 MiB: the guest goes to its minimum and exactly 900 MiB are free.
    host = SimulatedHost(0, [sim(1, 1000 * MIB, dmin=100 * MIB)])
    amount, _ = ops.free_memory_range(host, EngineConfig(reserve_kib=0), 900 * MIB, 900 * MIB)
    assert amount == 900 * MIB and host.snapshot().free_mem_kib == 900 * MIB


def test_ideal_share_counts_domains_at_dynamic_min_as_zero() -> None:
    # tiny numbers, so that one KiB shows: A at its dynamic_min gives 0, B
    # (0..3, holding 3) gives 3; the newcomer (0..1) gets 1 * 3 // (3 + 1) = 0.
    host = Host((Domain(1, True, 5, 5, 5, 5, 5, 0), Domain(2, True, 0, 3, 3, 3, 3, 0)), 0)
    assert ops.ideal_new_domain_kib(host, EngineConfig(reserve_kib=0), 0, 1) == 0
    assert ops.ideal_new_domain_kib(Host(host.domains, 1), EngineConfig(reserve_kib=0), 0, 1) == 1


def test_counts_add_up_when_raising() -> None:
    # two guests (1000, max 2000) share 1000 MiB free: both raised to 1500
    host = Writes(1000 * MIB, [sim(1, 1000 * MIB, dmin=100 * MIB, dmax=2000 * MIB),
                               sim(2, 1000 * MIB, dmin=100 * MIB, dmax=2000 * MIB)])
    stats = ops.balance(host, EngineConfig(reserve_kib=0))
    assert stats is not None
    assert sorted(host.calls) == [("maxmem", 1, 1500 * MIB), ("maxmem", 2, 1500 * MIB),
                                  ("target", 1, 1500 * MIB), ("target", 2, 1500 * MIB)]


class TimedWrites(Writes):
    def set_target(self, domid: int, kib: int) -> None:
        self.times.append((self.now(), domid))
        super().set_target(domid, kib)

    times: list


def test_the_operation_follows_the_configured_two_phase() -> None:
    # nothing free; A (1500) must free 500 for B (500) to grow to 1000, at
    # 100 MiB/s: with two phases B's target is written only once A is done
    # (after 5 s); without, both at once.
    def host() -> TimedWrites:
        h = TimedWrites(0, [sim(1, 1500 * MIB, dmin=100 * MIB, dmax=2000 * MIB),
                            sim(2, 500 * MIB, dmin=100 * MIB, dmax=2000 * MIB)])
        h.times = []
        return h

    two = host()
    ops.balance(two, EngineConfig(reserve_kib=0))
    assert two.times[0] == (0.0, 1) and two.times[1][1] == 2 and 5.0 <= two.times[1][0] <= 5.5
    one = host()
    ops.balance(one, EngineConfig(reserve_kib=0, two_phase=False))
    assert one.times == [(0.0, 1), (0.0, 2)]
