"""Unit tests of MemoryService on the virtual-time simulated host: error
amounts net of the kept reserve, login, history and diagnostics flags.

Expected values are computed by hand from the scenario, never by calling the
code under test.
"""

from __future__ import annotations

import re

import pytest

from squeezed.engine import EngineConfig
from squeezed.engine import operations as ops
from squeezed.errors import CannotFreeThisMuchMemory, DomainsRefusedToCooperate, InternalError
from squeezed.service import Dom0Policy, MemoryService
from squeezed.sim.drivers import Ideal, Stuck
from squeezed.sim.virtual import SimDomain, SimulatedHost

MIB = 1024  # KiB
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
RESERVE = 8 * MIB


def dom(domid: int, actual: int, *, dmin: int | None = None, target: int | None = None,
        can_balloon: bool = True, driver=None) -> SimDomain:
    target = actual if target is None else target
    return SimDomain(domid=domid, dynamic_min_kib=actual if dmin is None else dmin,
                     dynamic_max_kib=max(actual, target), target_kib=target, actual_kib=actual,
                     maxmem_kib=max(actual, target), can_balloon=can_balloon,
                     driver=driver if driver is not None else Ideal(1 << 20))


def make(free_kib: int, domains=(), **cfg) -> tuple[MemoryService, SimulatedHost]:
    host = SimulatedHost(free_kib, list(domains))
    return MemoryService(host, EngineConfig(reserve_kib=RESERVE, **cfg)), host


def history(svc: MemoryService) -> list[str]:
    diag = svc.get_diagnostics("t")
    return diag.split("last operations", 1)[1].splitlines()[1:]


# ------------------------------------------------------- amounts net of the reserve


def test_cannot_free_amounts_are_net_of_the_reserve_unit(monkeypatch) -> None:
    svc, _ = make(0)

    def refuse(*a, **kw):
        raise CannotFreeThisMuchMemory(5000, 3000)  # as the engine sees it: reserve included

    monkeypatch.setattr(ops, "reserve", refuse)
    monkeypatch.setattr(ops, "free_memory_range", refuse)
    with pytest.raises(CannotFreeThisMuchMemory) as e:
        svc.reserve_memory("t", "s", 1)
    assert (e.value.needed_kib, e.value.free_kib) == (5000 - 8192, 3000 - 8192)
    with pytest.raises(CannotFreeThisMuchMemory) as e:
        svc.reserve_memory_range("t", "s", 1, 2)
    assert (e.value.needed_kib, e.value.free_kib) == (5000 - 8192, 3000 - 8192)


def test_cannot_free_on_the_simulated_host() -> None:
    # 100 MiB free, nobody can balloon: asking 500 MiB needs 500, 92 usable is free.
    svc, host = make(100 * MIB, [dom(1, 1000 * MIB, can_balloon=False)])
    with pytest.raises(CannotFreeThisMuchMemory) as e:
        svc.reserve_memory("t", "s", 500 * MIB)
    assert (e.value.needed_kib, e.value.free_kib) == (500 * MIB, 92 * MIB)
    assert host.reservations() == []


def test_refused_to_cooperate_names_the_stuck_guest() -> None:
    svc, host = make(10 * MIB, [dom(1, 1000 * MIB, dmin=100 * MIB, driver=Stuck()),
                                dom(2, 100 * MIB, can_balloon=False)])
    host.deadline_s = 3600.0
    with pytest.raises(DomainsRefusedToCooperate) as e:
        svc.reserve_memory("t", "s", 500 * MIB)
    assert e.value.domids == [1]
    assert host.reservations() == []


def test_reserve_memory_range_gets_at_least_min_and_at_most_max() -> None:
    svc, host = make(2000 * MIB, [])
    rid, kib = svc.reserve_memory_range("t", "s", 100 * MIB, 1000 * MIB)
    assert kib == 1000 * MIB  # plenty free: the max
    assert [(r.reservation_id, r.kib) for r in host.reservations()] == [(rid, 1000 * MIB)]


def test_invalid_amounts() -> None:
    from squeezed.errors import InvalidMemoryValue

    svc, _ = make(2000 * MIB)
    with pytest.raises(InvalidMemoryValue):
        svc.reserve_memory("t", "s", -1)
    with pytest.raises(InvalidMemoryValue):
        svc.reserve_memory_range("t", "s", 10, 5)


# ------------------------------------------------------------------------ login


def test_login_drops_the_whole_session_tree_and_nothing_else() -> None:
    svc, host = make(4000 * MIB, [])
    sid = svc.login("t", "xenopsd")
    kept = svc.reserve_memory("t", "other", 10 * MIB)
    a = svc.reserve_memory("t", sid, 100 * MIB)
    b = svc.reserve_memory("t", sid, 200 * MIB)
    svc.transfer_reservation_to_domain("t", sid, b, 7)  # domain 7 does not exist yet
    assert svc.login("t", "xenopsd") == "xenopsd"
    assert [r.reservation_id for r in host.reservations()] == [kept]
    assert a != b
    assert "login service=xenopsd" in history(svc)[-1]


def test_login_dropping_an_in_transfer_reservation_loses_no_accounting() -> None:
    """Why following upstream is harmless: a reservation transferred to a
    domain that exists counts through the domain's own initial-reservation."""
    svc, host = make(4000 * MIB, [])
    sid = svc.login("t", "xenopsd")
    rid = svc.reserve_memory("t", sid, 1000 * MIB)
    svc.transfer_reservation_to_domain("t", sid, rid, 5)
    host.create_domain(5, target_kib=1000 * MIB, actual_kib=100 * MIB)  # being built
    free_before = host.snapshot().free_mem_kib
    assert free_before == 3000 * MIB  # 900 MiB still to be allocated by the builder
    svc.login("t", "xenopsd")  # xenopsd restarted
    assert host.reservations() == []
    assert host.snapshot().free_mem_kib == free_before
    assert svc.query_reservation_of_domain("t", sid, 5) == rid  # still answered


# ----------------------------------------------------------------------- history


def test_history_records_each_outcome(monkeypatch) -> None:
    svc, host = make(100 * MIB, [dom(1, 1000 * MIB, can_balloon=False)])
    rid = svc.reserve_memory(f"VM.start R:1\n{TRACEPARENT}", "s", 10 * MIB)
    with pytest.raises(CannotFreeThisMuchMemory):
        svc.reserve_memory("t2", "s", 900 * MIB)
    svc.delete_reservation("t3", "s", rid)
    svc.delete_reservation("t4", "s", rid)

    def abandon(*a, **kw):
        raise ops.OperationAbandoned()

    monkeypatch.setattr(ops, "balance", abandon)
    with pytest.raises(InternalError, match="shutting down"):
        svc.balance_memory("t5")
    lines = history(svc)
    assert len(lines) == 5
    stamp = r"  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "
    expected = [
        ("reserve_memory session=s kib=10240", f"VM.start R:1 trace={TRACE_ID}", "success"),
        ("reserve_memory session=s kib=921600", "t2", "Cannot_free_this_much_memory"),
        (f"delete_reservation id={rid}", "t3", "success"),
        (f"delete_reservation id={rid}", "t4", "success (no such reservation)"),
        ("balance_memory ", "t5", "abandoned"),
    ]
    for line, (op, dbg, outcome) in zip(lines, expected, strict=True):
        tail = re.escape(f"{op} dbg={dbg} -> {outcome}") + r" \(\d+\.\d{3} s\)"
        assert re.fullmatch(stamp + tail, line), line


# ------------------------------------------------------------------- diagnostics


def test_diagnostics_flags(monkeypatch) -> None:
    svc, host = make(1000 * MIB, [
        dom(1, 500 * MIB),  # balloon, at target
        dom(2, 500 * MIB, target=300 * MIB, driver=Stuck()),  # balloon, not at target
        dom(3, 400 * MIB, can_balloon=False),  # no balloon driver, at target
    ])
    describe = host.describe
    monkeypatch.setattr(host, "describe", lambda: {**describe(), "uncooperative_domids": [2]})
    diag = svc.get_diagnostics("t")
    rows = {int(m.group(1)): m.group(2) for m in
            re.finditer(r"^  (\d+) \d+ \d+ \d+ \d+ \d+ (\S+)$", diag, re.M)}
    assert rows == {1: "balloon,at-target", 2: "balloon,uncooperative", 3: "at-target"}
    assert "operation running: no" in diag
    svc._op_lock.acquire()
    try:
        assert "operation running: yes" in svc.get_diagnostics("t")
        assert svc.get_state("t")["domains"][1]["can_balloon"] is True
    finally:
        svc._op_lock.release()


def test_diagnostics_list_reservations() -> None:
    svc, host = make(1000 * MIB, [])
    rid = svc.reserve_memory("t", "xenopsd", 10 * MIB)
    svc.transfer_reservation_to_domain("t", "xenopsd", rid, 9)
    assert f"  xenopsd/{rid} {10 * MIB} KiB in-transfer to 9" in svc.get_diagnostics("t")


# ------------------------------------------------------------ dom0 and constants


def test_domain_zero_policy() -> None:
    host = SimulatedHost(0, [])
    total = 3 << 30
    fixed = MemoryService(host, dom0_total_bytes=lambda: total)
    assert fixed.get_domain_zero_policy("t") == ("Fixed_size", total)
    auto = MemoryService(host, dom0=Dom0Policy(True, 1 << 30, None), dom0_total_bytes=lambda: total,
                         dom0_dynamic_max_bytes=lambda: 2 << 30)
    assert auto.get_domain_zero_policy("t") == ("Auto_balloon", (1 << 30, total))  # upstream
    explicit = MemoryService(host, dom0=Dom0Policy(True, 1 << 30, 2 << 30),
                             dom0_total_bytes=lambda: total)
    assert explicit.get_domain_zero_policy("t") == ("Auto_balloon", (1 << 30, 2 << 30))
    with pytest.raises(InternalError):
        MemoryService(host).get_domain_zero_policy("t")
    assert MemoryService(host, EngineConfig(reserve_kib=1234)).get_host_reserved_memory("t") == 1234
