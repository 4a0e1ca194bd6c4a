"""The batched "write if the domain still exists" (squeezed/xen/target_writes.py).

First on the simulated xenstored's sans-I/O core behind a fake pipelining link
(no sockets), which counts the round-trip waits and injects failures; then over
a real socket to the simulated xenstored, with Debian's xenstore-* tools as the
independent oracle (each write landed; a destroyed domain's directory was not
resurrected), and through XenHost.set_targets."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence

import pytest

from squeezed.sim.xenhost.xenstored.core import XenstoreCore
from squeezed.sim.xenhost.xenstored.server import Xenstored
from squeezed.xen import target_writes
from squeezed.xen.target_writes import write_if_domains_exist, write_targets
from squeezed.xen.xenstore import XenstoreClient, XenstoreConnectionError, XenstoreError
from squeezed.xen.xs_pipeline import Outcome, Request
from squeezed.xen.xs_wire import Op, Packet

TIMEOUT = 10.0


class CoreLink:
    """`XenstoreClient.pipeline`'s contract over the simulated xenstored's core.

    Each call is one round-trip wait (``calls`` keeps each one's request types,
    ``sent`` the requests themselves). ``before(n)`` runs before call n is
    answered (a concurrent change); ``lose`` holds the calls during which the
    connection dies: (replies received, requests sent) — the others never left;
    ``inject`` (call, index) -> error name replaces a reply; ``reconnect()``
    replaces the connection as another thread's request would. ``misrouted``
    lists requests of a transaction sent on a connection it was not started on.
    ``timed_out`` (calls in ``lose``): no reply came in time, rather than a
    lost connection.  ``corrupt`` (call, index) -> payload replaces a reply's."""

    def __init__(self, core: XenstoreCore) -> None:
        self.core = core
        self.conn = core.connect()
        self.epoch = 1
        self.calls: list[list[Op]] = []
        self.sent: list[list[Request]] = []
        self.before: Callable[[int], None] = lambda n: None
        self.lose: dict[int, tuple[int, int]] = {}
        self.inject: dict[tuple[int, int], str] = {}
        self.started: set[int] = set()  # transactions started on the current connection
        self.misrouted: list[Request] = []
        self.timed_out: set[int] = set()
        self.corrupt: dict[tuple[int, int], bytes] = {}

    def reconnect(self) -> None:
        """The connection dies: its transactions go with it."""
        self.core.disconnect(self.conn)
        self.conn = self.core.connect()
        self.epoch += 1
        self.started.clear()

    def pipeline(
        self, requests: Sequence[Request], *, epoch: int | None = None
    ) -> tuple[int, list[Outcome]]:
        n = len(self.calls)
        self.calls.append([r.op for r in requests])
        self.sent.append(list(requests))
        self.before(n)
        if epoch is not None and epoch != self.epoch:
            return epoch, [XenstoreConnectionError(r.path, "stale", in_flight=False)
                           for r in requests]
        answered, sent = self.lose.get(n, (len(requests), len(requests)))
        epoch_used = self.epoch  # the connection these requests went on
        out: list[Outcome] = []
        for i, r in enumerate(requests[:answered]):
            if r.tx_id and r.tx_id not in self.started:
                self.misrouted.append(r)
            self.core.handle(self.conn, Packet(r.op, i + 1, r.tx_id, r.payload))
            packets, _ = self.core.drain()
            (reply,) = [p for cid, p in packets if cid == self.conn and p.type != Op.WATCH_EVENT]
            name = self.inject.get((n, i)) or reply.error_name()
            if r.op == Op.TRANSACTION_START and reply.error_name() is None:
                self.started.add(int(reply.payload.rstrip(b"\0")))
            if (n, i) in self.corrupt:
                reply = Packet(reply.type, reply.req_id, reply.tx_id, self.corrupt[(n, i)])
            out.append(reply if name is None else XenstoreError(name, r.path))
        if answered < len(requests):
            self.reconnect()
            out += [XenstoreConnectionError(r.path, "lost", in_flight=i < sent,
                                            timed_out=n in self.timed_out)
                    for i, r in enumerate(requests[answered:], answered)]
        return epoch_used, out

    def open_transactions(self) -> int:
        return len(self.core._conns[self.conn].txns)


def core_with(domids: Sequence[int]) -> XenstoreCore:
    core = XenstoreCore()
    for d in domids:
        core.write(f"/local/domain/{d}/memory/target", b"1000")
    return core


def target(core: XenstoreCore, domid: int) -> bytes | None:
    node = core.tree.lookup(f"/local/domain/{domid}/memory/target")
    return None if node is None else node.value


def test_n_writes_are_three_round_trip_waits() -> None:
    n = target_writes.DEFAULT_CHUNK  # one chunk
    domids = list(range(1, n + 1))
    core = core_with(domids)
    link = CoreLink(core)
    assert write_targets(link, {d: 500 + d for d in domids}) == {d: True for d in domids}
    assert link.calls == [[Op.TRANSACTION_START] * n, [Op.READ] * n,
                          [Op.WRITE, Op.TRANSACTION_END] * n]
    assert [target(core, d) for d in domids] == [str(500 + d).encode() for d in domids]
    assert link.open_transactions() == 0


def test_chunks_bound_the_transactions_open_at_once() -> None:
    domids = list(range(1, 8))
    link = CoreLink(core_with(domids))
    assert write_if_domains_exist(link, "memory/target", {d: "1" for d in domids}, chunk=3) \
        == {d: True for d in domids}
    assert [len(c) for c in link.calls] == [3, 3, 6, 3, 3, 6, 1, 1, 2]


def test_gone_domains_are_reported_and_not_resurrected(caplog) -> None:
    core = core_with([1, 2, 4])
    link = CoreLink(core)
    with caplog.at_level(logging.INFO, logger="squeezed.xen.host"):
        assert write_targets(link, {1: 10, 3: 30, 2: 20, 4: 40}) == {
            1: True, 3: False, 2: True, 4: True}
    assert core.tree.lookup("/local/domain/3") is None
    assert link.calls[2] == [Op.WRITE, Op.TRANSACTION_END, Op.TRANSACTION_END,
                             Op.WRITE, Op.TRANSACTION_END, Op.WRITE, Op.TRANSACTION_END]
    assert [r.payload for r in link.sent[2] if r.op == Op.TRANSACTION_END] == [
        b"T\0", b"F\0", b"T\0", b"T\0"]  # the gone domain's transaction abandoned
    assert len(link.calls) == 3
    assert "domain 3 is gone: memory/target not written" in caplog.messages
    assert link.open_transactions() == 0


def test_destroyed_between_read_and_commit_is_not_resurrected() -> None:
    core = core_with([1, 2, 3])
    link = CoreLink(core)

    def destroy(n: int) -> None:
        if n == 2:  # the reads saw domain 2; it goes before the commits
            core.rm("/local/domain/2")

    link.before = destroy
    assert write_targets(link, {1: 10, 2: 20, 3: 30}) == {1: True, 2: False, 3: True}
    assert core.tree.lookup("/local/domain/2") is None
    # Domain 2's commit conflicted; it alone ran again, and was found gone.
    assert link.calls[3:] == [[Op.TRANSACTION_START], [Op.READ], [Op.TRANSACTION_END]]
    assert link.open_transactions() == 0


def test_conflicting_commit_retried_alone() -> None:
    core = core_with([1, 2, 3])
    link = CoreLink(core)
    link.before = lambda n: core.write("/local/domain/3", b"x") if n == 2 else None
    assert write_targets(link, {1: 10, 2: 20, 3: 30}) == {1: True, 2: True, 3: True}
    assert [len(c) for c in link.calls] == [3, 3, 6, 1, 1, 2]
    assert target(core, 3) == b"30"


def test_endless_conflicts_give_up_after_max_retries() -> None:
    core = core_with([1, 2])
    link = CoreLink(core)
    link.before = lambda n: core.write("/local/domain/2", b"x") if n % 3 == 2 else None
    with pytest.raises(XenstoreError) as e:
        write_if_domains_exist(link, "memory/target", {1: "1", 2: "2"}, max_retries=2)
    assert e.value.errno_name == "EAGAIN"
    assert target(core, 1) == b"1" and target(core, 2) == b"1000"
    assert len(link.calls) == 3 * 4  # the first round settled domain 1; then 3 idle rounds
    assert link.open_transactions() == 0


def test_endless_conflicts_from_the_start() -> None:
    core = core_with([1])
    link = CoreLink(core)
    link.before = lambda n: core.write("/local/domain/1", b"x") if n % 3 == 2 else None
    with pytest.raises(XenstoreError) as e:
        write_if_domains_exist(link, "memory/target", {1: "1"}, max_retries=2)
    assert e.value.errno_name == "EAGAIN"
    assert len(link.calls) == 3 * 3  # the first try and two more


def test_a_read_meeting_eagain_reruns_the_round() -> None:
    core = core_with([1, 2])
    link = CoreLink(core)
    link.inject[(1, 1)] = "EAGAIN"
    assert write_targets(link, {1: 10, 2: 20}) == {1: True, 2: True}
    assert [len(c) for c in link.calls] == [2, 2, 2, 2, 2, 4]  # abandoned, then again
    assert link.open_transactions() == 0


def test_every_start_refused_for_the_limit_is_a_round_to_retry() -> None:
    core = core_with([1, 2])
    link = CoreLink(core)
    link.inject[(0, 0)] = link.inject[(0, 1)] = "ENOSPC"
    assert write_targets(link, {1: 10, 2: 20}) == {1: True, 2: True}
    assert [len(c) for c in link.calls] == [2, 2, 2, 4]


def test_transaction_limit_defers_domains() -> None:
    core = core_with([1, 2, 3, 4])
    link = CoreLink(core)
    for i in (2, 3):
        link.inject[(0, i)] = "ENOSPC"  # xenstored refuses a third open transaction
    assert write_targets(link, {1: 1, 2: 2, 3: 3, 4: 4}) == {d: True for d in (1, 2, 3, 4)}
    assert [len(c) for c in link.calls] == [4, 2, 4, 2, 2, 4]
    assert [target(core, d) for d in (1, 2, 3, 4)] == [b"1", b"2", b"3", b"4"]
    assert link.open_transactions() == 2  # the two refused starts' (injected) transactions
    # (the core did start them; a real xenstored refusing them would not have)


@pytest.mark.parametrize("call,index,name", [
    (0, 1, "EACCES"),  # a start refused
    (1, 1, "EACCES"),  # a read refused
    (2, 2, "E2BIG"),  # a write refused
    (2, 1, "EINVAL"),  # a commit refused
])
def test_other_failures_raise_and_leave_nothing_open(call: int, index: int, name: str) -> None:
    core = core_with([1, 2])
    link = CoreLink(core)
    link.inject[(call, index)] = name
    with pytest.raises(XenstoreError) as e:
        write_targets(link, {1: 10, 2: 20})
    assert e.value.errno_name == name and not isinstance(e.value, XenstoreConnectionError)
    assert e.value.path == link.sent[call][index].path
    assert e.value.path.startswith(f"/local/domain/{1 + index // (2 if call == 2 else 1)}")
    if call < 2:  # before the commits: nothing written, every transaction abandoned
        assert (target(core, 1), target(core, 2)) == (b"1000", b"1000")
        # (an injected start refusal hides a transaction the core did start)
        assert link.open_transactions() == (1 if call == 0 else 0)
        assert link.calls[-1] == [Op.TRANSACTION_END] * (2 if call == 1 else 1)


@pytest.mark.parametrize("call", [0, 1])
def test_connection_lost_before_the_commits_reruns(call: int) -> None:
    core = core_with([1, 2])
    link = CoreLink(core)
    link.lose[call] = (1, 2)
    assert write_targets(link, {1: 10, 2: 20}) == {1: True, 2: True}
    assert link.misrouted == []
    assert (target(core, 1), target(core, 2)) == (b"10", b"20")
    assert link.open_transactions() == 0


def test_connection_lost_during_the_commits_raises() -> None:
    core = core_with([1, 2])
    link = CoreLink(core)
    link.lose[2] = (2, 4)  # domain 1 committed; domain 2's write and commit in flight
    with pytest.raises(XenstoreConnectionError) as e:
        write_targets(link, {1: 10, 2: 20})
    assert e.value.in_flight and e.value.path == "/local/domain/2/memory/target"
    assert target(core, 1) == b"10"


def test_commits_that_never_left_are_run_again() -> None:
    core = core_with([1, 2])
    link = CoreLink(core)
    link.lose[2] = (2, 2)  # domain 1 committed; domain 2's write and commit never sent
    assert write_targets(link, {1: 10, 2: 20}) == {1: True, 2: True}
    assert [len(c) for c in link.calls] == [2, 2, 4, 1, 1, 2]
    assert (target(core, 1), target(core, 2)) == (b"10", b"20")
    assert link.misrouted == []


def test_connection_replaced_between_phases_sends_nothing_stale() -> None:
    # Another thread's request found the connection dead and reconnected between
    # the starts and the reads: the new connection knows none of these
    # transactions (a READ there would answer ENOENT: "gone").
    core = core_with([1, 2])
    link = CoreLink(core)
    link.before = lambda n: link.reconnect() if n in (1, 5) else None
    assert write_targets(link, {1: 10, 2: 20}) == {1: True, 2: True}
    assert link.misrouted == []
    assert (target(core, 1), target(core, 2)) == (b"10", b"20")


def test_connection_lost_every_time_gives_up() -> None:
    core = core_with([1])
    link = CoreLink(core)
    link.lose = {n: (0, 1) for n in range(100)}
    with pytest.raises(XenstoreConnectionError):
        write_if_domains_exist(link, "memory/target", {1: "1"}, max_retries=3)
    assert len(link.calls) == 4  # one start per round, each lost


@pytest.mark.parametrize("call,replies", [(0, 0), (1, 1), (2, 2), (2, 0)])
def test_a_timed_out_phase_is_never_run_again(call: int, replies: int) -> None:
    # A hung xenstored: one timeout, then the error (each rerun would wait as long).
    core = core_with([1, 2])
    link = CoreLink(core)
    link.lose[call] = (replies, 2 if call < 2 else 4)
    link.timed_out.add(call)
    with pytest.raises(XenstoreConnectionError) as e:
        write_targets(link, {1: 10, 2: 20})
    assert e.value.timed_out
    assert [c for c in link.calls[call + 1:] if set(c) != {Op.TRANSACTION_END}] == []  # no rerun
    # a commit that was answered before the timeout is reported as written
    assert e.value.written == ({1: True} if (call, replies) == (2, 2) else {})
    assert (target(core, 1), target(core, 2)) == (
        (b"10", b"1000") if (call, replies) == (2, 2) else (b"1000", b"1000"))


class Clock:
    """A module's ``time``, advanced by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_rounds_stop_one_client_timeout_after_the_first(monkeypatch) -> None:
    # Endless conflicts, each round 3 s long: with a 5 s client timeout the
    # third round never starts, whatever max_retries allows.
    clock = Clock()
    monkeypatch.setattr(target_writes, "time", clock)
    core = core_with([1])
    link = CoreLink(core)
    link.timeout_s = 5.0  # type: ignore[attr-defined]

    def before(n: int) -> None:
        clock.now += 1.0
        if n % 3 == 2:
            core.write("/local/domain/1", b"x")

    link.before = before
    with pytest.raises(XenstoreError) as e:
        write_targets(link, {1: 10})
    assert e.value.errno_name == "EAGAIN"
    assert len(link.calls) == 2 * 3


def test_a_bad_transaction_id_abandons_the_transactions_started() -> None:
    for bad in (b"x\0", b"0\0", b"", b"99999999999\0", b"1\x002\0"):
        core = core_with([1, 2, 3])
        link = CoreLink(core)
        link.corrupt[(0, 1)] = bad
        with pytest.raises(XenstoreError) as e:
            write_targets(link, {1: 10, 2: 20, 3: 30})
        assert e.value.path == "/local/domain/2" and e.value.written == {}
        assert link.calls[1:] == [[Op.TRANSACTION_END] * 2]  # domain 1's and 3's
        assert link.open_transactions() == 1  # the one whose id was lost
        assert [target(core, d) for d in (1, 2, 3)] == [b"1000"] * 3


def test_a_failure_carries_the_writes_done_before_it() -> None:
    # A later chunk's failure: the earlier chunks' and its own commits are reported.
    core = core_with([1, 2, 3])
    link = CoreLink(core)
    link.inject[(5, 0)] = "EQUOTA"  # the second chunk (domain 3): its write refused
    with pytest.raises(XenstoreError) as e:
        write_if_domains_exist(link, "memory/target", {1: "1", 2: "2", 3: "3"}, chunk=2)
    assert e.value.errno_name == "EQUOTA"
    assert e.value.written == {1: True, 2: True}
    assert (target(core, 1), target(core, 2)) == (b"1", b"2")


def test_negative_target_refused_before_anything_is_sent() -> None:
    link = CoreLink(core_with([1]))
    with pytest.raises(ValueError, match="negative"):
        write_targets(link, {1: 10, 2: -1})
    assert link.calls == []
    assert write_targets(link, {1: 0}) == {1: True}  # zero is a target like any other


# -- over a socket to the simulated xenstored, the real tools as oracle --------------------

TOOLS = ["xenstore-read", "xenstore-exists", "xenstore-rm"]
needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                 reason="xenstore-utils not installed")


@pytest.fixture
def xsd() -> Iterator[Xenstored]:
    d = tempfile.mkdtemp(dir="/tmp", prefix="xs")
    xs = Xenstored(os.path.join(d, "sock")).start()
    yield xs
    xs.stop()
    shutil.rmtree(d, ignore_errors=True)


def tool(xs: Xenstored, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XENSTORED_PATH": xs.socket_path}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)


class Hooked:
    """A real client whose pipelines call ``before(n)`` first."""

    def __init__(self, client: XenstoreClient, before: Callable[[int], None]) -> None:
        self.client, self.before, self.n = client, before, 0

    def pipeline(
        self, requests: Sequence[Request], *, epoch: int | None = None
    ) -> tuple[int, list[Outcome]]:
        self.before(self.n)
        self.n += 1
        return self.client.pipeline(requests, epoch=epoch)


@needs_tools
def test_batch_over_a_socket_checked_with_the_real_tools(xsd: Xenstored) -> None:
    domids = list(range(1, 151))  # several chunks
    for d in domids:
        xsd.write(f"/local/domain/{d}/memory/target", "1000")
    gone = {7, 70, 140}
    for d in gone:
        xsd.rm(f"/local/domain/{d}")
    with XenstoreClient(xsd.socket_path, timeout_s=TIMEOUT) as c:
        # Domain 99 is destroyed (by xenstore-rm) after its read, before its commit.
        def destroy(n: int) -> None:
            # the commits of domain 99's chunk (each chunk: start, read, commit)
            if n == 3 * ((99 - 1) // target_writes.DEFAULT_CHUNK) + 2:
                assert tool(xsd, "xenstore-rm", "/local/domain/99").returncode == 0

        written = write_targets(Hooked(c, destroy), {d: 2000 + d for d in domids})
    assert written == {d: d not in gone | {99} for d in domids}
    for d in domids:
        r = tool(xsd, "xenstore-read", f"/local/domain/{d}/memory/target")
        if d in gone | {99}:
            assert r.returncode != 0
            assert tool(xsd, "xenstore-exists", f"/local/domain/{d}").returncode != 0
        else:
            assert (r.returncode, r.stdout.strip()) == (0, str(2000 + d))


def test_without_pipelining_one_transaction_at_a_time(xsd: Xenstored) -> None:
    class Plain:
        def __init__(self, c: XenstoreClient) -> None:
            self.transaction = c.transaction

    for d in (1, 2):
        xsd.write(f"/local/domain/{d}/memory/target", "1000")
    with XenstoreClient(xsd.socket_path, timeout_s=TIMEOUT) as c:
        assert write_targets(Plain(c), {1: 10, 3: 30, 2: 20}) == {1: True, 3: False, 2: True}
    assert (xsd.read("/local/domain/1/memory/target"),
            xsd.read("/local/domain/2/memory/target")) == ("10", "20")
    assert not xsd.exists("/local/domain/3")


def test_transaction_tries_stop_one_client_timeout_after_the_first(
        xsd: Xenstored, monkeypatch) -> None:
    # XenstoreClient.transaction, as the batch: endless conflicts, each try 4 s
    # long; with a 10 s client timeout no try starts after the third.
    from squeezed.xen import xs_client

    clock = Clock()
    monkeypatch.setattr(xs_client, "time", clock)
    tries: list[float] = []

    def conflicted(t: object) -> None:
        tries.append(clock.now)
        clock.now += 4.0
        raise XenstoreError("EAGAIN", "/local/domain/1")

    with XenstoreClient(xsd.socket_path, timeout_s=TIMEOUT) as c:
        with pytest.raises(XenstoreError) as e:
            c.transaction(conflicted)
    assert e.value.errno_name == "EAGAIN"
    assert tries == [0.0, 4.0, 8.0]


def test_module_defaults() -> None:
    # A batch leaves room for other transactions within the simulated xenstored's limit.
    from squeezed.sim.xenhost.xenstored import core

    assert 2 * target_writes.DEFAULT_CHUNK <= core.MAX_TRANSACTIONS_PER_CONN
