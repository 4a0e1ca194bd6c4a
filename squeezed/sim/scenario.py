"""TOML scenarios, the one description of a simulated host both simulators
take: load and validate them. The virtual-time simulator runs a scenario's
steps (`squeezed.sim.virtual.runner`); `squeezed --simulate` builds the
simulated Xen host from its [host] and [[domain]] tables
(`squeezed.sim.xenhost.launch`).

Schema (every amount an integer in KiB, every time a number in seconds)::

    name = "x"                 # default: the file's stem
    description = "..."
    [host]
    free_kib = 0               # required: free memory at t=0
    reserved_kib = 73728       # host free memory always kept back
    tolerance_kib = 512        # balance tolerance
    tick_s = 0.01              # the virtual host's physics tick while memory moves
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squeezed.errors import ALL_ERRORS
from squeezed.sim.drivers import DRIVER_KINDS, Driver, Stuck, driver_params, make_driver

DEFAULT_RESERVED_KIB = 73728
DEFAULT_TOLERANCE_KIB = 512
DEFAULT_STEP_TIMEOUT_S = 3600.0
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
    tick_s: float | None = None  # None: the virtual host's default


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

    def only(self, t: dict[str, Any], prefix: str, allowed: set[str] | dict[str, str]) -> None:
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
        tick_s=None if "tick_s" not in h else float(c.get(h, "host", "tick_s", "pos")),
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
