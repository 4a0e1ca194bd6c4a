"""Issue 11 #9: a domain destroyed in the middle of an operation is expected
(xenopsd shuts VMs down while others start): logged at INFO, never ERROR,
and the operation carries on without it. The destruction is placed exactly
between the snapshot that saw the domain and the writes to it."""

from __future__ import annotations

import logging

from tests.faults.xenenv import GIB, XenEnv


def test_domain_destroyed_between_snapshot_and_write_is_info(short_tmp, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    env = XenEnv(short_tmp, monkeypatch)
    try:
        real_set_target = env.host.set_target
        destroyed = []

        def set_target(domid: int, target_kib: int) -> None:
            if domid == 2 and not destroyed:
                destroyed.append(domid)
                env.sim.destroy_domain(2)  # its 1 GiB comes back to the host
            real_set_target(domid, target_kib)

        real_set_targets = env.host.set_targets

        def set_targets(targets: dict[int, int]) -> None:  # the engine's batch of targets
            if 2 in targets and not destroyed:
                destroyed.append(2)
                env.sim.destroy_domain(2)
            real_set_targets(targets)

        monkeypatch.setattr(env.host, "set_target", set_target)
        monkeypatch.setattr(env.host, "set_targets", set_targets)
        sid = env.svc.login("t", "xenopsd")
        rid = env.svc.reserve_memory("t", sid, 2 * GIB)  # needs domain 2, or its memory
        assert rid and destroyed == [2]
        bad = [r.getMessage() for r in caplog.records
               if r.levelno >= logging.ERROR and r.name.startswith("squeezed")]
        assert bad == []
        assert any("domain 2" in r.getMessage() and r.levelno == logging.INFO
                   and ("gone" in r.getMessage() or "destroyed" in r.getMessage())
                   for r in caplog.records)
    finally:
        env.close()
