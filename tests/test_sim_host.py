"""The simulated host: driver physics, hypervisor checks, reservation accounting."""

from __future__ import annotations

import pytest

from squeezed.backend import Reservation
from squeezed.engine import EngineConfig, reserve
from squeezed.errors import UnknownReservation
from squeezed.sim.drivers import (
    Ceiling,
    Dom0Drift,
    Floor,
    Ideal,
    Intermittent,
    Short,
    SlowStart,
    Stuck,
    make_driver,
)
from squeezed.sim.virtual.clock import VirtualClock
from squeezed.sim.virtual.host import SimulatedHost, SimulationTimeout, VirtualDomain

BIG_KIB = 10**9


def dom(domid: int, actual: int, target: int | None = None, driver=None, **kw) -> VirtualDomain:
    target = actual if target is None else target
    kw.setdefault("maxmem_kib", max(actual, target))
    return VirtualDomain(
        domid=domid,
        dynamic_min_kib=kw.pop("dynamic_min_kib", 0),
        dynamic_max_kib=kw.pop("dynamic_max_kib", 10**7),
        target_kib=target,
        actual_kib=actual,
        driver=driver if driver is not None else Ideal(1000),
        **kw,
    )


def run_driver(driver, seconds: float, dt_s: float, actual: int, target: int,
               maxmem: int = BIG_KIB, free: int = BIG_KIB) -> int:
    t = 0.0
    steps = round(seconds / dt_s)
    for i in range(1, steps + 1):
        t1 = i * dt_s
        actual = driver.step(t1, t1 - t, actual, target, maxmem, free)
        t = t1
    return actual


# ---- drivers -------------------------------------------------------------------------


@pytest.mark.parametrize("dt_s", [0.001, 0.01, 0.03, 0.5, 1.0])
def test_ideal_moves_at_its_rate_whatever_the_tick(dt_s):
    # 10 KiB/s moves 0.1 KiB per 10 ms tick: fractions must carry over.
    assert run_driver(Ideal(10), 3.0, dt_s, 1000, 0) == 970
    assert run_driver(Ideal(10), 3.0, dt_s, 1000, 2000) == 1030


def test_ideal_stops_exactly_at_target():
    assert run_driver(Ideal(1000), 5.0, 0.01, 1000, 1500) == 1500
    assert run_driver(Ideal(1000), 5.0, 0.01, 1500, 1000) == 1000


def test_allocation_bounded_by_maxmem_and_free_memory():
    assert run_driver(Ideal(1000), 5.0, 0.01, 1000, 3000, maxmem=1200) == 1200
    assert Ideal(1000).step(1.0, 1.0, 1000, 3000, BIG_KIB, 37) == 1037
    assert Ideal(1000).step(1.0, 1.0, 1000, 3000, BIG_KIB, -5) == 1000  # nothing free
    # Above maxmem: not forced down, just cannot grow.
    assert Ideal(1000).step(1.0, 1.0, 1500, 3000, 1200, BIG_KIB) == 1500


def test_floor_will_not_free_below_its_floor():
    assert run_driver(Floor(100, 1250), 10.0, 0.01, 1500, 1000) == 1250
    assert run_driver(Floor(100, 1250), 10.0, 0.01, 1200, 1000) == 1200  # already below
    assert run_driver(Floor(100, 1250), 10.0, 0.01, 1000, 1500) == 1500  # allocates freely


def test_ceiling_cannot_allocate_above_its_ceiling():
    assert run_driver(Ceiling(100, 1500), 10.0, 0.01, 1400, 2000) == 1500
    assert run_driver(Ceiling(100, 1500), 10.0, 0.01, 1600, 2000) == 1600
    assert run_driver(Ceiling(100, 1500), 10.0, 0.01, 1600, 1000) == 1000


def test_stuck_never_moves():
    assert run_driver(Stuck(), 10.0, 0.01, 1600, 1000) == 1600


def test_intermittent_works_then_stalls():
    d = Intermittent(100, 1.0)
    assert d.worked_s(0.5) == 0.5
    assert d.worked_s(1.5) == 1.0
    assert d.worked_s(2.5) == 1.5
    assert run_driver(d, 1.0, 0.01, 1000, 0) == 900
    assert run_driver(d, 2.0, 0.01, 1000, 0) == 900  # stalled during [1, 2)
    assert run_driver(d, 3.0, 0.25, 1000, 0) == 800


def test_slow_start_waits_then_works():
    assert run_driver(SlowStart(100, 2.0), 2.0, 0.01, 1000, 0) == 1000
    assert run_driver(SlowStart(100, 2.0), 3.0, 0.01, 1000, 0) == 900


def test_short_stops_short_both_ways():
    assert run_driver(Short(100, 64), 30.0, 0.01, 2000, 1000) == 1064
    assert run_driver(Short(100, 64), 30.0, 0.01, 1000, 2000) == 1936
    assert run_driver(Short(100, 64), 30.0, 0.01, 1050, 1000) == 1050  # already within


def test_dom0_drift_moves_unasked_both_ways():
    assert run_driver(Dom0Drift(0, 50), 2.0, 0.01, 1000, 1000) == 1100
    assert run_driver(Dom0Drift(0, -50), 2.0, 0.01, 1000, 1000) == 900
    assert run_driver(Dom0Drift(0, 50), 2.0, 0.01, 1000, 1000, maxmem=1030) == 1030
    assert run_driver(Dom0Drift(0, -50), 100.0, 0.5, 1000, 1000) == 0


def test_make_driver_coerces_amounts_to_int():
    d = make_driver("floor", rate_kib_s=100, floor_kib=1250.0)
    assert d == Floor(100.0, 1250) and isinstance(d.floor_kib, int)


# ---- host physics -----------------------------------------------------------------------


def test_wait_advances_virtual_time_and_applies_drivers():
    h = SimulatedHost(0, [dom(1, 2000, 1000, Ideal(100))])
    assert h.now() == 0.0
    h.wait(2.5)
    assert h.now() == pytest.approx(2.5)
    s = h.snapshot()
    assert s.domain(1).memory_actual_kib == 1750
    assert s.free_mem_kib == 250


def test_total_memory_is_conserved():
    h = SimulatedHost(500, [dom(1, 2000, 1000, Ideal(300)), dom(2, 1000, 2500, Ideal(700)),
                            dom(3, 800, 800, Dom0Drift(0, 40), maxmem_kib=5000)])
    total = h.total_kib()
    for _ in range(50):
        h.wait(0.1)
        assert h.total_kib() == total
        assert h.physical_free_kib >= 0


def test_allocation_is_clamped_to_free_memory_not_a_violation():
    # Two greedy domains, 100 KiB free between them.
    h = SimulatedHost(100, [dom(1, 1000, 5000, Ideal(1000)), dom(2, 1000, 5000, Ideal(1000))])
    h.wait(5)
    assert h.physical_free_kib == 0
    assert sum(d.actual_kib for d in h.domains) == 2100
    assert h.violations == []


def test_frees_are_seen_before_allocations_within_a_tick():
    h = SimulatedHost(0, [dom(2, 1000, 2000, Ideal(100)), dom(1, 2000, 1000, Ideal(100))],
                      tick_s=0.5)
    h.wait(0.5)
    assert h.domain(2).actual_kib == 1050  # got what domain 1 freed in the same tick


def test_target_above_maxmem_is_a_violation():
    h = SimulatedHost(0, [dom(1, 1000, maxmem_kib=1000)])
    h.set_target(1, 1001)
    assert [v["kind"] for v in h.violations] == ["target_above_maxmem"]
    assert h.violations[0]["domid"] == 1
    assert set(h.violations[0]) == {"time_s", "domid", "kind", "detail"}


def test_maxmem_below_target_is_a_violation():
    h = SimulatedHost(0, [dom(1, 1000)])
    h.set_maxmem(1, 999)
    assert [v["kind"] for v in h.violations] == ["maxmem_below_target"]
    h.set_target(1, 900)
    h.set_maxmem(1, 900)  # lowering target first is fine
    assert len(h.violations) == 1


def test_writes_to_a_destroyed_domain_are_ignored():
    h = SimulatedHost(0, [dom(1, 1000)])
    h.destroy_domain(1)
    h.set_target(1, 5)
    h.set_maxmem(1, 5)
    assert h.violations == [] and not h.domain_exists(1)
    assert h.physical_free_kib == 1000


def test_host_free_negative_is_a_violation_once_per_episode():
    h = SimulatedHost(100, [])
    h.add_reservation(Reservation("s", "r", 150))
    h.wait(1)
    h.consume(0)
    assert [v["kind"] for v in h.violations] == ["host_free_negative"]
    h.remove_reservation("s", "r")
    h.add_reservation(Reservation("s", "r2", 200))
    assert [v["kind"] for v in h.violations] == ["host_free_negative"] * 2


def test_consume_beyond_free_is_clamped_and_a_violation():
    h = SimulatedHost(100, [])
    assert h.consume(150) == 100
    assert h.physical_free_kib == 0
    assert [v["kind"] for v in h.violations] == ["allocation_beyond_free"]
    h.release(40)
    assert h.physical_free_kib == 40


def test_destroy_at_lands_exactly_and_frees_memory():
    h = SimulatedHost(0, [dom(1, 1000, driver=Stuck(), destroy_at_s=1.234)], tick_s=0.1)
    h.wait(1.0)
    assert h.domain_exists(1)
    h.wait(1.0)
    assert not h.domain_exists(1)
    assert h.events == [{"time_s": pytest.approx(1.234), "domid": 1, "kind": "destroyed",
                         "freed_kib": 1000}]
    assert h.snapshot().free_mem_kib == 1000


def test_engine_writes_cause_no_violation():
    h = SimulatedHost(0, [dom(1, 3000, driver=Ideal(1000), dynamic_min_kib=1000,
                              dynamic_max_kib=3000),
                          dom(2, 3000, driver=Ideal(500), dynamic_min_kib=1000,
                              dynamic_max_kib=3000)])
    reserve(h, EngineConfig(reserve_kib=100), 2000)
    assert h.violations == []
    assert h.snapshot().free_mem_kib >= 2100


def test_deadline_raises_simulation_timeout():
    h = SimulatedHost(0, [])
    h.deadline_s = 1.0
    h.wait(0.5)
    with pytest.raises(SimulationTimeout):
        h.wait(0.6)


def test_idle_time_is_cheap_and_the_series_stays_bounded():
    h = SimulatedHost(5000, [dom(1, 1000, 2000, Ideal(1))], max_samples=100)
    h.wait(10_000)
    assert h.domain(1).actual_kib == 2000
    assert len(h.series) <= 100
    assert h.series[0].t_s == 0.0 and h.series[-1].t_s > 9000


def test_series_records_free_and_domains():
    h = SimulatedHost(500, [dom(1, 1000, 1200, Ideal(100))])
    h.wait(3)
    first, last = h.series[0], h.series[-1]
    assert first.host_free_kib == 500 and first.domains == ((1, 1200, 1000, 1200),)
    assert last.host_free_kib == 300 and last.domains == ((1, 1200, 1200, 1200),)


def test_virtual_clock_never_goes_back():
    c = VirtualClock(5.0)
    c.sleep_until(3.0)
    assert c.now() == 5.0
    c.advance(1.5)
    assert c.now() == 6.5


def test_describe_has_the_facts():
    h = SimulatedHost(100, [dom(1, 1000)])
    h.add_reservation(Reservation("s", "r", 30))
    d = h.describe()
    assert d["physical_free_kib"] == 100 and d["free_kib"] == 70 and d["reserved_kib"] == 30
    assert d["total_kib"] == 1100
    assert d["domains"][0]["driver"] == {"kind": "ideal", "rate_kib_s": 1000}
    assert d["reservations"][0]["reservation_id"] == "r"


# ---- reservations ------------------------------------------------------------------------


def test_untransferred_reservations_reduce_free_memory():
    h = SimulatedHost(1000, [])
    h.add_reservation(Reservation("s", "a", 300))
    h.add_reservation(Reservation("t", "b", 200))
    assert h.snapshot().free_mem_kib == 500
    assert {r.reservation_id for r in h.reservations()} == {"a", "b"}
    h.remove_reservation("s", "a")
    h.remove_reservation("s", "a")  # idempotent
    assert h.snapshot().free_mem_kib == 800


def test_transfer_to_an_existing_domain_counts_once_through_the_domain():
    h = SimulatedHost(1000, [])
    r = Reservation("s", "r1", 600)
    h.add_reservation(r)
    h.create_domain(7, target_kib=600, maxmem_kib=0, driver=Ideal(100))
    assert h.snapshot().free_mem_kib == 400  # still the reservation
    h.transfer_reservation(r, 7)
    assert h.reservations()[0].in_transfer_domid == 7
    assert h.domain(7).maxmem_kib == 600
    assert h.domain_reservation_id(7) == "r1"
    assert h.domain(7).initial_reservation_kib == 600
    assert h.snapshot().free_mem_kib == 400  # now the unallocated initial reservation
    h.wait(3)  # the builder allocates 300 KiB
    assert h.domain(7).actual_kib == 300
    assert h.physical_free_kib == 700
    assert h.snapshot().free_mem_kib == 400  # never both, never neither
    h.set_can_balloon(7, True)  # booted: the domain's own allocation accounts for it
    assert h.snapshot().free_mem_kib == 700
    assert h.violations == []


def test_transfer_before_the_domain_exists_keeps_counting_until_it_does():
    h = SimulatedHost(1000, [])
    r = Reservation("s", "r1", 600)
    h.add_reservation(r)
    h.transfer_reservation(r, 9)
    assert not h.domain_exists(9) and h.domain_reservation_id(9) is None
    assert h.snapshot().free_mem_kib == 400
    d = h.create_domain(9, target_kib=600, actual_kib=250)
    assert d.initial_reservation_kib == 600 and d.reservation_id == "r1"
    assert d.maxmem_kib == 600
    assert h.physical_free_kib == 750
    assert h.snapshot().free_mem_kib == 400  # 750 free - 350 still to allocate


def test_destroying_the_domain_makes_its_reservation_count_again():
    h = SimulatedHost(1000, [])
    r = Reservation("s", "r1", 600)
    h.add_reservation(r)
    h.create_domain(3, target_kib=600, actual_kib=600)
    h.transfer_reservation(r, 3)
    assert h.snapshot().free_mem_kib == 400
    h.destroy_domain(3)
    assert h.snapshot().free_mem_kib == 400  # 1000 free again, reservation still held
    h.remove_reservation("s", "r1")
    assert h.snapshot().free_mem_kib == 1000


def test_transfer_of_an_unknown_reservation_fails():
    h = SimulatedHost(1000, [])
    with pytest.raises(UnknownReservation):
        h.transfer_reservation(Reservation("s", "nope", 1), 1)


def test_create_domain_beyond_free_memory_is_clamped_and_a_violation():
    h = SimulatedHost(100, [])
    d = h.create_domain(1, target_kib=500, actual_kib=500)
    assert d.actual_kib == 100 and h.physical_free_kib == 0
    assert [v["kind"] for v in h.violations] == ["allocation_beyond_free"]
    with pytest.raises(ValueError):
        h.create_domain(1, target_kib=1)
