"""XenstoreClient and Watcher against the simulated xenstored (real Unix sockets)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from squeezed.sim.xenhost.xenstored.core import XenstoreCore
from squeezed.sim.xenhost.xenstored.server import Xenstored
from squeezed.xen.xenstore import (
    RECONNECTED,
    CoalescingQueue,
    Watcher,
    WatchEvent,
    XenstoreClient,
    XenstoreConnectionError,
    XenstoreError,
)
from squeezed.xen.xs_wire import Op, Packet, Parser, encode, join_strings

TIMEOUT = 10.0  # generous: only ever reached when something is broken
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture
def sock_path() -> Iterator[str]:
    d = tempfile.mkdtemp(dir="/tmp", prefix="xs")  # AF_UNIX paths are limited to 107 bytes
    yield os.path.join(d, "sock")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def xsd(sock_path: str) -> Iterator[Xenstored]:
    xs = Xenstored(sock_path).start()
    yield xs
    xs.stop()


@pytest.fixture
def client(xsd: Xenstored) -> Iterator[XenstoreClient]:
    c = XenstoreClient(xsd.socket_path, timeout_s=TIMEOUT, reconnect_timeout_s=TIMEOUT, **FAST)
    yield c
    c.close()


@pytest.fixture
def watcher(xsd: Xenstored) -> Iterator[Watcher]:
    w = Watcher(xsd.socket_path, timeout_s=TIMEOUT, **FAST)
    assert w.wait_connected(TIMEOUT)
    yield w
    w.close()


def collect(w: Watcher, until: Callable[[list[WatchEvent]], bool]) -> list[WatchEvent]:
    """Take events until ``until(all so far)`` holds; fail after TIMEOUT."""
    got: list[WatchEvent] = []
    deadline = time.monotonic() + TIMEOUT
    while not until(got):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; events so far: {got}"
        got += w.events(left)
    return got


def has(*evs: tuple[str, str]) -> Callable[[list[WatchEvent]], bool]:
    return lambda got: all(WatchEvent(*e) in got for e in evs)


class Raw:
    """A bare protocol connection, to check exact replies."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.parser = Parser()
        self.backlog: list[Packet] = []

    def send(self, op: int, payload: bytes, req_id: int = 1, tx_id: int = 0) -> None:
        self.sock.sendall(encode(op, req_id, tx_id, payload))

    def recv(self) -> Packet:
        while not self.backlog:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionResetError
            self.backlog += self.parser.feed(data)
        return self.backlog.pop(0)

    def call(self, op: int, payload: bytes, req_id: int = 1, tx_id: int = 0) -> Packet:
        self.send(op, payload, req_id, tx_id)
        return self.recv()

    def close(self) -> None:
        self.sock.close()


# --- requests ------------------------------------------------------------------------------


def test_read_write_mkdir_rm_directory(client: XenstoreClient) -> None:
    assert client.read("/vm/1/name") is None
    client.write("/vm/1/name", "guest")  # implicit parents
    assert client.read("/vm/1/name") == "guest"
    assert client.read("/vm/1") == ""
    assert client.exists("/vm") and not client.exists("/nope")
    client.write("/vm/1/name", "")
    assert client.read("/vm/1/name") == ""
    client.mkdir("/vm/2/sub")
    client.mkdir("/vm/2/sub")  # existing: fine
    assert client.directory("/vm") == ["1", "2"]
    assert client.directory("/nope") == []
    client.rm("/vm/2")  # subtree
    assert client.directory("/vm") == ["1"]
    client.rm("/vm/2")
    client.rm("/absent/parent/too")
    assert client.read("/") == ""
    assert "vm" in client.directory("/")


def test_relative_paths_resolve_under_dom0(client: XenstoreClient, xsd: Xenstored) -> None:
    client.write("memory/target", "1024")
    assert xsd.read("/local/domain/0/memory/target") == "1024"
    assert client.read("memory/target") == "1024"


def test_unicode_and_binary_values(client: XenstoreClient) -> None:
    client.write("/u", "héllo")
    assert client.read("/u") == "héllo"
    client.write("/b", b"\xff\x00\x01")
    assert client.read("/b") == b"\xff\x00\x01".decode("utf-8", "surrogateescape")


def test_errors(client: XenstoreClient) -> None:
    with pytest.raises(XenstoreError) as e:
        client.write("/a//b", "x")
    assert e.value.errno_name == "EINVAL" and e.value.path == "/a//b"
    with pytest.raises(XenstoreError) as e:
        client.rm("/")
    assert e.value.errno_name == "EINVAL"
    with pytest.raises(XenstoreError) as e:
        client.get_perms("/nope")
    assert e.value.errno_name == "ENOENT"


def test_domain_path_and_perms(client: XenstoreClient) -> None:
    assert client.get_domain_path(7) == "/local/domain/7"
    client.write("/p/q", "1")
    assert client.get_perms("/p/q") == ["n0"]
    client.set_perms("/p", ["n0", "r5"])
    assert client.get_perms("/p") == ["n0", "r5"]
    client.write("/p/new", "1")  # new nodes inherit their parent's permissions
    assert client.get_perms("/p/new") == ["n0", "r5"]
    with pytest.raises(XenstoreError):
        client.set_perms("/p", ["bogus"])


def test_big_directory_uses_directory_part(client: XenstoreClient) -> None:
    names = [f"child-with-a-rather-long-name-{i:04d}" for i in range(400)]  # ~14 KiB listing
    for n in names:
        client.write(f"/big/{n}", "x")
    assert client.directory("/big") == names
    assert client.transaction(lambda t: t.directory("/big")) == names


def test_concurrent_threads_share_one_client(client: XenstoreClient, xsd: Xenstored) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(50):
                client.write(f"/c/{i}/{j}", f"{i}.{j}")
                assert client.read(f"/c/{i}/{j}") == f"{i}.{j}"
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors
    assert sorted(xsd.directory("/c"), key=int) == [str(i) for i in range(8)]
    assert len(xsd.directory("/c/7")) == 50


# --- transactions --------------------------------------------------------------------------


def test_transaction_commit_and_abort(client: XenstoreClient) -> None:
    def fn(t):  # type: ignore[no-untyped-def]
        t.write("/tx/a", "1")
        t.mkdir("/tx/d")
        assert t.read("/tx/a") == "1"
        assert t.directory("/tx") == ["a", "d"]
        return "done"

    assert client.transaction(fn) == "done"
    assert client.read("/tx/a") == "1"

    def boom(t):  # type: ignore[no-untyped-def]
        t.write("/tx/b", "2")
        t.rm("/tx/a")
        raise RuntimeError("abandon")

    with pytest.raises(RuntimeError):
        client.transaction(boom)
    assert client.read("/tx/b") is None and client.read("/tx/a") == "1"


def test_transaction_sees_a_snapshot(client: XenstoreClient, xsd: Xenstored) -> None:
    xsd.write("/snap/x", "old")
    seen: list[str | None] = []

    def fn(t):  # type: ignore[no-untyped-def]
        t.read("/snap/y")
        if not seen:
            xsd.write("/snap/x", "new")  # concurrent change to a node not yet read
        seen.append(t.read("/snap/x"))

    # The first attempt conflicts (it read /snap/x after it changed under it).
    client.transaction(fn)
    assert seen == ["old", "new"]


def test_forced_eagain_conflict_is_retried(client: XenstoreClient, xsd: Xenstored) -> None:
    client.write("/counter", "0")
    other = XenstoreClient(xsd.socket_path)
    attempts = 0

    def increment(t):  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        v = int(t.read("/counter"))
        if attempts == 1:
            other.write("/counter", "100")  # conflicting write between read and commit
        t.write("/counter", str(v + 1))

    client.transaction(increment)
    other.close()
    assert attempts == 2
    assert client.read("/counter") == "101"


def test_transaction_gives_up_after_max_retries(client: XenstoreClient, xsd: Xenstored) -> None:
    def always_conflicts(t):  # type: ignore[no-untyped-def]
        t.read("/hot")
        xsd.write("/hot", "x")

    with pytest.raises(XenstoreError) as e:
        client.transaction(always_conflicts, max_retries=3)
    assert e.value.errno_name == "EAGAIN"


def test_wire_transaction_end_reports_eagain(xsd: Xenstored) -> None:
    raw = Raw(xsd.socket_path)
    tx = int(raw.call(Op.TRANSACTION_START, b"\0").payload.rstrip(b"\0"))
    assert raw.call(Op.READ, b"/local\0", tx_id=tx).payload == b""
    assert raw.call(Op.WRITE, b"/local/x\0v", tx_id=tx).payload == b"OK\0"
    assert xsd.read("/local/x") is None  # not visible before commit
    xsd.write("/local", "changed")
    reply = raw.call(Op.TRANSACTION_END, b"T\0", tx_id=tx)
    assert reply.type == Op.ERROR and reply.error_name() == "EAGAIN"
    assert xsd.read("/local/x") is None
    # The transaction is gone either way.
    assert raw.call(Op.READ, b"/local\0", tx_id=tx).error_name() == "ENOENT"
    raw.close()


# --- raw protocol behaviour ----------------------------------------------------------------


def test_wire_misc(xsd: Xenstored) -> None:
    raw = Raw(xsd.socket_path)
    assert raw.call(20, b"").error_name() == "EINVAL"  # XS_RESTRICT is gone
    assert raw.call(999, b"").error_name() == "EINVAL"
    assert raw.call(Op.IS_DOMAIN_INTRODUCED, b"0\0").payload == b"T\0"
    assert raw.call(Op.IS_DOMAIN_INTRODUCED, b"9\0").payload == b"F\0"
    assert raw.call(Op.INTRODUCE, join_strings(["9", "123", "4"])).payload == b"OK\0"
    assert raw.call(Op.IS_DOMAIN_INTRODUCED, b"9\0").payload == b"T\0"
    assert raw.call(Op.GET_DOMAIN_PATH, b"9\0").payload == b"/local/domain/9\0"
    assert raw.call(Op.UNWATCH, b"/x\0t\0").error_name() == "ENOENT"
    # The ack of WATCH comes before its initial event, and echoes req_id.
    ack = raw.call(Op.WATCH, join_strings(["/x", "t"]), req_id=42)
    assert (ack.type, ack.req_id, ack.payload) == (Op.WATCH, 42, b"OK\0")
    assert raw.recv() == Packet(Op.WATCH_EVENT, 0, 0, b"/x\0t\0")
    assert raw.call(Op.WATCH, join_strings(["/x", "t"])).error_name() == "EEXIST"
    assert raw.call(Op.RESET_WATCHES, b"").payload == b"OK\0"
    assert xsd.watch_count() == 0
    assert raw.call(Op.TRANSACTION_END, b"T\0", tx_id=12345).error_name() == "ENOENT"
    raw.close()


def test_oversized_message_drops_the_connection(xsd: Xenstored) -> None:
    raw = Raw(xsd.socket_path)
    raw.sock.sendall(
        encode(Op.READ, 1, 0, b"/\0")
        + Op.WRITE.to_bytes(4, "little")
        + bytes(8)
        + (5000).to_bytes(4, "little")
    )
    assert raw.recv().payload == b""  # the valid request before it is still answered
    with pytest.raises(ConnectionResetError):
        raw.recv()
    raw.close()
    assert XenstoreClient(xsd.socket_path).read("/") == ""  # server unharmed


# --- watches -------------------------------------------------------------------------------


def test_watch_initial_and_descendant_events(
    watcher: Watcher, client: XenstoreClient, xsd: Xenstored
) -> None:
    watcher.watch("/vm", "tok")
    assert watcher.events(TIMEOUT) == [("/vm", "tok")]
    client.write("/vm/1/memory/target", "1")
    client.write("/vmx", "sibling: no event")
    client.write("/", "root: no event")
    xsd.write("/vm/2", "in-process writes fire too")
    got = collect(watcher, has(("/vm/2", "tok")))
    assert got == [("/vm/1/memory/target", "tok"), ("/vm/2", "tok")]


def test_rm_fires_watches_on_ancestors_and_descendants(
    watcher: Watcher, client: XenstoreClient
) -> None:
    client.write("/d/a/b", "1")
    watcher.watch("/d", "up")
    watcher.watch("/d/a/b/c", "below")  # below the node removed, need not exist
    collect(watcher, has(("/d", "up"), ("/d/a/b/c", "below")))
    client.rm("/d/a")
    got = collect(watcher, has(("/d/a", "up"), ("/d/a/b/c", "below")))
    assert sorted(got) == [("/d/a", "up"), ("/d/a/b/c", "below")]


def test_relative_watch_reports_relative_paths(watcher: Watcher, client: XenstoreClient) -> None:
    watcher.watch("memory", "rel")
    assert watcher.events(TIMEOUT) == [("memory", "rel")]
    client.write("/local/domain/0/memory/target", "5")
    assert collect(watcher, bool) == [("memory/target", "rel")]


def test_special_domain_watches(watcher: Watcher, xsd: Xenstored, client: XenstoreClient) -> None:
    watcher.watch("@introduceDomain", "intro")
    watcher.watch("@releaseDomain", "rel")
    collect(watcher, has(("@introduceDomain", "intro"), ("@releaseDomain", "rel")))
    xsd.introduce_domain(5)
    assert collect(watcher, bool) == [("@introduceDomain", "intro")]
    client.write("/local/domain/5/name", "vm5")  # ordinary writes don't fire them
    xsd.release_domain(5)
    assert collect(watcher, bool) == [("@releaseDomain", "rel")]


def test_unwatch_stops_events(watcher: Watcher, client: XenstoreClient) -> None:
    watcher.watch("/u", "a")
    watcher.watch("/v", "b")
    collect(watcher, has(("/u", "a"), ("/v", "b")))
    watcher.unwatch("/u", "a")
    watcher.unwatch("/u", "never-registered")
    client.write("/u/x", "1")
    client.write("/v/x", "1")
    assert collect(watcher, bool) == [("/v/x", "b")]
    assert watcher.watches() == [("/v", "b")]


def test_invalid_watch_is_refused(watcher: Watcher) -> None:
    with pytest.raises(XenstoreError) as e:
        watcher.watch("/bad//path", "t")
    assert e.value.errno_name == "EINVAL"
    assert watcher.watches() == []


def test_write_hook_lets_a_simulated_guest_react(
    xsd: Xenstored, client: XenstoreClient, watcher: Watcher
) -> None:
    seen: list[tuple[str, str | None]] = []

    def guest(path: str, value: str | None) -> None:
        seen.append((path, value))
        if path == "/local/domain/5/memory/target" and value is not None:
            xsd.write("/local/domain/5/data/updated", value)  # re-entrant call is fine

    remove = xsd.on_write(guest)
    watcher.watch("/local/domain/5/data", "guest")
    collect(watcher, bool)
    client.write("/local/domain/5/memory/target", "2048")
    assert collect(watcher, bool) == [("/local/domain/5/data/updated", "guest")]
    assert client.read("/local/domain/5/data/updated") == "2048"
    client.rm("/local/domain/5/memory")
    remove()
    client.write("/local/domain/5/memory/target", "1")
    assert seen == [
        ("/local/domain/5/memory/target", "2048"),
        ("/local/domain/5/data/updated", "2048"),
        ("/local/domain/5/memory", None),
    ]


def test_transaction_events_fire_at_commit(
    watcher: Watcher, client: XenstoreClient, xsd: Xenstored
) -> None:
    watcher.watch("/t", "tx")
    collect(watcher, bool)

    def fn(t):  # type: ignore[no-untyped-def]
        t.write("/t/a", "1")
        t.write("/t/b", "2")
        assert watcher.pending() == 0  # nothing fires before the commit

    client.transaction(fn)
    assert collect(watcher, has(("/t/b", "tx"))) == [("/t/a", "tx"), ("/t/b", "tx")]


# --- bounded queue -------------------------------------------------------------------------


def test_queue_coalesces_duplicates() -> None:
    q = CoalescingQueue(max_pending=8)
    for _ in range(10_000):
        q.push(WatchEvent("/p", "t"), [("/p", "t")])
    assert len(q) == 1
    assert q.stats == {"received": 10_000, "coalesced": 9_999, "overflows": 0, "high_water": 1}
    assert q.drain() == [("/p", "t")] and len(q) == 0


def test_queue_overflow_collapses_to_watch_roots() -> None:
    q = CoalescingQueue(max_pending=8)
    watches = [("/p", "t"), ("@releaseDomain", "r")]
    for i in range(10_000):
        q.push(WatchEvent(f"/p/{i}", "t"), watches)
        assert len(q) <= 8
    assert q.stats["overflows"] > 0
    evs = q.drain()
    assert ("/p", "t") in evs and ("@releaseDomain", "r") in evs
    q.push(RECONNECTED, watches)
    assert q.drain() == [RECONNECTED]


def test_burst_of_10000_events_stays_bounded(xsd: Xenstored, sock_path: str) -> None:
    with Watcher(sock_path, max_pending=64, timeout_s=TIMEOUT) as w:
        w.watch("/burst", "b")
        assert w.events(TIMEOUT) == [("/burst", "b")]
        for i in range(10_000):
            xsd.write("/burst/x", str(i))
        xsd.write("/burst/done", "1")
        got = collect(w, has(("/burst/done", "b")))
        stats = w.stats
    assert stats["received"] == 1 + 10_000 + 1  # every event arrived...
    assert stats["high_water"] <= 2  # ...but at most /burst/x and /burst/done were queued
    assert len(got) <= 10  # and the owner saw a handful, not 10000
    assert got[-1] == ("/burst/done", "b")


# --- reconnection --------------------------------------------------------------------------


def test_restart_on_same_path_reconnects_client_and_watcher(
    xsd: Xenstored, client: XenstoreClient, watcher: Watcher
) -> None:
    client.write("/r/x", "1")
    watcher.watch("/r", "tok")
    assert watcher.events(TIMEOUT) == [("/r", "tok")]

    xsd.stop()
    assert not os.path.exists(xsd.socket_path)
    xsd.start()  # same tree, same path, all connections gone

    # Idle client: notices the closed socket before sending, so even a write succeeds.
    client.write("/r/y", "2")
    assert client.read("/r/x") == "1"
    assert client.reconnects == 1
    got = collect(watcher, has(RECONNECTED, ("/r", "tok")))
    assert got[0] == RECONNECTED  # the marker comes before the re-registered initial events
    client.write("/r/z", "3")
    assert collect(watcher, bool) == [("/r/z", "tok")]
    assert watcher.stats["reconnects"] == 1
    assert xsd.watch_count() == 1


def test_watch_registered_while_down_is_applied_on_reconnect(
    xsd: Xenstored, sock_path: str
) -> None:
    # A short timeout_s: watch() gives up waiting for the stopped daemon and defers.
    with Watcher(sock_path, timeout_s=0.05, **FAST) as w:
        assert w.wait_connected(TIMEOUT)
        xsd.stop()
        w.watch("/late", "l")
        xsd.start()
        got = collect(w, has(("/late", "l")))
        assert RECONNECTED in got


def test_client_gives_up_connecting_after_timeout(sock_path: str) -> None:
    c = XenstoreClient(sock_path, reconnect_timeout_s=0.05, **FAST)
    with pytest.raises(XenstoreConnectionError) as e:
        c.read("/x")
    assert e.value.errno_name == "EIO"
    assert isinstance(e.value, ConnectionError) and isinstance(e.value, XenstoreError)


def test_transaction_is_rerun_when_connection_lost_before_commit(
    xsd: Xenstored, client: XenstoreClient
) -> None:
    attempts = 0

    def fn(t):  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        t.write("/rerun", str(attempts))
        if attempts == 1:
            xsd.stop()  # the daemon restarts: this transaction is gone
            xsd.start()
        return t.read("/rerun")

    assert client.transaction(fn) == "2"
    assert attempts == 2
    assert client.read("/rerun") == "2"


def test_in_flight_read_is_retried_but_write_raises(sock_path: str) -> None:
    """A fake daemon: drops the first connection mid-request, answers a READ on the
    second, then drops it during a WRITE; on a third, drops it during a commit."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(4)
    listener.settimeout(TIMEOUT)
    received: list[Packet] = []

    def next_packet(conn: socket.socket, parser: Parser) -> Packet:
        while True:
            pkts = parser.feed(conn.recv(4096))
            if pkts:
                return pkts[0]

    def fake() -> None:
        conn, _ = listener.accept()
        received.append(next_packet(conn, Parser()))
        conn.close()  # dies with the request in flight
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        parser = Parser()
        req = next_packet(conn, parser)
        received.append(req)
        conn.sendall(encode(Op.READ, req.req_id, 0, b"value"))
        received.append(next_packet(conn, parser))
        conn.close()  # dies with the WRITE in flight
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        parser = Parser()
        req = next_packet(conn, parser)
        received.append(req)
        conn.sendall(encode(Op.TRANSACTION_START, req.req_id, 0, b"5\0"))
        received.append(next_packet(conn, parser))
        conn.close()  # dies with the commit in flight: outcome unknown

    t = threading.Thread(target=fake)
    t.start()
    c = XenstoreClient(sock_path, timeout_s=TIMEOUT, **FAST)
    try:
        assert c.read("/x") == "value"
        with pytest.raises(XenstoreConnectionError) as e:
            c.write("/x", "v")
        assert e.value.errno_name == "EIO" and e.value.path == "/x" and e.value.in_flight
        with pytest.raises(XenstoreConnectionError):
            c.transaction(lambda t: None)
    finally:
        t.join(TIMEOUT)
        c.close()
        listener.close()
    assert [p.type for p in received] == [
        Op.READ,
        Op.READ,
        Op.WRITE,
        Op.TRANSACTION_START,
        Op.TRANSACTION_END,
    ]
    assert received[-1].tx_id == 5 and received[-1].payload == b"T\0"


def test_core_is_usable_without_sockets() -> None:
    core = XenstoreCore()
    a = core.connect()
    core.handle(a, Packet(Op.WATCH, 1, 0, join_strings(["/k", "t"])))
    core.handle(a, Packet(Op.WRITE, 2, 0, b"/k/v\0x"))
    out, changes = core.drain()
    assert [(cid, p.type, p.payload) for cid, p in out] == [
        (a, Op.WATCH, b"OK\0"),
        (a, Op.WATCH_EVENT, b"/k\0t\0"),
        (a, Op.WRITE, b"OK\0"),
        (a, Op.WATCH_EVENT, b"/k/v\0t\0"),
    ]
    assert changes == [("/k/v", "x")]
