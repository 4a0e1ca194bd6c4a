"""The host's free memory at boot (get_host_initial_free_memory): measured once at
start-up when it is stable, persisted, and awaited by callers until then."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from squeezed.errors import InternalError

log = logging.getLogger("squeezed.service")


class InitialFreeMemory:
    """get_host_initial_free_memory's value: measured once at start-up when
    host free memory is stable, persisted, and awaited by callers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._known = threading.Event()
        self._bytes: int | None = None
        self._aborted = False

    def load_persisted(self) -> bool:
        try:
            with open(self.path) as f:
                self.set(int(f.read().strip()), persist=False)
            return True
        except (OSError, ValueError):
            return False

    def set(self, value_bytes: int, persist: bool = True) -> None:
        """Record the measurement. A file that cannot be written (full or
        read-only file system) is logged once; the value is kept in memory
        and answered all the same. Recorded before it is answered, so that a
        caller who has the value finds it in the file."""
        if persist:
            self._persist(value_bytes)
        self._bytes = value_bytes
        self._known.set()

    def _persist(self, value_bytes: int) -> None:
        tmp = f"{self.path}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            with open(tmp, "w") as f:
                f.write(str(value_bytes))
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot record boot-time host free memory in %s: %s; keeping %d bytes"
                      " in memory (a restarted squeezed will measure again)",
                      self.path, e, value_bytes)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def abort(self) -> None:
        """Shutting down: callers waiting for the measurement get an error."""
        self._aborted = True
        self._known.set()

    def get(self, timeout_s: float | None = None) -> int:
        if not self._known.wait(timeout_s):
            raise InternalError("host initial free memory not yet measured")
        if self._bytes is None:
            assert self._aborted
            raise InternalError("squeezed is shutting down; host initial free memory unknown")
        return self._bytes

    @property
    def known(self) -> bool:
        return self._known.is_set()


def measure_stable(
    sample_bytes: Callable[[], int],
    count: int,
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
    tolerance_bytes: int = 1 << 20,
) -> int:
    """Sample until `count` consecutive samples agree within 1 MiB."""
    last: int | None = None
    same = 0
    while True:
        v = sample_bytes()
        same = same + 1 if last is not None and abs(v - last) <= tolerance_bytes else 1
        last = v
        if same >= count:
            return v
        sleep(interval_s)
