"""The simulated xenstored's protocol engine, sans-I/O: connections,
transactions, committed changes and the watch events they fire.

:meth:`XenstoreCore.handle` takes a decoded :class:`Packet` from a numbered
connection and runs the operation's handler (`handlers.HANDLERS`); replies and
watch events queue up for :meth:`XenstoreCore.drain`.  The socket shell is
`server.Xenstored`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from squeezed.sim.xenhost.xenstored.handlers import HANDLERS
from squeezed.sim.xenhost.xenstored.tree import (
    DEFAULT_PERMS,
    INTRODUCE_DOMAIN,
    RELEASE_DOMAIN,
    Node,
    Tree,
    XsError,
    domain_path,
)
from squeezed.sim.xenhost.xenstored.watches import Watch, WatchIndex
from squeezed.xen.xs_wire import (
    Op,
    Packet,
    ProtocolError,
    decode_value,
    error_packet,
    watch_event,
)

log = logging.getLogger(__name__)

MAX_TRANSACTIONS_PER_CONN = 64

# A transaction's deferred change, replayed on the committed tree at commit
TxnOp = Callable[["XenstoreCore"], None]


@dataclass(slots=True)
class Txn:
    id: int
    conn: int
    tree: Tree
    accessed: dict[str, int | None] = field(default_factory=dict)
    ops: list[TxnOp] = field(default_factory=list)


@dataclass(slots=True)
class Conn:
    id: int
    domid: int = 0
    watches: dict[tuple[str, str], Watch] = field(default_factory=dict)  # (node, token)
    txns: dict[int, Txn] = field(default_factory=dict)


class XenstoreCore:
    """Sans-I/O xenstored: :meth:`handle` consumes packets, :meth:`drain` yields output.

    Output is ``(conn_id, Packet)`` pairs for the shell to send, plus the list of
    committed changes ``(path, value or None for removal)`` for write hooks.
    """

    def __init__(self) -> None:
        self._gens = itertools.count(1)
        root = Node(b"", DEFAULT_PERMS, next(self._gens))
        self.tree = Tree(root, self._gens)
        self.tree.mkdir("/local/domain/0")
        self.watches = WatchIndex()
        self.introduced: set[int] = {0}
        self._conns: dict[int, Conn] = {}
        self._conn_ids = itertools.count(1)
        self._txn_ids = itertools.count(1)
        self._outbox: list[tuple[int, Packet]] = []
        self._mark = 0  # outbox length when the current request began
        self._changes: list[tuple[str, str | None]] = []

    # connections

    def connect(self, domid: int = 0) -> int:
        cid = next(self._conn_ids)
        self._conns[cid] = Conn(cid, domid)
        return cid

    def disconnect(self, conn_id: int) -> None:
        """Drop the connection's watches and abort its transactions."""
        conn = self._conns.pop(conn_id, None)
        if conn is not None:
            self.drop_watches(conn)

    def watch_count(self) -> int:
        return sum(len(c.watches) for c in self._conns.values())

    def drain(self) -> tuple[list[tuple[int, Packet]], list[tuple[str, str | None]]]:
        out, ch = self._outbox, self._changes
        self._outbox, self._changes = [], []
        return out, ch

    # watches

    def emit(self, w: Watch, path: str) -> None:
        if w.relative:
            prefix = domain_path(self._conns[w.conn].domid) + "/"
            if path.startswith(prefix):
                path = path[len(prefix) :]
        self._outbox.append((w.conn, watch_event(path, w.token)))

    def add_watch(self, conn: Conn, w: Watch) -> None:
        conn.watches[(w.node, w.token)] = w
        self.watches.add(w)

    def drop_watch(self, conn: Conn, w: Watch) -> None:
        del conn.watches[(w.node, w.token)]
        self.watches.remove(w)

    def drop_watches(self, conn: Conn) -> None:
        for w in list(conn.watches.values()):
            self.drop_watch(conn, w)

    def fire(self, path: str, *, removed: bool = False) -> None:
        """Queue the events of a change at ``path`` (see `WatchIndex.fired`)."""
        for w, p in self.watches.fired(path, removed=removed):
            self.emit(w, p)

    # committed (non-transactional) changes: every one fires watches and hooks

    def write(self, path: str, value: bytes) -> None:
        self.tree.write(path, value)
        self.fire(path)
        self._changes.append((path, decode_value(value)))

    def mkdir(self, path: str) -> None:
        if self.tree.mkdir(path):
            self.fire(path)

    def rm(self, path: str) -> None:
        if self.tree.rm(path):
            self.fire(path, removed=True)
            self._changes.append((path, None))

    def set_perms(self, path: str, perms: tuple[str, ...]) -> None:
        self.tree.set_perms(path, perms)
        self.fire(path)

    def introduce(self, domid: int) -> None:
        self.introduced.add(domid)
        self.fire(INTRODUCE_DOMAIN)

    def release(self, domid: int) -> None:
        self.introduced.discard(domid)
        self.fire(RELEASE_DOMAIN)

    # transactions

    def start_transaction(self, conn: Conn) -> Txn:
        if len(conn.txns) >= MAX_TRANSACTIONS_PER_CONN:
            raise XsError("ENOSPC")
        accessed: dict[str, int | None] = {}

        def touch(path: str, node: Node | None) -> None:
            # Only the first access counts: it shows the state the transaction started from.
            if path not in accessed:
                accessed[path] = None if node is None else node.gen

        tree = self.tree.snapshot(touch)
        txn = Txn(next(self._txn_ids), conn.id, tree, accessed)
        conn.txns[txn.id] = txn
        return txn

    def commit(self, txn: Txn) -> None:
        for path, gen in txn.accessed.items():
            node = self.tree.lookup(path)
            if (None if node is None else node.gen) != gen:
                raise XsError("EAGAIN")
        # Nothing the transaction depended on moved: replaying its operations in
        # order reproduces its view, and fires the watches it deferred.
        for op in txn.ops:
            try:
                op(self)
            except XsError:  # e.g. rm of something absent: already reported in the txn
                pass

    # requests

    def handle(self, conn_id: int, pkt: Packet) -> None:
        conn = self._conns[conn_id]
        self._mark = len(self._outbox)
        try:
            reply = self._dispatch(conn, pkt)
        except XsError as e:
            self._outbox.append((conn_id, error_packet(pkt.req_id, pkt.tx_id, e.name)))
            return
        except (ProtocolError, UnicodeError, ValueError, IndexError):
            self._outbox.append((conn_id, error_packet(pkt.req_id, pkt.tx_id, "EINVAL")))
            return
        except Exception:  # a simulator bug must not kill the server thread
            log.exception("xenstored: internal error handling %r", pkt)
            self._outbox.append((conn_id, error_packet(pkt.req_id, pkt.tx_id, "EIO")))
            return
        if reply is not None:
            # A WATCH's initial event was queued during dispatch but must follow the ack.
            ack = Packet(pkt.type, pkt.req_id, pkt.tx_id, reply)
            self._outbox.insert(self._mark, (conn_id, ack))

    def _dispatch(self, conn: Conn, pkt: Packet) -> bytes | None:
        txn: Txn | None = None
        if pkt.tx_id and pkt.type != Op.TRANSACTION_START:
            txn = conn.txns.get(pkt.tx_id)
            if txn is None:
                raise XsError("ENOENT")
        handler = HANDLERS.get(pkt.type)  # Op is an IntEnum: the raw type finds its entry
        if handler is None:
            raise XsError("EINVAL")  # unknown or unsupported message type
        return handler(self, conn, pkt, txn, self.tree if txn is None else txn.tree)
