"""The watcher's glue: keep a KeyCache fresh from xenstore watches, and the
barrier an operation passes so that it sees every write made before it.

Run by the daemon's supervised watcher thread (`XenHost.run_watcher`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from squeezed.xen.keycache import KeyCache
from squeezed.xen.protocols import WatcherLike, XenCtrlLike
from squeezed.xen.values import DOMAIN_KEYS, domain_path
from squeezed.xen.xenstore import XenstoreError

log = logging.getLogger("squeezed.xen.host")

INTRODUCE_TOKEN = "squeezed:introduce"
RELEASE_TOKEN = "squeezed:release"
BARRIER_TIMEOUT_S = 5.0  # how long an operation waits for the watcher to catch up


class WatcherDied(Exception):
    """The watcher's reader thread died: events would stop for ever."""


class WatchSync:
    """Applies watch events to the cache and tracks how far it got."""

    def __init__(self, cache: KeyCache, xc: XenCtrlLike,
                 forget_gone: Callable[[set[int]], None]) -> None:
        self.cache = cache
        self.xc = xc
        self.forget_gone = forget_gone
        self._sync = threading.Condition()
        self._processed_seq = 0
        self._watcher: WatcherLike | None = None

    def run(self, watcher: WatcherLike, stop: threading.Event,
            beat: Callable[[], None] | None = None) -> None:
        """Until `stop` is set. An event for one of a domain's keys re-reads
        that key; any other event for the domain re-reads all its keys.
        `beat` is called every time round (at least every 0.5 s while
        healthy). Raises WatcherDied if the watcher's reader thread dies, so
        the supervisor starts a fresh watcher, which re-reads every domain."""
        watched: set[int] = set()

        def sync_domains() -> None:
            live = {di.domid for di in self.xc.domain_list() if not di.shutdown}
            for domid in sorted(live - watched):
                for k in DOMAIN_KEYS:
                    watcher.watch(f"{domain_path(domid)}/{k}", f"squeezed:domain-{domid}")
                watched.add(domid)
                self.cache.refresh_domain(domid)
            for domid in sorted(watched - live):
                for k in DOMAIN_KEYS:
                    try:
                        watcher.unwatch(f"{domain_path(domid)}/{k}", f"squeezed:domain-{domid}")
                    except XenstoreError as e:  # the watch died with the domain
                        log.debug("unwatch for gone domain %d: %s", domid, e)
                watched.discard(domid)
            self.forget_gone(live)

        watcher.watch("@introduceDomain", INTRODUCE_TOKEN)
        watcher.watch("@releaseDomain", RELEASE_TOKEN)
        sync_domains()
        with self._sync:  # a new watcher counts its events from 0
            self._processed_seq = watcher.drained_seq
            self._watcher = watcher
        self.cache.watching = True
        try:
            while not stop.is_set():
                if beat is not None:
                    beat()
                if not watcher.alive():
                    raise WatcherDied("the xenstore watcher's reader thread died")
                events = watcher.events(0.5)
                seq = watcher.drained_seq
                dirty: set[int] = set()
                changed: set[tuple[int, str]] = set()  # (domid, key) whose watch fired
                resync = False
                for path, token in events:
                    if token in (INTRODUCE_TOKEN, RELEASE_TOKEN):
                        resync = True
                    elif token.startswith("squeezed:domain-"):
                        domid = int(token.rsplit("-", 1)[1])
                        key = path[len(domain_path(domid)) + 1:]
                        if path.startswith(domain_path(domid) + "/") and key in DOMAIN_KEYS:
                            changed.add((domid, key))
                        else:
                            dirty.add(domid)
                    else:  # e.g. the watcher's reconnection marker
                        resync = True
                        dirty.update(watched)
                if resync:
                    sync_domains()
                for domid in dirty & watched:
                    self.cache.refresh_domain(domid)
                # Each key has its own watch: re-read only the keys that fired
                # (the echo of our own target write is one read, not nine).
                for domid, key in sorted(changed):
                    if domid in watched and domid not in dirty:
                        self.cache.refresh_key(domid, key)
                with self._sync:
                    self._processed_seq = seq
                    self._sync.notify_all()
        finally:
            self.cache.watching = False
            with self._sync:
                self._watcher = None
                self._sync.notify_all()

    def caught_up(self) -> bool | None:
        """Wait until every event sent before now has been applied: a round
        trip on the watch connection proves every earlier event has been
        sent to us; then wait until the watcher thread has applied them.
        None if no watcher runs (every read goes to xenstore anyway); False
        if the barrier could not be had (connection down, watcher behind)."""
        with self._sync:
            watcher = self._watcher
        if watcher is None:
            return None
        try:
            target = watcher.barrier(BARRIER_TIMEOUT_S)
        except XenstoreError as e:
            log.warning("xenstore watch connection unusable (%s); reading every domain afresh", e)
            return False
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        with self._sync:
            while self._processed_seq < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._watcher is None:
                    break
                self._sync.wait(min(left, 0.5))
            if self._processed_seq >= target:
                return True
            running = self._watcher is not None
        log.warning("xenstore watcher is %s; reading every domain afresh",
                    "behind" if running else "not running")
        return False
