"""One decision step of a squeezing operation, and the state it keeps
between steps (which drivers are stuck).

The step is a pure function of (state, snapshot, time): it returns the new
targets to write, or that the operation succeeded or failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum

from squeezed.engine.model import Action, Domain, Host
from squeezed.engine.policy import max_free_kib, proportional_targets

DEFAULT_STUCK_AFTER_S = 5.0


@dataclass(slots=True)
class _Progress:
    last_actual_kib: int
    last_progress_s: float
    stuck: bool = False


@dataclass
class StucknessMonitor:
    """Spots balloon drivers that were asked to move and did not.

    A domain with outstanding work (actual not within inaccuracy of target)
    that has not moved towards its target for more than `stuck_after_s` is
    stuck until it makes progress again.
    """

    stuck_after_s: float = DEFAULT_STUCK_AFTER_S
    _per_domain: dict[int, _Progress] = field(default_factory=dict)

    def update(self, host: Host, now_s: float) -> None:
        live = set()
        for d in host.domains:
            live.add(d.domid)
            p = self._per_domain.get(d.domid)
            if p is None:  # new domains start out making progress...
                p = self._per_domain[d.domid] = _Progress(d.memory_actual_kib, now_s)
                # ...unless already flagged uncooperative and still off target:
                # they are inactive until they move, not after stuck_after_s more.
                p.stuck = d.uncooperative and not d.hit_target
            delta_kib = d.memory_actual_kib - p.last_actual_kib
            p.last_actual_kib = d.memory_actual_kib
            if d.hit_target:
                # No work, so no lack of progress: the stuck clock restarts when
                # work appears, or a domain idle > stuck_after_s would be declared
                # stuck on the first poll after its target moves.
                p.last_progress_s = now_s
                continue
            must_free = d.memory_actual_kib > d.target_kib
            if (delta_kib < 0 and must_free) or (delta_kib > 0 and not must_free):
                p.last_progress_s = now_s
                p.stuck = False
            elif now_s - p.last_progress_s > self.stuck_after_s:
                p.stuck = True
        for domid in [k for k in self._per_domain if k not in live]:
            del self._per_domain[domid]

    def is_active(self, domid: int) -> bool:
        p = self._per_domain.get(domid)
        return p is not None and not p.stuck

    def next_deadline_s(self, host: Host) -> float | None:
        """The earliest time a domain with work to do would be declared stuck."""
        times = [
            p.last_progress_s + self.stuck_after_s
            for d in host.domains
            if (p := self._per_domain.get(d.domid)) is not None and not p.stuck and not d.hit_target
        ]
        return min(times) if times else None


class Verdict(Enum):
    ADJUST = "adjust"  # write `actions` (possibly none) and look again
    SUCCESS = "success"
    FAILED = "failed"  # `blamed` names the stuck balloonable domains


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    actions: tuple[Action, ...] = ()
    blamed: tuple[int, ...] = ()
    declared_inactive: tuple[Domain, ...] = ()
    declared_active: tuple[int, ...] = ()
    active: frozenset[int] = frozenset()
    max_free_kib: int = 0  # host free if every active domain went to dynamic_min
    allocating: bool = False


@dataclass
class Squeezer:
    """State kept across the steps of one operation."""

    stuckness: StucknessMonitor = field(default_factory=StucknessMonitor)
    inactive: frozenset[int] = frozenset()
    two_phase: bool = True  # tests may turn it off to show why it exists

    def step(
        self,
        host: Host,
        host_target_kib: int,
        success: Callable[[int], bool],
        now_s: float,
    ) -> Decision:
        self.stuckness.update(host, now_s)
        active = [d for d in host.domains if d.can_balloon and self.stuckness.is_active(d.domid)]
        active_ids = frozenset(d.domid for d in active)
        inactive_ids = frozenset(d.domid for d in host.domains) - active_ids
        newly_inactive = inactive_ids - self.inactive
        declared_inactive = tuple(d for d in host.domains if d.domid in newly_inactive)
        declared_active = tuple(sorted(self.inactive & active_ids))
        self.inactive = inactive_ids

        # An inactive domain may still grow up to its maxmem (a stuck driver
        # that wakes up, or one below dynamic_min): that memory is not free.
        free_kib = host.free_mem_kib - sum(
            max(0, d.memory_max_kib - d.memory_actual_kib)
            for d in host.domains
            if d.can_balloon and d.domid in inactive_ids
        )
        max_free = max_free_kib(free_kib, active)
        targets = proportional_targets(free_kib, active, host_target_kib, max_free)
        freeing: list[tuple[Domain, int]] = []
        allocating: list[tuple[Domain, int]] = []
        for d in active:
            t = targets[d.domid]
            # Freeing = the driver will have to give memory back to reach t.
            (freeing if t < d.memory_actual_kib - d.inaccuracy_kib else allocating).append((d, t))
        # Two phases: never ask anyone to allocate while someone still has to
        # free, or an allocation could race a free and eat the kept reserve.
        allocation_phase = not freeing
        if not self.two_phase:
            chosen = freeing + allocating
        elif allocation_phase:
            chosen = allocating
        else:
            # A domain still allocating towards an older, higher target is
            # held where it is: nothing may allocate while others must free.
            chosen = freeing + [
                (d, min(d.dynamic_max_kib, max(d.dynamic_min_kib, d.memory_actual_kib)))
                for d, _ in allocating
                if d.target_kib > d.memory_actual_kib + d.inaccuracy_kib
            ]
        changes = tuple(Action(d.domid, t) for d, t in chosen if d.target_kib != t)
        all_reached = all(
            abs(d.memory_actual_kib - d.target_kib) <= d.inaccuracy_kib for d in active
        )
        common = Decision(
            Verdict.ADJUST,
            declared_inactive=declared_inactive,
            declared_active=declared_active,
            active=active_ids,
            max_free_kib=max_free,
            allocating=allocation_phase,
        )
        if changes or not all_reached:
            return replace(common, actions=changes)
        # Judge success on memory that stays free: an active domain a little
        # short of its target (within inaccuracy) may still take the rest.
        still_growing_kib = sum(
            max(0, min(d.memory_max_kib, d.target_kib + d.inaccuracy_kib) - d.memory_actual_kib)
            for d in active
        )
        if success(free_kib - still_growing_kib):
            return replace(common, verdict=Verdict.SUCCESS)
        blamed = tuple(
            d.domid for d in host.domains if d.domid in inactive_ids and d.can_balloon
        )
        return replace(common, verdict=Verdict.FAILED, blamed=blamed)
