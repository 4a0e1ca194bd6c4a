"""A simulated Xen host on a virtual (or real) clock.

`SimulatedHost` implements the engine's `HostIO` and the Memory service's
`Backend`: domains with balloon drivers (`squeezed.sim.drivers`), host free
memory, and the reservation table. Time passes only in `wait`, in small
physics ticks; each tick lets every driver move its domain, within physics:
a domain never allocates above its maxmem nor more than is free.

The simulated hypervisor also checks the toolstack. It records a violation
(a dict: time_s, domid, kind, detail) when

* a target is written above the domain's maxmem (``target_above_maxmem``),
* a maxmem is written below the domain's target (``maxmem_below_target``),
* host free memory, net of reservations, goes negative (``host_free_negative``):
  some promise of memory could no longer be kept,
* something asks for more memory than is physically free
  (``allocation_beyond_free``; the allocation is clamped).

Free memory as the engine sees it (``snapshot().free_mem_kib``) is the
physical free memory minus every reservation that still counts: untransferred
ones, transferred ones whose domain does not exist (yet), and, for each domain
that has not booted (not written feature-balloon), the part of its
initial-reservation it has not allocated yet. A transferred reservation whose
domain exists counts only through that domain, never twice.

Cost: a physics tick steps only the domains that can move (allocation off
target, or a driver that moves at its target), O(N) at worst; a write
(`set_target`, `set_maxmem`) is O(1). Under a real clock a write between two
ticks does not advance the physics of the whole host: it records the value
it replaces and the time, and the next tick moves that domain piecewise,
with the old value up to the write and the new one after (drivers are exact
for any split of time, see `squeezed.sim.drivers`). Under a virtual clock
writes land exactly on a tick boundary, so nothing is split.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from squeezed.backend import Reservation
from squeezed.engine.model import DEFAULT_INACCURACY_KIB, Domain, Host
from squeezed.engine.operations import OperationAbandoned
from squeezed.errors import UnknownReservation
from squeezed.sim.drivers import Driver, Stuck, bound, describe_driver
from squeezed.sim.plot import Series
from squeezed.sim.virtual.clock import Clock, VirtualClock

_TIME_EPS_S = 1e-9
_REAL_TICK_COST_FACTOR = 5  # under a real clock, a tick lasts >= 5x its CPU cost

DEFAULT_TICK_S = 0.01
DEFAULT_MAX_TICK_S = 0.5  # ticks grow up to this while nothing moves
DEFAULT_MAX_SAMPLES = 4000


class SimulationTimeout(OperationAbandoned):
    """Virtual time passed `SimulatedHost.deadline_s`: a runaway operation."""


@dataclass
class VirtualDomain:
    """A simulated domain (mutable: the host's own state)."""

    domid: int
    dynamic_min_kib: int
    dynamic_max_kib: int
    target_kib: int
    actual_kib: int
    maxmem_kib: int
    inaccuracy_kib: int = DEFAULT_INACCURACY_KIB
    can_balloon: bool = True  # has written control/feature-balloon
    driver: Driver = field(default_factory=Stuck)
    destroy_at_s: float | None = None
    initial_reservation_kib: int | None = None  # memory/initial-reservation
    reservation_id: str | None = None  # memory/reservation-id

    def to_engine(self) -> Domain:
        return Domain(
            domid=self.domid,
            can_balloon=self.can_balloon,
            dynamic_min_kib=self.dynamic_min_kib,
            target_kib=self.target_kib,
            dynamic_max_kib=self.dynamic_max_kib,
            memory_actual_kib=self.actual_kib,
            memory_max_kib=self.maxmem_kib,
            inaccuracy_kib=self.inaccuracy_kib,
        )

    def unallocated_initial_kib(self) -> int:
        """Initial reservation not yet allocated, while the domain is unbooted."""
        if self.initial_reservation_kib is None or self.can_balloon:
            return 0
        return max(0, self.initial_reservation_kib - self.actual_kib)

    def describe(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "driver"}
        d["driver"] = describe_driver(self.driver)
        return d


class SimulatedHost:
    """A simulated host: `HostIO` for the engine and `Backend` for the service.

    Thread-safe (one lock), so a daemon may drive it from several threads
    with a `RealClock`.
    """

    def __init__(
        self,
        free_kib: int,
        domains: Iterable[VirtualDomain] = (),
        *,
        clock: Clock | None = None,
        tick_s: float = DEFAULT_TICK_S,
        max_tick_s: float = DEFAULT_MAX_TICK_S,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> None:
        if free_kib < 0:
            raise ValueError(f"free_kib must be >= 0, got {free_kib}")
        self.clock: Clock = clock if clock is not None else VirtualClock()
        self.violations: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.deadline_s: float | None = None  # wait() past this raises SimulationTimeout
        self._lock = threading.RLock()
        self._raw_free_kib = free_kib
        self._domains: dict[int, VirtualDomain] = {}
        self._reservations: dict[tuple[str, str], Reservation] = {}
        self._pending_initial: dict[int, tuple[int, str]] = {}  # transfers to absent domids
        self._base_tick_s = tick_s
        self._max_tick_s = max(tick_s, max_tick_s)
        self._tick_s = tick_s
        self._t_phys_s = self.clock.now()
        # Under a real clock a tick must cost well under its own length, or
        # physics falls ever further behind: ticks are then at least a few
        # times what the last one cost (drivers are exact for any tick size;
        # only competition for free memory is resolved more coarsely).
        self._real_time = not isinstance(self.clock, VirtualClock)
        self._min_tick_s = 0.0
        self._free_negative = False
        self._min_free_kib: int | None = None
        self._series: list[Series] = []
        self._max_samples = max(2, max_samples)
        self._sample_every_s = tick_s
        # Per domain, values replaced by writes since the last tick, oldest
        # first: (time of the write, target before it, maxmem before it).
        self._replaced: dict[int, list[tuple[float, int, int]]] = {}
        for d in domains:
            if d.domid in self._domains:
                raise ValueError(f"duplicate domid {d.domid}")
            self._domains[d.domid] = d
        self._destroy_due(self._t_phys_s)
        self._sample(self._t_phys_s, force=True)

    # ---- HostIO -------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    def wait(self, seconds: float) -> None:
        end_s = self.clock.now() + max(0.0, seconds)
        if self.deadline_s is not None and end_s > self.deadline_s:
            raise SimulationTimeout(f"simulated time passed {self.deadline_s} s")
        self.clock.sleep_until(end_s)
        with self._lock:
            self._advance_to(self.clock.now())

    def observe(self) -> Host:
        """Queries see the same host (a simulated snapshot has no side effects)."""
        return self.snapshot()

    def snapshot(self) -> Host:
        with self._lock:
            self._advance_to(self.clock.now())
            reserved = self.reserved_kib()
            free = self._raw_free_kib - reserved
            self._note_free(free)
            return Host(
                domains=tuple(d.to_engine() for d in self._domains.values()),
                free_mem_kib=free,
                detail=f"F{self._raw_free_kib} R{reserved}",
            )

    def set_target(self, domid: int, target_kib: int) -> None:
        with self._lock:
            d = self._domains.get(domid)
            if d is None:
                return  # gone: writing under a dead domain's path is harmless
            if target_kib > d.maxmem_kib:
                self._violation(domid, "target_above_maxmem",
                                f"target {target_kib} KiB > maxmem {d.maxmem_kib} KiB")
            # The driver must not be credited with moving towards a target it
            # did not have yet: remember until when the old one applied.
            self._note_replaced(d)
            d.target_kib = target_kib

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None:
        with self._lock:
            d = self._domains.get(domid)
            if d is None:
                return
            if maxmem_kib < d.target_kib:
                self._violation(domid, "maxmem_below_target",
                                f"maxmem {maxmem_kib} KiB < target {d.target_kib} KiB")
            self._note_replaced(d)
            d.maxmem_kib = maxmem_kib

    def _note_replaced(self, d: VirtualDomain) -> None:
        t_s = self.clock.now()
        if t_s - self._t_phys_s > _TIME_EPS_S:  # between ticks (real clock only)
            self._replaced.setdefault(d.domid, []).append((t_s, d.target_kib, d.maxmem_kib))

    # ---- Backend ------------------------------------------------------------

    def reservations(self) -> list[Reservation]:
        with self._lock:
            return list(self._reservations.values())

    def add_reservation(self, r: Reservation) -> None:
        with self._lock:
            self._reservations[(r.session, r.reservation_id)] = r
            self._check_free()

    def remove_reservation(self, session: str, reservation_id: str) -> None:
        """Idempotent: removing an absent reservation leaves the table as asked."""
        with self._lock:
            self._reservations.pop((session, reservation_id), None)
            self._check_free()

    def transfer_reservation(self, r: Reservation, domid: int) -> None:
        with self._lock:
            key = (r.session, r.reservation_id)
            current = self._reservations.get(key)
            if current is None:
                raise UnknownReservation(r.reservation_id)
            self._reservations[key] = dataclasses.replace(current, in_transfer_domid=domid)
            d = self._domains.get(domid)
            if d is None:  # applied when the domain appears
                self._pending_initial[domid] = (current.kib, current.reservation_id)
            else:
                d.initial_reservation_kib = current.kib
                d.reservation_id = current.reservation_id
                self.set_maxmem(domid, current.kib)
            self._check_free()

    def domain_reservation_id(self, domid: int) -> str | None:
        with self._lock:
            d = self._domains.get(domid)
            return None if d is None else d.reservation_id

    def domain_exists(self, domid: int) -> bool:
        with self._lock:
            return domid in self._domains

    def describe(self) -> dict[str, Any]:
        with self._lock:
            reserved = self.reserved_kib()
            return {
                "time_s": self.clock.now(),
                "physical_free_kib": self._raw_free_kib,
                "reserved_kib": reserved,
                "free_kib": self._raw_free_kib - reserved,
                "total_kib": self.total_kib(),
                "reservations": [dataclasses.asdict(r) for r in self._reservations.values()],
                "domains": [d.describe() for d in self._domains.values()],
                "violations": list(self.violations),
                "events": list(self.events),
            }

    # ---- scenario controls ----------------------------------------------------

    def create_domain(
        self,
        domid: int,
        *,
        target_kib: int,
        dynamic_min_kib: int | None = None,
        dynamic_max_kib: int | None = None,
        actual_kib: int = 0,
        maxmem_kib: int | None = None,
        inaccuracy_kib: int = DEFAULT_INACCURACY_KIB,
        can_balloon: bool = False,
        driver: Driver | None = None,
        destroy_at_s: float | None = None,
    ) -> VirtualDomain:
        """A new domain appears (e.g. a VM start), `actual_kib` already
        allocated from free memory by the domain builder. A reservation
        transferred to this domid beforehand becomes its initial-reservation."""
        with self._lock:
            if domid in self._domains:
                raise ValueError(f"domain {domid} already exists")
            now_s = self.clock.now()
            self._advance_to(now_s)
            allocated = self._allocatable(domid, actual_kib)
            self._raw_free_kib -= allocated
            d = VirtualDomain(
                domid=domid,
                dynamic_min_kib=target_kib if dynamic_min_kib is None else dynamic_min_kib,
                dynamic_max_kib=target_kib if dynamic_max_kib is None else dynamic_max_kib,
                target_kib=target_kib,
                actual_kib=allocated,
                maxmem_kib=target_kib if maxmem_kib is None else maxmem_kib,
                inaccuracy_kib=inaccuracy_kib,
                can_balloon=can_balloon,
                driver=driver if driver is not None else Stuck(),
                destroy_at_s=destroy_at_s,
            )
            self._domains[domid] = d
            pending = self._pending_initial.pop(domid, None)
            if pending is not None:
                d.initial_reservation_kib, d.reservation_id = pending
                d.maxmem_kib = max(d.maxmem_kib, pending[0])
            self.events.append({"time_s": now_s, "domid": domid, "kind": "created"})
            self._check_free()
            self._sample(now_s, force=True)
            return d

    def destroy_domain(self, domid: int) -> None:
        """The domain goes away and its memory becomes free."""
        with self._lock:
            self._advance_to(self.clock.now())
            self._destroy(domid, self.clock.now())

    def set_can_balloon(self, domid: int, can_balloon: bool) -> None:
        """The guest wrote (or lost) control/feature-balloon: it has booted."""
        with self._lock:
            self._domains[domid].can_balloon = can_balloon
            self._check_free()

    def consume(self, kib: int) -> int:
        """Something outside the domains (Xen itself, another toolstack) takes
        free memory; returns what it got."""
        with self._lock:
            self._advance_to(self.clock.now())
            got = self._allocatable(None, kib)
            self._raw_free_kib -= got
            self._check_free()
            self._sample(self.clock.now(), force=True)
            return got

    def release(self, kib: int) -> None:
        """Memory comes back to the host from outside the domains."""
        with self._lock:
            self._advance_to(self.clock.now())
            self._raw_free_kib += max(0, kib)
            self._sample(self.clock.now(), force=True)

    def advance(self, seconds: float) -> None:
        """Let time pass (same as `wait`, for scenario steps)."""
        self.wait(seconds)

    # ---- inspection -----------------------------------------------------------

    def domain(self, domid: int) -> VirtualDomain | None:
        return self._domains.get(domid)

    @property
    def domains(self) -> list[VirtualDomain]:
        return list(self._domains.values())

    @property
    def physical_free_kib(self) -> int:
        return self._raw_free_kib

    @property
    def free_kib(self) -> int:
        """Free memory as the engine sees it (net of reservations)."""
        with self._lock:
            return self._raw_free_kib - self.reserved_kib()

    def reserved_kib(self) -> int:
        total = sum(
            r.kib
            for r in self._reservations.values()
            if r.in_transfer_domid is None or r.in_transfer_domid not in self._domains
        )
        return total + sum(
            max(0, d.initial_reservation_kib - d.actual_kib)  # unallocated_initial_kib
            for d in self._domains.values()
            if d.initial_reservation_kib is not None and not d.can_balloon
        )

    def total_kib(self) -> int:
        """Physical memory: free plus every domain's allocation (conserved,
        apart from consume/release)."""
        return self._raw_free_kib + sum(d.actual_kib for d in self._domains.values())

    @property
    def series(self) -> list[Series]:
        with self._lock:
            return list(self._series)

    def mark(self) -> None:
        """Start tracking the lowest free memory seen from now on."""
        with self._lock:
            self._min_free_kib = self._raw_free_kib - self.reserved_kib()

    @property
    def min_free_since_mark_kib(self) -> int | None:
        return self._min_free_kib

    # ---- physics ----------------------------------------------------------------

    def _advance_to(self, t_end_s: float) -> None:
        if t_end_s - self._t_phys_s <= _TIME_EPS_S:
            self._t_phys_s = max(self._t_phys_s, t_end_s)
            return
        # Domains due for destruction, looked up once per call, not per tick.
        doomed = [d for d in self._domains.values() if d.destroy_at_s is not None]
        due = sorted(d.destroy_at_s for d in doomed
                     if d.destroy_at_s is not None and d.destroy_at_s > self._t_phys_s)
        while t_end_s - self._t_phys_s > _TIME_EPS_S:
            dt_s = min(max(self._tick_s, self._min_tick_s), t_end_s - self._t_phys_s)
            while due and due[0] <= self._t_phys_s:
                due.pop(0)
            if due and due[0] < self._t_phys_s + dt_s:
                dt_s = due[0] - self._t_phys_s  # land exactly on the destruction
            t1_s = self._t_phys_s + dt_s
            cost_s = time.perf_counter() if self._real_time else 0.0
            moved = self._tick(t1_s, dt_s)
            self._t_phys_s = t1_s
            if doomed:
                moved = self._destroy_due(t1_s, doomed) or moved
            self._check_free()
            self._sample(t1_s)
            if self._real_time:
                cost_s = time.perf_counter() - cost_s
                self._min_tick_s = 0.5 * (self._min_tick_s + _REAL_TICK_COST_FACTOR * cost_s)
            # Fine ticks while memory moves; coarse ones when all is still.
            self._tick_s = self._base_tick_s if moved else min(2 * self._tick_s, self._max_tick_s)
        self._t_phys_s = max(self._t_phys_s, t_end_s)

    def _tick(self, t1_s: float, dt_s: float) -> bool:
        moved = False
        replaced = self._replaced
        # Only domains that can move; those giving memory back go first: within
        # one tick the host sees frees before allocations, as it would with
        # truly parallel drivers.
        giving: list[VirtualDomain] = []
        taking: list[VirtualDomain] = []
        for d in self._domains.values():
            if d.actual_kib > d.target_kib:
                giving.append(d)
            elif (d.actual_kib != d.target_kib or d.domid in replaced
                  or not getattr(d.driver, "STILL_AT_TARGET", False)):
                taking.append(d)
        for group in (giving, taking):
            for d in group:
                before_kib = d.actual_kib
                segments = replaced.get(d.domid) if replaced else None
                if segments:
                    self._step_written(d, t1_s, dt_s, segments)
                    moved = moved or d.actual_kib != before_kib
                    continue
                # _step, inlined: this loop runs for every moving domain.
                new = d.driver.step(t1_s, dt_s, before_kib, d.target_kib, d.maxmem_kib,
                                    self._raw_free_kib)
                if new > before_kib or new < 0:
                    new = bound(before_kib, new, d.maxmem_kib, self._raw_free_kib)
                if new != before_kib:
                    self._raw_free_kib -= new - before_kib
                    d.actual_kib = new
                    moved = True
        return moved

    def _step_written(self, d: VirtualDomain, t1_s: float, dt_s: float,
                      segments: list[tuple[float, int, int]]) -> None:
        """A tick of a domain written since the last one: each old value
        applies up to the write that replaced it."""
        t_s = t1_s - dt_s
        while segments and segments[0][0] <= t1_s:
            tw_s, target_kib, maxmem_kib = segments.pop(0)
            if tw_s > t_s:
                self._step(d, tw_s, tw_s - t_s, d.actual_kib, target_kib, maxmem_kib)
                t_s = tw_s
        if segments:  # written after this tick: the first write's old values hold
            _, target_kib, maxmem_kib = segments[0]
        else:
            del self._replaced[d.domid]
            target_kib, maxmem_kib = d.target_kib, d.maxmem_kib
        if t1_s > t_s:
            self._step(d, t1_s, t1_s - t_s, d.actual_kib, target_kib, maxmem_kib)

    def _step(self, d: VirtualDomain, t1_s: float, dt_s: float, actual_kib: int, target_kib: int,
              maxmem_kib: int) -> int:
        """One driver step; the domain's allocation and host free memory follow."""
        new = d.driver.step(t1_s, dt_s, actual_kib, target_kib, maxmem_kib, self._raw_free_kib)
        # The hypervisor enforces physics whatever the driver asks for.
        new = bound(actual_kib, new, maxmem_kib, self._raw_free_kib)
        if new != actual_kib:
            self._raw_free_kib -= new - actual_kib
            d.actual_kib = new
        return new

    def _destroy_due(self, t_s: float, candidates: Iterable[VirtualDomain] | None = None) -> bool:
        pool = self._domains.values() if candidates is None else candidates
        due = [d.domid for d in pool
               if d.destroy_at_s is not None and d.destroy_at_s <= t_s + _TIME_EPS_S
               and self._domains.get(d.domid) is d]
        for domid in due:
            self._destroy(domid, t_s)
        return bool(due)

    def _destroy(self, domid: int, t_s: float) -> None:
        d = self._domains.pop(domid, None)
        self._replaced.pop(domid, None)
        if d is None:
            return
        self._raw_free_kib += d.actual_kib
        self.events.append({"time_s": t_s, "domid": domid, "kind": "destroyed",
                            "freed_kib": d.actual_kib})
        self._sample(t_s, force=True)

    def _allocatable(self, domid: int | None, kib: int) -> int:
        """How much of `kib` is physically free (a violation if not all)."""
        got = max(0, min(kib, self._raw_free_kib))
        if got < kib:
            self._violation(domid, "allocation_beyond_free",
                            f"asked for {kib} KiB with {self._raw_free_kib} KiB free")
        return got

    def _check_free(self) -> None:
        reserved = self.reserved_kib()
        free = self._raw_free_kib - reserved
        self._note_free(free)
        if free < 0 and not self._free_negative:
            self._violation(None, "host_free_negative",
                            f"physical free {self._raw_free_kib} KiB < reserved {reserved} KiB")
        self._free_negative = free < 0

    def _note_free(self, free_kib: int) -> None:
        if self._min_free_kib is not None and free_kib < self._min_free_kib:
            self._min_free_kib = free_kib

    def _violation(self, domid: int | None, kind: str, detail: str) -> None:
        self.violations.append(
            {"time_s": round(self._t_phys_s, 6), "domid": domid, "kind": kind, "detail": detail}
        )

    def _sample(self, t_s: float, force: bool = False) -> None:
        if not force and self._series and t_s - self._series[-1].t_s < self._sample_every_s:
            return
        self._series.append(Series(
            t_s,
            self._raw_free_kib - self.reserved_kib(),
            tuple((d.domid, d.target_kib, d.actual_kib, d.maxmem_kib)
                  for d in self._domains.values()),
        ))
        if len(self._series) > self._max_samples:  # decimate: bounded memory for long runs
            self._series = self._series[::2]
            self._sample_every_s *= 2
