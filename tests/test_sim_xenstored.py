"""The simulated xenstored's parts without sockets: the copy-on-write tree,
the watch index, the per-operation table and the core's transactions.

Expected values are written out by hand from xenstore's rules (docs/xenstore.md,
xs_wire.h); the socket-level behaviour, and agreement with the real
xenstore-* tools, are in test_xenstore_client.py and test_xenstored_real_tools.py.
"""

from __future__ import annotations

import itertools

import pytest

from squeezed.sim.xenhost.xenstored.core import XenstoreCore
from squeezed.sim.xenhost.xenstored.handlers import HANDLERS, directory_part
from squeezed.sim.xenhost.xenstored.tree import (
    DEFAULT_PERMS,
    Node,
    Tree,
    XsError,
    canonical,
)
from squeezed.sim.xenhost.xenstored.watches import Watch, WatchIndex
from squeezed.xen.xs_wire import PAYLOAD_MAX, Op, Packet, join_strings, split_strings

# --- the tree -------------------------------------------------------------------------------


def new_tree() -> Tree:
    gens = itertools.count(1)
    return Tree(Node(b"", DEFAULT_PERMS, next(gens)), gens)


def test_a_snapshot_and_its_origin_do_not_see_each_others_changes() -> None:
    t = new_tree()
    t.write("/a/b", b"1")
    t.write("/a/c", b"2")
    snap = t.snapshot()
    snap.write("/a/b", b"snap")
    snap.rm("/a/c")
    t.write("/a/d", b"3")
    assert (t.read("/a/b"), t.read("/a/c"), sorted(t.directory("/a"))) == (
        b"1", b"2", ["b", "c", "d"])
    assert (snap.read("/a/b"), sorted(snap.directory("/a"))) == (b"snap", ["b"])


def test_a_snapshot_keeps_its_view_when_the_origin_changes_first() -> None:
    t = new_tree()
    t.write("/a/b", b"old")
    snap = t.snapshot()
    t.write("/a/b", b"new")
    t.write("/a/c", b"added")
    t.rm("/a/b")
    assert snap.read("/a/b") == b"old" and snap.directory("/a") == ["b"]


def test_a_second_snapshot_keeps_the_first_one_apart() -> None:
    t = new_tree()
    t.write("/x", b"0")
    s1 = t.snapshot()
    s2 = t.snapshot()
    s1.write("/x", b"1")
    s2.write("/x", b"2")
    assert (t.read("/x"), s1.read("/x"), s2.read("/x")) == (b"0", b"1", b"2")


def test_write_creates_ancestors_with_empty_values_and_rm_of_absent_child_is_no_op() -> None:
    t = new_tree()
    t.write("/p/q/r", b"v")
    assert t.read("/p") == b"" and t.read("/p/q") == b""
    assert t.rm("/p/q/absent") is False  # the parent exists: OK, nothing removed
    with pytest.raises(XsError, match="ENOENT"):
        t.rm("/nowhere/absent")  # the parent is absent too
    with pytest.raises(XsError, match="EINVAL"):
        t.rm("/")
    assert t.rm("/p") is True and t.lookup("/p/q/r") is None


def test_touch_records_each_node_read_or_changed_before_the_change() -> None:
    t = new_tree()
    t.write("/a", b"1")
    seen: list[tuple[str, int | None]] = []
    snap = t.snapshot(lambda p, n: seen.append((p, None if n is None else n.gen)))
    gen_a = t.lookup("/a").gen  # type: ignore[union-attr]
    snap.read("/a")
    snap.write("/a/new", b"x")
    assert seen[0] == ("/a", gen_a)
    assert ("/a/new", None) in seen  # created: absent when the transaction looked


@pytest.mark.parametrize(("path", "domid", "want"), [
    ("/local/domain/3/memory/target", 0, "/local/domain/3/memory/target"),
    ("memory/target", 7, "/local/domain/7/memory/target"),
    ("/", 0, "/"),
])
def test_canonical_paths(path: str, domid: int, want: str) -> None:
    assert canonical(path, domid) == want


@pytest.mark.parametrize("path", ["", "/a//b", "/a/", "/a b", "/é", "/" + "x" * 3072])
def test_canonical_refuses_invalid_paths(path: str) -> None:
    with pytest.raises(XsError, match="EINVAL"):
        canonical(path)


def test_special_names_only_where_allowed_else_relative_paths() -> None:
    assert canonical("@releaseDomain", allow_special=True) == "@releaseDomain"
    assert canonical("@releaseDomain", 3) == "/local/domain/3/@releaseDomain"
    assert canonical("@other", allow_special=True) == "/local/domain/0/@other"


# --- the watch index ------------------------------------------------------------------------


def fired(ix: WatchIndex, path: str, removed: bool = False) -> list[tuple[str, str]]:
    return [(w.token, p) for w, p in ix.fired(path, removed=removed)]


def index(*nodes: str) -> WatchIndex:
    ix = WatchIndex()
    for i, node in enumerate(nodes):
        ix.add(Watch(1, node, f"w{i}:{node}", relative=False))
    return ix


def test_a_change_fires_watches_on_the_path_and_its_ancestors_in_registration_order() -> None:
    ix = index("/a/b/c", "/", "/a/b", "/a/bc", "/a/b/c/d")
    assert fired(ix, "/a/b/c") == [
        ("w0:/a/b/c", "/a/b/c"), ("w1:/", "/a/b/c"), ("w2:/a/b", "/a/b/c")]


def test_a_removal_also_fires_watches_below_with_their_own_paths() -> None:
    ix = index("/a/b/c/d", "/a/bc", "/a", "/a/b/x")
    assert fired(ix, "/a/b", removed=True) == [
        ("w0:/a/b/c/d", "/a/b/c/d"), ("w2:/a", "/a/b"), ("w3:/a/b/x", "/a/b/x")]
    assert fired(ix, "/a/b") == [("w2:/a", "/a/b")]  # a write fires nothing below


def test_special_names_fire_only_their_own_watches() -> None:
    ix = index("@introduceDomain", "/", "@releaseDomain")
    assert fired(ix, "@introduceDomain") == [("w0:@introduceDomain", "@introduceDomain")]


def test_a_removed_watch_no_longer_fires_and_its_ancestors_count_nothing_below() -> None:
    ix = WatchIndex()
    w = Watch(1, "/a/b/c", "t", relative=False)
    ix.add(w)
    ix.remove(w)
    assert fired(ix, "/a/b/c") == [] and fired(ix, "/a", removed=True) == []
    assert ix._below == {} and ix._by_node == {}


# --- the operation table --------------------------------------------------------------------


def test_every_request_type_has_a_handler_and_no_reply_type_does() -> None:
    replies_only = {Op.WATCH_EVENT, Op.ERROR}
    assert set(HANDLERS) == set(Op) - replies_only


def test_directory_part_cuts_between_names_and_the_parts_rebuild_the_listing() -> None:
    names = [f"child-{i:04d}-{'x' * 40}" for i in range(200)]  # ~10 KiB of names
    gen = 42
    got: list[str] = []
    offset = 0
    while True:
        reply = directory_part(gen, names, offset)
        head, _, body = reply.partition(b"\0")
        assert head == b"42" and len(reply) <= PAYLOAD_MAX
        assert body.endswith(b"\0")  # whole names only
        part = body[:-1].split(b"\0") if body != b"\0" else [b""]
        if part[-1] == b"":  # the empty name: the end of the listing
            got += [p.decode() for p in part[:-1]]
            break
        got += [p.decode() for p in part]
        offset += len(body)
    assert got == names


# --- the core: requests in, replies and events out ------------------------------------------


class Core(XenstoreCore):
    """A core whose watch events, wherever they were drained, wait in `pending`."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[int, list[str]]] = []

    def drain(self) -> tuple[list[tuple[int, Packet]], list[tuple[str, str | None]]]:
        out, changes = super().drain()
        self.pending += [(c, split_strings(p.payload)) for c, p in out
                         if p.type == Op.WATCH_EVENT]
        return [(c, p) for c, p in out if p.type != Op.WATCH_EVENT], changes


class Wire:
    """One connection to a core, with request ids counted for it."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.conn = core.connect()
        self.ids = itertools.count(1)

    def send(self, op: int, *args: str, tx: int = 0, payload: bytes | None = None) -> Packet:
        body = join_strings(list(args)) if payload is None else payload
        self.core.handle(self.conn, Packet(op, next(self.ids), tx, body))
        out, _ = self.core.drain()
        assert [c for c, _ in out] == [self.conn], out  # one reply, to the sender
        return out[0][1]


def events(core: Core) -> list[tuple[int, list[str]]]:
    core.drain()
    got, core.pending = core.pending, []
    return got


def test_unknown_transaction_is_enoent_before_the_type_is_looked_at() -> None:
    w = Wire(Core())
    assert w.send(Op.READ, "/local", tx=99).error_name() == "ENOENT"
    assert w.send(20, "/local", tx=99).error_name() == "ENOENT"  # 20: XS_RESTRICT, removed
    assert w.send(20, "/local").error_name() == "EINVAL"
    assert w.send(Op.WATCH_EVENT, "/x", "t").error_name() == "EINVAL"


def test_a_transaction_conflicts_only_on_what_it_touched() -> None:
    core = Core()
    a, b = Wire(core), Wire(core)
    a.send(Op.WRITE, payload=b"/d/x\0" + b"0")
    a.send(Op.WRITE, payload=b"/d/y\0" + b"0")
    tx = int(a.send(Op.TRANSACTION_START, "").payload.rstrip(b"\0"))
    assert a.send(Op.READ, "/d/x", tx=tx).payload == b"0"
    a.send(Op.WRITE, payload=b"/d/z\0" + b"1", tx=tx)
    b.send(Op.WRITE, payload=b"/d/y\0" + b"changed")  # not touched by the transaction
    assert a.send(Op.TRANSACTION_END, "T", tx=tx).payload == b"OK\0"
    assert core.tree.read("/d/z") == b"1"

    tx = int(a.send(Op.TRANSACTION_START, "").payload.rstrip(b"\0"))
    a.send(Op.READ, "/d/x", tx=tx)
    a.send(Op.WRITE, payload=b"/d/z\0" + b"2", tx=tx)
    b.send(Op.WRITE, payload=b"/d/x\0" + b"changed")  # touched: the commit must fail
    assert a.send(Op.TRANSACTION_END, "T", tx=tx).error_name() == "EAGAIN"
    assert core.tree.read("/d/z") == b"1"


def test_a_transactions_changes_fire_watches_at_commit_not_before() -> None:
    core = Core()
    a, watcher = Wire(core), Wire(core)
    watcher.send(Op.WATCH, "/w", "tok")
    events(core)
    tx = int(a.send(Op.TRANSACTION_START, "").payload.rstrip(b"\0"))
    core.handle(a.conn, Packet(Op.WRITE, 50, tx, b"/w/k\0v"))
    core.handle(a.conn, Packet(Op.RM, 51, tx, join_strings(["/w/absent"])))
    assert events(core) == []
    core.handle(a.conn, Packet(Op.TRANSACTION_END, 52, tx, join_strings(["T"])))
    _, changes = core.drain()
    assert events(core) == [(watcher.conn, ["/w/k", "tok"])]
    assert changes == [("/w/k", "v")]  # the rm of an absent node changes nothing


def test_an_aborted_transaction_changes_nothing() -> None:
    core = Core()
    a = Wire(core)
    tx = int(a.send(Op.TRANSACTION_START, "").payload.rstrip(b"\0"))
    a.send(Op.WRITE, payload=b"/gone\0v", tx=tx)
    assert a.send(Op.TRANSACTION_END, "F", tx=tx).payload == b"OK\0"
    assert core.tree.lookup("/gone") is None
    assert a.send(Op.READ, "/gone", tx=tx).error_name() == "ENOENT"  # the id is spent


def test_a_relative_watch_reports_paths_relative_to_the_connections_domain() -> None:
    core = Core()
    w = Wire(core)
    w.send(Op.WATCH, "memory", "m")
    assert events(core) == [(w.conn, ["memory", "m"])]
    core.write("/local/domain/0/memory/target", b"5")
    core.write("/local/domain/00/memory/target", b"5")  # not under dom0's home
    assert events(core) == [(w.conn, ["memory/target", "m"])]


def test_introduce_and_release_change_what_is_domain_introduced_answers() -> None:
    core = Core()
    w = Wire(core)
    assert w.send(Op.IS_DOMAIN_INTRODUCED, "5").payload == b"F\0"
    assert w.send(Op.INTRODUCE, "5", "0", "0").payload == b"OK\0"
    assert w.send(Op.IS_DOMAIN_INTRODUCED, "5").payload == b"T\0"
    assert w.send(Op.RELEASE, "5").payload == b"OK\0"
    assert w.send(Op.IS_DOMAIN_INTRODUCED, "5").payload == b"F\0"
    assert w.send(Op.GET_DOMAIN_PATH, "5").payload == b"/local/domain/5\0"
    assert w.send(Op.GET_DOMAIN_PATH, "x5").error_name() == "EINVAL"


def test_disconnect_drops_the_connections_watches() -> None:
    core = Core()
    w = Wire(core)
    w.send(Op.WATCH, "/a", "t1")
    w.send(Op.WATCH, "/b", "t2")
    assert w.send(Op.WATCH, "/a", "t1").error_name() == "EEXIST"
    assert core.watch_count() == 2
    assert events(core) == [(w.conn, ["/a", "t1"]), (w.conn, ["/b", "t2"])]  # the initial ones
    core.disconnect(w.conn)
    assert core.watch_count() == 0
    core.write("/a", b"x")
    assert events(core) == []
