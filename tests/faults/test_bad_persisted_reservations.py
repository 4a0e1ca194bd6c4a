"""Issue 11 #2: /squeezed/state/evil/r1 = -3221225472 let squeezed grant
4 GiB with 1.1 GiB free; an amount >= 2^63 broke get_state and every later
reserve. Bad persisted amounts are rejected at load: logged once, shown by
describe() (diagnostics), never counted."""

from __future__ import annotations

import logging

import pytest

from squeezed.errors import CannotFreeThisMuchMemory
from tests.faults.xenenv import GIB, XenEnv


@pytest.fixture
def env(short_tmp, monkeypatch):
    e = XenEnv(short_tmp, monkeypatch)
    yield e
    e.close()


@pytest.mark.parametrize("amount", ["-3221225472", str(2**63), str(2**64 + 5), "12.5", "1e9",
                                    str(1 << 40)])
def test_bad_amount_is_never_counted(env, caplog, amount):
    caplog.set_level(logging.WARNING, logger="squeezed.xen.host")
    free_before = env.host.snapshot().free_mem_kib
    env.sim.xenstored.write("/squeezed/state/evil/r1", amount)
    env.sim.xenstored.write("/squeezed/state/good/r2", str(256 * 1024))
    env.restart_host()  # the table is loaded once, at start
    host = env.host.snapshot()
    assert host.free_mem_kib == free_before - 256 * 1024  # only the good one counts
    assert [r.reservation_id for r in env.host.reservations()] == ["r2"]
    env.svc.get_state("t")  # still works
    bad = env.host.describe()["invalid_reservations"]
    assert list(bad) == ["/squeezed/state/evil/r1"]
    assert "reservation /squeezed/state/evil/r1 ignored" in env.svc.get_diagnostics("t")
    env.host.snapshot()
    lines = [r for r in caplog.records if "evil/r1" in r.getMessage()]
    assert len(lines) == 1
    # At most 1 GiB free + 1.5 GiB from the guests: 4 GiB cannot be granted.
    sid = env.svc.login("t", "xenopsd")
    with pytest.raises(CannotFreeThisMuchMemory):
        env.svc.reserve_memory("t", sid, 4 * GIB)
