"""Issue 11 #1: values in a domain's xenstore keys that no arithmetic should
see (negative, min > max, above the host's total, not integers, an absurd
memory-offset) once sent reserve_memory_range into an endless loop. Such a
domain is left alone (neither ballooned nor counted on), flagged in
describe() (diagnostics) and logged once; every operation has an overall
deadline after which it fails with Internal_error and lets the next one in."""

from __future__ import annotations

import logging

import pytest

from squeezed.errors import InternalError
from squeezed.sim.drivers import Stuck
from squeezed.xen.host import XenHost
from tests.faults.xenenv import GIB, MIB, XenEnv


@pytest.fixture
def env(short_tmp, monkeypatch):
    e = XenEnv(short_tmp, monkeypatch)
    yield e
    e.close()


BAD_VALUES = [
    ("memory/dynamic-min", "-1000000000", "outside"),
    ("memory/memory-offset", "4611686018427387904", "outside"),
    ("memory/dynamic-max", str(1 << 62), "outside"),
    ("memory/dynamic-min", "1_000", "not an integer"),
    ("memory/target", "lots", "not an integer"),
    ("memory/dynamic-min", str(2 * GIB), "above"),  # above dynamic-max (1 GiB)
]


@pytest.mark.parametrize(("key", "value", "why"), BAD_VALUES)
def test_domain_with_bad_value_is_left_alone_flagged_and_logged_once(env, caplog, key, value,
                                                                     why):
    caplog.set_level(logging.WARNING, logger="squeezed.xen.host")
    target2 = env.target(2)
    env.sim.xenstored.write(f"/local/domain/2/{key}", value)
    before = env.sim.xenstored.read("/local/domain/2/memory/target")
    sid = env.svc.login("t", "xenopsd")
    # Needs 0.5 GiB (+ the reserve) from the guests: domain 1 alone can give it.
    _, kib = env.svc.reserve_memory_range("t", sid, 3 * GIB // 2, 2 * GIB)
    assert kib >= 3 * GIB // 2
    env.svc.balance_memory("t")
    env.host.observe()
    assert env.sim.xenstored.read("/local/domain/2/memory/target") == before  # left alone
    assert env.host.snapshot().domain(2) is None  # not counted on
    invalid = env.host.describe()["invalid_domains"]
    assert set(invalid) == {2} and key in invalid[2] and why in invalid[2]
    assert f"2 left alone: {key}" in env.svc.get_diagnostics("t")
    lines = [r for r in caplog.records if "domain 2 left alone" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    # Repaired: balanced again, and the flag goes.
    env.sim.xenstored.write(f"/local/domain/2/{key}", {
        "memory/dynamic-min": str(512 * MIB), "memory/dynamic-max": str(1 * GIB),
        "memory/memory-offset": "0", "memory/target": str(target2)}[key])
    env.svc.balance_memory("t")
    assert env.host.describe()["invalid_domains"] == {}
    assert env.host.snapshot().domain(2) is not None


def test_operation_deadline_fails_with_internal_error_and_releases_the_lock(short_tmp,
                                                                            monkeypatch):
    # Domain 2's driver never moves, and would be declared stuck only after 60 s.
    env = XenEnv(short_tmp, monkeypatch, driver2=Stuck())
    try:
        env.with_cfg(stuck_after_s=60.0, operation_timeout_s=0.5)
        sid = env.svc.login("t", "xenopsd")
        # 1 GiB free + 1 GiB from domain 1 is not enough: domain 2 must give too.
        with pytest.raises(InternalError) as ei:
            env.svc.reserve_memory("t", sid, 3 * GIB // 2 + 256 * MIB)
        assert "timed out" in ei.value.message and "operation-timeout" in ei.value.message
        assert not env.svc._op_lock.locked()
        # The next caller gets in, and the memory squeezed for the failed one came back.
        env.with_cfg(operation_timeout_s=300.0)
        rid = env.svc.reserve_memory("t", sid, 256 * MIB)
        assert rid
    finally:
        env.close()


def test_reservation_of_a_domain_left_alone_still_counts(env):
    """An unbooted domain with a bad initial-reservation is left alone; the
    reservation transferred to it must not vanish from the accounting."""
    env.sim.create_domain(5, target_kib=256 * MIB, dynamic_min_kib=256 * MIB,
                          dynamic_max_kib=256 * MIB)
    free0 = env.host.snapshot().free_mem_kib
    env.client.write("/squeezed/state/xenopsd/r5", str(256 * MIB))
    env.client.write("/squeezed/state/xenopsd/r5/in-transfer", "5")
    # The table is loaded once, at start: written behind squeezed's back, it is
    # found by the next squeezed started on the host.
    restarted = XenHost(env.xc, env.client)
    assert [r.reservation_id for r in restarted.reservations()] == ["r5"]
    # Beyond the host's total (not "-5", which the simulated builder takes as
    # built at once, so that the guest boots before the snapshot looks).
    env.client.write("/local/domain/5/memory/initial-reservation", str(64 * GIB))
    host = restarted.snapshot()
    assert host.domain(5) is None and 5 in restarted.describe()["invalid_domains"]
    assert host.free_mem_kib == free0 - 256 * MIB
