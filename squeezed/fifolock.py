"""A lock that is handed to its waiters in arrival order.

threading.Lock wakes an arbitrary waiter, so with many callers queued for
the operation lock some waited for ever (issue 11 #7: 151 of 200 concurrent
callers hit a 60 s client timeout). Here release() hands the lock straight
to the waiter that arrived first: first come, first served.

"Arrived" is when the request reached squeezed, not when its thread reached
the lock: under load the threads of callers a few milliseconds apart reach
the lock in either order (bench_scale's boot storm saw 1-3 of 50 callers
overtaken). The transports stamp each request as they take it in (the RPC
accept loop, the switch's reader) with `arrived`; a waiter without a stamp
arrived when it called acquire().
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from types import TracebackType

_arrival_s: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "squeezed_arrival_s", default=None)


@contextlib.contextmanager
def arrived(at_s: float) -> Iterator[None]:
    """Within this block, the current request arrived at `at_s` (time.monotonic)."""
    token = _arrival_s.set(at_s)
    try:
        yield
    finally:
        _arrival_s.reset(token)


class FifoLock:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        # (arrival, tie-break, gate): the earliest arrival is handed the lock
        self._waiters: list[tuple[float, int, threading.Lock]] = []
        self._order = itertools.count()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        arrival_s = _arrival_s.get()
        with self._mutex:
            if not self._held and not self._waiters:
                self._held = True
                return True
            if not blocking:
                return False
            gate = threading.Lock()
            gate.acquire()
            entry = (time.monotonic() if arrival_s is None else arrival_s,
                     next(self._order), gate)
            heapq.heappush(self._waiters, entry)
        if gate.acquire(timeout=timeout):
            return True  # release() handed the lock to us
        with self._mutex:
            try:
                self._waiters.remove(entry)
            except ValueError:
                return True  # handed over just as we timed out: ours
            heapq.heapify(self._waiters)
            return False

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of an unlocked FifoLock")
            if self._waiters:
                heapq.heappop(self._waiters)[2].release()  # stays held: ownership moves
            else:
                self._held = False

    def locked(self) -> bool:
        with self._mutex:
            return self._held

    def waiting(self) -> int:
        """Callers queued for the lock."""
        with self._mutex:
            return len(self._waiters)

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
