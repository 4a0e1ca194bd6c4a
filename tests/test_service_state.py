"""The operator's view of the Memory service (get_state, the history's outcomes,
the per-operation counters, the periodic balancer's record) on the
virtual-time simulated host.

The operator-view code (get_state, _OpRecord.public, the counters) came in
with no test in the service's mutation group; these pin what squeezectl
state/top and the metrics show. Expected values are written out by hand: the
engine is replaced by stubs whose effects (iterations, errors) are known.
"""

from __future__ import annotations

import logging
import os
import time

import pytest

from squeezed.engine import errors as engine_errors
from squeezed.engine import operations as ops
from squeezed.engine.operations import OpStats
from squeezed.errors import (
    CannotFreeThisMuchMemory,
    DomainsRefusedToCooperate,
    InternalError,
    InvalidMemoryValue,
)
from squeezed.service import MemoryService
from tests.test_service import RESERVE, dom, make

MIB = 1024  # KiB


def outcomes(svc: MemoryService) -> list[tuple[str, str]]:
    return [(h["op"], h["outcome"]) for h in svc.get_state("t")["history"]]


def op_counts(svc: MemoryService) -> list[tuple[str, str, int]]:
    return [(o["op"], o["outcome"], o["count"])
            for o in svc.get_state("t")["counters"]["operations"]]


# ------------------------------------------------ the operation in progress


def test_the_running_operation_is_shown_while_it_runs_and_not_after(monkeypatch) -> None:
    svc, _ = make(4000 * MIB)
    seen: list[dict | None] = []

    def reserve(backend, cfg, kib, stats=None):
        rec = svc._history[-1]
        rec.started_mono = time.monotonic() - 100.0  # started 100 s ago
        state = svc.get_state("t")
        seen.append(state["operation"])
        assert "operation running: yes" in svc.get_diagnostics("t")
        return stats

    monkeypatch.setattr(ops, "reserve", reserve)
    before = time.time()
    svc.reserve_memory("VM.start", "s", 1024)
    after = time.time()
    (running,) = seen
    assert running is not None
    assert set(running) == {"op", "dbg", "args", "started_s", "elapsed_s", "outcome"}
    assert (running["op"], running["dbg"], running["args"], running["outcome"]) == \
        ("reserve_memory", "VM.start", "session=s kib=1024", "running")
    assert before <= running["started_s"] <= after
    assert 100.0 <= running["elapsed_s"] < 160.0  # counted from its start while it runs
    state = svc.get_state("t")
    assert state["operation"] is None  # finished: nothing in progress
    assert "operation running: no" in svc.get_diagnostics("t")
    (done,) = state["history"]
    assert done["outcome"] == "success"
    # A finished operation keeps the duration it ran for (its own clock, not
    # the start mark that was moved above: under a second here, not 100 s).
    assert 0.0 <= done["elapsed_s"] < 60.0
    svc._history[-1].started_mono = time.monotonic() - 1000.0
    assert svc.get_state("t")["history"][0]["elapsed_s"] < 60.0


def test_the_periodic_balance_is_shown_while_it_runs(monkeypatch) -> None:
    svc, _ = make(4000 * MIB)
    seen: list[dict | None] = []
    monkeypatch.setattr(ops, "is_unbalanced", lambda backend, cfg: True)

    def balance(backend, cfg, stats=None):
        seen.append(svc.get_state("t")["operation"])

    monkeypatch.setattr(ops, "balance", balance)
    assert svc.balance_if_unbalanced() is True
    (running,) = seen
    assert running is not None
    assert (running["op"], running["dbg"], running["args"], running["outcome"]) == \
        ("auto-balance", "periodic", "", "running")
    assert svc.get_state("t")["operation"] is None


# ------------------------------------------------------- history outcomes


def test_each_failure_is_recorded_by_its_wire_name(monkeypatch) -> None:
    svc, _ = make(4000 * MIB)

    def raises(exc):
        def f(*a, **kw):
            raise exc
        return f

    monkeypatch.setattr(ops, "reserve", raises(InternalError("xenstore: EIO")))
    with pytest.raises(InternalError, match="^xenstore: EIO$"):
        svc.reserve_memory("t", "s", 1)
    monkeypatch.setattr(ops, "reserve", raises(ZeroDivisionError("boom")))
    with pytest.raises(ZeroDivisionError):
        svc.reserve_memory("t", "s", 1)
    monkeypatch.setattr(ops, "reserve", raises(engine_errors.InvalidAmount(123)))
    with pytest.raises(InvalidMemoryValue) as e:
        svc.reserve_memory("t", "s", 1)
    assert e.value.value == 123
    monkeypatch.setattr(ops, "reserve", raises(KeyboardInterrupt()))  # not an Exception
    with pytest.raises(KeyboardInterrupt):
        svc.reserve_memory("t", "s", 1)
    assert outcomes(svc) == [("reserve_memory", "Internal_error"),
                             ("reserve_memory", "failed: ZeroDivisionError"),
                             ("reserve_memory", "Invalid_memory_value"),
                             ("reserve_memory", "failed: KeyboardInterrupt")]
    assert svc.get_state("t")["operation"] is None and not svc._op_lock.locked()


def test_shutting_down_failures_are_abandoned_except_cannot_free(monkeypatch, caplog) -> None:
    svc, _ = make(4000 * MIB)
    svc.abandon()
    monkeypatch.setattr(ops, "reserve", lambda *a, **kw: (_ for _ in ()).throw(
        engine_errors.DomainsRefused([1])))
    with pytest.raises(InternalError) as e:
        svc.reserve_memory("t", "s", 1)
    assert e.value.message == "squeezed is shutting down; operation abandoned"
    # Cannot_free fails fast, before anything could be abandoned: the real answer.
    monkeypatch.setattr(ops, "reserve", lambda *a, **kw: (_ for _ in ()).throw(
        engine_errors.CannotFree(RESERVE + 5000, RESERVE + 3000)))
    with pytest.raises(CannotFreeThisMuchMemory) as e2:
        svc.reserve_memory("t", "s", 1)
    assert (e2.value.needed_kib, e2.value.free_kib) == (5000, 3000)
    monkeypatch.setattr(ops, "reserve", lambda *a, **kw: 1 // 0)
    caplog.set_level(logging.WARNING, logger="squeezed.service")
    with pytest.raises(InternalError) as e:
        svc.reserve_memory("t", "s", 1)
    assert e.value.message == "squeezed is shutting down; operation abandoned"
    (rec,) = [r for r in caplog.records if r.name == "squeezed.service"]
    assert rec.levelno == logging.WARNING
    assert rec.getMessage() == ("reserve_memory failed while shutting down: ZeroDivisionError:"
                                " integer division or modulo by zero")
    assert rec.exc_info is not None and rec.exc_info[0] is ZeroDivisionError
    assert outcomes(svc) == [("reserve_memory", "abandoned"),
                             ("reserve_memory", "Cannot_free_this_much_memory"),
                             ("reserve_memory", "abandoned")]


def test_not_shutting_down_a_refusal_is_the_refusal(monkeypatch) -> None:
    svc, _ = make(4000 * MIB)
    monkeypatch.setattr(ops, "reserve", lambda *a, **kw: (_ for _ in ()).throw(
        engine_errors.DomainsRefused([4, 7])))
    with pytest.raises(DomainsRefusedToCooperate) as e:
        svc.reserve_memory("t", "s", 1)
    assert e.value.domids == [4, 7]
    assert outcomes(svc) == [("reserve_memory", "Domains_refused_to_cooperate")]


def test_periodic_balance_failures_are_recorded_and_raised(monkeypatch) -> None:
    svc, _ = make(4000 * MIB)
    monkeypatch.setattr(ops, "is_unbalanced", lambda backend, cfg: True)
    for exc in (engine_errors.CannotFree(RESERVE + 10, RESERVE), InternalError("EIO"),
                ZeroDivisionError()):
        def balance(backend, cfg, stats=None, exc=exc):
            raise exc
        monkeypatch.setattr(ops, "balance", balance)
        with pytest.raises(type(exc)):
            svc.balance_if_unbalanced()
        assert not svc._op_lock.locked()
        assert svc.get_state("t")["operation"] is None
    assert outcomes(svc) == [("auto-balance", "Cannot_free_this_much_memory"),
                             ("auto-balance", "Internal_error"),
                             ("auto-balance", "failed: ZeroDivisionError")]
    assert op_counts(svc) == [("auto-balance", "Cannot_free_this_much_memory", 1),
                              ("auto-balance", "Internal_error", 1),
                              ("auto-balance", "failed: ZeroDivisionError", 1)]


# ------------------------------------------------------------- counters


def test_counters_by_operation_and_outcome(monkeypatch) -> None:
    svc, _ = make(100 * MIB, [dom(1, 1000 * MIB, can_balloon=False)])
    rid = svc.reserve_memory("t", "s", 10 * MIB)
    with pytest.raises(CannotFreeThisMuchMemory):
        svc.reserve_memory("t", "s", 900 * MIB)
    svc.delete_reservation("t", "s", rid)
    svc.delete_reservation("t", "s", rid)
    svc.login("t", "s")
    assert op_counts(svc) == [
        ("delete_reservation", "success", 1),
        ("delete_reservation", "success (no such reservation)", 1),
        ("login", "success", 1),
        ("reserve_memory", "Cannot_free_this_much_memory", 1),
        ("reserve_memory", "success", 1),
    ]
    ops_ = svc.get_state("t")["counters"]["operations"]
    # durations of table updates and of a squeeze on an idle host: well under a minute
    assert all(0.0 <= o["duration_sum_s"] < 60.0 for o in ops_)


def test_iterations_are_counted_from_each_operation(monkeypatch) -> None:
    # Stub engine calls that each report a known number of balancing iterations.
    def doing(n: int, result=None):
        def f(backend, cfg, *amounts, stats: OpStats | None = None):
            assert stats is not None
            stats.iterations += n
            return result if result is not None else stats
        return f

    svc, _ = make(4000 * MIB)
    monkeypatch.setattr(ops, "reserve", doing(2))
    monkeypatch.setattr(ops, "free_memory_range", doing(3, (5, OpStats())))
    monkeypatch.setattr(ops, "balance", doing(5))
    monkeypatch.setattr(ops, "is_unbalanced", lambda backend, cfg: True)
    svc.reserve_memory("t", "s", 1)
    assert svc.get_state("t")["counters"]["iterations"] == 2
    assert svc.reserve_memory_range("t", "s", 1, 9)[1] == 5
    assert svc.get_state("t")["counters"]["iterations"] == 2 + 3
    svc.balance_memory("t")
    assert svc.get_state("t")["counters"]["iterations"] == 2 + 3 + 5
    svc.balance_if_unbalanced()
    assert svc.get_state("t")["counters"]["iterations"] == 2 + 3 + 5 + 5


def test_a_real_squeeze_counts_its_iterations() -> None:
    # 10 MiB free, an idle guest that can give back 900 MiB: reserving 100 MiB
    # must balloon it, so the loop ran at least once.
    svc, _ = make(10 * MIB, [dom(1, 1000 * MIB, dmin=100 * MIB)])
    assert svc.get_state("t")["counters"]["iterations"] == 0
    svc.reserve_memory("t", "s", 100 * MIB)
    assert svc.get_state("t")["counters"]["iterations"] >= 1


# ------------------------------------------------- the backend's facts


def test_state_shows_the_backends_facts_errors_names_and_flags(monkeypatch) -> None:
    svc, host = make(1000 * MIB, [dom(1, 500 * MIB), dom(2, 300 * MIB)])
    describe = host.describe
    monkeypatch.setattr(host, "describe", lambda: {
        **describe(),
        "xen_free_kib": 111, "xen_scrub_kib": 22, "xen_total_kib": 3333, "reservations_kib": 44,
        "uncooperative_domids": [1], "slow_balloon_domids": [1],
        "invalid_domains": {1: "dynamic-min above dynamic-max", 9: "no static-max"},
        "domain_names": {1: "web", 9: "db"},
        "xenstore_errors": {"EIO": 2, "EAGAIN": 1},
        "hypercall_errors": {"xc_domain_getinfolist": 4},
        "balloon_errors": 3,  # a count that is not per error: not a counter list
    })
    st = svc.get_state("t")
    assert {k: st["host"][k] for k in ("xen_free_kib", "xen_scrub_kib", "xen_total_kib",
                                       "reservations_kib")} == \
        {"xen_free_kib": 111, "xen_scrub_kib": 22, "xen_total_kib": 3333, "reservations_kib": 44}
    assert st["counters"]["xenstore_errors"] == [{"error": "EAGAIN", "count": 1},
                                                 {"error": "EIO", "count": 2}]
    assert st["counters"]["hypercall_errors"] == [{"error": "xc_domain_getinfolist", "count": 4}]
    assert st["left_alone"] == [
        {"domid": 1, "name": "web", "reason": "dynamic-min above dynamic-max"},
        {"domid": 9, "name": "db", "reason": "no static-max"},
    ]
    assert [(d["domid"], d["name"], d["flags"]) for d in st["domains"]] == [
        (1, "web", ["bad-keys", "slow-balloon", "uncooperative"]),
        (2, None, []),
    ]


def test_error_counts_that_are_not_per_error_are_left_out(monkeypatch) -> None:
    svc, host = make(1000 * MIB)
    describe = host.describe
    monkeypatch.setattr(host, "describe", lambda: {**describe(), "xenstore_errors": 7,
                                                   "hypercall_errors": [1, 2]})
    st = svc.get_state("t")
    assert st["counters"]["xenstore_errors"] == []
    assert st["counters"]["hypercall_errors"] == []


# --------------------------------------------- boot-time host free memory


def test_the_boot_time_file_alone_is_written_in_the_current_directory(tmp_path,
                                                                     monkeypatch) -> None:
    from squeezed.initial_free import InitialFreeMemory

    monkeypatch.chdir(tmp_path)
    InitialFreeMemory("boot_time_memory").set(7 << 30)
    assert os.listdir(tmp_path) == ["boot_time_memory"]
    assert (tmp_path / "boot_time_memory").read_text() == str(7 << 30)


def test_stability_needs_count_samples_in_a_row() -> None:
    # The rule: `count` consecutive samples within the tolerance of the one before.
    from squeezed.initial_free import measure_stable

    samples = iter([50, 50, 900, 900, 900, 1])
    slept: list[float] = []
    assert measure_stable(lambda: next(samples), 3, 2.0, sleep=slept.append,
                          tolerance_bytes=0) == 900
    assert slept == [2.0, 2.0, 2.0, 2.0]  # 50, 50, 900, 900 then the third 900
