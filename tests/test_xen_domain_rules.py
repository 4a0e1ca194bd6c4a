"""Issue 10: domains as upstream's squeeze_xen.ml treats them, on the
simulated Xen host through the production backend: dying domains, unbooted
domains without memory/initial-reservation, domain 0's maxmem under
manage-domain-zero, and the scrubber wait (fewer than 1024 pages left,
bounded and logged)."""

from __future__ import annotations

import logging

import pytest

from squeezed.xen import host as host_mod
from squeezed.xen.host import XenHost
from tests.faults.xenenv import GIB, MIB, XenEnv, wait_for


@pytest.fixture
def env(short_tmp, monkeypatch):
    e = XenEnv(short_tmp, monkeypatch)
    yield e
    e.close()


def test_unbooted_domain_without_initial_reservation_is_skipped(env):
    free0 = env.host.snapshot().free_mem_kib
    env.sim.create_domain(5, target_kib=1 * GIB, dynamic_min_kib=1 * GIB,
                          dynamic_max_kib=1 * GIB)
    assert wait_for(lambda: 5 in {di.domid for di in env.xc.domain_list()})
    host = env.host.snapshot()
    assert host.domain(5) is None  # as upstream: Enoent, skipped
    assert host.free_mem_kib == free0  # and nothing reserved for it
    # Once xenopsd transfers a reservation it is pinned and its reservation counts.
    env.client.write("/local/domain/5/memory/initial-reservation", str(512 * MIB))
    host = env.host.snapshot()
    d5 = host.domain(5)
    assert d5 is not None and not d5.can_balloon


def test_dying_domain_is_read_while_its_keys_exist(env):
    env.sim.hv.set_state(2, dying=True)
    d2 = env.host.snapshot().domain(2)
    assert d2 is not None and d2.target_kib == 1 * GIB  # as upstream: not filtered out
    env.sim.xenstored.rm("/local/domain/2")
    assert wait_for(lambda: env.host.snapshot().domain(2) is None)


@pytest.mark.parametrize("manage", [True, False])
def test_domain_zero_maxmem_follows_manage_domain_zero(env, manage):
    env.sim.hv.set_max_pages(0, (64 * GIB) // 4)  # dom0 often has no real ceiling
    h = XenHost(env.xc, env.client, manage_domain_zero=manage)
    if manage:
        h.configure_domain_zero(512 << 20, None)
    host = h.snapshot()
    (dom0,) = [di for di in env.xc.domain_list() if di.domid == 0]
    if manage:
        d0 = host.domain(0)
        assert d0 is not None and d0.can_balloon and d0.memory_max_kib == 1 * GIB
        assert dom0.max_pages * 4 == 1 * GIB  # lowered to its target, as upstream
    else:
        assert host.domain(0) is None
        assert dom0.max_pages * 4 == 64 * GIB  # never touched


def test_scrub_wait_follows_upstreams_rule_and_is_bounded(env, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="squeezed.xen.host")
    waits: list[float] = []
    monkeypatch.setattr(env.host, "wait", lambda s: waits.append(s))
    phys = env.xc.physinfo()
    # 1023 pages to scrub: upstream does not wait (1023 / 1024 = 0).
    env.sim.hv.set_physinfo(phys.total_pages, phys.free_pages - 1023, 1023)
    env.host.snapshot()
    assert waits == []
    # 1024 pages: it waits, but not for ever; giving up is logged.
    env.sim.hv.set_physinfo(phys.total_pages, phys.free_pages - 1024, 1024)
    clock = [0.0]

    def tick(s: float) -> None:
        waits.append(s)
        clock[0] += s

    monkeypatch.setattr(env.host, "wait", tick)
    monkeypatch.setattr(env.host, "_clock", lambda: clock[0])
    env.host.snapshot()
    assert waits and sum(waits) >= host_mod.MAX_SCRUB_WAIT_S
    assert any("scrubber still has 1024 pages" in r.getMessage() for r in caplog.records)
