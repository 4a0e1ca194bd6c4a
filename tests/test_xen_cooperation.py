"""CooperationTracker alone (no xenstore): when a domain is flagged
uncooperative and when the flag goes. Times are hand-picked."""

from __future__ import annotations

from squeezed.engine.model import Domain, Host
from squeezed.xen.cooperation import CooperationTracker

AFTER_S = 20.0


def host(*domains: Domain) -> Host:
    return Host(tuple(domains), 0)


def off_target(domid: int) -> Domain:  # asked for 500, still at 1000
    return Domain(domid, True, 100, 500, 1000, 1000, 1000)


def on_target(domid: int) -> Domain:
    return Domain(domid, True, 100, 500, 1000, 500, 1000)


def never(_domid: int) -> bool:
    return False


def test_flagged_after_missing_its_target_for_longer_than_the_limit():
    t = CooperationTracker()
    assert t.update(host(off_target(1)), {1}, 100.0, AFTER_S, never) == ([], [])
    assert t.update(host(off_target(1)), {1}, 120.0, AFTER_S, never) == ([], [])  # 20 s: not yet
    assert t.update(host(off_target(1)), {1}, 120.5, AFTER_S, never) == ([1], [])
    assert t.uncooperative == {1}
    assert t.update(host(off_target(1)), {1}, 130.0, AFTER_S, never) == ([], [])  # flagged once
    assert t.update(host(on_target(1)), {1}, 131.0, AFTER_S, never) == ([], [1])
    assert t.uncooperative == set()


def test_a_flag_found_in_xenstore_holds_until_the_target_is_reached():
    t = CooperationTracker()
    assert t.update(host(off_target(2)), {2}, 5.0, AFTER_S, lambda d: d == 2) == ([], [])
    assert t.uncooperative == {2}  # already flagged: nothing to write
    assert t.update(host(on_target(2)), {2}, 6.0, AFTER_S, lambda d: d == 2) == ([], [2])


def test_gone_domains_are_forgotten():
    t = CooperationTracker()
    t.update(host(off_target(3)), {3}, 0.0, AFTER_S, never)
    t.update(host(off_target(3)), {3}, 30.0, AFTER_S, never)
    assert t.uncooperative == {3}
    assert t.update(host(), set(), 31.0, AFTER_S, never) == ([], [])
    assert t.uncooperative == set() and t.last_cooperative_s == {}
    t.update(host(off_target(4)), {4}, 0.0, AFTER_S, never)
    t.forget(set())
    assert t.last_cooperative_s == {}
