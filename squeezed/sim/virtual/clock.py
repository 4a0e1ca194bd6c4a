"""The virtual host's time: a `Clock` is what `SimulatedHost` reads and
sleeps on, either virtual (passes only when asked) or the real monotonic one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep_until(self, t_s: float) -> None: ...


class VirtualClock:
    """Time that passes only when asked to: tests are deterministic and fast."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = start_s

    def now(self) -> float:
        return self._now_s

    def sleep_until(self, t_s: float) -> None:
        self._now_s = max(self._now_s, t_s)  # time never goes backwards

    def advance(self, seconds: float) -> None:
        self.sleep_until(self._now_s + max(0.0, seconds))


class RealClock:
    """The monotonic clock, from 0 at construction: drives a simulated host in
    real time (benchmarks, `squeezed --simulate`)."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def sleep_until(self, t_s: float) -> None:
        delay_s = t_s - self.now()
        if delay_s > 0:
            time.sleep(delay_s)
