"""The simulated xenstored's watch index: which watches a change fires, in
the order they were registered, at a cost set by the path's depth rather
than by the number of watches."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from squeezed.sim.xenhost.xenstored.tree import parent


@dataclass(slots=True)
class Watch:
    conn: int
    node: str  # absolute path or a special "@..." name
    token: str
    relative: bool  # registered with a relative path: events are reported relative
    seq: int = 0  # registration order: events go out in this order


class WatchIndex:
    """Every connection's watches, by watched node."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._by_node: dict[str, dict[int, Watch]] = {}  # watched node -> watches by seq
        self._below: dict[str, int] = {}  # path -> watched nodes strictly below it

    def add(self, w: Watch) -> None:
        w.seq = next(self._seq)
        if w.node not in self._by_node:
            self._by_node[w.node] = {}
            self._count_below(w.node, 1)
        self._by_node[w.node][w.seq] = w

    def remove(self, w: Watch) -> None:
        ws = self._by_node[w.node]
        del ws[w.seq]
        if not ws:
            del self._by_node[w.node]
            self._count_below(w.node, -1)

    def _count_below(self, node: str, delta: int) -> None:
        """Count a watched node under each of its proper ancestors, so that a
        removal looks for watches below it only where there are some."""
        if node.startswith("@"):
            return
        p = node
        while p != "/":
            p = parent(p)
            n = self._below.get(p, 0) + delta
            if n:
                self._below[p] = n
            else:
                self._below.pop(p, None)

    def fired(self, path: str, *, removed: bool = False) -> list[tuple[Watch, str]]:
        """The watches a change at ``path`` fires, each with the path its event
        names, in registration order.  Watches on ``path`` or an ancestor see
        ``path``; on removal, watches strictly below it also fire, with their own
        path.  The cost is the path's depth (plus one pass over the watched nodes
        on a removal with watches below)."""
        by_node = self._by_node
        hits: list[tuple[Watch, str]] = []
        if path.startswith("@"):
            hits.extend((w, path) for w in by_node.get(path, {}).values())
        else:
            p = path
            while True:
                ws = by_node.get(p)
                if ws:
                    hits.extend((w, path) for w in ws.values())
                if p == "/":
                    break
                p = parent(p)
            if removed and self._below.get(path):
                prefix = path + "/"
                for node, ws in by_node.items():
                    if node.startswith(prefix):
                        hits.extend((w, node) for w in ws.values())
        hits.sort(key=lambda h: h[0].seq)
        return hits
