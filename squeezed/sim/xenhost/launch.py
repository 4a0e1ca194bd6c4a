"""`squeezed --simulate [SCENARIO.toml]`: the simulated Xen host built from
a scenario's [host] and [[domain]] tables (its steps are ignored), or from
the built-in demo. The scenario's [host] reserved_kib and tolerance_kib and
its [engine] stuck_after_s, uncooperative_after_s, min_poll_s and max_poll_s
apply unless configured (the daemon applies them); the rest of the daemon's
constants come from its own configuration."""

from __future__ import annotations

from pathlib import Path

from squeezed.sim.scenario import Scenario, demo_path, load
from squeezed.sim.xenhost.host import SimulatedXenHost

XEN_KIB = 256 << 10  # what the hypervisor keeps for itself on the simulated host


def simulated_xen_host(sc: Scenario, run_dir: str | Path) -> SimulatedXenHost:
    dom0 = next((d for d in sc.domains if d.domid == 0), None)
    dom0_kib = dom0.actual_kib if dom0 else 1 << 20
    guests = [d for d in sc.domains if d.domid != 0]
    total_kib = XEN_KIB + dom0_kib + sum(d.actual_kib for d in guests) + sc.host.free_kib
    sim = SimulatedXenHost(run_dir, total_kib=total_kib, xen_kib=XEN_KIB, dom0_kib=dom0_kib)
    sim.start()
    for d in guests:
        g = sim.add_running_domain(
            d.domid, actual_kib=d.actual_kib, target_kib=d.target_kib,
            dynamic_min_kib=d.dynamic_min_kib, dynamic_max_kib=d.dynamic_max_kib,
            maxmem_kib=d.maxmem_kib, driver=d.driver, can_balloon=d.can_balloon,
        )
        g.destroy_at_s = d.destroy_at_s
    return sim


def start_simulated_host(scenario_path: str | None, run_dir: str | Path) -> SimulatedXenHost:
    return simulated_xen_host(load(scenario_path or demo_path()), run_dir)
