"""squeezed's production Xen backend (cffi binding, xenstore client, XenHost)
driven as xenopsd drives it, on the simulated Xen host built from the real
interfaces. Real time, but fast guests: each test takes well under a second."""

from __future__ import annotations

import threading
import time

import pytest

from squeezed.engine.operations import EngineConfig
from squeezed.errors import DomainsRefusedToCooperate, NoReservation
from squeezed.service import MemoryService
from squeezed.sim.drivers import Stuck
from squeezed.sim.xenhost.host import SimulatedXenHost, ideal_driver
from squeezed.xen.host import DOMAIN_KEYS, XenHost, XenHostError
from squeezed.xen.xenctrl import XenCtrl
from squeezed.xen.xenstore import Watcher, XenstoreClient, XenstoreError
from squeezed.xen.xs_wire import Op

GIB = 1 << 20  # in KiB
MIB = 1 << 10
FAST = ideal_driver(8 * GIB)  # KiB/s


stuck = Stuck()


def wait_for(pred, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


class Env:
    def __init__(self, tmp, monkeypatch, free_gib=1):
        # total = xen + dom0 + guests + free
        self.sim = SimulatedXenHost(tmp, total_kib=(1 + 3 + free_gib) * GIB + 256 * MIB,
                                    dom0_kib=1 * GIB)
        self.sim.start()
        for k, v in self.sim.env().items():
            monkeypatch.setenv(k, v)
        self.sim.add_running_domain(1, actual_kib=2 * GIB, target_kib=2 * GIB,
                                    dynamic_min_kib=1 * GIB, dynamic_max_kib=2 * GIB, driver=FAST)
        self.sim.add_running_domain(2, actual_kib=1 * GIB, target_kib=1 * GIB,
                                    dynamic_min_kib=512 * MIB, dynamic_max_kib=1 * GIB,
                                    driver=FAST)
        self.xc = XenCtrl.open(self.sim.libxenctrl_path)
        self.xs = XenstoreClient(self.sim.xenstored_path)
        self.cfg = EngineConfig(stuck_after_s=0.5, uncooperative_after_s=1.0)
        self.host = XenHost(self.xc, self.xs, uncooperative_after_s=1.0)
        self.svc = MemoryService(self.host, self.cfg)
        self.stop = threading.Event()
        self.watcher = Watcher(self.sim.xenstored_path)
        self.wt = threading.Thread(target=self.host.run_watcher, args=(self.watcher, self.stop),
                                   daemon=True)
        self.wt.start()

    def close(self):
        self.stop.set()
        self.wt.join(5)
        self.watcher.close()
        self.xs.close()
        self.sim.stop()

    def domain(self, domid):
        return self.host.snapshot().domain(domid)


@pytest.fixture
def env(short_tmp, monkeypatch):
    e = Env(short_tmp, monkeypatch)
    yield e
    e.close()


def test_vm_start_as_xenopsd_does(env):
    sid = env.svc.login("dbg", "xenopsd")
    free0 = env.host.snapshot().free_mem_kib
    rid, kib = env.svc.reserve_memory_range("dbg", sid, 1 * GIB, 2 * GIB)
    assert 1 * GIB <= kib <= 2 * GIB
    host = env.host.snapshot()
    # The reservation is held back from host free memory, and came from ballooning.
    assert host.free_mem_kib >= env.cfg.reserve_kib - 8
    for d in host.domains:
        assert d.dynamic_min_kib <= d.target_kib <= d.dynamic_max_kib
    assert sum(d.memory_actual_kib for d in host.domains) < 3 * GIB
    # xenopsd creates the domain, transfers the reservation, builds it.
    env.sim.create_domain(5, target_kib=kib, dynamic_min_kib=1 * GIB, dynamic_max_kib=2 * GIB,
                          driver=FAST)
    env.svc.transfer_reservation_to_domain("dbg", sid, rid, 5)
    assert env.xs.read("/local/domain/5/memory/initial-reservation") == str(kib)
    # Counted once: while building, through the domain's unallocated part.
    mid = env.host.snapshot().free_mem_kib
    assert abs(mid - host.free_mem_kib) < 64 * MIB
    assert wait_for(lambda: env.sim.guests[5].booted)
    assert env.svc.query_reservation_of_domain("dbg", sid, 5) == rid
    env.svc.delete_reservation("dbg", sid, rid)
    env.svc.delete_reservation("dbg", sid, rid)  # idempotent, as upstream
    after = env.host.snapshot()
    assert abs(after.free_mem_kib - host.free_mem_kib) < 64 * MIB, (free0, host, after)
    d5 = after.domain(5)
    assert d5 is not None and d5.can_balloon


def test_shutdown_then_balance_gives_memory_back(env):
    sid = env.svc.login("dbg", "xenopsd")
    rid, kib = env.svc.reserve_memory_range("dbg", sid, 1 * GIB, 1 * GIB)
    env.svc.delete_reservation("dbg", sid, rid)
    squeezed_total = sum(d.target_kib for d in env.host.snapshot().domains)
    env.svc.balance_memory("dbg")
    host = env.host.snapshot()
    assert sum(d.target_kib for d in host.domains) > squeezed_total
    # Every guest is back at dynamic_max: all there is to give back was given.
    for d in host.domains:
        assert d.target_kib == d.dynamic_max_kib
        assert abs(d.memory_actual_kib - d.target_kib) <= d.inaccuracy_kib


def test_stuck_guest_refuses_and_becomes_uncooperative(env):
    env.sim.guests[1].driver = stuck
    env.sim.guests[2].driver = stuck
    sid = env.svc.login("dbg", "xenopsd")
    with pytest.raises(DomainsRefusedToCooperate) as e:
        env.svc.reserve_memory("dbg", sid, 1 * GIB)
    assert set(e.value.domids) == {1, 2}

    def marked():
        env.host.snapshot()
        return env.xs.read("/local/domain/1/memory/uncooperative") is not None

    assert wait_for(marked, 5)
    env.sim.guests[1].driver = FAST
    env.sim.guests[2].driver = FAST

    def cleared():
        env.host.snapshot()
        return env.xs.read("/local/domain/1/memory/uncooperative") is None

    assert wait_for(cleared, 5)


def test_no_reservation_and_restart_keeps_table(env):
    sid = env.svc.login("dbg", "xenopsd")
    with pytest.raises(NoReservation):
        env.svc.query_reservation_of_domain("dbg", sid, 1)
    rid = env.svc.reserve_memory("dbg", sid, 256 * MIB)
    free_with = env.host.snapshot().free_mem_kib
    # A new daemon on the same host finds the reservation, counted once.
    host2 = XenHost(env.xc, XenstoreClient(env.sim.xenstored_path))
    svc2 = MemoryService(host2, env.cfg)
    assert [r.reservation_id for r in host2.reservations()] == [rid]
    assert abs(host2.snapshot().free_mem_kib - free_with) < 16 * MIB
    svc2.delete_reservation("dbg", sid, rid)
    assert host2.reservations() == []


def test_write_to_destroyed_domain_is_harmless(env):
    env.sim.destroy_domain(2)
    env.host.set_target(2, 12345)
    env.host.set_maxmem(2, 12345)
    assert env.xs.read("/local/domain/2") is None
    assert env.host.snapshot().domain(2) is None


def test_batch_of_targets_written_only_where_the_domain_lives(env):
    env.sim.destroy_domain(2)
    env.host.set_targets({1: 1536 * MIB, 2: 12345})
    assert env.xs.read("/local/domain/1/memory/target") == str(1536 * MIB)
    assert env.xs.read("/local/domain/2") is None  # not resurrected
    assert env.host.snapshot().domain(1).target_kib == 1536 * MIB
    with pytest.raises(XenHostError):
        env.host.set_targets({1: 1024 * MIB, 3: -1})
    assert env.xs.read("/local/domain/1/memory/target") == str(1536 * MIB)


def test_committed_targets_of_a_failed_batch_are_cached(env, monkeypatch):
    # A batch that fails part-way (domain 2's write refused: xenstored's quota,
    # say) after domain 1's commit: the snapshot must know domain 1's new
    # target, or _give_back could lower maxmem below it and blame the guest.
    assert env.host.snapshot().domain(1).target_kib == 2 * GIB
    real = env.xs.pipeline

    def pipeline(requests, **kw):
        epoch, out = real(requests, **kw)
        return epoch, [XenstoreError("EQUOTA", r.path)
                       if r.op == Op.WRITE and "/domain/2/" in (r.path or "") else o
                       for r, o in zip(requests, out, strict=True)]

    monkeypatch.setattr(env.xs, "pipeline", pipeline)
    # No watch event will tell the cache (stands for a busy watcher).
    env.stop.set()
    env.wt.join(5)
    env.host.cache.watching = True
    with pytest.raises(XenHostError) as e:
        env.host.set_targets({1: 1536 * MIB, 2: 768 * MIB})
    assert e.value.__cause__.written == {1: True}
    assert env.xs.read("/local/domain/1/memory/target") == str(1536 * MIB)  # committed
    assert env.host.snapshot().domain(1).target_kib == 1536 * MIB  # and known


def test_a_domains_keys_are_read_in_one_pipeline(env, monkeypatch):
    # Only this thread's calls: the watcher thread reads too, whenever it likes.
    calls = []
    me = threading.get_ident()
    real_read, real_read_many = env.xs.read, env.xs.read_many

    def read(path):
        if threading.get_ident() == me:
            calls.append(("read", path))
        return real_read(path)

    def read_many(paths):
        if threading.get_ident() == me:
            calls.append(("read_many", len(paths)))
        return real_read_many(paths)

    monkeypatch.setattr(env.xs, "read", read)
    monkeypatch.setattr(env.xs, "read_many", read_many)
    keys = env.host.refresh_domain(1)
    assert calls == [("read_many", len(DOMAIN_KEYS))]
    assert keys["memory/target"] == env.sim.xenstored.read("/local/domain/1/memory/target")
    assert keys["memory/uncooperative"] is None


def test_manage_domain_zero_publishes_its_policy_and_balloons_it(short_tmp, monkeypatch):
    e = Env(short_tmp, monkeypatch)
    try:
        host = XenHost(e.xc, e.xs, manage_domain_zero=True)
        host.configure_domain_zero(512 * MIB * 1024, None)  # min 512 MiB, max "auto"
        base = "/local/domain/0"
        assert e.xs.read(f"{base}/memory/dynamic-min") == str(512 * MIB)
        assert e.xs.read(f"{base}/memory/dynamic-max") == str(1 * GIB)  # its allocation
        assert e.xs.read(f"{base}/memory/target") == str(1 * GIB)
        assert e.xs.read(f"{base}/control/feature-balloon") == "1"
        dom0 = host.snapshot().domain(0)
        assert dom0 is not None and dom0.can_balloon
        # "auto" keeps what an earlier run chose
        e.xs.write(f"{base}/memory/dynamic-max", str(900 * MIB))
        host.configure_domain_zero(512 * MIB * 1024, None)
        assert e.xs.read(f"{base}/memory/dynamic-max") == str(900 * MIB)
        # get_domain_zero_policy with "auto" answers domain 0's current total,
        # as upstream does (memory_server.ml), not the published dynamic-max.
        from squeezed.service import Dom0Policy

        svc = MemoryService(host, e.cfg, Dom0Policy(True, 512 * MIB * 1024, None),
                            dom0_total_bytes=host.dom0_total_bytes)
        assert svc.get_domain_zero_policy("t") == ("Auto_balloon",
                                                  (512 * MIB * 1024, host.dom0_total_bytes()))
        assert host.dom0_total_bytes() == 1 * GIB * 1024
        # Without manage-domain-zero, domain 0 is left alone.
        assert XenHost(e.xc, e.xs).snapshot().domain(0) is None
    finally:
        e.close()


def test_watch_refresh_never_lets_an_older_read_win(env):
    """A refresh whose read raced one of our own writes reads again."""
    host = env.host
    host.refresh_domain(1)
    real_read = host._read_keys
    raced = []

    def read_racing_a_write(domid):
        keys = real_read(domid)  # the old target
        # Only this thread's refresh of domain 1 (the watcher thread refreshes too).
        if not raced and domid == 1 and threading.current_thread() is threading.main_thread():
            raced.append(1)
            host.set_target(domid, 1536 * MIB)  # our write lands after that read
        return keys

    host._read_keys = read_racing_a_write
    try:
        host.refresh_domain(1)
    finally:
        host._read_keys = real_read
    assert env.xs.read("/local/domain/1/memory/target") == str(1536 * MIB)
    assert host._cache[1].keys["memory/target"] == str(1536 * MIB)
