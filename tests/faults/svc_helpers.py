"""A Memory service on the virtual-time simulated host, for the fault tests."""

from __future__ import annotations

from squeezed.engine import EngineConfig
from squeezed.service import MemoryService
from squeezed.sim.drivers import Ideal
from squeezed.sim.virtual.host import SimulatedHost, VirtualDomain

GIB_KIB = 1 << 20
RESERVE_KIB = 8 * 1024


def guest(domid: int, actual_kib: int, min_kib: int) -> VirtualDomain:
    return VirtualDomain(domid=domid, dynamic_min_kib=min_kib, dynamic_max_kib=actual_kib,
                         target_kib=actual_kib, actual_kib=actual_kib, maxmem_kib=actual_kib,
                         driver=Ideal(1 << 20))


def service(free_kib: int = GIB_KIB, guests: int = 2) -> tuple[MemoryService, SimulatedHost]:
    """`guests` guests of 2 GiB that can each give 1 GiB, `free_kib` free."""
    host = SimulatedHost(free_kib, [guest(i, 2 * GIB_KIB, GIB_KIB) for i in range(1, guests + 1)])
    return MemoryService(host, EngineConfig(reserve_kib=RESERVE_KIB)), host
