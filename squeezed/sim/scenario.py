"""TOML scenarios: load and validate them, build the simulated host, run the
steps through the engine.

Schema (every amount an integer in KiB, every time a number in seconds)::

    name = "x"                 # default: the file's stem
    description = "..."
    [host]
    free_kib = 0               # required: free memory at t=0
    reserved_kib = 73728       # host free memory always kept back
    tolerance_kib = 512        # balance tolerance
    tick_s = 0.01              # physics tick while memory moves
    [engine]                   # optional EngineConfig overrides
    stuck_after_s = 5.0        # also min_poll_s, max_poll_s, two_phase
    [[domain]]
    domid = 1
    dynamic_min_kib = 1000
    dynamic_max_kib = 2000
    target_kib = 1500
    actual_kib = 1500
    maxmem_kib = 1500          # default target_kib
    inaccuracy_kib = 4         # default 4
    can_balloon = true         # default true
    driver = { kind = "ideal", rate_kib_s = 100 }   # required if can_balloon
    destroy_at_s = 2.5         # optional: the domain disappears then
    [[step]]
    op = "reserve"             # see STEP_OPS
    kib = 1000
    expect = "success"         # or an error name
    expect_detail = [2]        # optional: the error's arguments
    max_sim_seconds = 1.0      # optional: the step ends within this
    expect_min_free_kib = 0    # optional: free never below this during the step
    expect_amount_kib = 0      # optional (reserve_range): amount granted

A malformed scenario raises `ScenarioError` naming the file, the key and
the problem.
"""

from __future__ import annotations

import importlib.resources
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
from squeezed.errors import ALL_ERRORS, MemoryInterfaceError
from squeezed.service import wire_error
from squeezed.sim.drivers import DRIVER_KINDS, Driver, Stuck, driver_params, make_driver
from squeezed.sim.virtual import DEFAULT_TICK_S, Clock, SimDomain, SimulatedHost, SimulationTimeout

DEFAULT_RESERVED_KIB = 73728
DEFAULT_TOLERANCE_KIB = 512
DEFAULT_STEP_TIMEOUT_S = 3600.0
SESSION = "squeezed-sim"
TIMED_OUT = "Timed_out"  # not an interface error: the step ran out of simulated time

# op -> its parameters (name -> "int" amount in KiB or "num" seconds)
STEP_OPS: dict[str, dict[str, str]] = {
    "free": {"kib": "int"},  # host free >= kib (the kept reserve not added)
    "reserve": {"kib": "int"},  # free kib + reserve, then hold a reservation of kib
    "reserve_range": {"min_kib": "int", "max_kib": "int"},  # ditto, amount in [min, max]
    "consume": {"kib": "int"},  # free memory taken by someone else
    "release": {"kib": "int"},  # memory given back to the host from outside
    "balance": {},
    "advance": {"seconds": "num"},
    "destroy": {"domid": "int"},
    "unreserve": {},  # drop a reservation (optional `id`; default the latest)
}
STEP_OPTIONAL = {
    "expect", "expect_detail", "max_sim_seconds", "expect_min_free_kib",
    "expect_amount_kib", "timeout_s", "note", "id",
}
OUTCOMES = frozenset({"success", TIMED_OUT} | {e.name for e in ALL_ERRORS})
ENGINE_KEYS = {
    "stuck_after_s": "pos", "uncooperative_after_s": "pos", "min_poll_s": "pos",
    "max_poll_s": "pos", "two_phase": "bool",
}


class ScenarioError(ValueError):
    """A malformed scenario: `file`, `key` (e.g. domain[2].driver.rate_kib_s)
    and `problem`."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")
        self.file = file
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class HostSpec:
    free_kib: int
    reserved_kib: int = DEFAULT_RESERVED_KIB
    tolerance_kib: int = DEFAULT_TOLERANCE_KIB
    tick_s: float = DEFAULT_TICK_S


@dataclass(frozen=True)
class DomainSpec:
    domid: int
    dynamic_min_kib: int
    dynamic_max_kib: int
    target_kib: int
    actual_kib: int
    maxmem_kib: int
    inaccuracy_kib: int
    can_balloon: bool
    driver: Driver
    destroy_at_s: float | None = None


@dataclass(frozen=True)
class StepSpec:
    op: str
    params: dict[str, Any]
    expect: str | None = None
    expect_detail: Any = None
    max_sim_seconds: float | None = None
    expect_min_free_kib: int | None = None
    expect_amount_kib: int | None = None
    timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    note: str = ""
    id: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    host: HostSpec
    domains: tuple[DomainSpec, ...]
    steps: tuple[StepSpec, ...]
    engine: dict[str, Any] = field(default_factory=dict)
    file: str = "<scenario>"


# ---- loading and validation -------------------------------------------------------


class _Checker:
    """Typed reads from TOML tables that name the offending key on error."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(self.file, key, problem)

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_typename(value)}")
        return value

    def only(self, t: dict[str, Any], prefix: str, allowed: set[str] | dict) -> None:
        for k in t:
            if k not in allowed:
                raise self.fail(_join(prefix, k),
                                f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def get(self, t: dict[str, Any], prefix: str, name: str, kind: str,
            default: Any = ..., *, signed: bool = False) -> Any:
        """kind: int (KiB amounts), num (seconds/rates), pos (num > 0), str, bool."""
        key = _join(prefix, name)
        if name not in t:
            if default is ...:
                raise self.fail(key, "missing")
            return default
        v = t[name]
        if kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.fail(key, f"expected an integer (KiB), got {_typename(v)} {v!r}")
        elif kind in ("num", "pos"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.fail(key, f"expected a number, got {_typename(v)} {v!r}")
        elif kind == "str":
            if not isinstance(v, str):
                raise self.fail(key, f"expected a string, got {_typename(v)} {v!r}")
            return v
        elif kind == "bool":
            if not isinstance(v, bool):
                raise self.fail(key, f"expected true or false, got {_typename(v)} {v!r}")
            return v
        if kind == "pos" and v <= 0:
            raise self.fail(key, f"must be positive, got {v}")
        if not signed and v < 0:
            raise self.fail(key, f"must not be negative, got {v}")
        return v


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _typename(v: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a float"}.get(type(v), type(v).__name__)


def _driver(c: _Checker, value: Any, key: str) -> Driver:
    t = c.table(value, key)
    kind = c.get(t, key, "kind", "str")
    if kind not in DRIVER_KINDS:
        raise c.fail(_join(key, "kind"),
                     f"unknown driver kind {kind!r} (expected one of {', '.join(DRIVER_KINDS)})")
    cls = DRIVER_KINDS[kind]
    params = driver_params(kind)
    c.only(t, key, {"kind", *params})
    signed: frozenset[str] = getattr(cls, "SIGNED", frozenset())
    positive: frozenset[str] = getattr(cls, "POSITIVE", frozenset())
    values = {}
    for name, typ in params.items():
        kind_ = "int" if typ is int else ("pos" if name in positive else "num")
        values[name] = c.get(t, key, name, kind_, signed=name in signed)
    return make_driver(kind, **values)


def _domain(c: _Checker, value: Any, key: str) -> DomainSpec:
    t = c.table(value, key)
    c.only(t, key, {"domid", "dynamic_min_kib", "dynamic_max_kib", "target_kib", "actual_kib",
                    "maxmem_kib", "inaccuracy_kib", "can_balloon", "driver", "destroy_at_s"})
    domid = c.get(t, key, "domid", "int")
    dmin = c.get(t, key, "dynamic_min_kib", "int")
    dmax = c.get(t, key, "dynamic_max_kib", "int")
    target = c.get(t, key, "target_kib", "int")
    actual = c.get(t, key, "actual_kib", "int")
    maxmem = c.get(t, key, "maxmem_kib", "int", target)
    inaccuracy = c.get(t, key, "inaccuracy_kib", "int", 4)
    can_balloon = c.get(t, key, "can_balloon", "bool", True)
    destroy_at_s = c.get(t, key, "destroy_at_s", "num", None)
    if dmin > dmax:
        raise c.fail(_join(key, "dynamic_min_kib"),
                     f"dynamic_min_kib ({dmin}) > dynamic_max_kib ({dmax})")
    if maxmem < target:
        raise c.fail(_join(key, "maxmem_kib"),
                     f"maxmem_kib ({maxmem}) < target_kib ({target}): Xen would refuse it")
    if "driver" in t:
        driver = _driver(c, t["driver"], _join(key, "driver"))
    elif can_balloon:
        raise c.fail(_join(key, "driver"), "missing (required when can_balloon is true)")
    else:
        driver = Stuck()
    return DomainSpec(domid, dmin, dmax, target, actual, maxmem, inaccuracy, can_balloon,
                      driver, None if destroy_at_s is None else float(destroy_at_s))


def _step(c: _Checker, value: Any, key: str) -> StepSpec:
    t = c.table(value, key)
    op = c.get(t, key, "op", "str")
    if op not in STEP_OPS:
        raise c.fail(_join(key, "op"), f"unknown op {op!r} (expected one of {', '.join(STEP_OPS)})")
    spec = STEP_OPS[op]
    c.only(t, key, {"op", *spec, *STEP_OPTIONAL})
    params = {name: c.get(t, key, name, kind) for name, kind in spec.items()}
    expect = c.get(t, key, "expect", "str", None)
    if expect is not None and expect not in OUTCOMES:
        raise c.fail(_join(key, "expect"),
                     f"unknown outcome {expect!r} (expected one of {', '.join(sorted(OUTCOMES))})")
    return StepSpec(
        op=op,
        params=params,
        expect=expect,
        expect_detail=t.get("expect_detail"),
        max_sim_seconds=c.get(t, key, "max_sim_seconds", "num", None),
        expect_min_free_kib=c.get(t, key, "expect_min_free_kib", "int", None, signed=True),
        expect_amount_kib=c.get(t, key, "expect_amount_kib", "int", None),
        timeout_s=float(c.get(t, key, "timeout_s", "pos", DEFAULT_STEP_TIMEOUT_S)),
        note=c.get(t, key, "note", "str", ""),
        id=c.get(t, key, "id", "str", None),
    )


def parse(data: dict[str, Any], file: str = "<scenario>") -> Scenario:
    """Validate a decoded TOML document."""
    c = _Checker(file)
    c.only(data, "", {"name", "description", "host", "engine", "domain", "step"})
    name = c.get(data, "", "name", "str", Path(file).stem)
    description = c.get(data, "", "description", "str", "")
    if "host" not in data:
        raise c.fail("host", "missing")
    h = c.table(data["host"], "host")
    c.only(h, "host", {"free_kib", "reserved_kib", "tolerance_kib", "tick_s"})
    host = HostSpec(
        free_kib=c.get(h, "host", "free_kib", "int"),
        reserved_kib=c.get(h, "host", "reserved_kib", "int", DEFAULT_RESERVED_KIB),
        tolerance_kib=c.get(h, "host", "tolerance_kib", "int", DEFAULT_TOLERANCE_KIB),
        tick_s=float(c.get(h, "host", "tick_s", "pos", DEFAULT_TICK_S)),
    )
    engine: dict[str, Any] = {}
    if "engine" in data:
        e = c.table(data["engine"], "engine")
        c.only(e, "engine", ENGINE_KEYS)
        engine = {k: c.get(e, "engine", k, kind) for k, kind in ENGINE_KEYS.items() if k in e}
    domains_raw = data.get("domain", [])
    if not isinstance(domains_raw, list):
        raise c.fail("domain",
                     f"expected an array of tables ([[domain]]), got {_typename(domains_raw)}")
    domains = tuple(_domain(c, d, f"domain[{i}]") for i, d in enumerate(domains_raw))
    seen: dict[int, int] = {}
    for i, d in enumerate(domains):
        if d.domid in seen:
            raise c.fail(f"domain[{i}].domid",
                         f"duplicate domid {d.domid} (also domain[{seen[d.domid]}])")
        seen[d.domid] = i
    steps_raw = data.get("step", [])
    if not isinstance(steps_raw, list):
        raise c.fail("step", f"expected an array of tables ([[step]]), got {_typename(steps_raw)}")
    steps = tuple(_step(c, s, f"step[{i}]") for i, s in enumerate(steps_raw))
    return Scenario(name, description, host, domains, steps, engine, file)


def loads(text: str, file: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(file, "", f"invalid TOML: {e}") from None
    return parse(data, file)


def load(path: str | Path) -> Scenario:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(str(path), "", f"cannot read: {e.strerror or e}") from None
    return loads(text, str(path))


def demo_path() -> Path:
    """The built-in demo scenario shipped with the package."""
    return Path(str(importlib.resources.files("squeezed.sim") / "scenarios" / "demo.toml"))


# ---- building --------------------------------------------------------------------


def build_host(scenario: Scenario, clock: Clock | None = None) -> SimulatedHost:
    """The scenario's host and domains at t=0 (steps are not run). Pass a
    `RealClock` to run it in real time, e.g. under the daemon."""
    return SimulatedHost(
        scenario.host.free_kib,
        [
            SimDomain(
                domid=d.domid, dynamic_min_kib=d.dynamic_min_kib,
                dynamic_max_kib=d.dynamic_max_kib, target_kib=d.target_kib,
                actual_kib=d.actual_kib, maxmem_kib=d.maxmem_kib,
                inaccuracy_kib=d.inaccuracy_kib, can_balloon=d.can_balloon,
                driver=d.driver, destroy_at_s=d.destroy_at_s,
            )
            for d in scenario.domains
        ],
        clock=clock,
        tick_s=scenario.host.tick_s,
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
