"""Pipelined xenstore requests: the sans-I/O `Pipeline` (no sockets), then
`XenstoreClient.pipeline` against a scripted daemon (a connection lost
mid-batch, a daemon that never answers) and against the simulated xenstored
(errors per request, a watch event met between replies, read_many)."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezed.sim.xenhost.xenstored.server import Xenstored
from squeezed.xen.xenstore import XenstoreClient, XenstoreConnectionError, XenstoreError
from squeezed.xen.xs_pipeline import Pipeline, Request
from squeezed.xen.xs_wire import (
    Op,
    Packet,
    Parser,
    encode,
    error_packet,
    join_strings,
    watch_event,
    write_payload,
)

TIMEOUT = 10.0


def reads(*paths: str) -> list[Request]:
    return [Request(Op.READ, join_strings([p]), 0, p) for p in paths]


def sent(data: bytes) -> list[Packet]:
    return Parser().feed(data)


def ids_from(start: int) -> itertools.count[int]:
    return itertools.count(start)


# -- sans-I/O ----------------------------------------------------------------------------


def test_replies_out_of_order_are_matched_by_req_id() -> None:
    ids = ids_from(7)
    pl = Pipeline(reads("/a", "/b", "/c"), lambda: next(ids))
    out = sent(pl.next_bytes())
    assert [(p.type, p.req_id, p.payload) for p in out] == [
        (Op.READ, 7, b"/a\0"), (Op.READ, 8, b"/b\0"), (Op.READ, 9, b"/c\0")]
    assert pl.next_bytes() == b""  # everything is sent
    for req_id, value in ((9, b"C"), (7, b"A"), (8, b"B")):
        assert not pl.done
        assert pl.receive(Packet(Op.READ, req_id, 0, value)) is None
    assert pl.done and pl.outstanding == 0
    assert [o.payload for o in pl.outcomes()] == [b"A", b"B", b"C"]  # type: ignore[union-attr]


def test_an_error_reply_fails_only_its_request() -> None:
    ids = ids_from(1)
    pl = Pipeline(reads("/a", "/missing", "/c"), lambda: next(ids))
    pl.next_bytes()
    pl.receive(Packet(Op.READ, 1, 0, b"A"))
    pl.receive(error_packet(2, 0, "ENOENT"))
    pl.receive(Packet(Op.READ, 3, 0, b"C"))
    a, missing, c = pl.outcomes()
    assert isinstance(a, Packet) and a.payload == b"A"
    assert isinstance(missing, XenstoreError) and not isinstance(missing, XenstoreConnectionError)
    assert (missing.errno_name, missing.path) == ("ENOENT", "/missing")
    assert isinstance(c, Packet) and c.payload == b"C"


def test_watch_event_between_replies_is_handed_back() -> None:
    ids = ids_from(1)
    pl = Pipeline(reads("/a", "/b"), lambda: next(ids))
    pl.next_bytes()
    pl.receive(Packet(Op.READ, 1, 0, b"A"))
    ev = watch_event("/a", "tok")
    assert pl.receive(ev) == ev
    assert not pl.done
    pl.receive(Packet(Op.READ, 2, 0, b"B"))
    assert [o.payload for o in pl.outcomes()] == [b"A", b"B"]  # type: ignore[union-attr]


def test_reply_to_nobody_is_dropped() -> None:
    ids = ids_from(1)
    pl = Pipeline(reads("/a"), lambda: next(ids))
    pl.next_bytes()
    assert pl.receive(Packet(Op.READ, 99, 0, b"stray")) is None
    assert pl.receive(Packet(Op.READ, 98, 0, b"stray")) is None
    assert pl.dropped == 2 and not pl.done
    pl.receive(Packet(Op.READ, 1, 0, b"A"))
    assert pl.done


def test_window_bounds_requests_in_flight() -> None:
    ids = ids_from(1)
    pl = Pipeline(reads(*(f"/k{i}" for i in range(10))), lambda: next(ids), window=4)
    first = sent(pl.next_bytes())
    assert [p.req_id for p in first] == [1, 2, 3, 4]
    assert pl.next_bytes() == b""  # window full
    pl.receive(Packet(Op.READ, 2, 0, b""))
    pl.receive(Packet(Op.READ, 1, 0, b""))
    assert [p.req_id for p in sent(pl.next_bytes())] == [5, 6]
    assert pl.outstanding == 4


def test_lost_connection_fails_the_unanswered_in_flight_or_not() -> None:
    ids = ids_from(1)
    pl = Pipeline(reads("/a", "/b", "/c", "/d"), lambda: next(ids), window=3)
    pl.next_bytes()  # /a /b /c sent; /d waits for room
    pl.receive(Packet(Op.READ, 2, 0, b"B"))
    with pytest.raises(RuntimeError):
        pl.outcomes()
    pl.fail_unanswered("connection reset")
    a, b, c, d = pl.outcomes()
    assert isinstance(b, Packet)
    for o, in_flight in ((a, True), (c, True), (d, False)):
        assert isinstance(o, XenstoreConnectionError)
        assert o.errno_name == "EIO" and o.in_flight is in_flight
    assert [o.path for o in (a, c, d)] == ["/a", "/c", "/d"]  # type: ignore[union-attr]
    assert pl.next_bytes() == b""


# -- the socket shell against a scripted daemon ----------------------------------------------


@pytest.fixture
def sock_path() -> Iterator[str]:
    d = tempfile.mkdtemp(dir="/tmp", prefix="xs")
    yield os.path.join(d, "sock")
    shutil.rmtree(d, ignore_errors=True)


class Scripted:
    """A daemon that reads `expect` requests, then runs `answer(conn, requests)`."""

    def __init__(self, path: str, expect: int, answer) -> None:  # type: ignore[no-untyped-def]
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        self.received: list[Packet] = []
        self.done = threading.Event()
        self._expect, self._answer = expect, answer
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(TIMEOUT)
        parser = Parser()
        try:
            while len(self.received) < self._expect:
                self.received += parser.feed(conn.recv(65536))
            self._answer(conn, self.received)
            self.done.wait(TIMEOUT)
        finally:
            conn.close()

    def close(self) -> None:
        self.done.set()
        self._thread.join(TIMEOUT)
        self.listener.close()


def test_connection_lost_mid_batch(sock_path: str) -> None:
    def answer(conn: socket.socket, reqs: list[Packet]) -> None:
        # Two of five answered (out of order), then the daemon dies.
        conn.sendall(encode(Op.READ, reqs[3].req_id, 0, b"D") + encode(Op.READ, reqs[0].req_id,
                                                                       0, b"A"))
        conn.shutdown(socket.SHUT_RDWR)

    daemon = Scripted(sock_path, 5, answer)
    c = XenstoreClient(sock_path, timeout_s=TIMEOUT, reconnect_timeout_s=0)
    try:
        _, outcomes = c.pipeline(reads("/a", "/b", "/c", "/d", "/e"))
    finally:
        daemon.close()
        c.close()
    assert [o.payload if isinstance(o, Packet) else o.errno_name for o in outcomes] == [
        b"A", "EIO", "EIO", b"D", "EIO"]
    assert all(o.in_flight for o in outcomes if isinstance(o, XenstoreConnectionError))
    assert c.errors["connection"] == 1


def test_a_daemon_that_never_answers_times_the_batch_out(sock_path: str) -> None:
    def answer(conn: socket.socket, reqs: list[Packet]) -> None:
        conn.sendall(encode(Op.READ, reqs[1].req_id, 0, b"B"))  # one answer, then silence

    daemon = Scripted(sock_path, 3, answer)
    c = XenstoreClient(sock_path, timeout_s=TIMEOUT, reconnect_timeout_s=0)
    try:
        _, outcomes = c.pipeline(reads("/a", "/b", "/c"), timeout_s=0.3)
    finally:
        daemon.close()
        c.close()
    a, b, cc = outcomes
    assert isinstance(b, Packet) and b.payload == b"B"
    for o in (a, cc):
        assert isinstance(o, XenstoreConnectionError) and o.in_flight
        assert "timed out" in str(o)


# -- against the simulated xenstored ------------------------------------------------------


@pytest.fixture
def xsd(sock_path: str) -> Iterator[Xenstored]:
    xs = Xenstored(sock_path).start()
    yield xs
    xs.stop()


def test_pipeline_against_xenstored(xsd: Xenstored) -> None:
    events: list[tuple[str, str]] = []
    c = XenstoreClient(xsd.socket_path, timeout_s=TIMEOUT,
                       on_watch_event=lambda p, t: events.append((p, t)))
    try:
        n = 300  # more than the window: replies must keep the window moving
        requests = [Request(Op.WATCH, join_strings(["/w", "tok"]), 0, "/w")]
        requests += [Request(Op.WRITE, write_payload(f"/w/k{i}", str(i)), 0, f"/w/k{i}")
                     for i in range(n)]
        requests += [Request(Op.READ, join_strings(["/nope"]), 0, "/nope"),
                     Request(Op.WRITE, write_payload("/a//b", "x"), 0, "/a//b"),
                     Request(Op.READ, join_strings(["/w/k7"]), 0, "/w/k7")]
        epoch, outcomes = c.pipeline(requests, window=64)
        assert len(outcomes) == n + 4
        assert all(isinstance(o, Packet) for o in outcomes[: n + 1])
        missing, bad, k7 = outcomes[n + 1:]
        assert isinstance(missing, XenstoreError) and missing.errno_name == "ENOENT"
        assert isinstance(bad, XenstoreError) and bad.errno_name == "EINVAL"
        assert isinstance(k7, Packet) and k7.payload == b"7"
        # The watch's events arrived on this connection among the replies, routed.
        assert ("/w", "tok") in events and ("/w/k299", "tok") in events
        assert [xsd.read(f"/w/k{i}") for i in (0, 150, 299)] == ["0", "150", "299"]
        assert c.read_many(["/w/k1", "/nope", "/w/k2"]) == ["1", None, "2"]
        # A transaction's requests pipelined, bound to the connection's epoch.
        _, (start,) = c.pipeline([Request(Op.TRANSACTION_START, b"\0")])
        assert isinstance(start, Packet)
        tx = int(start.payload.rstrip(b"\0"))
        _, outs = c.pipeline([Request(Op.WRITE, write_payload("/w/tx", "1"), tx),
                              Request(Op.TRANSACTION_END, b"T\0", tx)], epoch=epoch)
        assert all(isinstance(o, Packet) for o in outs) and xsd.read("/w/tx") == "1"
        # A connection replaced since: nothing is sent, nothing applied.
        stale, outs = c.pipeline([Request(Op.WRITE, write_payload("/w/stale", "1"), 0)],
                                 epoch=epoch - 1)
        assert isinstance(outs[0], XenstoreConnectionError) and not outs[0].in_flight
        assert stale == epoch - 1  # what they belonged to, not the current connection
        assert xsd.read("/w/stale") is None
    finally:
        c.close()


def test_read_many_raises_other_errors_and_rereads_after_a_restart(xsd: Xenstored) -> None:
    c = XenstoreClient(xsd.socket_path, timeout_s=TIMEOUT, reconnect_timeout_s=TIMEOUT,
                       backoff_initial_s=0.01)
    try:
        xsd.write("/r/a", "1")
        assert c.read_many(["/r/a"]) == ["1"]
        with pytest.raises(XenstoreError) as e:
            c.read_many(["/r/a", "/a//b"])  # a path xenstored refuses
        assert e.value.errno_name == "EINVAL"
        xsd.stop()
        xsd.start()
        xsd.write("/r/a", "2")
        assert c.read_many(["/r/a", "/r/b"]) == ["2", None]
    finally:
        c.close()


# -- property: any reply order, errors, events, a cut anywhere ----------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(1, 12), window=st.integers(1, 5))
def test_any_interleaving_matches_each_reply_to_its_request(
    data: st.DataObject, n: int, window: int
) -> None:
    ids = ids_from(100)
    pl = Pipeline(reads(*(f"/k{i}" for i in range(n))), lambda: next(ids), window=window)
    errors = data.draw(st.sets(st.integers(0, n - 1)), "error replies")
    cut = data.draw(st.one_of(st.none(), st.integers(0, n - 1)), "replies before a lost link")
    sent: list[Packet] = []  # requests on the wire, not yet answered
    answered = 0
    while not pl.done:
        sent += Parser().feed(pl.next_bytes())
        assert 0 < len(sent) <= window  # never more in flight than the window
        if cut is not None and answered == cut:
            pl.fail_unanswered("reset")
            break
        if data.draw(st.booleans(), "a watch event first"):
            ev = watch_event("/k", "tok")
            assert pl.receive(ev) == ev
        req = sent.pop(data.draw(st.integers(0, len(sent) - 1), "which reply next"))
        index = req.req_id - 100  # ids are handed out in request order
        reply = (error_packet(req.req_id, 0, "EACCES") if index in errors
                 else Packet(Op.READ, req.req_id, 0, f"v{index}".encode()))
        assert pl.receive(reply) is None
        answered += 1
    outcomes = pl.outcomes()
    assert len(outcomes) == n
    for i, o in enumerate(outcomes):
        if isinstance(o, Packet):
            assert o.payload == f"v{i}".encode() and i not in errors
        elif isinstance(o, XenstoreConnectionError):
            assert cut is not None
        else:
            assert (o.errno_name, o.path, i in errors) == ("EACCES", f"/k{i}", True)
    lost = [o for o in outcomes if isinstance(o, XenstoreConnectionError)]
    assert len(lost) == (0 if cut is None else n - cut)
