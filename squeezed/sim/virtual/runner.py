"""Runs a scenario's steps through the engine on the virtual-time host:
builds the host and the engine's configuration from the scenario, then, step
by step, the operation, its outcome and the host's state after it (the
result `squeezed-sim run` prints)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from squeezed.backend import Reservation
from squeezed.engine.errors import EngineError
from squeezed.engine.model import Host
from squeezed.engine.operations import (
    EngineConfig,
    OpStats,
    _is_balanced,
    change_host_free_memory,
    free_memory,
    free_memory_range,
    reserve,
)
from squeezed.errors import MemoryInterfaceError
from squeezed.service import wire_error
from squeezed.sim.scenario import TIMED_OUT, Scenario, StepSpec
from squeezed.sim.virtual.clock import Clock
from squeezed.sim.virtual.host import (
    DEFAULT_TICK_S,
    SimulatedHost,
    SimulationTimeout,
    VirtualDomain,
)

SESSION = "squeezed-sim"


# ---- building --------------------------------------------------------------------


def build_host(scenario: Scenario, clock: Clock | None = None) -> SimulatedHost:
    """The scenario's host and domains at t=0 (steps are not run). Pass a
    `RealClock` to run it in real time, e.g. under the daemon."""
    return SimulatedHost(
        scenario.host.free_kib,
        [
            VirtualDomain(
                domid=d.domid, dynamic_min_kib=d.dynamic_min_kib,
                dynamic_max_kib=d.dynamic_max_kib, target_kib=d.target_kib,
                actual_kib=d.actual_kib, maxmem_kib=d.maxmem_kib,
                inaccuracy_kib=d.inaccuracy_kib, can_balloon=d.can_balloon,
                driver=d.driver, destroy_at_s=d.destroy_at_s,
            )
            for d in scenario.domains
        ],
        clock=clock,
        tick_s=DEFAULT_TICK_S if scenario.host.tick_s is None else scenario.host.tick_s,
    )


def engine_config(scenario: Scenario) -> EngineConfig:
    return EngineConfig(
        reserve_kib=scenario.host.reserved_kib,
        tolerance_kib=scenario.host.tolerance_kib,
        **scenario.engine,
    )


# ---- running ---------------------------------------------------------------------


def _domain_state(host: SimulatedHost) -> list[dict[str, Any]]:
    return [
        {
            "domid": d.domid, "target_kib": d.target_kib, "actual_kib": d.actual_kib,
            "maxmem_kib": d.maxmem_kib, "dynamic_min_kib": d.dynamic_min_kib,
            "dynamic_max_kib": d.dynamic_max_kib, "inaccuracy_kib": d.inaccuracy_kib,
            "can_balloon": d.can_balloon,
        }
        for d in sorted(host.domains, key=lambda d: d.domid)
    ]


class _CountingIO:
    """The host as HostIO, counting clock reads. A failed operation returns
    no statistics, but the engine reads the clock once to start, once per
    iteration and once more when it fails, which gives its iteration count."""

    def __init__(self, host: SimulatedHost) -> None:
        self.host = host
        self.clock_reads = 0

    def snapshot(self) -> Host:
        return self.host.snapshot()

    def set_target(self, domid: int, target_kib: int) -> None:
        self.host.set_target(domid, target_kib)

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None:
        self.host.set_maxmem(domid, maxmem_kib)

    def now(self) -> float:
        self.clock_reads += 1
        return self.host.now()

    def wait(self, seconds: float) -> None:
        self.host.wait(seconds)

    def failed_iterations(self) -> int:
        return max(0, self.clock_reads - 2)


def _engine_op(
    io: _CountingIO, cfg: EngineConfig, step: StepSpec, index: int
) -> tuple[OpStats, int | None]:
    """Run one engine-backed step; returns (stats, amount granted)."""
    p = step.params
    rid = step.id or f"r{index}"
    if step.op == "free":
        return free_memory(io, cfg, p["kib"]), None
    if step.op == "reserve":
        stats = reserve(io, cfg, p["kib"])
        io.host.add_reservation(Reservation(SESSION, rid, p["kib"]))
        return stats, p["kib"]
    if step.op == "reserve_range":
        amount, stats = free_memory_range(io, cfg, p["min_kib"], p["max_kib"])
        io.host.add_reservation(Reservation(SESSION, rid, amount))
        return stats, amount
    if step.op == "balance":
        # balance() swallows its failure; run its loop directly to report it.
        return change_host_free_memory(io, cfg, cfg.reserve_kib, _is_balanced(cfg), None), None
    raise AssertionError(step.op)


def _control_op(host: SimulatedHost, step: StepSpec) -> None:
    p = step.params
    if step.op == "consume":
        host.consume(p["kib"])
    elif step.op == "release":
        host.release(p["kib"])
    elif step.op == "advance":
        host.advance(p["seconds"])
    elif step.op == "destroy":
        host.destroy_domain(p["domid"])
    elif step.op == "unreserve":
        rs = [r for r in host.reservations() if step.id is None or r.reservation_id == step.id]
        if rs:
            host.remove_reservation(rs[-1].session, rs[-1].reservation_id)


def _check(step: StepSpec, result: dict[str, Any]) -> list[str]:
    """Why the step's expectations did not hold (empty: they did)."""
    failures = []
    if step.expect is not None and result["outcome"] != step.expect:
        failures.append(f"expected {step.expect}, got {result['outcome']}")
    if step.expect_detail is not None and result["detail"] != step.expect_detail:
        failures.append(f"expected detail {step.expect_detail!r}, got {result['detail']!r}")
    if step.max_sim_seconds is not None and result["sim_seconds"] > step.max_sim_seconds:
        failures.append(f"took {result['sim_seconds']} s > max_sim_seconds {step.max_sim_seconds}")
    if step.expect_min_free_kib is not None and result["min_free_kib"] < step.expect_min_free_kib:
        failures.append(f"free fell to {result['min_free_kib']} KiB"
                        f" < expect_min_free_kib {step.expect_min_free_kib}")
    if step.expect_amount_kib is not None and result["amount_kib"] != step.expect_amount_kib:
        failures.append(f"amount {result['amount_kib']} KiB != expect_amount_kib"
                        f" {step.expect_amount_kib}")
    return failures


def run(
    scenario: Scenario,
    host: SimulatedHost | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every step in virtual time; returns the JSON-ready result (see
    `squeezed-sim run --json`). `ok` is true when every expectation held and
    the hypervisor saw no violation."""
    host = host if host is not None else build_host(scenario)
    cfg = engine_config(scenario)
    steps = []
    for i, step in enumerate(scenario.steps):
        t0 = host.now()
        io = _CountingIO(host)
        host.mark()
        host.deadline_s = t0 + step.timeout_s
        outcome, detail, stats, amount = "success", None, None, None
        try:
            if step.op in ("free", "reserve", "reserve_range", "balance"):
                stats, amount = _engine_op(io, cfg, step, i)
            else:
                _control_op(host, step)
        except SimulationTimeout as e:
            outcome, detail = TIMED_OUT, str(e)
        except (MemoryInterfaceError, EngineError) as e:
            w = wire_error(e, 0) if isinstance(e, EngineError) else e  # the engine's gross amounts
            outcome, detail = w.name, w.args_wire()
        finally:
            host.deadline_s = None
        snap = host.snapshot()
        result: dict[str, Any] = {
            "op": step.op,
            "params": dict(step.params),
            "outcome": outcome,
            "detail": detail,
            "amount_kib": amount if step.op == "reserve_range" else None,
            "sim_seconds": round(host.now() - t0, 6),
            "iterations": stats.iterations if stats is not None else io.failed_iterations(),
            "host_free_kib": snap.free_mem_kib,
            "min_free_kib": host.min_free_since_mark_kib,
            "t_start_s": round(t0, 6),
            "t_end_s": round(host.now(), 6),
            "domains": _domain_state(host),
            "expect": step.expect,
            "note": step.note,
        }
        result["failures"] = _check(step, result)
        result["ok"] = not result["failures"]
        steps.append(result)
        if on_step is not None:
            on_step(result)
    violations = list(host.violations)
    return {
        "name": scenario.name,
        "description": scenario.description,
        "file": scenario.file,
        "steps": steps,
        "violations": violations,
        "events": list(host.events),
        "ok": all(s["ok"] for s in steps) and not violations,
    }
