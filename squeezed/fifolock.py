"""A lock that is handed to its waiters in arrival order.

threading.Lock wakes an arbitrary waiter, so with many callers queued for
the operation lock some waited for ever (issue 11 #7: 151 of 200 concurrent
callers hit a 60 s client timeout). Here release() hands the lock straight
to the longest waiter: first come, first served.
"""

from __future__ import annotations

import collections
import threading
from types import TracebackType


class FifoLock:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: collections.deque[threading.Lock] = collections.deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._mutex:
            if not self._held and not self._waiters:
                self._held = True
                return True
            if not blocking:
                return False
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append(gate)
        if gate.acquire(timeout=timeout):
            return True  # release() handed the lock to us
        with self._mutex:
            try:
                self._waiters.remove(gate)
            except ValueError:
                return True  # handed over just as we timed out: ours
            return False

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of an unlocked FifoLock")
            if self._waiters:
                self._waiters.popleft().release()  # stays held: ownership moves
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
