"""The real squeezed program serving org.xen.xapi.memory on a simulated
message-switch, against the simulated Xen host: many concurrent callers, the
switch killed and restarted during an operation, and squeezed SIGKILLed
between making a reservation and acking the request."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from daemon_harness import GIB, MIB, DaemonProcess, make_sim

from squeezed.rpc.client import NoReply
from squeezed.sim.xenhost.host import SimulatedXenHost, ideal_driver
from squeezed.sim.xenhost.switch import SimulatedSwitch
from squeezed.switch.client import SwitchClient, SwitchMemoryClient
from squeezed.switch.exactly_once import RECORDS_PATH
from squeezed.xen.host import STATE_PATH
from squeezed.xen.xenstore import XenstoreClient

pytestmark = pytest.mark.slow


def wait_for(pred, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def sim(short_tmp: Path):
    s = make_sim(short_tmp)
    yield s
    s.stop()


@pytest.fixture
def switch(short_tmp: Path):
    sw = SimulatedSwitch(str(short_tmp / "switch")).start()
    yield sw
    sw.stop()


def serving(short_tmp: Path, sim: SimulatedXenHost, switch_path: str) -> DaemonProcess:
    d = DaemonProcess(short_tmp, sim)
    d.switch = switch_path
    return d


def wait_queue_served(d: DaemonProcess) -> None:
    wait_for(lambda: "serving queue" in d.output() or "message-switch back" in d.output(),
             what="squeezed to serve its queue")


def test_thirty_two_concurrent_callers_each_reservation_counted_once(short_tmp, sim, switch):
    d = serving(short_tmp, sim, switch.path).start()
    try:
        wait_queue_served(d)
        shared = SwitchClient(switch.path, token="xenopsd-test:1")  # one per process
        mc = SwitchMemoryClient(switch.path, timeout=60, client=shared)
        session = mc.call("login", "t", "xenopsd")
        n = 32
        made: dict[int, tuple[str, int]] = {}
        errors: list[BaseException] = []
        reserved, deleted = threading.Barrier(n + 1), threading.Barrier(n + 1)
        checked = threading.Event()

        def caller(i: int) -> None:
            domid = 100 + i
            try:
                rid, kib = mc.call("reserve_memory_range", f"c{i}", session, 8 * MIB, 16 * MIB)
                mc.call("transfer_reservation_to_domain", f"c{i}", session, rid, domid)
                assert mc.call("query_reservation_of_domain", f"c{i}", session, domid) == rid
                made[i] = (rid, kib)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
            reserved.wait(60)
            checked.wait(60)
            try:
                if i in made:
                    mc.call("delete_reservation", f"c{i}", session, made[i][0])
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            deleted.wait(60)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        reserved.wait(60)
        assert errors == []
        state = d.call("get_state", "check")
        table = {r["reservation_id"]: r for r in state["reservations"]}
        assert len(made) == n and len({rid for rid, _ in made.values()}) == n
        assert set(table) == {rid for rid, _ in made.values()}
        assert all(int(table[rid]["kib"]) == kib for rid, kib in made.values())
        diag = d.call("get_diagnostics", "check")
        total = sum(kib for _, kib in made.values())
        assert f"reservations_kib={total}" in diag  # each counted once, not per delivery
        checked.set()
        deleted.wait(60)
        for t in threads:
            t.join(10)
        assert errors == []
        assert d.call("get_state", "check")["reservations"] == []
        shared.close()
    finally:
        d.stop()


def test_switch_killed_and_restarted_during_an_operation(short_tmp: Path):
    slow = ideal_driver(512 * MIB)  # freeing 1 GiB takes over a second
    sim = SimulatedXenHost(short_tmp / "host", total_kib=256 * MIB + 1 * GIB + 4 * GIB + GIB)
    sim.start()
    try:
        for domid in (1, 2):
            sim.add_running_domain(domid, actual_kib=2 * GIB, target_kib=2 * GIB,
                                   dynamic_min_kib=512 * MIB, dynamic_max_kib=2 * GIB,
                                   driver=slow)
        path = str(short_tmp / "switch")
        sw = SimulatedSwitch(path).start()
        d = serving(short_tmp, sim, path).start()
        try:
            wait_queue_served(d)
            outcome: list[object] = []

            def call() -> None:
                with SwitchMemoryClient(path, timeout=60) as mc:
                    try:
                        outcome.append(mc.call("reserve_memory", "t", "default", 2 * GIB))
                    except NoReply as e:  # the clean error of a lost switch
                        outcome.append(e)

            t = threading.Thread(target=call)
            t.start()
            wait_for(lambda: "operation running: yes" in d.call("get_diagnostics", "w"),
                     what="the operation to start")
            sw.stop()  # killed mid-operation: its queues are gone
            t.join(30)
            assert len(outcome) == 1
            assert isinstance(outcome[0], str | NoReply), outcome
            sw = SimulatedSwitch(path).start()
            t0 = time.monotonic()
            with SwitchMemoryClient(path, timeout=5) as mc:
                assert mc.call("get_host_reserved_memory", "after") > 0
            assert time.monotonic() - t0 < 5
            out = d.output()
            assert out.count("lost the message-switch") == 1
        finally:
            d.stop()
            sw.stop()
    finally:
        sim.stop()


@pytest.mark.parametrize("point", ["before-record", "before-reply"])
def test_sigkill_before_the_ack_then_the_redelivery_gets_the_same_reservation(
        short_tmp, sim, switch, monkeypatch, point):
    xs = XenstoreClient(sim.xenstored_path)
    monkeypatch.setenv("SQUEEZED_TEST_HOLD_SWITCH", point)
    d = serving(short_tmp, sim, switch.path).start()
    client = SwitchClient(switch.path, token="xenopsd-test:2")
    try:
        wait_queue_served(d)
        replies: list[object] = []

        def call() -> None:
            mc = SwitchMemoryClient(switch.path, timeout=60, client=client)
            replies.append(mc.call("reserve_memory_range", "t", "default", 64 * MIB, 128 * MIB))

        t = threading.Thread(target=call)
        t.start()

        def reservations():
            return [(s, r) for s in xs.directory(STATE_PATH)
                    for r in xs.directory(f"{STATE_PATH}/{s}")]

        made = wait_for(reservations, what="the reservation in xenstore")
        if point == "before-reply":
            wait_for(lambda: xs.directory(RECORDS_PATH), what="the request's record")
        else:
            assert xs.directory(RECORDS_PATH) == []
        assert d.output().count("test hook: holding") == 1
        d.signal(signal.SIGKILL)
        d.wait()
        monkeypatch.delenv("SQUEEZED_TEST_HOLD_SWITCH")
        d.start()  # the switch still holds the unacked request and delivers it again
        t.join(30)
        assert len(replies) == 1
        rid, kib = replies[0]
        assert made == [("default", rid)]
        assert reservations() == made  # held once
        assert xs.read(f"{STATE_PATH}/default/{rid}") == str(kib)
        assert "delivered again" in d.output()
    finally:
        client.close()
        d.stop()
        xs.close()


def test_a_newcomers_simulate_then_squeezectl_switch(short_tmp: Path):
    """`squeezed --simulate` (what `./dev run` runs) prints the switch it serves its
    queue on, and `squeezectl --switch <that path> diagnostics` works."""
    import io
    import os
    import re
    import subprocess
    import sys

    from squeezed.cli import EXIT_OK
    from squeezed.cli import main as squeezectl

    err = open(short_tmp / "stderr", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "squeezed.daemon", "--simulate"],
                            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                            env={**os.environ, "TMPDIR": str(short_tmp)})
    try:
        text = wait_for(lambda: (m := re.search(r"--switch (\S+) diagnostics",
                                                (short_tmp / "stderr").read_text())) and m,
                        what="the printed switch path")
        path = text.group(1)
        out, cerr = io.StringIO(), io.StringIO()
        assert squeezectl(["--switch", path, "--timeout", "20", "diagnostics"], stdout=out,
                          stderr=cerr) == EXIT_OK, cerr.getvalue()
        assert out.getvalue().startswith("squeezed ") and "reservations (0):" in out.getvalue()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        err.close()
    assert not os.path.exists(path)  # the simulated switch went with the run dir


def test_sigterm_answers_the_switch_request_in_progress(short_tmp: Path):
    slow = ideal_driver(256 * MIB)
    sim = SimulatedXenHost(short_tmp / "host", total_kib=256 * MIB + 1 * GIB + 4 * GIB + GIB)
    sim.start()
    try:
        for domid in (1, 2):
            sim.add_running_domain(domid, actual_kib=2 * GIB, target_kib=2 * GIB,
                                   dynamic_min_kib=512 * MIB, dynamic_max_kib=2 * GIB,
                                   driver=slow)
        path = str(short_tmp / "switch")
        with SimulatedSwitch(path) as sw:
            d = serving(short_tmp, sim, path).start()
            wait_queue_served(d)
            outcome: list[object] = []

            def call() -> None:
                with SwitchMemoryClient(path, timeout=60) as mc:
                    try:
                        outcome.append(mc.call("reserve_memory", "t", "default", 2 * GIB))
                    except Exception as e:  # noqa: BLE001 - what it is is checked below
                        outcome.append(e)

            t = threading.Thread(target=call)
            t.start()
            wait_for(lambda: "operation running: yes" in d.call("get_diagnostics", "w"),
                     what="the operation to start")
            d.signal(signal.SIGTERM)
            assert d.wait(20) == 0
            t.join(20)
            assert len(outcome) == 1, d.output()[-3000:]
            err = outcome[0]
            assert getattr(err, "name", "") == "Internal_error" and "shutting down" in str(err)
            assert sw.state.queues[QUEUE].entries == {}  # replied and acked before exiting
    finally:
        sim.stop()


QUEUE = "org.xen.xapi.memory"
