"""The simulated message-switch's queue semantics (xen-api
ocaml/message-switch/switch/: mswitch.ml process_request, q.ml), on the pure
state without sockets, and the long-poll of its socket shell."""

from __future__ import annotations

import json
import time
from pathlib import Path

from squeezed.sim.xenhost.switch import SimulatedSwitch, SwitchState
from squeezed.switch import protocol as p
from squeezed.switch.client import Connection


def req(payload: str, reply_to: str = "c") -> p.Message:
    return p.Message(payload, p.Request(reply_to))


def transfer(st: SwitchState, conn: str, from_: str | None, *queues: str) -> p.TransferReply:
    status, body = st.handle(conn, p.Transfer(from_, 0.0, queues))
    assert status == 200
    return p.parse_transfer_reply(body)


def test_nothing_but_login_and_diagnostics_without_a_session():
    st = SwitchState(now_ns=lambda: 5)
    assert st.handle("a", p.CreatePersistent("q")) == (404, b"Please log in.")
    assert st.handle("a", p.Diagnostics())[0] == 200
    assert st.handle("a", p.Login("s")) == (200, b"")
    assert st.handle("a", p.CreatePersistent("q")) == (200, b"q")


def test_ids_from_zero_per_queue_and_unacked_messages_come_again():
    st = SwitchState()
    st.handle("a", p.Login("s"))
    st.handle("a", p.CreatePersistent("q"))
    st.handle("a", p.CreatePersistent("r"))
    sends = [st.handle("a", p.Send(q, req(x)))[1] for q, x in
             (("q", "0"), ("q", "1"), ("r", "2"), ("q", "3"))]
    assert sends == [b'[["q",0]]', b'[["q",1]]', b'[["r",0]]', b'[["q",2]]']
    assert st.handle("a", p.Send("nope", req("x"))) == (200, b"[]")  # dropped
    t = transfer(st, "a", None, "q")
    assert [(i, m.payload) for i, m in t.messages] == [(("q", 0), "0"), (("q", 1), "1"),
                                                      (("q", 2), "3")]
    assert t.next == "2"
    assert transfer(st, "a", "2", "q").messages == () and transfer(st, "a", "2", "q").next == "2"
    assert [i for i, _ in transfer(st, "a", "0", "q").messages] == [("q", 1), ("q", 2)]
    st.handle("a", p.Ack(("q", 1)))
    # from the start again: every message not yet acked, in order
    assert [i for i, _ in transfer(st, "a", None, "q").messages] == [("q", 0), ("q", 2)]


def test_transient_queues_go_with_the_sessions_last_connection():
    st = SwitchState()
    for conn in ("a", "b"):
        st.handle(conn, p.Login("client:1"))
    st.handle("a", p.CreateTransient("client:1"))
    st.handle("a", p.CreatePersistent("svc"))
    st.connection_closed("a")
    assert "client:1" in st.queues  # b still has the session
    st.connection_closed("b")
    assert "client:1" not in st.queues and "svc" in st.queues
    diag = st.diagnostics()
    assert list(diag["permanent_queues"]) == ["svc"] and diag["transient_queues"] == {}


def test_diagnostics_shape():
    st = SwitchState(now_ns=lambda: 7)
    st.handle("a", p.Login("s"))
    st.handle("a", p.CreatePersistent("q"))
    st.handle("a", p.Send("q", req("hi", "s")))
    d = json.loads(st.handle("a", p.Diagnostics())[1])
    assert d["permanent_queues"]["q"] == {"queue_contents": [
        [["q", 0], {"origin": ["Name", "s"], "time": 7,
                    "message": {"payload": "hi", "kind": ["Request", "s"]}}]]}
    transfer(st, "a", None, "q")
    assert "next_transfer_expected" in st.diagnostics()["permanent_queues"]["q"]


def test_transfer_long_polls_until_a_message_or_its_timeout(short_tmp: Path):
    path = str(short_tmp / "switch")
    with SimulatedSwitch(path):
        a, b = Connection(path, 10), Connection(path, 10)
        for c in (a, b):
            c.rpc(p.Login("s"))
        a.rpc(p.CreatePersistent("q"))
        t0 = time.monotonic()
        empty = p.parse_transfer_reply(a.rpc(p.Transfer(None, 0.3, ("q",))))
        assert empty.messages == () and empty.next == "-1"
        assert time.monotonic() - t0 >= 0.3
        import threading

        timer = threading.Timer(0.2, lambda: b.rpc(p.Send("q", req("late"))))
        timer.start()
        got = p.parse_transfer_reply(a.rpc(p.Transfer(None, 30, ("q",))))
        assert [m.payload for _, m in got.messages] == ["late"]
        timer.join(10)  # b's reply may come after a's
        a.close()
        b.close()
