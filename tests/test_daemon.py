"""The real squeezed program against the simulated Xen host: signals, the
pidfile lock, configuration reload, SIGKILL and restart, xenstored restart,
and many concurrent clients."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from daemon_harness import GIB, MIB, DaemonProcess, make_sim

from squeezed.sim.drivers import Ideal, Stuck

pytestmark = pytest.mark.slow


@pytest.fixture
def sim(short_tmp):
    s = make_sim(short_tmp)
    yield s
    s.stop()


@pytest.fixture
def daemon(short_tmp, sim):
    d = DaemonProcess(short_tmp, sim).start()
    yield d
    d.stop()


def test_sigterm_exits_cleanly_and_removes_its_files(daemon):
    assert os.path.exists(daemon.socket) and os.path.exists(daemon.pidfile)
    assert int(open(daemon.pidfile).read()) == daemon.proc.pid
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert not os.path.exists(daemon.socket)
    assert not os.path.exists(daemon.json_socket)
    assert not os.path.exists(daemon.pidfile)


def test_second_instance_refuses_and_says_why(short_tmp, sim, daemon):
    other_dir = short_tmp / "other"
    other_dir.mkdir()
    second = DaemonProcess(other_dir, sim)
    second.pidfile = daemon.pidfile  # same pidfile, other sockets
    second.start(wait=False)
    assert second.wait() == 1
    assert "another squeezed" in second.output() and daemon.pidfile in second.output()
    daemon.call("get_host_reserved_memory", "still serving")


def test_live_socket_is_not_stolen(short_tmp, sim, daemon):
    other_dir = short_tmp / "other"
    other_dir.mkdir()
    second = DaemonProcess(other_dir, sim)
    second.socket = daemon.socket
    second.start(wait=False)
    assert second.wait() == 1
    daemon.call("get_host_reserved_memory", "still serving")


def test_sighup_reloads_configuration(daemon):
    daemon.conf.write_text("loglevel = debug\nsocket-mode = 0660\nno-such-key = 1\n")
    daemon.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "configuration reloaded" not in daemon.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    out = daemon.output()
    assert "SIGHUP: loglevel = debug" in out
    assert "socket-mode changed but only takes effect after a restart" in out
    assert "no-such-key" in out  # the unknown key is a warning naming it
    daemon.call("balance_memory", "after reload")


def test_boot_time_free_memory_is_measured_and_persisted(daemon):
    value = int(daemon.call("get_host_initial_free_memory", "t"))
    assert value > 1 * GIB * 1024
    assert int((daemon.run_dir / "boot_time_memory").read_text()) == value


def wait_for_operation_running(d, timeout_s: float = 20.0) -> None:
    """Synchronise on state: diagnostics (which never wait behind the
    operation lock) say a squeezing operation is running."""
    deadline = time.monotonic() + timeout_s
    while "operation running: yes" not in d.call("get_diagnostics", "poll"):
        assert time.monotonic() < deadline, "no operation started"
        time.sleep(0.01)


def test_sigkill_mid_operation_and_restart_keeps_every_reservation(short_tmp, sim, daemon):
    sid = daemon.call("login", "t", "xenopsd")
    kept = daemon.call("reserve_memory", "t", sid, 128 * MIB)
    # Slow drivers: the next reservation is mid-squeeze when the daemon dies.
    for domid in (1, 2):
        sim.guests[domid].driver = Ideal(rate_kib_s=64 * MIB)
    errors = []

    def reserve():
        try:
            daemon.call("reserve_memory", "t", sid, 1 * GIB)
        except Exception as e:  # the connection dies with the daemon
            errors.append(e)

    t = threading.Thread(target=reserve)
    t.start()
    wait_for_operation_running(daemon)
    daemon.proc.kill()
    daemon.wait()
    t.join(10)
    assert errors, "the reservation should have been cut off"
    restarted = DaemonProcess(short_tmp, sim).start()
    try:
        state = restarted.call("get_state", "t")
        rids = [r["reservation_id"] for r in state["reservations"]]
        assert rids == [kept]  # the one that completed, once; none half-made
        total_reserved = sum(int(r["kib"]) for r in state["reservations"])
        assert total_reserved == 128 * MIB
        restarted.call("delete_reservation", "t", sid, kept)
        # idempotent, as upstream: a second delete is not an error
        assert restarted.call("delete_reservation", "t", sid, kept) is None
    finally:
        restarted.stop()


def test_xenstored_restart_daemon_reconnects(sim, daemon):
    sid = daemon.call("login", "t", "xenopsd")
    rid = daemon.call("reserve_memory", "t", sid, 64 * MIB)
    sim.xenstored.stop()
    time.sleep(0.3)
    sim.xenstored.start()
    rid2 = daemon.call("reserve_memory", "t", sid, 64 * MIB)
    daemon.call("delete_reservation", "t", sid, rid)
    daemon.call("delete_reservation", "t", sid, rid2)
    assert daemon.call("get_state", "t")["reservations"] == []


def test_stuck_guest_over_the_socket(sim, daemon):
    sim.guests[1].driver = Stuck()
    sim.guests[2].driver = Stuck()
    sid = daemon.call("login", "t", "xenopsd")
    with pytest.raises(Exception) as e:
        daemon.call("reserve_memory", "t", sid, 1 * GIB)
    assert getattr(e.value, "name", "") == "Domains_refused_to_cooperate"
    assert sorted(e.value.domids) == [1, 2]
    # Domain 2 recovers and picks up the slack; domain 1 stays stuck above its
    # target while the reservation holds the memory, so it becomes uncooperative.
    sim.guests[2].driver = Ideal(rate_kib_s=8 * GIB)
    daemon.call("reserve_memory", "t", sid, 1 * GIB + 256 * MIB)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # the periodic balancer's check reads the host and updates the flags
        if sim.xenstored.read("/local/domain/1/memory/uncooperative") is not None:
            break
        time.sleep(0.1)
    assert sim.xenstored.read("/local/domain/1/memory/uncooperative") is not None


def test_32_concurrent_clients_lose_nothing(sim, daemon):
    free_before = int(daemon.call("get_state", "t")["host"]["free_kib"])
    failures = []
    made = []

    def worker(i: int) -> None:
        try:
            sid = f"client-{i}"
            daemon.call("login", "t", sid)
            for j in range(4):
                rid = daemon.call("reserve_memory", f"t{i}.{j}", sid, 1 * MIB)
                made.append(rid)
                daemon.call("transfer_reservation_to_domain", "t", sid, rid, 1000 + i)
                assert daemon.call("query_reservation_of_domain", "t", sid, 1000 + i) == rid
                daemon.call("delete_reservation", "t", sid, rid)
        except Exception as e:
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    assert len(set(made)) == 32 * 4
    state = daemon.call("get_state", "t")
    assert state["reservations"] == []
    assert abs(int(state["host"]["free_kib"]) - free_before) < 8 * MIB


def test_not_a_dom0_fails_cleanly(short_tmp):
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SQUEEZED_SIM_XC_STATE"}
    r = subprocess.run(
        [sys.executable, "-m", "squeezed.daemon", "--config", "/dev/null",
         "--config-dir", str(short_tmp), "--pidfile", "", "--log", "stderr",
         "--socket", str(short_tmp / "m"), "--json-socket", str(short_tmp / "mj")],
        capture_output=True, text=True, timeout=30, env=env,
    )
    assert r.returncode == 1
    assert "cannot open the Xen control interface" in r.stderr
    assert "is this a Xen dom0?" in r.stderr
    assert not os.path.exists(short_tmp / "m")  # nothing half-started


def test_sigterm_mid_operation_answers_the_caller_and_exits_0(short_tmp, sim):
    d = DaemonProcess(short_tmp, sim, "--stuck-after", "60").start()
    try:
        sim.guests[1].driver = Stuck()
        sim.guests[2].driver = Stuck()
        sid = d.call("login", "t", "xenopsd")
        replies = []

        def reserve():
            try:
                replies.append(d.call("reserve_memory", "t", sid, 1 * GIB))
            except Exception as e:
                replies.append(e)

        t = threading.Thread(target=reserve)
        t.start()
        wait_for_operation_running(d)  # squeezing, waiting on stuck drivers
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
        t.join(10)
        assert len(replies) == 1
        err = replies[0]
        assert getattr(err, "name", "") == "Internal_error", err
        assert "shutting down" in str(err)
        assert not os.path.exists(d.socket) and not os.path.exists(d.pidfile)
    finally:
        d.stop()


def test_daemon_mode_detaches_with_a_locked_pidfile(short_tmp, sim):
    d = DaemonProcess(short_tmp, sim, "--daemon")
    d.start(wait=False)
    assert d.wait() == 0  # the parent returns once detached
    d.proc = None
    deadline = time.monotonic() + 20
    while not os.path.exists(d.socket) and time.monotonic() < deadline:
        time.sleep(0.05)
    d.call("get_host_reserved_memory", "detached")
    pid = int(open(d.pidfile).read())
    assert pid > 0 and os.path.exists(f"/proc/{pid}")
    other_dir = short_tmp / "other"
    other_dir.mkdir()
    second = DaemonProcess(other_dir, sim, "--daemon")
    second.pidfile = d.pidfile
    second.start(wait=False)
    assert second.wait() == 1
    assert "another squeezed" in second.output()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    assert not os.path.exists(d.pidfile) and not os.path.exists(d.socket)


def test_sigterm_while_xenstored_is_unreachable_at_start_up(short_tmp, sim):
    d = DaemonProcess(short_tmp, sim)
    d.sim_path = sim.xenstored_path
    sim.xenstored.stop()  # squeezed keeps retrying to connect
    try:
        d.start(wait=False)
        time.sleep(1.5)
        assert d.proc.poll() is None
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait(10) == 0
        assert time.monotonic() - t0 < 5
        assert not os.path.exists(d.socket) and not os.path.exists(d.pidfile)
    finally:
        sim.xenstored.start()


def test_waiting_initial_free_memory_callers_are_answered_at_shutdown(short_tmp, sim):
    # A measurement that never settles: callers wait, then get a reply at SIGTERM.
    d = DaemonProcess(short_tmp, sim, "--boot-time-host-free-memory-minimal-constant-count",
                      "1000000").start()
    replies = []

    def ask():
        try:
            replies.append(d.call("get_host_initial_free_memory", "t"))
        except Exception as e:
            replies.append(e)

    t = threading.Thread(target=ask)
    t.start()
    time.sleep(0.5)
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    t.join(10)
    assert getattr(replies[0], "name", "") == "Internal_error"
    assert "shutting down" in str(replies[0])


def test_print_config_shows_warnings(short_tmp):
    import sys

    conf = short_tmp / "c.conf"
    conf.write_text("no-such-key = 1\nloglevel = debug\n")
    r = subprocess.run([sys.executable, "-m", "squeezed.daemon", "--config", str(conf),
                        "--config-dir", str(short_tmp), "--print-config"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert "no-such-key" in r.stderr and f"{conf}:1" in r.stderr
    assert "loglevel = debug" in r.stdout
