"""Counters the daemon keeps for operators: operations by method and outcome
with a duration histogram, and iterations of the balancing loop.

Plain, thread-safe counters in the shape of the IDL's `counters` struct
(get_state); `squeezed.ctl.metrics` turns them into Prometheus text. They
live for the daemon's lifetime and only ever grow (Prometheus counters).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Any

# Upper bounds (seconds) of the duration buckets: from a table update (ms) to a
# squeeze that waits out stuck drivers (tens of seconds).
DURATION_BOUNDS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)


@dataclass
class _Histogram:
    count: int = 0
    sum_s: float = 0.0
    # per bucket, not cumulative: bucket i counts bounds[i-1] < d <= bounds[i]
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BOUNDS_S))


class OperationStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[tuple[str, str], _Histogram] = {}
        self._iterations = 0

    def observe(self, op: str, outcome: str, elapsed_s: float) -> None:
        """One finished operation."""
        i = bisect.bisect_left(DURATION_BOUNDS_S, elapsed_s)
        with self._lock:
            h = self._ops.setdefault((op, outcome), _Histogram())
            h.count += 1
            h.sum_s += elapsed_s
            if i < len(h.buckets):
                h.buckets[i] += 1

    def add_iterations(self, n: int) -> None:
        with self._lock:
            self._iterations += n

    def snapshot(self) -> dict[str, Any]:
        """The IDL's `counters` struct, without the backend's error counts."""
        with self._lock:
            ops = []
            for (op, outcome), h in sorted(self._ops.items()):
                cumulative, total = [], 0
                for n in h.buckets:
                    total += n
                    cumulative.append(total)
                ops.append({"op": op, "outcome": outcome, "count": h.count,
                            "duration_sum_s": h.sum_s, "duration_buckets": cumulative})
            return {"duration_bounds_s": list(DURATION_BOUNDS_S), "operations": ops,
                    "iterations": self._iterations}
