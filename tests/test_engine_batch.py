"""The engine's batch path: a host that offers the optional
``set_targets(targets)`` gets one iteration's target writes in one call, with
each domain's maxmem still moved around its target in the safe order (raised
before the target rises, lowered after it falls). Oracles: hand-written call
sequences, the maxmem >= target invariant replayed call by call, and the same
scenarios on the same simulated host without the batch method."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from squeezed.engine import operations as ops
from squeezed.engine.errors import DomainsRefused
from squeezed.engine.model import Domain
from squeezed.engine.operations import EngineConfig, OpStats
from squeezed.sim.drivers import Ideal, Stuck
from squeezed.sim.virtual.host import SimulatedHost, VirtualDomain

MIB = 1024


class BatchRecorder:
    """Records writes, with the optional batch method."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def set_target(self, domid: int, kib: int) -> None:
        self.calls.append(("target", (domid, kib)))

    def set_targets(self, targets: Mapping[int, int]) -> None:
        self.calls.append(("targets", dict(targets)))

    def set_maxmem(self, domid: int, kib: int) -> None:
        self.calls.append(("maxmem", (domid, kib)))


def dom(domid: int, target: int, maxmem: int) -> Domain:
    return Domain(domid, True, 0, target, 10_000, target, maxmem)


def test_batch_keeps_each_domains_maxmem_order() -> None:
    io = BatchRecorder()
    writes = [
        (dom(1, 100, 150), 200, 200),  # rises: maxmem first
        (dom(2, 200, 200), 100, 100),  # falls: maxmem after
        (dom(3, 200, 300), 200, 200),  # same target: maxmem only, after
        (dom(4, 100, 300), 200, 300),  # rises, maxmem already enough
        (dom(5, 200, 200), 200, 200),  # nothing
    ]
    ops._write_all(io, writes)  # type: ignore[arg-type]
    assert io.calls == [
        ("maxmem", (1, 200)),
        ("targets", {1: 200, 2: 100, 4: 200}),
        ("maxmem", (2, 100)),
        ("maxmem", (3, 200)),
    ]


def test_no_target_change_makes_no_batch() -> None:
    io = BatchRecorder()
    ops._write_all(io, [(dom(3, 200, 300), 200, 200)])  # type: ignore[arg-type]
    assert io.calls == [("maxmem", (3, 200))]


def test_a_domain_written_twice_goes_one_write_at_a_time() -> None:
    # A batch is a mapping: two writes for one domain cannot share it.
    io = BatchRecorder()
    d = dom(1, 200, 200)
    ops._write_all(io, [(d, 150, 150), (d, 100, 100)])  # type: ignore[arg-type]
    assert io.calls == [("target", (1, 150)), ("maxmem", (1, 150)),
                        ("target", (1, 100)), ("maxmem", (1, 100))]


class Host(SimulatedHost):
    """The virtual-time host, recording every write; `set_target` one at a time."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls: list[tuple[str, object]] = []
        self.violations: list[tuple[int, int, int]] = []

    def _check(self) -> None:
        for d in self.snapshot().domains:
            if d.can_balloon and d.memory_max_kib < d.target_kib:
                self.violations.append((d.domid, d.target_kib, d.memory_max_kib))

    def set_target(self, domid: int, kib: int) -> None:
        self.calls.append(("target", (domid, kib)))
        super().set_target(domid, kib)
        self._check()

    def set_maxmem(self, domid: int, kib: int) -> None:
        self.calls.append(("maxmem", (domid, kib)))
        super().set_maxmem(domid, kib)
        self._check()


class BatchHost(Host):
    """The same host with the batch method (applied target by target, the
    invariant checked after each, as a real batch lands one at a time)."""

    def set_targets(self, targets: Mapping[int, int]) -> None:
        self.calls.append(("targets", dict(targets)))
        for domid, kib in targets.items():
            SimulatedHost.set_target(self, domid, kib)
            self._check()


def guest(domid: int, actual: int, dmin: int, driver=None) -> VirtualDomain:
    return VirtualDomain(domid=domid, dynamic_min_kib=dmin, dynamic_max_kib=actual,
                         target_kib=actual, actual_kib=actual, maxmem_kib=actual,
                         driver=driver or Ideal(100 * MIB), inaccuracy_kib=0)


def guests(stuck: bool) -> list[VirtualDomain]:
    return [guest(i, 1000 * MIB, 100 * MIB, Stuck() if stuck and i == 1 else None)
            for i in range(1, 6)]


def flatten(calls: list[tuple[str, object]]) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for kind, arg in calls:
        if kind == "targets":
            assert isinstance(arg, dict)
            out += [("target", d, k) for d, k in arg.items()]
        else:
            assert isinstance(arg, tuple)
            out.append((kind, *arg))
    return out


def run(host: Host, stuck: bool) -> tuple[OpStats, str | None]:
    host.deadline_s = 600.0
    stats = OpStats()
    cfg = EngineConfig(reserve_kib=0, stuck_after_s=2.0)
    try:
        ops.free_memory(host, cfg, 3700 * MIB, stats)  # 4 ideal guests give 3600
    except DomainsRefused as e:
        return stats, f"refused {e.domids}"
    ops.balance(host, EngineConfig(reserve_kib=0))  # gives it all back: targets rise
    return stats, None


@pytest.mark.parametrize("stuck", [False, True], ids=["ideal", "one-stuck"])
def test_batch_host_behaves_as_the_one_at_a_time_host(stuck: bool) -> None:
    plain, batched = Host(0, guests(stuck)), BatchHost(0, guests(stuck))
    plain_stats, plain_end = run(plain, stuck)
    batch_stats, batch_end = run(batched, stuck)

    # Same outcome, same iterations, same final host, same writes.
    assert batch_end == plain_end == ("refused [1]" if stuck else None)
    assert batch_stats == plain_stats
    assert batched.snapshot() == plain.snapshot()
    assert sorted(flatten(batched.calls)) == sorted(flatten(plain.calls))
    # Every target went through a batch, and maxmem never fell below a target.
    kinds = {k for k, _ in batched.calls}
    assert "target" not in kinds and "targets" in kinds
    assert batched.violations == [] and plain.violations == []
    # Targets rose (the balance) and fell (the squeeze) through batches.
    rises = [a for k, a in batched.calls if k == "targets"
             and isinstance(a, dict) and all(v == 1000 * MIB for v in a.values())]
    assert rises
