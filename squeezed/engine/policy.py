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
    free_mem_kib: int, domains: Iterable[Domain], host_target_kib: int
) -> dict[int, int]:
    """Balloon target per domid for the given (active) domains."""
    domains = list(domains)
    surplus_kib = max(0, max_free_kib(free_mem_kib, domains) - host_target_kib)
    total_range_kib = sum(d.range_kib for d in domains)
    targets: dict[int, int] = {}
    for d in domains:
        if surplus_kib >= total_range_kib:
            share = d.range_kib  # gamma clamped to 1
        else:
            share = d.range_kib * surplus_kib // total_range_kib
        targets[d.domid] = d.dynamic_min_kib + share
    return targets
