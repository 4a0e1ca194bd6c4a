"""squeezed's queue server on the simulated message-switch, in one process:
every method golden-checked through the switch (the same bytes as the JSON
socket's golden tests, which follow rpclib), the switch restarted under it,
loss and recovery logged once, and the heartbeat of its loop."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rpc_fake import FakeService
from test_wire_golden import ERROR_GOLDEN, GOLDEN, JSON_CALL, JSON_FAIL, JSON_OK, Case, _ids

from squeezed.rpc.codec import JsonCodec
from squeezed.rpc.dispatch import Dispatcher
from squeezed.sim.xenhost.switch import SimulatedSwitch
from squeezed.supervisor import Heartbeats
from squeezed.switch import protocol as p
from squeezed.switch.client import SwitchClient, SwitchError
from squeezed.switch.server import HEARTBEAT, SwitchServer

Q = p.QUEUE_NAME


class Serving:
    def __init__(self, path: str, service=None, **kw) -> None:
        self.fake = service or FakeService()
        codec = JsonCodec(Dispatcher(self.fake))
        self.server = SwitchServer(
            path, lambda body: codec.handle(body.encode()).decode(), **kw)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.server.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Serving:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown(drain_s=5)
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def golden_switch() -> Iterator[tuple[SwitchClient, FakeService]]:
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="sqz-", dir="/tmp")
    path = f"{d}/switch"
    with SimulatedSwitch(path), Serving(path) as s, SwitchClient(path, token="golden") as c:
        yield c, s.fake
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("case", GOLDEN, ids=_ids(GOLDEN))
def test_golden_through_the_switch(case: Case, golden_switch) -> None:
    client, fake = golden_switch
    fake.results[case.op] = case.ret
    fake.calls.clear()
    reply = client.rpc(Q, JSON_CALL.format(case.method, case.json_params), timeout_s=10)
    assert reply == JSON_OK.format(case.json_value)
    assert fake.calls == [(case.op, case.args)]


@pytest.mark.parametrize("error,xml,json_error", ERROR_GOLDEN,
                         ids=[type(e[0]).__name__ for e in ERROR_GOLDEN])
def test_golden_errors_through_the_switch(error, xml, json_error, golden_switch) -> None:
    client, fake = golden_switch
    fake.raise_next = error
    reply = client.rpc(Q, JSON_CALL.format("reserve_memory", '["d","s",1024]'), timeout_s=10)
    assert reply == JSON_FAIL.format(json_error)


def test_malformed_payload_gets_an_internal_error(golden_switch) -> None:
    client, _ = golden_switch
    reply = json.loads(client.rpc(Q, "not json", timeout_s=10))
    assert reply["error"][0] == "Internal_error" and reply["result"] is None


def test_switch_diagnostics_show_the_queue(golden_switch) -> None:
    client, _ = golden_switch
    d = json.loads(client.frame(p.Diagnostics()))
    assert Q in d["permanent_queues"] and "golden" in d["transient_queues"]
    assert Q in p.parse_list_reply(client.frame(p.List("org.xen.", alive_only=True)))


def test_requests_are_processed_concurrently(short_tmp: Path) -> None:
    """As upstream, one thread per message: a slow call does not hold up others."""
    path = str(short_tmp / "switch")
    gate = threading.Event()

    class Slow(FakeService):
        def balance_memory(self, dbg):
            assert gate.wait(10)

    with SimulatedSwitch(path), Serving(path, Slow()), SwitchClient(path, token="c") as c:
        slow = threading.Thread(target=c.rpc, args=(Q, JSON_CALL.format("balance_memory",
                                                                         '["d"]'), 10))
        slow.start()
        fast = c.rpc(Q, JSON_CALL.format("get_host_reserved_memory", '["d"]'), timeout_s=10)
        assert json.loads(fast)["result"] == 8192
        gate.set()
        slow.join(10)


def test_restarted_switch_is_served_again_from_its_first_message(short_tmp: Path, caplog):
    """A restarted switch numbers messages from 0 again: after reconnecting the
    server must transfer from the start (upstream keeps its old position and
    ignores the new requests until the numbers catch up)."""
    path = str(short_tmp / "switch")
    caplog.set_level(logging.INFO, logger="squeezed.switch")
    call = JSON_CALL.format("get_host_reserved_memory", '["d"]')
    sw = SimulatedSwitch(path).start()
    with Serving(path, backoff_max_s=0.2) as s:
        with SwitchClient(path, token="before") as c:
            for _ in range(6):  # the server's position is now past id 5
                assert json.loads(c.rpc(Q, call, timeout_s=10))["result"] == 8192
        assert s.server.connections == 1
        sw.stop()  # killed: its state is gone
        sw = SimulatedSwitch(path).start()
        t0 = time.monotonic()
        with SwitchClient(path, token="after") as c:
            assert json.loads(c.rpc(Q, call, timeout_s=5))["result"] == 8192
        assert time.monotonic() - t0 < 5
        assert s.server.connections == 2
        lost = [r for r in caplog.records if "lost the message-switch" in r.getMessage()]
        back = [r for r in caplog.records if "message-switch back" in r.getMessage()]
        assert len(lost) == 1 and len(back) == 1, [r.getMessage() for r in caplog.records]
        sw.stop()


def test_absent_switch_is_logged_once_and_retried_with_capped_backoff(short_tmp: Path, caplog):
    path = str(short_tmp / "switch")
    caplog.set_level(logging.INFO, logger="squeezed.switch")
    pauses: list[float] = []

    def pause(s: float) -> bool:
        pauses.append(s)
        return False

    with Serving(path, backoff_initial_s=0.01, backoff_max_s=0.05, pause=pause) as s:
        deadline = time.monotonic() + 10
        while s.server.attempts < 6:  # several retries while the switch is absent
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with SimulatedSwitch(path):
            assert s.server.connected.wait(5)
            with SwitchClient(path, token="c") as c:
                c.rpc(Q, JSON_CALL.format("balance_memory", '["d"]'), timeout_s=5)
    msgs = [r.getMessage() for r in caplog.records]
    assert pauses[:5] == [0.01, 0.02, 0.04, 0.05, 0.05]  # doubling, capped
    assert sum("unavailable" in m for m in msgs) == 1, msgs
    assert sum("message-switch back" in m for m in msgs) == 1, msgs


def test_a_caller_whose_switch_dies_gets_a_clean_error(short_tmp: Path) -> None:
    path = str(short_tmp / "switch")
    gate = threading.Event()

    class Slow(FakeService):
        def balance_memory(self, dbg):
            gate.wait(10)

    sw = SimulatedSwitch(path).start()
    with Serving(path, Slow()) as s, SwitchClient(path, token="c") as c:
        errors: list[BaseException] = []

        def call() -> None:
            try:
                c.rpc(Q, JSON_CALL.format("balance_memory", '["d"]'), timeout_s=10)
            except SwitchError as e:
                errors.append(e)

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 5
        while s.server.busy == 0:  # the request is being processed
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sw.stop()
        t.join(10)
        gate.set()
        assert len(errors) == 1 and "lost the message-switch" in str(errors[0])


def test_heartbeat_is_registered_and_beats(short_tmp: Path) -> None:
    now = [0.0]
    hb = Heartbeats(clock=lambda: now[0])
    path = str(short_tmp / "switch")
    with SimulatedSwitch(path), Serving(path, heartbeats=hb, transfer_timeout_s=0.05) as s:
        assert s.server.connected.wait(5)
        deadline = time.monotonic() + 5
        while HEARTBEAT not in hb.status():
            assert time.monotonic() < deadline
        now[0] = 1000.0  # much later: the loop must have beaten since
        while hb.status().get(HEARTBEAT, 1e9) > 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert hb.late() == []
    assert HEARTBEAT not in hb.status()  # unregistered when the loop ends


def test_squeezectl_through_the_switch(short_tmp: Path) -> None:
    import io

    from squeezed.cli import EXIT_CONNECT, EXIT_OK, EXIT_SERVICE, main

    path = str(short_tmp / "switch")
    with SimulatedSwitch(path), Serving(path) as s:
        out, err = io.StringIO(), io.StringIO()
        assert main(["--switch", path, "reserve-range", "1024", "4096"], stdout=out,
                    stderr=err) == EXIT_OK, err.getvalue()
        assert out.getvalue().split() == ["res-2", "1572864"]
        assert s.fake.calls == [("reserve_memory_range", ("squeezectl", "default", 1024, 4096))]
        from squeezed.errors import NoReservation

        s.fake.raise_next = NoReservation()
        assert main(["--switch", path, "query-domain", "3"], stdout=out,
                    stderr=err) == EXIT_SERVICE
        assert "No_reservation" in err.getvalue()
    err = io.StringIO()
    assert main(["--switch", path, "diagnostics"], stdout=io.StringIO(), stderr=err) == \
        EXIT_CONNECT
    assert "Is message-switch running?" in err.getvalue()


def test_requests_in_flight_are_bounded(short_tmp: Path) -> None:
    """Beyond max_in_flight, requests wait in the switch rather than in threads."""
    path = str(short_tmp / "switch")
    gate = threading.Event()
    running = []

    class Slow(FakeService):
        def balance_memory(self, dbg):
            running.append(dbg)
            assert gate.wait(10)

    with SimulatedSwitch(path) as sw, Serving(path, Slow(), max_in_flight=2) as s, \
            SwitchClient(path, token="c") as c:
        threads = [threading.Thread(target=c.rpc, args=(
            Q, JSON_CALL.format("balance_memory", f'["d{i}"]'), 10)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while len(sw.state.queues[Q].entries) < 4 or len(running) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert s.server.busy == 2 and len(running) == 2
        gate.set()
        for t in threads:
            t.join(10)
        assert sorted(running) == ["d0", "d1", "d2", "d3"]
        deadline = time.monotonic() + 5
        while sw.state.queues[Q].entries:  # all acked (each ack follows its reply)
            assert time.monotonic() < deadline, sw.state.queues[Q].entries
            time.sleep(0.01)


def test_a_request_delivered_again_while_running_is_answered_once(short_tmp: Path) -> None:
    """squeezed's connection breaks (the switch stays): after reconnecting it
    transfers from the start and gets the request it is still running; that run
    cannot reply on the dead connection, so the repeat is answered, from the
    record, on the new one -- the operation itself runs once."""
    from squeezed.switch.exactly_once import ExactlyOnce, MemoryRecords

    path = str(short_tmp / "switch")
    gate, running = threading.Event(), threading.Event()

    class Slow(FakeService):
        def reserve_memory(self, dbg, session_id, kib):
            running.set()
            assert gate.wait(10)
            return super().reserve_memory(dbg, session_id, kib)

    fake = Slow()
    once = ExactlyOnce(fake, MemoryRecords(), lambda: [])
    with SimulatedSwitch(path) as sw, Serving(path, once, token="squeezed:1",
                                             backoff_max_s=0.1) as s, \
            SwitchClient(path, token="xenopsd:1") as c:
        replies: list[str] = []
        t = threading.Thread(target=lambda: replies.append(c.rpc(
            Q, JSON_CALL.format("reserve_memory", '["d","xenopsd",1024]'), 10)))
        t.start()
        assert running.wait(5)
        assert sw.drop_connections("squeezed:1") == 2
        deadline = time.monotonic() + 5
        while not s.server._deferred:  # the repeat arrived on the new connection
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gate.set()
        t.join(10)
        assert replies == [JSON_OK.format('"res-1"')]
        assert [op for op, _ in fake.calls] == ["reserve_memory"]  # ran once
        assert once.replayed == 1
        deadline = time.monotonic() + 5
        while sw.state.queues[Q].entries:  # and it was acked
            assert time.monotonic() < deadline
            time.sleep(0.01)
