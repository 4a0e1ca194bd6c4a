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
from squeezed.engine.model import Host
from squeezed.engine.operations import EngineConfig
from squeezed.sim.drivers import Ideal, Stuck
from squeezed.sim.virtual import SimDomain, SimulatedHost

MIB = 1024
ENGINE = "squeezed.engine"


def sim(domid: int, actual: int, *, dmin: int, dmax: int | None = None, target: int | None = None,
        maxmem: int | None = None, driver=None, can_balloon: bool = True) -> SimDomain:
    return SimDomain(domid=domid, dynamic_min_kib=dmin,
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
