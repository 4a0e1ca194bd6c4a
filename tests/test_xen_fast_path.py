"""Issue 12: XenHost's fast path (`quick_free_kib`) counts host free memory
exactly as a full snapshot does, on many random hosts, against a figure
computed here by hand from the host's own make-up (free and scrub pages, less
every reservation that still counts, less the unallocated part of each
building domain's initial reservation). And it answers only when it knows
that every balloonable domain is at its target: otherwise None.

In-memory stand-ins for libxenctrl and xenstore; no sockets, no sleeps."""

from __future__ import annotations

import collections
import contextlib
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest

from squeezed.backend import Reservation
from squeezed.xen.host import STATE_PATH, XenHost
from squeezed.xen.xenctrl import DomainInfo, PhysInfo
from tests.faults.xenenv import XenEnv

T = TypeVar("T")
MIB = 1024  # KiB
GIB = 1024 * MIB
TOTAL_KIB = 64 * GIB


class FakeXs:
    """A xenstore tree as a dict of paths; directories are implied."""

    def __init__(self) -> None:
        self.nodes: dict[str, str] = {}
        self.requests = 0

    def read(self, path: str) -> str | None:
        self.requests += 1
        if path in self.nodes:
            return self.nodes[path]
        return "" if any(p.startswith(path + "/") for p in self.nodes) else None

    def write(self, path: str, value: str) -> None:
        self.requests += 1
        self.nodes[path] = value

    def mkdir(self, path: str) -> None:
        self.nodes.setdefault(path, "")

    def rm(self, path: str) -> None:
        self.requests += 1
        for p in [p for p in self.nodes if p == path or p.startswith(path + "/")]:
            del self.nodes[p]

    def directory(self, path: str) -> list[str]:
        self.requests += 1
        names = {p[len(path) + 1:].split("/")[0] for p in self.nodes if p.startswith(path + "/")}
        return sorted(names)

    def transaction(self, fn: Callable[[Any], T], max_retries: int = 16) -> T:
        return fn(self)


@dataclass
class FakeXc:
    domains: dict[int, DomainInfo]
    phys: PhysInfo
    shadow_mib: dict[int, int] = field(default_factory=dict)
    domain_lists: int = 0
    maxmem_calls: list[tuple[int, int]] = field(default_factory=list)

    def physinfo(self) -> PhysInfo:
        return self.phys

    def domain_list(self) -> list[DomainInfo]:
        self.domain_lists += 1
        return [self.domains[d] for d in sorted(self.domains)]

    def domain_info(self, domid: int) -> DomainInfo | None:
        return self.domains.get(domid)

    def set_maxmem_kib(self, domid: int, kib: int) -> None:
        self.maxmem_calls.append((domid, kib))
        self.domains[domid] = replace(self.domains[domid], max_pages=kib // 4)

    def shadow_allocation_mib(self, domid: int) -> int:
        return self.shadow_mib.get(domid, 0)


@dataclass
class RandomHost:
    xc: FakeXc
    xs: FakeXs
    expected_free_kib: int  # by hand, below
    all_at_target: bool
    building: bool
    to_left_alone: bool  # a reservation transferred to a booted domain left alone


def info(domid: int, tot_kib: int, max_kib: int, hvm: bool = False) -> DomainInfo:
    return DomainInfo(domid, False, False, False, hvm, tot_kib // 4, max_kib // 4)


def random_host(rng: random.Random) -> RandomHost:
    xs = FakeXs()
    doms: dict[int, DomainInfo] = {0: info(0, 2 * GIB, 2 * GIB)}  # dom0, not managed
    shadow: dict[int, int] = {}
    unaccounted_kib = 0
    all_at_target, building = True, False
    existing, left_alone = [], []
    for domid in range(1, rng.randint(1, 12)):
        base = f"/local/domain/{domid}"
        kind = rng.choice(["at-target", "at-target", "at-target", "moving", "no-balloon",
                           "unbooted-bare", "building", "bad"])
        hvm = rng.random() < 0.5
        overhead_kib = 1024 if hvm else 0
        xs.write(f"{base}/domain-type", "hvm" if hvm else "pv")
        target_kib = rng.randrange(256, 4096) * MIB
        offset_kib = rng.choice([0, 0, 4 * MIB, 8 * MIB])
        if kind == "unbooted-bare":  # created, no reservation transferred yet: not ours
            doms[domid] = info(domid, 0, 0, hvm)
        elif kind == "building":
            initial_kib = target_kib + offset_kib
            built_kib = rng.randrange(0, initial_kib // 4 + 1) * 4
            shadow[domid] = rng.choice([0, 1, 8]) if hvm else 0
            xs.write(f"{base}/memory/initial-reservation", str(initial_kib))
            doms[domid] = info(domid, built_kib, initial_kib + overhead_kib, hvm)
            # What the builder has yet to allocate (its shadow pool counts as allocated).
            unaccounted_kib += max(0, initial_kib - built_kib - shadow[domid] * 1024)
            building = True
        else:
            actual_kib = target_kib + (rng.choice([-64, 64]) * MIB if kind == "moving" else 0)
            for k, v in (("memory/target", target_kib), ("memory/memory-offset", offset_kib),
                         ("memory/dynamic-min", target_kib // 2),
                         ("memory/dynamic-max", target_kib + GIB), ("data/updated", 1)):
                xs.write(f"{base}/{k}", str(v))
            if kind != "no-balloon":
                xs.write(f"{base}/control/feature-balloon", "1")
            if kind == "bad":  # left alone, not counted on
                xs.write(f"{base}/memory/dynamic-min", str(target_kib + 2 * GIB))
                left_alone.append(domid)
            if kind == "moving":
                all_at_target = False
            doms[domid] = info(domid, actual_kib + offset_kib,
                               max(actual_kib, target_kib) + offset_kib + overhead_kib, hvm)
        existing.append(domid)
    # Reservations: untransferred; transferred to a domain that exists (counted
    # through it), to one that is gone, or to one left alone (counted here).
    counted_kib = 0
    to_left_alone = False
    for i in range(rng.randint(0, 6)):
        kib = rng.randrange(1, 2048) * MIB
        to = rng.choice([None, None, *existing, 99, *left_alone])
        path = f"{STATE_PATH}/s{i % 2}/r{i}"
        xs.write(path, str(kib))
        if to is not None:
            xs.write(f"{path}/in-transfer", str(to))
        if to is None or to not in doms or to in left_alone:
            counted_kib += kib
        to_left_alone = to_left_alone or to in left_alone
    free_pages = rng.randrange(0, 16 * GIB // 4)
    scrub_pages = rng.randrange(0, 1024)
    xc = FakeXc(doms, PhysInfo(TOTAL_KIB // 4, free_pages, scrub_pages), shadow)
    expected = (free_pages + scrub_pages) * 4 - counted_kib - unaccounted_kib
    return RandomHost(xc, xs, expected, all_at_target, building, to_left_alone)


def watched(xc: FakeXc, xs: FakeXs) -> XenHost:
    """A XenHost whose key cache is as the watcher leaves it: every domain read."""
    host = XenHost(xc, xs)  # type: ignore[arg-type]
    for domid in xc.domains:
        host.refresh_domain(domid)
    host.cache.watching = True
    return host


@pytest.mark.parametrize("seed", range(300))
def test_quick_free_is_the_full_snapshots_figure(seed):
    rng = random.Random(seed)
    h = random_host(rng)
    host = watched(h.xc, h.xs)
    assert host.quick_free_kib() is None  # no snapshot yet: nothing known
    assert host.snapshot().free_mem_kib == h.expected_free_kib
    quick = host.quick_free_kib()
    if h.all_at_target and not h.to_left_alone:  # domains being built: looked at afresh
        assert quick == h.expected_free_kib
    else:
        # Something moves; or whether a reservation counts hangs on the
        # allocation now of a domain left alone: no fast answer.
        assert quick is None
        return
    # Without reading a domain: memory taken behind squeezed's back (dom0,
    # not managed), and a reservation added then removed, counted at once
    # from the table in memory. Memory given back is not: who gave it?
    unbooted = [d for d in h.xc.domains
                if d != 0 and h.xs.read(f"/local/domain/{d}/data/updated") is None]
    lists, requests = h.xc.domain_lists, h.xs.requests
    taken = min(1000, h.xc.phys.free_pages)
    h.xc.phys = replace(h.xc.phys, free_pages=h.xc.phys.free_pages - taken)
    assert host.quick_free_kib() == h.expected_free_kib - 4 * taken
    # No xenstore request but one read of each unbooted domain's initial-reservation.
    assert h.xs.requests == requests + len(unbooted)
    host.add_reservation(Reservation("new", "r", 3 * MIB))
    assert host.quick_free_kib() == h.expected_free_kib - 4 * taken - 3 * MIB
    assert host.snapshot().free_mem_kib == h.expected_free_kib - 4 * taken - 3 * MIB
    host.remove_reservation("new", "r")
    assert host.quick_free_kib() == h.expected_free_kib - 4 * taken
    assert h.xc.domain_lists == lists + 1  # the one snapshot's
    h.xc.phys = replace(h.xc.phys, scrub_pages=h.xc.phys.scrub_pages + 1)
    assert host.quick_free_kib() is None  # a page given back: the full path looks
    h.xc.phys = replace(h.xc.phys, scrub_pages=h.xc.phys.scrub_pages - 1)
    # A domain being built allocates more: counted at once, without a snapshot.
    building = [d for d, di in h.xc.domains.items()
                if h.xs.read(f"/local/domain/{d}/memory/initial-reservation") is not None]
    if building:
        di = h.xc.domains[building[0]]
        h.xc.domains[building[0]] = replace(di, tot_pages=di.tot_pages + 10)
        h.xc.phys = replace(h.xc.phys, free_pages=h.xc.phys.free_pages - 10)
        quick = host.quick_free_kib()
        assert quick == host.snapshot().free_mem_kib
        assert quick in (h.expected_free_kib - 4 * taken, h.expected_free_kib - 4 * taken - 40)
    # A restarted squeezed finds the same table.
    assert watched(h.xc, h.xs).reservations() == host.reservations()


def test_no_fast_answer_once_anything_changed():
    rng = random.Random(7)
    hosts = (random_host(rng) for _ in range(100))
    h = next(x for x in hosts if x.all_at_target and not x.building and len(x.xc.domains) > 2)
    host = watched(h.xc, h.xs)
    d = next(d for d in host.snapshot().domains if d.can_balloon and d.domid != 0)
    assert host.quick_free_kib() == h.expected_free_kib
    # A target changes (seen through its watch): a snapshot must look, and
    # finds the domain moving.
    h.xs.write(f"/local/domain/{d.domid}/memory/target", str(d.target_kib - 64 * MIB))
    host.refresh_key(d.domid, "memory/target")
    assert host.quick_free_kib() is None
    host.snapshot()
    assert host.quick_free_kib() is None
    # The guest reaches its new target: the next snapshot leaves the mark again.
    di = h.xc.domains[d.domid]
    h.xc.domains[d.domid] = replace(di, tot_pages=di.tot_pages - 64 * MIB // 4)
    host.snapshot()
    assert host.quick_free_kib() == h.expected_free_kib
    # The echo of a value already known changes nothing.
    host.refresh_key(d.domid, "memory/target")
    assert host.quick_free_kib() == h.expected_free_kib
    # A domain goes (the watcher forgets it), or the watcher stops.
    del h.xc.domains[d.domid]
    host.forget_gone(set(h.xc.domains))
    assert host.quick_free_kib() is None
    host.snapshot()
    assert host.quick_free_kib() is not None
    host.cache.watching = False
    assert host.quick_free_kib() is None


def test_no_fast_answer_while_the_scrubber_is_busy_or_after_a_transfer():
    rng = random.Random(11)
    h = next(x for x in (random_host(rng) for _ in range(100))
             if x.all_at_target and not x.building)
    host = watched(h.xc, h.xs)
    host.snapshot()
    assert host.quick_free_kib() is not None
    h.xc.phys = replace(h.xc.phys, scrub_pages=1024)  # a snapshot would wait for it
    assert host.quick_free_kib() is None
    h.xc.phys = replace(h.xc.phys, scrub_pages=0)
    assert host.quick_free_kib() is not None
    r = Reservation("x", "r", 64 * MIB)
    host.add_reservation(r)
    h.xc.domains[50] = info(50, 0, 0)
    host.transfer_reservation(r, 50)
    assert host.quick_free_kib() is None  # a domain is being built


def test_a_domain_being_built_is_counted_without_a_snapshot():
    """xenopsd's VM start: a reservation, the domain created, the reservation
    transferred to it, the builder allocating: counted once all along, and
    the fast answer agrees with a full snapshot at each step."""
    rng = random.Random(5)
    h = next(x for x in (random_host(rng) for _ in range(100))
             if x.all_at_target and not x.to_left_alone)
    h.xc.domains[50] = info(50, 0, 0)  # created empty
    h.xs.write("/local/domain/50/domain-type", "pv")
    host = watched(h.xc, h.xs)
    host.snapshot()
    free_kib = host.quick_free_kib()
    assert free_kib == h.expected_free_kib
    r = Reservation("xenopsd", "r50", 64 * MIB)
    host.add_reservation(r)
    assert host.quick_free_kib() == free_kib - 64 * MIB
    host.transfer_reservation(r, 50)
    lists = h.xc.domain_lists
    assert host.quick_free_kib() == free_kib - 64 * MIB
    di = h.xc.domains[50]
    h.xc.domains[50] = replace(di, tot_pages=16 * MIB // 4)  # the builder at work
    h.xc.phys = replace(h.xc.phys, free_pages=h.xc.phys.free_pages - 16 * MIB // 4)
    assert host.quick_free_kib() == free_kib - 64 * MIB
    assert h.xc.domain_lists == lists
    assert host.snapshot().free_mem_kib == free_kib - 64 * MIB


def test_maxmem_hypercall_only_when_it_changes_maxmem():
    h = random_host(random.Random(3))
    host = watched(h.xc, h.xs)
    host.snapshot()
    booted = [d.domid for d in host.snapshot().domains if d.can_balloon]
    assert booted
    h.xc.maxmem_calls.clear()
    for domid in booted:
        d = host.snapshot().domain(domid)
        assert d is not None
        host.set_maxmem(domid, d.memory_max_kib)  # what Xen has: no hypercall
    assert h.xc.maxmem_calls == []
    domid = booted[0]
    d = host.snapshot().domain(domid)
    assert d is not None
    host.set_maxmem(domid, d.memory_max_kib + 8 * MIB)
    host.set_maxmem(domid, d.memory_max_kib + 8 * MIB)  # the second is known done
    assert [c[0] for c in h.xc.maxmem_calls] == [domid]


class CountingXc:
    """The real binding, counting calls by name."""

    def __init__(self, xc: Any) -> None:
        self._xc, self.calls = xc, collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._xc, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)
        return counted


def test_reserve_of_free_memory_reads_no_domain(short_tmp, monkeypatch):
    """On the simulated host through the real interfaces: once a snapshot has
    seen the host quiet, a reserve that free memory covers makes no
    domain_list call and no xenstore read (one physinfo, one write of the
    table entry, the watch barrier's round trip)."""
    env = XenEnv(short_tmp, monkeypatch)
    try:
        sid = env.svc.login("t", "xenopsd")
        env.svc.balance_memory("t")  # settles, and leaves the mark
        env.host.xc = xc = CountingXc(env.xc)
        env.sim.xenstored.requests.clear()
        for _ in range(3):
            rid = env.svc.reserve_memory("t", sid, 64 * MIB)
            env.svc.delete_reservation("t", sid, rid)
        assert xc.calls["domain_list"] == 0 and xc.calls["physinfo"] == 3, xc.calls
        reqs = env.sim.xenstored.requests
        assert reqs["READ"] == 0, dict(reqs)
        assert reqs["WRITE"] == 3 and reqs["RM"] >= 3, dict(reqs)
        # What it granted is held back, and a full snapshot agrees.
        rid = env.svc.reserve_memory("t", sid, 64 * MIB)
        quick = env.host.quick_free_kib()
        assert quick is not None and env.host.snapshot().free_mem_kib == quick
        env.svc.delete_reservation("t", sid, rid)
        # More than is free: the full path, which reads the domains.
        rid = env.svc.reserve_memory("t", sid, 3 * GIB // 2)
        assert xc.calls["domain_list"] > 0
        env.svc.delete_reservation("t", sid, rid)
    finally:
        env.close()


def test_a_transfer_waits_for_a_batch_of_target_writes(short_tmp, monkeypatch):
    """A transfer runs beside operations; a batch of target writes may hold
    as many transactions open as xenstored allows one connection, and a
    transfer's transaction started then was refused (ENOSPC: 11 of 50 VM
    starts in the boot storm). It now waits for the batch to end."""
    from squeezed.xen import host as host_mod

    env = XenEnv(short_tmp, monkeypatch)
    try:
        sid = env.svc.login("t", "xenopsd")
        rid = env.svc.reserve_memory("t", sid, 64 * MIB)
        env.sim.create_domain(5, target_kib=64 * MIB, dynamic_min_kib=64 * MIB,
                              dynamic_max_kib=64 * MIB)
        events: list[str] = []
        real_txn = env.xs.transaction

        def txn(fn: Any, max_retries: int = 16) -> Any:
            events.append("transfer")
            return real_txn(fn, max_retries)

        monkeypatch.setattr(env.host.xs, "transaction", txn)
        real_write_targets = host_mod.write_targets
        transfer = threading.Thread(
            target=env.svc.transfer_reservation_to_domain, args=("t", sid, rid, 5))

        def write_targets(xs: Any, targets: Any) -> Any:
            events.append("batch")
            transfer.start()
            transfer.join(0.3)  # the transfer runs now if nothing stops it
            events.append("batch end")
            return real_write_targets(xs, targets)

        monkeypatch.setattr(host_mod, "write_targets", write_targets)
        env.host.set_targets({1: 2 * GIB})
        transfer.join(5)
        assert events[:3] == ["batch", "batch end", "transfer"], events
        assert env.xs.read("/local/domain/5/memory/initial-reservation") == str(64 * MIB)
    finally:
        env.close()


def test_a_failed_snapshot_leaves_no_mark():
    """The mark is taken down when a snapshot starts and put back only by a
    snapshot that got to the end: one that failed (here lowering a maxmem)
    must not leave an older mark standing."""
    import errno

    from squeezed.xen.host import XenHostError
    from squeezed.xen.xenctrl import XenCtrlError

    rng = random.Random(13)
    h = next(x for x in (random_host(rng) for _ in range(100))
             if x.all_at_target and not x.to_left_alone)
    host = watched(h.xc, h.xs)
    d = next(d for d in host.snapshot().domains if d.can_balloon)
    assert host.quick_free_kib() is not None
    di = h.xc.domains[d.domid]
    h.xc.domains[d.domid] = replace(di, max_pages=di.max_pages + 1024)  # to be lowered

    def refuse(domid: int, kib: int) -> None:
        raise XenCtrlError("xc_domain_setmaxmem", errno.EPERM)

    h.xc.set_maxmem_kib = refuse  # type: ignore[method-assign]
    with pytest.raises(XenHostError):
        host.snapshot()
    assert host.quick_free_kib() is None


# -- review of the fast path: a guest's own shrink, a transfer's maxmem, lock order --

def one_guest_host(free_kib: int) -> tuple[FakeXc, FakeXs]:
    """Domain 1 at its target of 2 GiB (maxmem 2 GiB), dom0 not managed."""
    xs = FakeXs()
    base = "/local/domain/1"
    for k, v in (("domain-type", "pv"), ("memory/target", 2 * GIB),
                 ("memory/memory-offset", 0), ("memory/dynamic-min", 1 * GIB),
                 ("memory/dynamic-max", 2 * GIB), ("data/updated", 1),
                 ("control/feature-balloon", "1")):
        xs.write(f"{base}/{k}", str(v))
    doms = {0: info(0, 2 * GIB, 2 * GIB), 1: info(1, 2 * GIB, 2 * GIB)}
    return FakeXc(doms, PhysInfo(TOTAL_KIB // 4, free_kib // 4, 0)), xs


def balloon_down_by_itself(xc: FakeXc, domid: int, kib: int) -> None:
    """The guest's driver gives pages back on its own: no xenstore key changes."""
    xc.domains[domid] = replace(xc.domains[domid], tot_pages=xc.domains[domid].tot_pages - kib // 4)
    xc.phys = replace(xc.phys, free_pages=xc.phys.free_pages + kib // 4)


def test_guest_below_target_after_the_mark_is_not_counted_as_free():
    """A guest at its target when the mark was left balloons down by itself;
    its maxmem stays at its target, so it may take the pages back at any
    time. The full snapshot sees it below target; the quick path must not
    count its pages as free."""
    xc, xs = one_guest_host(free_kib=100 * MIB)
    host = watched(xc, xs)
    host.snapshot()
    assert host.quick_free_kib() == 100 * MIB
    balloon_down_by_itself(xc, 1, 512 * MIB)
    d1 = host.observe().domain(1)
    assert d1 is not None and not d1.hit_target  # the full snapshot's view: moving
    assert xc.domains[1].max_pages * 4 >= 2 * GIB  # it may grow back to its target
    quick = host.quick_free_kib()
    assert quick is None, f"quick path answered {quick} KiB with domain 1 below target"


def test_a_rise_of_host_free_voids_the_mark_and_a_fall_does_not():
    """Guests at their targets with maxmem lowered to them can only give
    memory back: free memory rising means one went below its target (or a
    domain went), so the full path looks. Free memory falling (dom0, not
    managed, allocating) is counted at once; a reservation removed does not
    void the mark."""
    xc, xs = one_guest_host(free_kib=100 * MIB)
    host = watched(xc, xs)
    host.snapshot()
    xc.phys = replace(xc.phys, free_pages=xc.phys.free_pages - 10 * MIB // 4)  # dom0 takes 10 MiB
    assert host.quick_free_kib() == 90 * MIB
    host.add_reservation(Reservation("s", "r", 30 * MIB))
    assert host.quick_free_kib() == 60 * MIB
    host.remove_reservation("s", "r")
    assert host.quick_free_kib() == 90 * MIB
    xc.phys = replace(xc.phys, free_pages=xc.phys.free_pages + 1)  # one page more: who gave it?
    assert host.quick_free_kib() is None
    xc.phys = replace(xc.phys, free_pages=xc.phys.free_pages - 1)
    assert host.quick_free_kib() == 90 * MIB  # back to the lowest seen
    assert host.snapshot().free_mem_kib == 90 * MIB


def test_reserve_does_not_grant_the_pages_of_a_guest_below_target():
    """The engine's reserve: with domain 1 below its target (and free to take
    512 MiB back), 500 MiB is not granted on the fast path with nothing done
    about domain 1. (The full path limits domain 1 to what it may keep; this
    fake guest never moves, so the operation times out and gives back.)"""
    from squeezed.engine import operations as ops
    from squeezed.engine.errors import DeadlineExceeded
    from squeezed.engine.operations import EngineConfig

    cfg = EngineConfig(reserve_kib=0, operation_timeout_s=0.5)
    xc, xs = one_guest_host(free_kib=100 * MIB)
    host = watched(xc, xs)
    host.snapshot()
    balloon_down_by_itself(xc, 1, 512 * MIB)
    before = list(xc.maxmem_calls), dict(xs.nodes)
    with contextlib.suppress(DeadlineExceeded):
        ops.reserve(host, cfg, 500 * MIB)
    touched = (list(xc.maxmem_calls), dict(xs.nodes)) != before
    assert touched, "reserve granted 500 MiB; domain 1 may still take 512 MiB back"


def test_sim_host_reserve_does_not_promise_memory_a_guest_takes_back(short_tmp, monkeypatch):
    """Simulated Xen host, real interfaces. After a balance leaves the mark,
    guest 1 balloons itself down 1 GiB (its target and maxmem stay 2 GiB; no
    xenstore key changes). A reserve of 1.5 GiB, then guest 1's driver goes
    back to its target, as it may: the host must still hold what it granted."""
    from tests.faults.xenenv import wait_for

    env = XenEnv(short_tmp, monkeypatch, free_gib=1)
    try:
        env.with_cfg(reserve_kib=0, operation_timeout_s=3.0)
        sid = env.svc.login("t", "xenopsd")
        env.svc.balance_memory("t")
        assert env.host.quick_free_kib() is not None  # the mark is there
        hv = env.sim.hv
        hv.balloon_to(1, GIB // 4)  # guest 1 gives 1 GiB back on its own
        d1 = env.host.observe().domain(1)
        assert d1 is not None and not d1.hit_target and d1.memory_max_kib >= 2 * GIB
        try:
            env.svc.reserve_memory("t", sid, 3 * GIB // 2)
            granted = True
        except Exception:  # refused (e.g. out of memory): nothing promised
            granted = False
        env.sim.activate(1)  # its driver looks at its target again
        assert wait_for(lambda: hv.get_domain(1).tot_kib >= env.target(1) - 4, 5)
        free_now = env.host.snapshot().free_mem_kib
        assert not granted or free_now >= 0, (
            f"reserve of 1.5 GiB granted; after guest 1 went back to its target "
            f"host free net of reservations is {free_now} KiB")
    finally:
        env.close()


def test_transfer_maxmem_raise_after_a_snapshot_leaves_no_mark(monkeypatch):
    """A transfer raises maxmem so the builder can allocate; a snapshot that
    runs between the transfer's accounting and that raise (balancer, any
    operation) must not leave a mark that does not know the domain may grow
    past its target (a repeated transfer to a booted domain)."""
    xc, xs = one_guest_host(free_kib=100 * MIB)
    host = watched(xc, xs)
    host.snapshot()
    r = Reservation("s", "r", 3 * GIB)
    host.add_reservation(r)
    real = host._writes.set_maxmem

    def racing(domid: int, kib: int) -> None:
        host.snapshot()  # as another thread's snapshot, just before the raise
        real(domid, kib)

    monkeypatch.setattr(host._writes, "set_maxmem", racing)
    host.transfer_reservation(r, 1)
    monkeypatch.setattr(host._writes, "set_maxmem", real)
    head_kib = xc.domains[1].max_pages * 4 - 2 * GIB
    quick = host.quick_free_kib()
    assert quick is None or head_kib <= 0, (
        f"mark stands (quick {quick} KiB) while domain 1 may grow {head_kib} KiB past its target")


def test_observe_does_not_wait_behind_a_target_batch_via_a_transfer(monkeypatch):
    """A transfer waits for a batch of target writes (its transaction would
    be refused); it must not hold the accounting lock meanwhile, or every
    snapshot, quick answer and observe() (queries) waits behind the batch."""
    from squeezed.xen import host as host_mod

    xc, xs = one_guest_host(free_kib=100 * MIB)
    host = watched(xc, xs)
    host.snapshot()
    xc.domains[5] = info(5, 0, 0)
    r = Reservation("s", "r", 64 * MIB)
    host.add_reservation(r)
    in_batch, release = threading.Event(), threading.Event()

    def slow_batch(xs_: object, targets: object) -> dict[int, bool]:
        in_batch.set()
        release.wait(10)
        return {}

    monkeypatch.setattr(host_mod, "write_targets", slow_batch)
    batch = threading.Thread(target=host.set_targets, args=({1: 2 * GIB},))
    batch.start()
    assert in_batch.wait(5)
    transfer = threading.Thread(target=host.transfer_reservation, args=(r, 5))
    transfer.start()
    transfer.join(0.3)  # now waiting for the batch
    done = threading.Event()
    obs = threading.Thread(target=lambda: (host.observe(), done.set()))
    obs.start()
    blocked = not done.wait(2.0)
    release.set()
    for t in (batch, transfer, obs):
        t.join(5)
    assert not blocked, "observe() waited behind a batch of target writes (via a transfer)"
    assert xs.read("/local/domain/5/memory/initial-reservation") == str(64 * MIB)
