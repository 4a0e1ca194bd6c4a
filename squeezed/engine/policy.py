"""The proportional policy: share the surplus so every domain sits at the
same fraction of its dynamic range.

If every domain ballooned down to dynamic_min the host would have
``free + sum(min_freeable)``; what exceeds the host's free-memory target is
the surplus, handed out so that (target - dynamic_min) / (dynamic_max -
dynamic_min) is one fraction gamma in [0, 1] for all. Integer arithmetic
throughout: gamma is the exact ratio surplus / total_range.
"""

from __future__ import annotations

from collections.abc import Iterable

from squeezed.engine.model import Domain


def max_free_kib(free_mem_kib: int, domains: Iterable[Domain]) -> int:
    """Host free memory if every given domain ballooned down to dynamic_min."""
    return free_mem_kib + sum(d.min_freeable_kib for d in domains)


def proportional_targets(
    free_mem_kib: int,
    domains: Iterable[Domain],
    host_target_kib: int,
    max_free: int | None = None,
) -> dict[int, int]:
    """Balloon target per domid for the given (active) domains. `max_free`
    is `max_free_kib(free_mem_kib, domains)` when the caller has it already."""
    domains = list(domains)
    if max_free is None:
        max_free = max_free_kib(free_mem_kib, domains)
    surplus_kib = max(0, max_free - host_target_kib)
    ranges = [d.range_kib for d in domains]
    total_range_kib = sum(ranges)
    if surplus_kib >= total_range_kib:  # gamma clamped to 1
        return {d.domid: d.dynamic_min_kib + r for d, r in zip(domains, ranges, strict=True)}
    return {
        d.domid: d.dynamic_min_kib + r * surplus_kib // total_range_kib
        for d, r in zip(domains, ranges, strict=True)
    }
