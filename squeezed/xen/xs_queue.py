"""The watcher's event queue: coalescing, and collapsing to the watch roots
when too many events are pending. No threads, no sockets: tested alone."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import NamedTuple


class WatchEvent(NamedTuple):
    path: str
    token: str


RECONNECTED = WatchEvent("@reconnected", "@reconnected")
"""Queued by :class:`Watcher` after it reconnected and re-registered its watches: every
cached value may be stale.  (Each watch's initial event follows, as on registration.)"""


class CoalescingQueue:
    """The watcher's event queue, without threads or sockets (so it is testable alone).

    * An event equal to one still pending is dropped (coalesced): xenstore events
      mean "look again", so one pending copy carries all the information.
    * When ``max_pending`` distinct events are pending, the queue is replaced by
      one event per registered watch (its own path and token), telling the owner
      to re-read everything it watches.  Until the owner drains it, later events
      under those roots are coalesced into them (so that a burst of events
      from thousands of watches costs one collapse, not one per event).
      Length stays at most ``max(max_pending, number of watches) + 1``.
    """

    def __init__(self, max_pending: int = 1024) -> None:
        self.max_pending = max(1, max_pending)
        self._q: dict[WatchEvent, None] = {}  # insertion-ordered set
        self._roots: dict[str, list[str]] | None = None  # token -> queued roots, once collapsed
        self.stats = {"received": 0, "coalesced": 0, "overflows": 0, "high_water": 0}

    def push(self, ev: WatchEvent, watches: Collection[tuple[str, str]] = ()) -> None:
        self.stats["received"] += 1
        if ev in self._q or self._covered(ev):
            self.stats["coalesced"] += 1
            return
        collapsed_len = len(watches) + 1 if self._roots is not None else 0
        if len(self._q) >= max(self.max_pending, collapsed_len):
            self.stats["overflows"] += 1
            self._q.clear()
            self._roots = {}
            for p, t in watches:
                self._q[WatchEvent(p, t)] = None
                self._roots.setdefault(t, []).append(p)
            if not self._covered(ev):
                self._q[ev] = None  # not covered by any watch root: keep it
        else:
            self._q[ev] = None
        self.stats["high_water"] = max(self.stats["high_water"], len(self._q))

    def _covered(self, ev: WatchEvent) -> bool:
        """Collapsed, and a queued watch root already stands for this event."""
        if self._roots is None or ev == RECONNECTED:
            return False
        return any(is_subpath(p, ev.path) for p in self._roots.get(ev.token, ()))

    def drain(self) -> list[WatchEvent]:
        out = list(self._q)
        self._q.clear()
        self._roots = None
        return out

    def discard(self, pred: Callable[[WatchEvent], bool]) -> None:
        for ev in [e for e in self._q if pred(e)]:
            del self._q[ev]

    def __len__(self) -> int:
        return len(self._q)


def is_subpath(parent: str, child: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")
