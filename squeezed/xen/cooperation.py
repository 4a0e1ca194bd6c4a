"""Which domains refuse to cooperate: a balloonable domain that has missed
its target for longer than `uncooperative-after` is flagged (upstream's
memory/uncooperative), and unflagged once it reaches its target again.
Operations then count on nothing more from a flagged domain."""

from __future__ import annotations

import logging
from collections.abc import Callable

from squeezed.engine.model import Host
from squeezed.xen.writes import DomainWrites

log = logging.getLogger("squeezed.xen.host")


class CooperationTracker:
    """The flags and when each domain was last seen cooperating. Not
    thread-safe: XenHost calls it under its own lock."""

    def __init__(self) -> None:
        self.last_cooperative_s: dict[int, float] = {}
        self.uncooperative: set[int] = set()

    def update(
        self, host: Host, all_domids: set[int], now_s: float, after_s: float,
        flagged_in_xenstore: Callable[[int], bool],
    ) -> tuple[list[int], list[int]]:
        """One snapshot's worth: returns (domains to flag, domains to unflag)."""
        mark: list[int] = []
        clear: list[int] = []
        for d in host.domains:
            if not d.can_balloon or d.hit_target:
                self.last_cooperative_s[d.domid] = now_s
            elif d.domid not in self.last_cooperative_s:
                # First sight (also after a restart): trust xenstore's flag
                # until the domain reaches its target.
                if flagged_in_xenstore(d.domid):
                    self.uncooperative.add(d.domid)
                    self.last_cooperative_s[d.domid] = float("-inf")
                else:
                    self.last_cooperative_s[d.domid] = now_s
        for domid, last in list(self.last_cooperative_s.items()):
            if domid not in all_domids:
                self.last_cooperative_s.pop(domid, None)
                self.uncooperative.discard(domid)
                continue
            bad = now_s - last > after_s
            if bad and domid not in self.uncooperative:
                self.uncooperative.add(domid)
                mark.append(domid)
            elif not bad and domid in self.uncooperative:
                self.uncooperative.discard(domid)
                clear.append(domid)
        return mark, clear

    def forget(self, live: set[int]) -> None:
        for domid in [d for d in self.last_cooperative_s if d not in live]:
            self.last_cooperative_s.pop(domid, None)
            self.uncooperative.discard(domid)


def write_flags(writes: DomainWrites, mark: list[int], clear: list[int], after_s: float) -> None:
    """Publish an update's changes as memory/uncooperative (upstream's key)."""
    for domid in mark:
        log.warning("domain %d has missed its balloon target for over %.0f s: "
                    "marking it uncooperative", domid, after_s)
        writes.write_key(domid, "memory/uncooperative", "")
    for domid in clear:
        log.info("domain %d cooperates again", domid)
        writes.rm_key(domid, "memory/uncooperative")
