"""Unit tests of the proportional policy and of one squeezer step."""

from __future__ import annotations

from squeezed.engine.model import Domain, Host, direction_symbol, has_hit_target
from squeezed.engine.policy import max_free_kib, proportional_targets
from squeezed.engine.squeezer import Squeezer, StucknessMonitor, Verdict


def d(domid: int, dmin: int, dmax: int, actual: int, target: int | None = None,
      inacc: int = 0, can_balloon: bool = True) -> Domain:
    target = actual if target is None else target
    return Domain(domid, can_balloon, dmin, target, dmax, actual, target, inacc)


def at_least(kib: int):
    return lambda free: free >= kib


# ---- model ---------------------------------------------------------------------------


def test_hit_target_within_inaccuracy():
    assert has_hit_target(4, 1004, 1000) and has_hit_target(4, 996, 1000)
    assert not has_hit_target(4, 1005, 1000)
    assert direction_symbol(4, 1010, 1000) == "v"
    assert direction_symbol(4, 990, 1000) == "^"
    assert direction_symbol(4, 1002, 1000) == "x"


def test_min_freeable_allows_for_inaccuracy_twice():
    assert d(1, 1000, 2000, 1500, inacc=4).min_freeable_kib == 492
    # Linear down to dynamic_min (see the regression test below), flat below it.
    assert d(1, 1000, 2000, 1005, inacc=4).min_freeable_kib == -3
    assert d(1, 1000, 2000, 1000, inacc=4).min_freeable_kib == -8
    assert d(1, 1000, 2000, 900, inacc=4).min_freeable_kib == -8
    assert d(1, 1000, 2000, 900, inacc=0).min_freeable_kib == 0


def test_range_is_never_negative():
    assert d(1, 2000, 1000, 1500).range_kib == 0


# ---- policy --------------------------------------------------------------------------


def test_max_free_is_free_plus_everything_freeable():
    doms = [d(1, 1000, 2000, 1500, inacc=4), d(2, 2500, 4500, 3500, inacc=4)]
    assert max_free_kib(100, doms) == 100 + 492 + 992


def test_surplus_shared_so_every_domain_sits_at_the_same_fraction():
    doms = [d(1, 1000, 2000, 2000), d(2, 2000, 5000, 5000)]  # ranges 1000 and 3000
    # max free = 0 + 1000 + 3000 = 4000; aim 2000 leaves surplus 2000 = half the range.
    assert proportional_targets(0, doms, 2000) == {1: 1500, 2: 3500}


def test_surplus_beyond_the_total_range_gives_everyone_dynamic_max():
    doms = [d(1, 1000, 2000, 1000), d(2, 2000, 5000, 2000)]
    assert proportional_targets(10_000, doms, 0) == {1: 2000, 2: 5000}


def test_no_surplus_gives_everyone_dynamic_min():
    doms = [d(1, 1000, 2000, 2000), d(2, 2000, 5000, 5000)]
    assert proportional_targets(0, doms, 4000) == {1: 1000, 2: 2000}
    assert proportional_targets(0, doms, 9000) == {1: 1000, 2: 2000}  # impossible aim


def test_integer_shares_never_exceed_the_surplus():
    doms = [d(i, 0, 3, 3) for i in range(7)]  # total range 21
    targets = proportional_targets(0, doms, 21 - 10)  # surplus 10
    assert sum(targets.values()) <= 10
    assert all(0 <= t <= 3 for t in targets.values())


def test_zero_range_domains_stay_put():
    doms = [d(1, 1500, 1500, 1500), d(2, 1000, 2000, 2000)]
    assert proportional_targets(0, doms, 500)[1] == 1500


def test_no_domains_no_targets():
    assert proportional_targets(100, [], 0) == {}


# ---- squeezer step -----------------------------------------------------------------------


def test_first_phase_only_frees():
    # Domain 1 over its share must free; domain 2 under it must allocate.
    host = Host((d(1, 1000, 3000, 3000), d(2, 1000, 3000, 1000)), free_mem_kib=0)
    dec = Squeezer().step(host, 0, at_least(0), 0.0)
    assert dec.verdict is Verdict.ADJUST and not dec.allocating
    assert [(a.domid, a.new_target_kib) for a in dec.actions] == [(1, 2000)]


def test_second_phase_allocates_once_nobody_has_to_free():
    host = Host((d(1, 1000, 3000, 2000), d(2, 1000, 3000, 1000)), free_mem_kib=1000)
    dec = Squeezer().step(host, 0, at_least(0), 0.0)
    assert dec.allocating
    assert [(a.domid, a.new_target_kib) for a in dec.actions] == [(2, 2000)]


def test_without_two_phase_both_move_at_once():
    host = Host((d(1, 1000, 3000, 3000), d(2, 1000, 3000, 1000)), free_mem_kib=0)
    dec = Squeezer(two_phase=False).step(host, 0, at_least(0), 0.0)
    assert sorted((a.domid, a.new_target_kib) for a in dec.actions) == [(1, 2000), (2, 2000)]


def test_waits_while_targets_are_not_reached():
    host = Host((d(1, 1000, 2000, 1800, target=1500),), free_mem_kib=200)
    dec = Squeezer().step(host, 500, at_least(500), 0.0)
    assert dec.verdict is Verdict.ADJUST and dec.actions == ()


def test_success_once_targets_reached_and_condition_holds():
    host = Host((d(1, 1000, 2000, 1500),), free_mem_kib=500)
    dec = Squeezer().step(host, 500, at_least(500), 0.0)
    assert dec.verdict is Verdict.SUCCESS
    assert dec.max_free_kib == 1000 and dec.active == frozenset({1})


def test_failure_without_anyone_to_blame():
    host = Host((d(1, 1000, 2000, 1000),), free_mem_kib=0)
    dec = Squeezer().step(host, 500, at_least(500), 0.0)
    assert dec.verdict is Verdict.FAILED and dec.blamed == ()


def test_stuck_domain_declared_inactive_and_blamed():
    sq = Squeezer(StucknessMonitor(stuck_after_s=5.0))
    stuck = d(2, 1000, 3000, 3000, target=1000)
    host = Host((d(1, 1000, 2000, 1000), stuck), free_mem_kib=0)
    assert sq.step(host, 2000, at_least(2000), 0.0).verdict is Verdict.ADJUST
    dec = sq.step(host, 2000, at_least(2000), 4.9)
    assert 2 in dec.active
    dec = sq.step(host, 2000, at_least(2000), 5.1)
    assert [x.domid for x in dec.declared_inactive] == [2]
    assert 2 not in dec.active
    dec = sq.step(host, 2000, at_least(2000), 5.2)
    assert dec.verdict is Verdict.FAILED and dec.blamed == (2,)


def test_progress_restarts_the_stuck_clock():
    m = StucknessMonitor(stuck_after_s=5.0)
    m.update(Host((d(1, 0, 9000, 3000, target=1000),), 0), 0.0)
    m.update(Host((d(1, 0, 9000, 2990, target=1000),), 0), 4.0)
    m.update(Host((d(1, 0, 9000, 2990, target=1000),), 0), 8.9)
    assert m.is_active(1)
    assert m.next_deadline_s(Host((d(1, 0, 9000, 2990, target=1000),), 0)) == 9.0
    m.update(Host((d(1, 0, 9000, 2990, target=1000),), 0), 9.1)
    assert not m.is_active(1)
    m.update(Host((d(1, 0, 9000, 2980, target=1000),), 0), 9.2)  # moves again
    assert m.is_active(1)


def test_moving_away_from_target_is_not_progress():
    m = StucknessMonitor(stuck_after_s=1.0)
    m.update(Host((d(1, 0, 9000, 3000, target=1000),), 0), 0.0)
    m.update(Host((d(1, 0, 9000, 3100, target=1000),), 0), 1.5)
    assert not m.is_active(1)


def test_time_idle_at_target_does_not_count_towards_stuck():
    # Regression: a domain that waited at its target for longer than the stuck
    # timer (e.g. through a whole freeing phase) was declared stuck on the very
    # first poll after being given a new target, before it could move.
    m = StucknessMonitor(stuck_after_s=5.0)
    m.update(Host((d(2, 1000, 3000, 1000),), 0), 0.0)
    m.update(Host((d(2, 1000, 3000, 1000),), 0), 10.0)  # at target all along
    m.update(Host((d(2, 1000, 3000, 1000, target=2000),), 0), 10.02)  # new target, not moved yet
    assert m.is_active(2)
    m.update(Host((d(2, 1000, 3000, 1000, target=2000),), 0), 15.1)
    assert not m.is_active(2)


def test_non_balloonable_domains_are_neither_used_nor_blamed():
    host = Host((d(0, 0, 9000, 5000, can_balloon=False), d(1, 1000, 2000, 2000)), free_mem_kib=0)
    sq = Squeezer()
    dec = sq.step(host, 1000, at_least(1000), 0.0)
    assert [a.domid for a in dec.actions] == [1] and 0 not in dec.active
    host = Host((d(0, 0, 9000, 5000, can_balloon=False), d(1, 1000, 2000, 1000)), free_mem_kib=500)
    dec = sq.step(host, 1000, at_least(1000), 20.0)
    assert dec.verdict is Verdict.FAILED and dec.blamed == ()


def test_unchanged_targets_are_not_rewritten():
    host = Host((d(1, 1000, 2000, 1500, target=1500),), free_mem_kib=0)
    dec = Squeezer().step(host, 500, at_least(500), 0.0)
    assert [(a.domid, a.new_target_kib) for a in dec.actions] == [(1, 1000)]
    host = Host((d(1, 1000, 2000, 1500, target=1000),), free_mem_kib=0)
    assert Squeezer().step(host, 500, at_least(500), 0.0).actions == ()


def test_a_lone_domain_near_dynamic_min_does_not_chase_its_own_target():
    # Regression: with min_freeable clamped at 0 the targets alternated 3, 5,
    # 3, 5... forever as the domain followed them (its moves changed host
    # free memory but not its freeable amount, so the surplus followed it).
    targets = set()
    for actual in range(0, 10):
        host = Host((d(1, 0, 9, actual, inacc=4),), free_mem_kib=9 - actual)
        targets.add(proportional_targets(host.free_mem_kib, host.domains, 1)[1])
    assert targets == {0}
