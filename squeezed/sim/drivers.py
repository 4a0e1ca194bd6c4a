"""Balloon-driver behaviours as pure step functions.

A driver is a frozen dataclass of parameters with one method,
``step(now_s, dt_s, actual_kib, target_kib, maxmem_kib, host_free_kib)``,
returning the domain's allocation at ``now_s`` given its allocation at
``now_s - dt_s``. Nothing else is remembered between steps, so the same
driver serves the virtual-time host here and the xenstore-level simulated
guests, and any tick size gives the same trajectory.

Movement is stateless but exact: a driver moving at `rate_kib_s` has moved
``floor(rate * U(t))`` KiB by time t, where U(t) is the time it has spent
working; a step moves the difference between its two ends. Fractions of a
KiB therefore carry over between small ticks instead of being lost.

Every driver obeys physics: it never allocates above maxmem nor more than
the host has free (a domain above maxmem is not forced down).

A driver class with ``STILL_AT_TARGET = True`` promises that a domain whose
allocation equals its target stays put, so hosts may skip stepping it (what
makes an idle host of thousands of domains cheap); a driver without it (e.g.
Dom0Drift) is stepped always.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

_EPS = 1e-9  # absorbs float noise such as 100 * 0.30000000000000004


class Driver(Protocol):
    kind: ClassVar[str]

    def step(
        self,
        now_s: float,
        dt_s: float,
        actual_kib: int,
        target_kib: int,
        maxmem_kib: int,
        host_free_kib: int,
    ) -> int: ...


def moved_kib(rate_kib_s: float, worked_t0_s: float, worked_t1_s: float) -> int:
    """KiB a driver moving at `rate_kib_s` covers between two amounts of
    cumulative working time (signed if the rate is negative)."""
    return math.floor(rate_kib_s * worked_t1_s + _EPS) - math.floor(rate_kib_s * worked_t0_s + _EPS)


def bound(actual_kib: int, new_kib: int, maxmem_kib: int, host_free_kib: int) -> int:
    """Physics: allocate only up to maxmem and only what is free; never below 0."""
    if new_kib > actual_kib:
        new_kib = min(new_kib, max(actual_kib, maxmem_kib), actual_kib + max(0, host_free_kib))
    return max(0, new_kib)


def toward(
    actual_kib: int, aim_kib: int, budget_kib: int, maxmem_kib: int, host_free_kib: int
) -> int:
    """Move at most `budget_kib` towards `aim_kib`, within physics."""
    if actual_kib > aim_kib:
        return max(aim_kib, actual_kib - budget_kib)
    if actual_kib < aim_kib:
        return bound(actual_kib, min(aim_kib, actual_kib + budget_kib), maxmem_kib, host_free_kib)
    return actual_kib


@dataclass(frozen=True, slots=True)
class Ideal:
    """Moves straight to its target at a constant rate."""

    kind: ClassVar[str] = "ideal"
    STILL_AT_TARGET: ClassVar[bool] = True
    rate_kib_s: float

    def step(
        self, now_s: float, dt_s: float, actual_kib: int, target_kib: int,
        maxmem_kib: int, host_free_kib: int,
    ) -> int:
        budget = moved_kib(self.rate_kib_s, now_s - dt_s, now_s)
        return toward(actual_kib, target_kib, budget, maxmem_kib, host_free_kib)


@dataclass(frozen=True, slots=True)
class Floor:
    """Like Ideal, but will not free below a floor the toolstack cannot see
    (the guest needs the memory); it never gets there, so it looks stuck."""

    kind: ClassVar[str] = "floor"
    STILL_AT_TARGET: ClassVar[bool] = True
    rate_kib_s: float
    floor_kib: int

    def step(
        self, now_s: float, dt_s: float, actual_kib: int, target_kib: int,
        maxmem_kib: int, host_free_kib: int,
    ) -> int:
        budget = moved_kib(self.rate_kib_s, now_s - dt_s, now_s)
        new = toward(actual_kib, target_kib, budget, maxmem_kib, host_free_kib)
        return max(new, min(actual_kib, self.floor_kib)) if new < actual_kib else new


@dataclass(frozen=True, slots=True)
class Ceiling:
    """Like Ideal, but cannot allocate above a ceiling (e.g. the guest's
    own memory map is smaller than the toolstack believes)."""

    kind: ClassVar[str] = "ceiling"
    STILL_AT_TARGET: ClassVar[bool] = True
    rate_kib_s: float
    ceiling_kib: int

    def step(
        self, now_s: float, dt_s: float, actual_kib: int, target_kib: int,
        maxmem_kib: int, host_free_kib: int,
    ) -> int:
        budget = moved_kib(self.rate_kib_s, now_s - dt_s, now_s)
        new = toward(actual_kib, target_kib, budget, maxmem_kib, host_free_kib)
        return min(new, max(actual_kib, self.ceiling_kib)) if new > actual_kib else new


@dataclass(frozen=True, slots=True)
class Stuck:
    """A dead balloon driver: the allocation never changes."""

    kind: ClassVar[str] = "stuck"
    STILL_AT_TARGET: ClassVar[bool] = True

    def step(
        self, now_s: float, dt_s: float, actual_kib: int, target_kib: int,
        maxmem_kib: int, host_free_kib: int,
    ) -> int:
        return actual_kib


@dataclass(frozen=True, slots=True)
class Intermittent:
    """Works for `period_s`, stalls for `period_s`, and so on (working first)."""

    kind: ClassVar[str] = "intermittent"
    STILL_AT_TARGET: ClassVar[bool] = True
    POSITIVE: ClassVar[frozenset[str]] = frozenset({"period_s"})
    rate_kib_s: float
    period_s: float

    def worked_s(self, t_s: float) -> float:
        """Cumulative working time in [0, t]."""
        cycles, rest = divmod(max(0.0, t_s), 2 * self.period_s)
        return cycles * self.period_s + min(self.period_s, rest)

    def step(
        self, now_s: float, dt_s: float, actual_kib: int, target_kib: int,
        maxmem_kib: int, host_free_kib: int,
    ) -> int:
        budget = moved_kib(self.rate_kib_s, self.worked_s(now_s - dt_s), self.worked_s(now_s))
        return toward(actual_kib, target_kib, budget, maxmem_kib, host_free_kib)


@dataclass(frozen=True, slots=True)
class SlowStart:
    """Does nothing until `delay_s` (e.g. the guest is still booting), then
    behaves like Ideal."""

    kind: ClassVar[str] = "slow_start"
    STILL_AT_TARGET: ClassVar[bool] = True
    rate_kib_s: float
    delay_s: float

    def step(
        self, now_s: float, dt_s: float, actual_kib: int, target_kib: int,
        maxmem_kib: int, host_free_kib: int,
    ) -> int:
        def worked(t: float) -> float:
            return max(0.0, t - self.delay_s)

        budget = moved_kib(self.rate_kib_s, worked(now_s - dt_s), worked(now_s))
        return toward(actual_kib, target_kib, budget, maxmem_kib, host_free_kib)


@dataclass(frozen=True, slots=True)
class Short:
    """Stops `shortfall_kib` short of its target in either direction; with a
    shortfall beyond the inaccuracy it never counts as having hit target."""

    kind: ClassVar[str] = "short"
    STILL_AT_TARGET: ClassVar[bool] = True
    rate_kib_s: float
    shortfall_kib: int

    def step(
        self, now_s: float, dt_s: float, actual_kib: int, target_kib: int,
        maxmem_kib: int, host_free_kib: int,
    ) -> int:
        budget = moved_kib(self.rate_kib_s, now_s - dt_s, now_s)
        if actual_kib > target_kib:
            aim = min(actual_kib, target_kib + self.shortfall_kib)
        else:
            aim = max(actual_kib, target_kib - self.shortfall_kib)
        return toward(actual_kib, aim, budget, maxmem_kib, host_free_kib)


@dataclass(frozen=True, slots=True)
class Dom0Drift:
    """Balloons towards its target at `rate_kib_s` (0: not at all) while its
    allocation also drifts by `drift_kib_s` unasked (negative: shrinks),
    as domain 0 does when its own processes come and go."""

    kind: ClassVar[str] = "dom0_drift"
    SIGNED: ClassVar[frozenset[str]] = frozenset({"drift_kib_s"})
    rate_kib_s: float
    drift_kib_s: float

    def step(
        self, now_s: float, dt_s: float, actual_kib: int, target_kib: int,
        maxmem_kib: int, host_free_kib: int,
    ) -> int:
        t0 = now_s - dt_s
        new = toward(actual_kib, target_kib, moved_kib(self.rate_kib_s, t0, now_s),
                     maxmem_kib, host_free_kib)
        new += moved_kib(self.drift_kib_s, t0, now_s)
        return bound(actual_kib, new, maxmem_kib, host_free_kib)


DRIVER_KINDS: dict[str, type] = {
    cls.kind: cls
    for cls in (Ideal, Floor, Ceiling, Stuck, Intermittent, SlowStart, Short, Dom0Drift)
}


def driver_params(kind: str) -> dict[str, type]:
    """Parameter name -> int or float, for validation and documentation."""
    cls = DRIVER_KINDS[kind]
    return {
        f.name: (int if f.name.endswith("_kib") else float)
        for f in dataclasses.fields(cls)
    }


def make_driver(kind: str, **params: float) -> Driver:
    """Build a driver from its kind and parameters (already validated:
    see `squeezed.sim.scenario` for the user-facing checks)."""
    cls = DRIVER_KINDS[kind]
    types = driver_params(kind)
    driver: Driver = cls(**{k: types[k](v) for k, v in params.items()})
    return driver


def describe_driver(d: Driver) -> dict[str, Any]:
    fields = dataclasses.fields(d)  # type: ignore[arg-type]  # every driver is a dataclass
    return {"kind": d.kind, **{f.name: getattr(d, f.name) for f in fields}}
