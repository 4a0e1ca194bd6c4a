"""A simulated xenstored speaking the real wire protocol on a Unix socket.

Two layers:

* :class:`XenstoreCore` is sans-I/O: it takes decoded :class:`Packet` s from a
  numbered connection and queues reply/watch packets for connections.  It owns
  the tree, transactions and watches.
* :class:`Xenstored` is the shell: a ``selectors`` loop in one background
  thread serving any number of clients, plus thread-safe in-process methods
  (``read``/``write``/``rm``/...) that fire watches exactly like socket writes.

Semantics follow the C and OCaml daemons where they agree; see docs/xenstore.md.
Every socket client is treated as dom0 (relative paths resolve under
``/local/domain/0``) and permissions are stored and reported but not enforced.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import logging
import os
import re
import selectors
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from squeezed.xen.xs_wire import (
    ABS_PATH_MAX,
    OK,
    PAYLOAD_MAX,
    Op,
    Packet,
    Parser,
    ProtocolError,
    decode_value,
    error_packet,
    join_strings,
    split_strings,
    split_write,
    watch_event,
)

log = logging.getLogger(__name__)

INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
SPECIAL_PATHS = frozenset({INTRODUCE_DOMAIN, RELEASE_DOMAIN})
DEFAULT_PERMS: tuple[str, ...] = ("n0",)  # owner dom0, nobody else may read or write
MAX_TRANSACTIONS_PER_CONN = 64
_VALID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_@")
_PERM_RE = re.compile(r"[nrwb][0-9]+\Z")

WriteHook = Callable[[str, "str | None"], None]


def domain_path(domid: int) -> str:
    return f"/local/domain/{domid}"


class XsError(Exception):
    """An errno-named failure that becomes an XS_ERROR reply."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def is_child(child: str, parent: str) -> bool:
    """True if ``child`` is ``parent`` or below it (xenstore's watch-match rule)."""
    if parent == "/":
        return child.startswith("/")
    return child == parent or child.startswith(parent + "/")


def _components(path: str) -> list[str]:
    return [] if path == "/" else path[1:].split("/")


def _parent(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


# --- the tree ------------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    value: bytes
    perms: tuple[str, ...]
    gen: int  # changes whenever value, perms or the set of children change
    children: dict[str, Node] = field(default_factory=dict)
    owner: object = None  # the one Tree that may change this node in place

    def copy(self, owner: object) -> Node:
        """A shallow copy (children shared) for `owner` to change."""
        return Node(self.value, self.perms, self.gen, dict(self.children), owner)


Touch = Callable[[str, "Node | None"], None]


class Tree:
    """A xenstore tree.  ``touch(path, node)`` is called before any node is read or changed,
    which is how a transaction records what it depends on.

    Trees share nodes: `snapshot()` is O(1), and a tree changes only nodes it
    owns, copying a shared one (and its ancestors) before its first change.
    A transaction therefore starts in constant time and sees a true snapshot,
    while the committed tree pays one path copy per node changed after it."""

    def __init__(self, root: Node, gens: Iterator[int], touch: Touch | None = None) -> None:
        self._owner = object()
        self.root = root
        self._gens = gens
        self._touch = touch

    def snapshot(self, touch: Touch | None = None) -> Tree:
        """A new tree with this one's content; neither sees the other's changes."""
        self._owner = object()  # every node is shared from now on
        return Tree(self.root, self._gens, touch)

    def _own(self, parent: Node, name: str, child: Node) -> Node:
        if child.owner is not self._owner:
            child = child.copy(self._owner)
            parent.children[name] = child
        return child

    def _own_root(self) -> Node:
        if self.root.owner is not self._owner:
            self.root = self.root.copy(self._owner)
        return self.root

    def _edit(self, path: str) -> Node:
        """The node at ``path`` (which exists), made this tree's own to change."""
        node = self._own_root()
        for c in _components(path):
            node = self._own(node, c, node.children[c])
        return node

    def _t(self, path: str, node: Node | None) -> None:
        if self._touch is not None:
            self._touch(path, node)

    def lookup(self, path: str) -> Node | None:
        node: Node | None = self.root
        for c in _components(path):
            assert node is not None
            node = node.children.get(c)
            if node is None:
                return None
        return node

    def _get(self, path: str) -> Node:
        node = self.lookup(path)
        self._t(path, node)
        if node is None:
            raise XsError("ENOENT")
        return node

    def read(self, path: str) -> bytes:
        return self._get(path).value

    def directory(self, path: str) -> list[str]:
        return list(self._get(path).children)

    def get_perms(self, path: str) -> tuple[str, ...]:
        return self._get(path).perms

    def set_perms(self, path: str, perms: tuple[str, ...]) -> None:
        self._get(path)
        node = self._edit(path)
        node.perms = perms
        node.gen = next(self._gens)

    def _create(self, path: str) -> tuple[Node, bool]:
        """Find or create ``path`` and its missing ancestors (which get empty values)."""
        node = self._own_root()
        acc = ""
        created = False
        for c in _components(path):
            acc += "/" + c
            child = node.children.get(c)
            if child is None:
                # The parent's child set changes; record both before mutating.
                self._t(_parent(acc), node)
                self._t(acc, None)
                child = Node(b"", node.perms, next(self._gens), {}, self._owner)
                node.children[c] = child
                node.gen = next(self._gens)
                created = True
            else:
                child = self._own(node, c, child)
            node = child
        return node, created

    def write(self, path: str, value: bytes) -> None:
        self._t(path, self.lookup(path))
        node, _ = self._create(path)
        node.value = value
        node.gen = next(self._gens)

    def mkdir(self, path: str) -> bool:
        """True if anything was created (an existing node is left alone)."""
        existing = self.lookup(path)
        self._t(path, existing)
        if existing is not None:
            return False
        self._create(path)
        return True

    def rm(self, path: str) -> bool:
        """Remove a subtree.  False if it was absent but its parent exists (C xenstored
        answers OK then); ENOENT if the parent is absent too."""
        if path == "/":
            raise XsError("EINVAL")
        parent_path = _parent(path)
        parent = self.lookup(parent_path)
        self._t(parent_path, parent)
        if parent is None:
            raise XsError("ENOENT")
        name = path.rsplit("/", 1)[1]
        self._t(path, parent.children.get(name))
        if name not in parent.children:
            return False
        parent = self._edit(parent_path)
        del parent.children[name]
        parent.gen = next(self._gens)
        return True


# --- protocol engine -----------------------------------------------------------------------


@dataclass(slots=True)
class _Watch:
    conn: int
    node: str  # absolute path or a special "@..." name
    token: str
    relative: bool  # registered with a relative path: events are reported relative
    seq: int = 0  # registration order: events go out in this order


@dataclass(slots=True)
class _Txn:
    id: int
    conn: int
    tree: Tree
    accessed: dict[str, int | None] = field(default_factory=dict)
    ops: list[tuple[str, ...] | tuple[str, str, object]] = field(default_factory=list)


@dataclass(slots=True)
class _Conn:
    id: int
    domid: int = 0
    watches: dict[tuple[str, str], _Watch] = field(default_factory=dict)  # (node, token)
    txns: dict[int, _Txn] = field(default_factory=dict)


class XenstoreCore:
    """Sans-I/O xenstored: :meth:`handle` consumes packets, :meth:`drain` yields output.

    Output is ``(conn_id, Packet)`` pairs for the shell to send, plus the list of
    committed changes ``(path, value or None for removal)`` for write hooks.
    """

    def __init__(self) -> None:
        self._gens = itertools.count(1)
        root = Node(b"", DEFAULT_PERMS, next(self._gens))
        self.tree = Tree(root, self._gens)
        for p in ("/local/domain/0",):
            self.tree.mkdir(p)
        self._conns: dict[int, _Conn] = {}
        self._conn_ids = itertools.count(1)
        self._watch_seq = itertools.count(1)
        self._by_node: dict[str, dict[int, _Watch]] = {}  # watched node -> watches by seq
        self._below: dict[str, int] = {}  # path -> watched nodes strictly below it
        self._txn_ids = itertools.count(1)
        self._introduced: set[int] = {0}
        self._outbox: list[tuple[int, Packet]] = []
        self._mark = 0  # outbox length when the current request began
        self._changes: list[tuple[str, str | None]] = []

    # connections

    def connect(self, domid: int = 0) -> int:
        cid = next(self._conn_ids)
        self._conns[cid] = _Conn(cid, domid)
        return cid

    def disconnect(self, conn_id: int) -> None:
        """Drop the connection's watches and abort its transactions."""
        conn = self._conns.pop(conn_id, None)
        if conn is not None:
            self._drop_watches(conn)

    def connection_ids(self) -> list[int]:
        return list(self._conns)

    def watch_count(self) -> int:
        return sum(len(c.watches) for c in self._conns.values())

    def drain(self) -> tuple[list[tuple[int, Packet]], list[tuple[str, str | None]]]:
        out, ch = self._outbox, self._changes
        self._outbox, self._changes = [], []
        return out, ch

    # path handling

    @staticmethod
    def canonical(path: str, domid: int = 0, *, allow_special: bool = False) -> str:
        if allow_special and path in SPECIAL_PATHS:
            return path
        if not path:
            raise XsError("EINVAL")
        if not path.startswith("/"):
            path = f"{domain_path(domid)}/{path}"
        if (
            len(path) > ABS_PATH_MAX
            or "//" in path
            or (path.endswith("/") and path != "/")
            or not _VALID_CHARS.issuperset(path)
        ):
            raise XsError("EINVAL")
        return path

    # watches

    def _emit(self, w: _Watch, path: str) -> None:
        if w.relative:
            prefix = domain_path(self._conns[w.conn].domid) + "/"
            if path.startswith(prefix):
                path = path[len(prefix) :]
        self._outbox.append((w.conn, watch_event(path, w.token)))

    def _add_watch(self, conn: _Conn, w: _Watch) -> None:
        w.seq = next(self._watch_seq)
        conn.watches[(w.node, w.token)] = w
        if w.node not in self._by_node:
            self._by_node[w.node] = {}
            self._count_below(w.node, 1)
        self._by_node[w.node][w.seq] = w

    def _drop_watch(self, conn: _Conn, w: _Watch) -> None:
        del conn.watches[(w.node, w.token)]
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
            p = _parent(p)
            n = self._below.get(p, 0) + delta
            if n:
                self._below[p] = n
            else:
                self._below.pop(p, None)

    def _drop_watches(self, conn: _Conn) -> None:
        for w in list(conn.watches.values()):
            self._drop_watch(conn, w)

    def fire(self, path: str, *, removed: bool = False) -> None:
        """Queue events for a change at ``path``.  Watches on ``path`` or an ancestor see
        ``path``; on removal, watches strictly below it also fire, with their own path.
        Watches are found through an index by node: the cost is the path's depth
        (plus one pass over the watched nodes on removal), not the number of watches."""
        by_node = self._by_node
        hits: list[tuple[_Watch, str]] = []
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
                p = _parent(p)
            if removed and self._below.get(path):
                prefix = path + "/"
                for node, ws in by_node.items():
                    if node.startswith(prefix):
                        hits.extend((w, node) for w in ws.values())
        hits.sort(key=lambda h: h[0].seq)
        for w, p in hits:
            self._emit(w, p)

    # committed (non-transactional) mutations: every one fires watches and hooks

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
        self._introduced.add(domid)
        self.fire(INTRODUCE_DOMAIN)

    def release(self, domid: int) -> None:
        self._introduced.discard(domid)
        self.fire(RELEASE_DOMAIN)

    # transactions

    def _start(self, conn: _Conn) -> _Txn:
        if len(conn.txns) >= MAX_TRANSACTIONS_PER_CONN:
            raise XsError("ENOSPC")
        accessed: dict[str, int | None] = {}

        def touch(path: str, node: Node | None) -> None:
            # Only the first access counts: it shows the state the transaction started from.
            if path not in accessed:
                accessed[path] = None if node is None else node.gen

        tree = self.tree.snapshot(touch)
        txn = _Txn(next(self._txn_ids), conn.id, tree, accessed)
        conn.txns[txn.id] = txn
        return txn

    def _commit(self, txn: _Txn) -> None:
        for path, gen in txn.accessed.items():
            node = self.tree.lookup(path)
            if (None if node is None else node.gen) != gen:
                raise XsError("EAGAIN")
        # Nothing the transaction depended on moved: replaying its operations in
        # order reproduces its view, and fires the watches it deferred.
        for op, path, *arg in txn.ops:
            try:
                getattr(self, op)(path, *arg)
            except XsError:  # e.g. rm of something absent: already reported in the txn
                pass

    # request dispatch

    def handle(self, conn_id: int, pkt: Packet) -> None:
        conn = self._conns[conn_id]
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

    def _args(self, pkt: Packet, n: int) -> list[str]:
        args = split_strings(pkt.payload)
        if len(args) < n:
            raise XsError("EINVAL")
        return args

    def _dispatch(self, conn: _Conn, pkt: Packet) -> bytes | None:
        self._mark = len(self._outbox)
        op = pkt.op
        txn: _Txn | None = None
        if pkt.tx_id and op not in (Op.TRANSACTION_START,):
            txn = conn.txns.get(pkt.tx_id)
            if txn is None:
                raise XsError("ENOENT")
        tree = txn.tree if txn is not None else self.tree

        def path_arg() -> str:
            return self.canonical(self._args(pkt, 1)[0], conn.domid)

        if op == Op.READ:
            return tree.read(path_arg())
        if op == Op.DIRECTORY:
            body = join_strings(tree.directory(path_arg()))
            if len(body) > PAYLOAD_MAX:
                raise XsError("E2BIG")
            return body
        if op == Op.DIRECTORY_PART:
            path_s, offset_s = self._args(pkt, 2)[:2]
            path = self.canonical(path_s, conn.domid)
            children = tree.directory(path)
            listed = tree.lookup(path)
            assert listed is not None
            return self._directory_part(listed.gen, children, int(offset_s))
        if op == Op.GET_PERMS:
            return join_strings(tree.get_perms(path_arg()))
        if op == Op.WRITE:
            path_s, value = split_write(pkt.payload)
            path = self.canonical(path_s, conn.domid)
            if txn is None:
                self.write(path, value)
            else:
                tree.write(path, value)
                txn.ops.append(("write", path, value))
            return OK
        if op == Op.MKDIR:
            path = path_arg()
            if txn is None:
                self.mkdir(path)
            else:
                tree.mkdir(path)
                txn.ops.append(("mkdir", path))
            return OK
        if op == Op.RM:
            path = path_arg()
            if txn is None:
                self.rm(path)
            else:
                tree.rm(path)
                txn.ops.append(("rm", path))
            return OK
        if op == Op.SET_PERMS:
            args = self._args(pkt, 2)
            path = self.canonical(args[0], conn.domid)
            perms = tuple(args[1:])
            if not all(_PERM_RE.match(p) for p in perms):
                raise XsError("EINVAL")
            if txn is None:
                self.set_perms(path, perms)
            else:
                tree.set_perms(path, perms)
                txn.ops.append(("set_perms", path, perms))
            return OK
        if op == Op.WATCH:
            path_s, token = self._args(pkt, 2)[:2]
            watched = self.canonical(path_s, conn.domid, allow_special=True)
            if (watched, token) in conn.watches:
                raise XsError("EEXIST")
            w = _Watch(conn.id, watched, token, relative=not path_s.startswith(("/", "@")))
            self._add_watch(conn, w)
            # Fired once up front (as the real daemons do): simplifies clients and restarts.
            self._emit(w, watched)
            return OK
        if op == Op.UNWATCH:
            path_s, token = self._args(pkt, 2)[:2]
            watched = self.canonical(path_s, conn.domid, allow_special=True)
            found = conn.watches.get((watched, token))
            if found is None:
                raise XsError("ENOENT")
            self._drop_watch(conn, found)
            return OK
        if op == Op.RESET_WATCHES:
            self._drop_watches(conn)
            conn.txns.clear()
            return OK
        if op == Op.TRANSACTION_START:
            if pkt.tx_id:
                raise XsError("EBUSY")
            return str(self._start(conn).id).encode() + b"\0"
        if op == Op.TRANSACTION_END:
            if txn is None:
                raise XsError("EINVAL")
            arg = self._args(pkt, 1)[0]
            if arg not in ("T", "F"):
                raise XsError("EINVAL")
            del conn.txns[txn.id]
            if arg == "T":
                self._commit(txn)
            return OK
        if op == Op.GET_DOMAIN_PATH:
            return domain_path(self._domid_arg(pkt)).encode() + b"\0"
        if op == Op.INTRODUCE:
            self._args(pkt, 3)
            self.introduce(self._domid_arg(pkt))
            return OK
        if op == Op.RELEASE:
            self.release(self._domid_arg(pkt))
            return OK
        if op == Op.IS_DOMAIN_INTRODUCED:
            return b"T\0" if self._domid_arg(pkt) in self._introduced else b"F\0"
        if op in (Op.RESUME, Op.SET_TARGET):
            self._domid_arg(pkt)
            return OK
        if op == Op.CONTROL:
            if self._args(pkt, 1)[0] in ("print", "log"):
                return OK
            raise XsError("EINVAL")
        raise XsError("EINVAL")  # unknown or unsupported message type

    def _domid_arg(self, pkt: Packet) -> int:
        s = self._args(pkt, 1)[0]
        if not s.isdigit():
            raise XsError("EINVAL")
        return int(s)

    @staticmethod
    def _directory_part(gen: int, children: list[str], offset: int) -> bytes:
        """Reply: generation, then as many whole names from byte ``offset`` as fit.
        The listing ends with an empty name, which libxenstore uses to stop."""
        head = str(gen).encode() + b"\0"
        listing = join_strings(children) + b"\0"
        if offset < 0 or offset > len(listing):
            raise XsError("EINVAL")
        room = PAYLOAD_MAX - len(head)
        chunk = listing[offset : offset + room]
        if offset + room < len(listing):
            # Cut after the last complete name so no name straddles two replies.
            chunk = chunk[: chunk.rfind(b"\0") + 1]
        return head + chunk


# --- socket shell --------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Client:
    id: int
    sock: socket.socket
    parser: Parser = field(default_factory=Parser)
    out: bytearray = field(default_factory=bytearray)
    want_write: bool = False


class Xenstored:
    """Serves :class:`XenstoreCore` on ``socket_path``.

    ``stop()`` closes every connection (their watches and transactions die, as
    with a real daemon restart) but keeps the tree, so ``start()`` again models
    a xenstored restart on the same path.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, max_outbuf: int = 16 << 20) -> None:
        self.socket_path = os.fspath(socket_path)
        self._max_outbuf = max_outbuf  # a client this far behind is disconnected
        self._core = XenstoreCore()
        self._lock = threading.RLock()
        self._hooks: list[WriteHook] = []
        self._clients: dict[int, _Client] = {}
        self._dirty: set[_Client] = set()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._stopping = False
        # Requests served over the socket, by operation name (an instrument for
        # benchmarks: e.g. how many READs an idle daemon makes).
        self.requests: collections.Counter[str] = collections.Counter()

    # lifecycle

    def start(self) -> Xenstored:
        if self._thread is not None:
            raise RuntimeError("already started")
        try:
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                os.unlink(self.socket_path)  # stale socket from a previous run
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="sim-xenstored", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        if thread is threading.current_thread():
            raise RuntimeError("stop() called from the server thread (e.g. a write hook)")
        self._stopping = True
        self._wake()
        thread.join()
        self._thread = None

    def __enter__(self) -> Xenstored:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None

    # in-process API (thread-safe; fires watches and hooks like socket requests)

    def read(self, path: str) -> str | None:
        with self._lock:
            node = self._core.tree.lookup(self._core.canonical(path))
            return None if node is None else decode_value(node.value)

    def exists(self, path: str) -> bool:
        with self._lock:
            return self._core.tree.lookup(self._core.canonical(path)) is not None

    def directory(self, path: str) -> list[str]:
        with self._lock:
            node = self._core.tree.lookup(self._core.canonical(path))
            return [] if node is None else list(node.children)

    def get_perms(self, path: str) -> list[str]:
        with self._lock:
            return list(self._core.tree.get_perms(self._core.canonical(path)))

    def write(self, path: str, value: str | bytes) -> None:
        v = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        self._mutate(lambda c: c.write(c.canonical(path), v))

    def mkdir(self, path: str) -> None:
        self._mutate(lambda c: c.mkdir(c.canonical(path)))

    def rm(self, path: str) -> None:
        """Remove a subtree; absent paths are ignored."""

        def do(c: XenstoreCore) -> None:
            try:
                c.rm(c.canonical(path))
            except XsError as e:
                if e.name != "ENOENT":
                    raise

        self._mutate(do)

    def set_perms(self, path: str, perms: list[str]) -> None:
        self._mutate(lambda c: c.set_perms(c.canonical(path), tuple(perms)))

    def introduce_domain(self, domid: int) -> None:
        """Fire ``@introduceDomain`` (as after XS_INTRODUCE of a new guest)."""
        self._mutate(lambda c: c.introduce(domid))

    def release_domain(self, domid: int) -> None:
        """Fire ``@releaseDomain`` (as when a guest has been destroyed)."""
        self._mutate(lambda c: c.release(domid))

    def on_write(self, callback: WriteHook) -> Callable[[], None]:
        """Call ``callback(path, value)`` after every committed WRITE, and with
        ``value=None`` after every RM, from whichever thread made the change (the
        server thread for socket clients): keep it short.  It may call back into
        this object.  Returns a function that removes the hook."""
        with self._lock:
            self._hooks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._hooks:
                    self._hooks.remove(callback)

        return remove

    def connection_count(self) -> int:
        with self._lock:
            return len(self._core.connection_ids())

    def watch_count(self) -> int:
        with self._lock:
            return self._core.watch_count()

    # internals

    def _mutate(self, fn: Callable[[XenstoreCore], None]) -> None:
        with self._lock:
            try:
                fn(self._core)
            finally:
                out, changes = self._core.drain()
                self._queue(out)
                hooks = list(self._hooks)
        self._wake()
        self._run_hooks(hooks, changes)

    def _run_hooks(self, hooks: list[WriteHook], changes: list[tuple[str, str | None]]) -> None:
        for path, value in changes:
            for h in hooks:
                try:
                    h(path, value)
                except Exception:
                    log.exception("xenstored write hook failed for %s", path)

    def _queue(self, out: list[tuple[int, Packet]]) -> None:
        # Caller holds the lock.  Packets for connections that are gone are dropped.
        for cid, pkt in out:
            client = self._clients.get(cid)
            if client is not None:
                client.out += pkt.encode()
                self._dirty.add(client)

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # already pending, or shutting down: the loop will look anyway

    def _serve(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                for key, mask in sel.select():
                    tag = key.data
                    if tag == "listen":
                        self._accept()
                    elif tag == "wake":
                        try:
                            while self._wake_r is not None and self._wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        if mask & selectors.EVENT_READ:
                            self._on_readable(tag)
                        if mask & selectors.EVENT_WRITE and tag.id in self._clients:
                            self._flush(tag)
                with self._lock:
                    dirty, self._dirty = self._dirty, set()
                for client in dirty:
                    if client.id in self._clients:
                        self._flush(client)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        # Stop listening before dropping clients, or they would reconnect to a
        # listener that is about to vanish.
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        with self._lock:
            for client in list(self._clients.values()):
                self._close(client)
        assert self._sel is not None
        self._sel.close()
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None
        self._sel = None

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            with self._lock:
                client = _Client(self._core.connect(), sock)
                self._clients[client.id] = client
            self._sel.register(sock, selectors.EVENT_READ, client)

    def _close(self, client: _Client) -> None:
        with self._lock:
            self._clients.pop(client.id, None)
            self._core.disconnect(client.id)
            self._dirty.discard(client)
        assert self._sel is not None
        try:
            self._sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def _on_readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)
            return
        try:
            packets = client.parser.feed(data)
            bad = False
        except ProtocolError as e:
            log.warning("xenstored: dropping connection %d: %s", client.id, e)
            packets, bad = e.packets, True
        for pkt in packets:
            with self._lock:
                if client.id not in self._clients:
                    return
                op = pkt.op
                self.requests[op.name if op is not None else str(pkt.type)] += 1
                try:
                    self._core.handle(client.id, pkt)
                finally:
                    out, changes = self._core.drain()
                    self._queue(out)
                    hooks = list(self._hooks)
            self._run_hooks(hooks, changes)
        if bad:
            self._flush(client)
            self._close(client)

    def _flush(self, client: _Client) -> None:
        assert self._sel is not None
        with self._lock:
            data = bytes(client.out)
        sent = 0
        if data:
            try:
                sent = client.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(client)
                return
        with self._lock:
            del client.out[:sent]
            pending = len(client.out)
        if pending > self._max_outbuf:
            log.warning("xenstored: connection %d is %d bytes behind; dropping", client.id, pending)
            self._close(client)
            return
        want = pending > 0
        if want != client.want_write:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._sel.modify(client.sock, events, client)
            client.want_write = want


def main_xenstored(argv: list[str] | None = None) -> int:
    """``squeezed-sim xenstored --socket PATH``: serve in the foreground until a signal."""
    ap = argparse.ArgumentParser(prog="squeezed-sim xenstored", description="Simulated xenstored")
    ap.add_argument("--socket", required=True, help="Unix socket path to listen on")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        done.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    xs = Xenstored(args.socket).start()
    log.info("simulated xenstored listening on %s", args.socket)
    try:
        done.wait()
    finally:
        xs.stop()
    return 0
