"""Issue 10 (found on real Xen): after Domains_refused_to_cooperate, the
guests that did balloon stayed at dynamic-min until the next periodic pass
(7-10 s). A failed operation gives the memory back at once."""

from __future__ import annotations

import pytest

from squeezed.errors import DomainsRefusedToCooperate
from squeezed.sim.drivers import Stuck
from tests.faults.xenenv import GIB, XenEnv


def test_refused_reservation_gives_memory_back_before_returning(short_tmp, monkeypatch):
    env = XenEnv(short_tmp, monkeypatch, driver2=Stuck())
    try:
        sid = env.svc.login("t", "xenopsd")
        # 1 GiB free + 1 GiB from domain 1 < 2 GiB + the reserve: domain 2
        # (stuck) must give too.
        with pytest.raises(DomainsRefusedToCooperate) as ei:
            env.svc.reserve_memory("t", sid, 2 * GIB)
        assert ei.value.domids == [2]
        # Domain 1 had ballooned down; the moment the error is returned its
        # target is back at dynamic-max (what a balance gives it).
        assert env.target(1) == 2 * GIB
    finally:
        env.close()
