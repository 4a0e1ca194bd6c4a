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
from squeezed.engine.errors import CannotFree
from squeezed.errors import CannotFreeThisMuchMemory, DomainsRefusedToCooperate, InternalError
from squeezed.service import Dom0Policy, MemoryService
from squeezed.sim.drivers import Ideal, Stuck
from squeezed.sim.virtual.host import SimulatedHost, VirtualDomain

MIB = 1024  # KiB
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
RESERVE = 8 * MIB


def dom(domid: int, actual: int, *, dmin: int | None = None, target: int | None = None,
        can_balloon: bool = True, driver=None) -> VirtualDomain:
    target = actual if target is None else target
    return VirtualDomain(domid=domid, dynamic_min_kib=actual if dmin is None else dmin,
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
        raise CannotFree(5000, 3000)  # the engine's own error: reserve included

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
    auto = MemoryService(host, dom0=Dom0Policy(True, 1 << 30, None), dom0_total_bytes=lambda: total)
    assert auto.get_domain_zero_policy("t") == ("Auto_balloon", (1 << 30, total))  # upstream
    explicit = MemoryService(host, dom0=Dom0Policy(True, 1 << 30, 2 << 30),
                             dom0_total_bytes=lambda: total)
    assert explicit.get_domain_zero_policy("t") == ("Auto_balloon", (1 << 30, 2 << 30))
    with pytest.raises(InternalError):
        MemoryService(host).get_domain_zero_policy("t")
    assert MemoryService(host, EngineConfig(reserve_kib=1234)).get_host_reserved_memory("t") == 1234


# ------------------------------------------------- the operator's view: log lines
# What docs/operations.md promises an operator sees, line by line.


def messages(caplog, level: int = 20) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "squeezed.service" and r.levelno == level]


def last_history(svc: MemoryService) -> str:
    line = history(svc)[-1]
    return re.sub(r"^  \S+Z ", "", re.sub(r" \(\d+\.\d{3} s\)$", "", line))


def test_log_and_history_of_each_operation(caplog) -> None:
    caplog.set_level(10, logger="squeezed.service")
    svc, host = make(4000 * MIB, [])
    rid = svc.reserve_memory("t1", "s", 1024)
    assert messages(caplog) == [f"reservation {rid} created: session s, 1024 KiB [dbg t1]"]
    assert last_history(svc) == "reserve_memory session=s kib=1024 dbg=t1 -> success"
    caplog.clear()
    rid2, kib = svc.reserve_memory_range("t2", "s", 1000, 2000)
    assert kib == 2000
    assert messages(caplog) == [
        f"reservation {rid2} created: session s, 2000 KiB (asked 1000-2000) [dbg t2]"]
    assert last_history(svc) == \
        "reserve_memory_range session=s min_kib=1000 max_kib=2000 dbg=t2 -> success"
    caplog.clear()
    svc.transfer_reservation_to_domain("t3", "s", rid2, 7)
    assert messages(caplog) == [
        f"reservation {rid2} transferred to domain 7: session s, 2000 KiB [dbg t3]"]
    assert last_history(svc) == \
        f"transfer_reservation_to_domain id={rid2} domid=7 dbg=t3 -> success"
    caplog.clear()
    svc.delete_reservation("t4", "s", rid)
    assert messages(caplog) == [f"reservation {rid} deleted: session s, 1024 KiB [dbg t4]"]
    assert last_history(svc) == f"delete_reservation id={rid} dbg=t4 -> success"
    caplog.clear()
    svc.delete_reservation("t5", "s", rid)
    assert messages(caplog) == [f"reservation {rid}: delete of an unknown or already deleted"
                                " reservation (session s) [dbg t5]"]
    caplog.clear()
    rid3 = svc.reserve_memory("t6", "s", 10)
    caplog.clear()
    assert svc.login("t7", "s") == "s"
    assert sorted(messages(caplog)) == sorted([
        f"login s: dropped reservation {rid2} (2000 KiB, in transfer to domain 7) [dbg t7]",
        f"login s: dropped reservation {rid3} (10 KiB) [dbg t7]"])
    assert last_history(svc) == "login service=s dbg=t7 -> success"
    assert host.reservations() == []
    caplog.clear()
    rid4 = svc.reserve_memory("t8", "s", 10)
    caplog.clear()
    svc.undo_reservation("t9", "s", rid4)
    assert messages(caplog, 30) == [f"reservation {rid4} undone: its reply could not be"
                                    " delivered (caller hung up) [dbg t9]"]
    assert last_history(svc) == f"undo-reservation id={rid4} dbg=t9 -> success"
    assert host.reservations() == []


def test_transfer_domid_bounds_and_unknown() -> None:
    svc, host = make(4000 * MIB, [])
    rid = svc.reserve_memory("t", "s", 10)
    svc.transfer_reservation_to_domain("t", "s", rid, 0)  # domid 0 is a domid
    assert host.reservations()[0].in_transfer_domid == 0
    with pytest.raises(InternalError, match="^invalid domid -1$"):
        svc.transfer_reservation_to_domain("t", "s", rid, -1)
    from squeezed.errors import UnknownReservation

    with pytest.raises(UnknownReservation) as e:
        svc.transfer_reservation_to_domain("t", "other", rid, 3)  # wrong session
    assert e.value.reservation_id == rid


def test_id_messages() -> None:
    svc, _ = make(0)
    msg = ": must be 1 to 256 characters of A-Z a-z 0-9 _ @ - (a xenstore node name)"
    with pytest.raises(InternalError) as e:
        svc.reserve_memory("t", "a/b", 1)
    assert e.value.message == "invalid session id 'a/b'" + msg
    with pytest.raises(InternalError) as e:
        svc.delete_reservation("t", "s", "/" * 80)
    assert e.value.message == "invalid reservation id '" + "/" * 80 + "'" + msg
    with pytest.raises(InternalError) as e:
        svc.delete_reservation("t", "s", "/" * 81)
    assert e.value.message == "invalid reservation id '" + "/" * 80 + "...'" + msg
    with pytest.raises(InternalError) as e:
        svc.login("t", "x" * 257)
    assert e.value.message == "invalid service name '" + "x" * 80 + "...'" + msg
    with pytest.raises(InternalError) as e:
        svc.login("t", "\n")
    assert e.value.message == "invalid service name '\\\\n'" + msg
    svc.login("t", "x" * 256)  # the longest valid name


def test_range_and_amount_checks() -> None:
    from squeezed.errors import InvalidMemoryValue

    svc, _ = make(4000 * MIB)
    for args, bad in [((5, 4), 4), ((-1, 4), -1), ((1, -3), -3), ((0, 2**63), 2**63)]:
        with pytest.raises(InvalidMemoryValue) as e:
            svc.reserve_memory_range("t", "s", *args)
        assert e.value.value == bad
    with pytest.raises(InvalidMemoryValue) as e:
        svc.reserve_memory("t", "s", 2**63)
    assert e.value.value == 2**63
    rid, kib = svc.reserve_memory_range("t", "s", 7, 7)  # min == max is fine
    assert kib == 7


# ------------------------------------------------------------- balancer, queries


def test_balance_if_unbalanced(monkeypatch) -> None:
    svc, host = make(4000 * MIB, [])
    calls: list[str] = []
    unbalanced = [False]
    monkeypatch.setattr(ops, "is_unbalanced", lambda backend, cfg: unbalanced[0])
    monkeypatch.setattr(ops, "balance", lambda backend, cfg, stats=None: calls.append("balance"))
    assert svc.balance_if_unbalanced() is False and calls == []
    assert history(svc) == []
    unbalanced[0] = True
    assert svc.balance_if_unbalanced() is True and calls == ["balance"]
    assert last_history(svc) == "auto-balance  dbg=periodic -> success"
    svc._op_lock.acquire()
    try:
        assert svc.balance_if_unbalanced() is False and calls == ["balance"]  # skipped
    finally:
        svc._op_lock.release()

    def abandon(backend, cfg, stats=None):
        raise ops.OperationAbandoned()

    monkeypatch.setattr(ops, "balance", abandon)
    assert svc.balance_if_unbalanced() is False
    assert last_history(svc) == "auto-balance  dbg=periodic -> abandoned"
    assert not svc._op_lock.locked()  # released on every path
    monkeypatch.setattr(ops, "is_unbalanced", lambda backend, cfg: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        svc.balance_if_unbalanced()
    assert not svc._op_lock.locked()


def test_query_and_state() -> None:
    from squeezed import __version__

    svc, host = make(3000 * MIB, [dom(4, 500 * MIB, dmin=100 * MIB)])
    assert svc.query("t") == {
        "name": "squeezed", "vendor": "squeezed project", "version": __version__,
        "features": ["reserve", "reserve_range", "transfer_to_domain", "delete", "balance",
                     "diagnostics"],
        "instance_id": svc.instance_id,
    }
    assert svc.instance_id != MemoryService(host).instance_id
    rid = svc.reserve_memory("t", "s", 1000)
    st = svc.get_state("t")
    # (the Xen figures are absent on this host: None, left out on the wire)
    assert {k: v for k, v in st["host"].items() if v is not None} == {
        "free_kib": 3000 * MIB - 1000, "reserved_kib": RESERVE}
    assert st["reservations"] == [
        {"reservation_id": rid, "session_id": "s", "kib": 1000, "domid": None}]
    assert st["domains"] == [{"domid": 4, "can_balloon": True, "dynamic_min_kib": 100 * MIB,
                              "target_kib": 500 * MIB, "dynamic_max_kib": 500 * MIB,
                              "memory_actual_kib": 500 * MIB, "memory_max_kib": 500 * MIB,
                              "name": None, "flags": []}]
    assert st["left_alone"] == [] and st["operation"] is None
    assert [(h["op"], h["outcome"]) for h in st["history"]] == [("reserve_memory", "success")]
    assert st["counters"]["operations"][0]["count"] == 1
    diag = svc.get_diagnostics("t")
    assert diag.startswith(f"squeezed {__version__} instance {svc.instance_id}\nhost: ")
    assert f"free_kib={3000 * MIB - 1000} " in diag and f"reserved_kib={RESERVE}" in diag
    assert "reservations (1):\n" in diag and f"  s/{rid} 1000 KiB\n" in diag
    assert "domains (KiB): domid min target actual max maxmem flags\n" in diag
    assert f"  4 {100 * MIB} {500 * MIB} {500 * MIB} {500 * MIB} {500 * MIB} balloon,at-target\n" \
        in diag
    assert "last operations (1):\n" in diag and diag.endswith(" s)\n")


def test_set_log_level() -> None:
    import logging

    svc, _ = make(0)
    seen: list[str] = []
    svc.on_set_log_level = seen.append
    svc.set_log_level("t", "WARNING")
    svc.set_log_level("t", "debug")
    assert seen == ["warning", "debug"]
    with pytest.raises(InternalError) as e:
        svc.set_log_level("t", "loud")
    assert e.value.message == "unknown log level 'loud': debug, info, warning or error"
    other, _ = make(0)
    logger = logging.getLogger("squeezed")
    old = logger.level
    try:
        other.set_log_level("t", "Error")
        assert logger.level == logging.ERROR
        other.set_log_level("t", "info")
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(old)


# -------------------------------------------------- boot-time host free memory


def test_measure_stable() -> None:
    from squeezed.initial_free import measure_stable

    tol = 1 << 20
    samples = iter([0, 10 * tol, 11 * tol, 11 * tol + 1, 12 * tol + 1, 99])
    slept: list[float] = []
    got = measure_stable(lambda: next(samples), 3, 0.5, sleep=slept.append)
    # 10t -> 11t is exactly the tolerance (same), 11t -> 11t+1 same: 3 in a row
    assert got == 11 * tol + 1 and slept == [0.5, 0.5, 0.5]
    samples = iter([0, tol + 1, 2 * tol + 2, 2 * tol + 2])
    slept.clear()
    assert measure_stable(lambda: next(samples), 2, 1.0, sleep=slept.append) == 2 * tol + 2
    assert slept == [1.0, 1.0, 1.0]  # each step just beyond the tolerance starts again
    assert measure_stable(lambda: 5, 1, 9.0, sleep=slept.append) == 5  # one is enough
    samples = iter([100, 100 + 5, 100 + 5])
    assert measure_stable(lambda: next(samples), 2, 0, sleep=lambda s: None,
                          tolerance_bytes=4) == 105


def test_initial_free_memory(tmp_path) -> None:
    import os
    import stat

    from squeezed.initial_free import InitialFreeMemory

    svc, _ = make(0)
    with pytest.raises(InternalError) as e:
        svc.get_host_initial_free_memory("t")
    assert e.value.message == "host initial free memory is not measured by this squeezed"
    path = tmp_path / "new" / "boot_time_memory"
    initial = InitialFreeMemory(str(path))
    assert not initial.known and not initial.load_persisted()
    svc.initial_free = initial
    initial.set(4096)
    assert initial.known and svc.get_host_initial_free_memory("t") == 4096
    assert path.read_text() == "4096" and not (tmp_path / "new" / "boot_time_memory.tmp").exists()
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    initial.set(5000)  # the directory exists already
    assert path.read_text() == "5000"
    path.write_text(" 77\n")
    again = InitialFreeMemory(str(path))
    assert again.load_persisted() and again.get(0) == 77
    path.write_text("lots")
    assert not InitialFreeMemory(str(path)).load_persisted()
    relative = InitialFreeMemory("boot_time_memory_rel_test")
    try:
        relative.set(1)  # no directory part: the current one
        assert open("boot_time_memory_rel_test").read() == "1"
    finally:
        os.unlink("boot_time_memory_rel_test")
    waiting = InitialFreeMemory(str(tmp_path / "w"))
    waiting.abort()
    with pytest.raises(InternalError) as e:
        waiting.get(0)
    assert e.value.message == "squeezed is shutting down; host initial free memory unknown"
    with pytest.raises(InternalError) as e:
        InitialFreeMemory(str(tmp_path / "x")).get(0)
    assert e.value.message == "host initial free memory not yet measured"


def test_unwritable_boot_time_file_is_logged_once_with_the_value(tmp_path, caplog) -> None:
    from squeezed.initial_free import InitialFreeMemory

    (tmp_path / "f").write_text("")
    path = tmp_path / "f" / "boot_time_memory"
    initial = InitialFreeMemory(str(path))
    with caplog.at_level(40, logger="squeezed.service"):
        initial.set(123)
    (msg,) = messages(caplog, 40)
    assert re.match(re.escape(f"cannot record boot-time host free memory in {path}: ")
                    + r"\[Errno \d+\] ", msg), msg
    assert msg.endswith("; keeping 123 bytes in memory (a restarted squeezed will measure again)")
    assert initial.get(0) == 123


# ------------------------------------------------------------------ more edges


def test_history_details(monkeypatch) -> None:
    svc, host = make(4000 * MIB, [])
    for i in range(33):
        svc.reserve_memory(f"t{i}", "s", 1)
    lines = history(svc)
    assert len(lines) == 32 and "dbg=t1 " in lines[0]  # the oldest one dropped
    svc._history[0].at = 0.0
    assert history(svc)[0].startswith("  1970-01-01T00:00:00Z reserve_memory ")
    assert all(float(re.search(r"\((\d+\.\d{3}) s\)$", x).group(1)) < 60 for x in history(svc))
    a, _ = svc.reserve_memory_range("t", "s", 1, 1)
    b, _ = svc.reserve_memory_range("t", "s", 1, 1)
    assert a != b


def test_other_memory_errors_and_abandon_are_recorded(monkeypatch) -> None:
    svc, host = make(10 * MIB, [dom(1, 1000 * MIB, dmin=100 * MIB, driver=Stuck())])
    host.deadline_s = 3600.0
    with pytest.raises(DomainsRefusedToCooperate):
        svc.reserve_memory("t", "s", 500 * MIB)
    assert last_history(svc).endswith("-> Domains_refused_to_cooperate")

    def abandon(*a, **kw):
        raise ops.OperationAbandoned()

    monkeypatch.setattr(ops, "reserve", abandon)
    with pytest.raises(InternalError) as e:
        svc.reserve_memory("t", "s", 1)
    assert e.value.message == "squeezed is shutting down; operation abandoned"
    monkeypatch.undo()
    with pytest.raises(CannotFreeThisMuchMemory):  # the largest valid amount is not invalid
        svc.reserve_memory("t", "s", 2**63 - 1)


def test_bad_session_in_delete_and_transfer_is_named() -> None:
    svc, _ = make(0)
    for call in (lambda: svc.delete_reservation("t", "a/b", "r"),
                 lambda: svc.transfer_reservation_to_domain("t", "a/b", "r", 1)):
        with pytest.raises(InternalError, match="^invalid session id 'a/b': "):
            call()


def test_balancer_step_passes_its_host_and_config(monkeypatch) -> None:
    svc, host = make(0)
    seen: list[tuple] = []
    monkeypatch.setattr(ops, "is_unbalanced", lambda b, c: seen.append((b, c)) or True)
    monkeypatch.setattr(ops, "balance", lambda b, c, stats=None: seen.append((b, c)))
    assert svc.balance_if_unbalanced()
    assert seen == [(host, svc.cfg), (host, svc.cfg)]


def test_initial_free_memory_wait_is_bounded(monkeypatch) -> None:
    import squeezed.service as service_mod
    from squeezed.initial_free import InitialFreeMemory

    monkeypatch.setattr(service_mod, "INITIAL_FREE_WAIT_S", 0.01)
    svc, _ = make(0)
    svc.initial_free = InitialFreeMemory("/nonexistent/boot_time_memory")
    with pytest.raises(InternalError, match="^host initial free memory not yet measured$"):
        svc.get_host_initial_free_memory("t")


def test_domain_zero_total_unknown() -> None:
    host = SimulatedHost(0, [])
    for svc in (MemoryService(host), MemoryService(host, dom0=Dom0Policy(True, 1, None))):
        with pytest.raises(InternalError) as e:
            svc.get_domain_zero_policy("t")
        assert e.value.message == "failed to obtain domain 0's total memory"


def test_a_domain_without_flags_shows_a_dash() -> None:
    svc, _ = make(0, [dom(5, 500 * MIB, target=300 * MIB, can_balloon=False, driver=Stuck())])
    assert re.search(r"^  5 \d+ \d+ \d+ \d+ \d+ -$", svc.get_diagnostics("t"), re.M)


def test_loading_the_persisted_value_does_not_rewrite_it(tmp_path) -> None:
    from squeezed.initial_free import InitialFreeMemory

    path = tmp_path / "boot_time_memory"
    path.write_text(" 77\n")
    initial = InitialFreeMemory(str(path))
    assert initial.load_persisted() and initial.get(0) == 77
    assert path.read_text() == " 77\n"


def test_failures_after_abandon_say_shutting_down(monkeypatch) -> None:
    """SIGTERM closes xenstore under a running operation: whatever it fails
    with, its caller gets the promised "shutting down" reply."""
    svc, host = make(4000 * MIB)

    def eio(*a, **kw):
        raise InternalError("xenstore write ... failed: EIO (client closed)")

    monkeypatch.setattr(ops, "reserve", eio)
    with pytest.raises(InternalError, match="^xenstore write"):
        svc.reserve_memory("t", "s", 1)  # not shutting down: the failure itself
    svc.abandon()
    with pytest.raises(InternalError) as e:
        svc.reserve_memory("t", "s", 1)
    assert e.value.message == "squeezed is shutting down; operation abandoned"
    assert last_history(svc).endswith("-> abandoned")
    monkeypatch.setattr(ops, "reserve", lambda *a, **kw: 1 / 0)
    with pytest.raises(InternalError, match="shutting down"):
        svc.reserve_memory("t", "s", 1)


def test_initial_free_memory_is_recorded_before_it_is_answered(tmp_path, monkeypatch) -> None:
    # A caller who has the value finds it in the file (tests/test_daemon.py reads both).
    from squeezed.initial_free import InitialFreeMemory

    initial = InitialFreeMemory(str(tmp_path / "boot_time_memory"))
    persist = initial._persist
    answered_while_writing = []

    def spy(value_bytes: int) -> None:
        answered_while_writing.append(initial.known)
        persist(value_bytes)

    monkeypatch.setattr(initial, "_persist", spy)
    initial.set(5 << 30)
    assert answered_while_writing == [False]
    assert initial.get(0) == 5 << 30 == int((tmp_path / "boot_time_memory").read_text())
