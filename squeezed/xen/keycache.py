"""Each domain's watched xenstore keys (values.DOMAIN_KEYS), as last read.

The watcher re-reads a key when its watch fires; squeezed's own writes go
in at once. `epoch` counts every change of any value or of the set of
domains, except of the keys in `EPOCH_IGNORES`: while it stands still,
nothing XenHost derives from the keys for a booted domain has changed
either, which lets a quiet host skip the per-domain work (issue 12). (An
unbooted domain's initial-reservation is read afresh whenever it counts.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from squeezed.xen.values import domain_path

# Written by transfers to domains being built; read afresh where they count.
EPOCH_IGNORES = frozenset({"memory/initial-reservation", "memory/reservation-id"})


@dataclass
class Cached:
    keys: dict[str, str | None] = field(default_factory=dict)
    writes: int = 0  # bumped by our own writes: a read older than one is stale
    version: int = 0  # bumped whenever keys change (a refresh or our own write)


class KeyCache:
    """Thread-safe; `read_keys(domid)` reads all of a domain's keys and
    `read(path)` one, both from xenstore."""

    def __init__(self, read_keys: Callable[[int], dict[str, str | None]],
                 read: Callable[[str], str | None]) -> None:
        self._read_keys = read_keys
        self._read = read
        self.lock = threading.Lock()
        self.entries: dict[int, Cached] = {}
        self.epoch = 0  # see the module doc
        self._watching = False  # True while a watcher keeps the entries fresh

    @property
    def watching(self) -> bool:
        return self._watching

    @watching.setter
    def watching(self, on: bool) -> None:
        with self.lock:
            self._watching = on
            self.epoch += 1

    def refresh_domain(self, domid: int) -> dict[str, str | None]:
        """Re-read a domain's keys. If we wrote one of them while reading,
        the read may predate the write: read again rather than let an older
        value win (it would, e.g., lower maxmem below a raised target)."""
        for _ in range(8):
            with self.lock:
                before = self.entries.setdefault(domid, Cached()).writes
            keys = self._read_keys(domid)
            with self.lock:
                c = self.entries.setdefault(domid, Cached())
                if c.writes == before:
                    if c.keys != keys:
                        if not c.keys or any(c.keys.get(k) != v for k, v in keys.items()
                                             if k not in EPOCH_IGNORES):
                            self.epoch += 1
                        c.keys = keys
                        c.version += 1
                    return keys
        return keys

    def refresh_key(self, domid: int, key: str) -> None:
        """Re-read one key (the whole domain if it was never read), with the
        same guard against our own writes as `refresh_domain`."""
        for _ in range(8):
            with self.lock:
                c = self.entries.get(domid)
                if c is None or not c.keys:
                    break
                before = c.writes
            value = self._read(f"{domain_path(domid)}/{key}")
            with self.lock:
                c = self.entries.get(domid)
                if c is None:
                    break
                if c.writes == before:
                    if c.keys.get(key) != value:
                        c.keys[key] = value
                        c.version += 1
                        self.epoch += key not in EPOCH_IGNORES
                    return
        self.refresh_domain(domid)

    def keys(self, domid: int) -> dict[str, str | None]:
        """The cached keys while a watcher keeps them fresh, else read now."""
        with self.lock:
            c = self.entries.get(domid)
            if c is not None and self._watching:
                return c.keys
        return self.refresh_domain(domid)

    def get(self, domid: int) -> Cached | None:
        with self.lock:
            return self.entries.get(domid)

    def set_key(self, domid: int, key: str, value: str | None) -> None:
        """Our own write (or removal), already done in xenstore."""
        with self.lock:
            c = self.entries.get(domid)
            if c is not None:
                c.writes += 1
                if c.keys.get(key) != value:
                    c.keys[key] = value
                    c.version += 1
                    self.epoch += key not in EPOCH_IGNORES

    def forget(self, live: set[int]) -> list[int]:
        """Drop domains not in `live`; returns the dropped ones."""
        with self.lock:
            gone = [d for d in self.entries if d not in live]
            for domid in gone:
                del self.entries[domid]
            if gone:
                self.epoch += 1
            return gone

    def domids(self) -> list[int]:
        with self.lock:
            return list(self.entries)
