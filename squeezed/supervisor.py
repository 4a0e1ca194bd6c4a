"""Supervised threads: a crash is logged with its traceback and the thread
restarted with back-off, so the daemon never limps on with a dead thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("squeezed.supervisor")


class Heartbeats:
    """Liveness of long-lived loops that a thread's mere existence cannot show:
    a loop blocked for ever is alive but useless. Each loop registers with the
    longest silence it can legitimately have and calls its beat function every
    time round; `late()` names those that have been silent for longer.

    The clock is injectable, so tests need no sleeping.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_s: dict[str, float] = {}
        self._max_silence_s: dict[str, float] = {}

    def register(self, name: str, max_silence_s: float) -> Callable[[], None]:
        """Start watching `name` (its first beat is now); returns its beat function."""
        if max_silence_s <= 0:
            raise ValueError(f"max_silence_s must be > 0, got {max_silence_s}")
        with self._lock:
            self._max_silence_s[name] = max_silence_s
            self._last_s[name] = self._clock()
        return lambda: self.beat(name)

    def unregister(self, name: str) -> None:
        """Stop watching `name` (a loop that ended on purpose)."""
        with self._lock:
            self._max_silence_s.pop(name, None)
            self._last_s.pop(name, None)

    def beat(self, name: str) -> None:
        with self._lock:
            if name in self._last_s:
                self._last_s[name] = self._clock()

    def late(self) -> list[str]:
        """Registered loops silent for longer than they said they could be."""
        now = self._clock()
        with self._lock:
            return sorted(n for n, last in self._last_s.items()
                          if now - last > self._max_silence_s[n])

    def status(self) -> dict[str, float]:
        """Seconds since each registered loop's last beat."""
        now = self._clock()
        with self._lock:
            return {n: now - last for n, last in sorted(self._last_s.items())}


@dataclass
class _Child:
    name: str
    body: Callable[[threading.Event], None]
    once: bool
    thread: threading.Thread | None = None
    restarts: int = 0
    done: bool = False
    last_error: str = ""


@dataclass
class Supervisor:
    stop: threading.Event = field(default_factory=threading.Event)
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    # How to pause before a restart; returns True when stopping (tests record it).
    pause: Callable[[float], bool] | None = None
    heartbeats: Heartbeats = field(default_factory=Heartbeats)
    _children: list[_Child] = field(default_factory=list)

    def spawn(self, name: str, body: Callable[[threading.Event], None], once: bool = False) -> None:
        """Run body(stop) in a thread. A body that raises (or returns while the
        daemon runs, unless `once`) is restarted after a growing pause."""
        child = _Child(name, body, once)
        self._children.append(child)
        child.thread = threading.Thread(target=self._run, args=(child,), name=name, daemon=True)
        child.thread.start()

    def _run(self, child: _Child) -> None:
        backoff_s = self.min_backoff_s
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                child.body(self.stop)
                if child.once or self.stop.is_set():
                    child.done = True
                    return
                log.error("thread %s returned unexpectedly; restarting in %.1f s",
                          child.name, backoff_s)
            except Exception as e:
                child.last_error = f"{type(e).__name__}: {e}"
                log.exception("thread %s crashed; restarting in %.1f s", child.name, backoff_s)
            child.restarts += 1
            if time.monotonic() - started > 60:
                backoff_s = self.min_backoff_s  # it ran well for a while
            if (self.pause or self.stop.wait)(backoff_s):
                return
            backoff_s = min(backoff_s * 2, self.max_backoff_s)

    def healthy(self) -> bool:
        """Every thread is alive (or finished its one-shot job) and no
        registered loop is late with its heartbeat."""
        late = self.heartbeats.late()
        if late:
            log.error("no heartbeat from %s", ", ".join(late))
            return False
        return all(c.done or (c.thread is not None and c.thread.is_alive())
                   for c in self._children)

    def status(self) -> dict[str, dict[str, object]]:
        return {
            c.name: {"alive": bool(c.thread and c.thread.is_alive()), "done": c.done,
                     "restarts": c.restarts, "last_error": c.last_error}
            for c in self._children
        }

    def join(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        for c in self._children:
            if c.thread is not None:
                c.thread.join(max(0.0, deadline - time.monotonic()))
