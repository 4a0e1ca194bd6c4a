"""Issue 10: Cannot_free_this_much_memory carries exactly upstream's
arguments. squeeze.ml raises (required_mem_kib, host.free_mem_kib) where
required is the aim (kib + reserve; for a range, the proportional ideal +
reserve) and free is the host's free memory at the last iteration, i.e. once
every domain has been ballooned to dynamic_min; memory_server.ml subtracts
the reserve from both. Every expected value below is computed by hand.
The engine raises its own CannotFree with the gross amounts; the service's
wire error carries them net."""

from __future__ import annotations

import pytest

from squeezed.engine.errors import CannotFree
from squeezed.engine.model import Domain, Host
from squeezed.engine.operations import EngineConfig, free_memory_range, reserve
from squeezed.errors import CannotFreeThisMuchMemory
from squeezed.service import MemoryService
from squeezed.sim.virtual.host import SimulatedHost

R = 50  # the kept reserve, KiB


class FakeIO:
    """One balloonable domain whose driver stops `short_kib` above any lower target."""

    def __init__(self, free_kib: int, actual_kib: int, dmin_kib: int, dmax_kib: int,
                 short_kib: int = 0) -> None:
        self.free_kib, self.actual_kib, self.short_kib = free_kib, actual_kib, short_kib
        self.dmin_kib, self.dmax_kib = dmin_kib, dmax_kib
        self.target_kib = self.maxmem_kib = actual_kib
        self.t = 0.0
        self.targets_written: list[int] = []

    def snapshot(self) -> Host:
        return Host((Domain(1, True, self.dmin_kib, self.target_kib, self.dmax_kib,
                            self.actual_kib, self.maxmem_kib),), self.free_kib)

    def set_target(self, domid: int, target_kib: int) -> None:
        self.targets_written.append(target_kib)
        self.target_kib = target_kib
        new = target_kib + self.short_kib if target_kib < self.actual_kib else target_kib
        self.free_kib += self.actual_kib - new
        self.actual_kib = new

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None:
        self.maxmem_kib = maxmem_kib

    def now(self) -> float:
        return self.t

    def wait(self, seconds: float) -> None:
        self.t += seconds


CFG = EngineConfig(reserve_kib=R)


def test_reserve_impossible_fails_fast_with_upstreams_arguments():
    io = FakeIO(free_kib=100, actual_kib=1000, dmin_kib=500, dmax_kib=1000)
    with pytest.raises(CannotFree) as ei:
        reserve(io, CFG, 700)
    # required = 700 + 50; free with the domain at dynamic_min = 100 + 500
    assert (ei.value.needed_kib, ei.value.free_kib) == (750, 600)
    assert io.targets_written == []  # failing fast touched nothing


def test_range_impossible_needed_is_the_proportional_ideal():
    io = FakeIO(free_kib=100, actual_kib=1000, dmin_kib=500, dmax_kib=1000)
    with pytest.raises(CannotFree) as ei:
        free_memory_range(io, CFG, 700, 900)
    # ideal: max free = 100 + (1000 - 500 - 2*4) = 592, surplus 592 - 50 = 542,
    # ranges 500 + 200 = 700, newcomer 700 + 200 * 542 / 700 = 854 (upstream
    # truncates 154.86); needed = 854 + 50. Free at dynamic_min: 600.
    assert (ei.value.needed_kib, ei.value.free_kib) == (904, 600)


def test_failure_after_squeezing_reports_the_last_free_memory():
    # Possible on paper (250 + 500 = 750), but the driver stops 4 KiB short.
    io = FakeIO(free_kib=250, actual_kib=1000, dmin_kib=500, dmax_kib=1000, short_kib=4)
    with pytest.raises(CannotFree) as ei:
        reserve(io, CFG, 700)
    assert io.targets_written[0] == 500
    assert (ei.value.needed_kib, ei.value.free_kib) == (750, 250 + 496)


def test_service_nets_out_the_reserve_as_memory_server_does():
    host = SimulatedHost(free_kib=1100)  # the domain's 1000 KiB come out of it
    host.create_domain(1, dynamic_min_kib=500, dynamic_max_kib=1000, target_kib=1000,
                       actual_kib=1000, can_balloon=True)
    svc = MemoryService(host, CFG)
    with pytest.raises(CannotFreeThisMuchMemory) as ei:
        svc.reserve_memory_range("t", "s", 700, 900)
    assert (ei.value.needed_kib, ei.value.free_kib) == (854, 550)
