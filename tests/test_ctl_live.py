"""squeezectl top, metrics and record against a live squeezed on the simulated
Xen host: counters after real operations, the metrics textfile the daemon
writes, a recording drawn by squeezed-sim plot, and top in a real terminal
(tmux: send keys, capture the pane)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_harness import GIB, MIB, DaemonProcess, make_sim
from test_ctl_views import L, parse

from squeezed.ctl import metrics, record
from squeezed.engine.operations import EngineConfig
from squeezed.errors import CannotFreeThisMuchMemory
from squeezed.service import MemoryService
from squeezed.sim.drivers import Ideal
from squeezed.sim.xenhost.host import SimulatedXenHost, ideal_driver
from squeezed.xen.host import XenHost
from squeezed.xen.xenctrl import XenCtrl, XenCtrlError
from squeezed.xen.xenstore import XenstoreClient, XenstoreError

CTL = [sys.executable, "-m", "squeezed.cli"]


def wait_for(pred, timeout_s: float = 20.0, what: str = "", on_timeout=None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    detail = f":\n{on_timeout()}" if on_timeout is not None else ""
    raise AssertionError(f"timed out waiting for {what or pred}{detail}")


def test_counters_after_real_operations(short_tmp, monkeypatch) -> None:
    """The service on the production Xen backend (XenHost, cffi, xenstore
    client) over the simulated host: what the metrics say happened did."""
    sim = SimulatedXenHost(short_tmp, total_kib=256 * MIB + 1 * GIB + 3 * GIB + 1 * GIB,
                           dom0_kib=1 * GIB)
    sim.start()
    for k, v in sim.env().items():
        monkeypatch.setenv(k, v)
    sim.add_running_domain(1, actual_kib=2 * GIB, target_kib=2 * GIB, dynamic_min_kib=1 * GIB,
                           dynamic_max_kib=2 * GIB, driver=ideal_driver(8 * GIB))
    xc = XenCtrl.open(sim.libxenctrl_path)
    xs = XenstoreClient(sim.xenstored_path)
    try:
        svc = MemoryService(XenHost(xc, xs), EngineConfig(stuck_after_s=0.5))
        rid = svc.reserve_memory("vm-a", "xenopsd", 2560 * MIB)  # 2 GiB free: domain 1 must balloon
        with pytest.raises(CannotFreeThisMuchMemory):
            svc.reserve_memory("vm-b", "xenopsd", 8 * GIB)
        svc.delete_reservation("vm-a", "xenopsd", rid)
        with pytest.raises(XenstoreError):
            xs.directory("")  # EINVAL from xenstored
        with pytest.raises(XenCtrlError):
            xc.set_maxmem_kib(77, 1024)  # ESRCH: no such domain
        target_before = {d["domid"]: d["target_kib"] for d in svc.get_state("t")["domains"]}
        sim.xenstored.write("/local/domain/1/memory/dynamic-min", "lots")  # bad keys
        st = svc.get_state("t")
        types, v = parse(metrics.exposition(st))
    finally:
        xs.close()
        sim.stop()
    assert {(r["op"], r["outcome"]) for r in st["history"]} == {
        ("reserve_memory", "success"), ("reserve_memory", "Cannot_free_this_much_memory"),
        ("delete_reservation", "success")}
    ops = "squeezed_operations_total"
    assert v[(ops, L(method="reserve_memory", outcome="success"))] == 1
    assert v[(ops, L(method="reserve_memory", outcome="Cannot_free_this_much_memory"))] == 1
    assert v[(ops, L(method="delete_reservation", outcome="success"))] == 1
    assert v[("squeezed_operation_duration_seconds_count",
              L(method="reserve_memory", outcome="success"))] == 1
    assert v[("squeezed_engine_iterations_total", L())] >= 2  # it had to wait for the balloon
    assert v[("squeezed_xenstore_errors_total", L(error="EINVAL"))] == 1
    assert v[("squeezed_hypercall_errors_total", L(call="xc_domain_setmaxmem"))] == 1
    assert target_before[1] < 2 * GIB  # squeezed
    assert v[("squeezed_host_xen_total_kib", L())] == 256 * MIB + 5 * GIB
    assert v[("squeezed_operation_running", L())] == 0
    # a domain with unusable xenstore values is left alone, and says why
    assert [(la["domid"], la["name"]) for la in st["left_alone"]] == [(1, "guest-1")]
    assert "dynamic-min" in st["left_alone"][0]["reason"]
    assert v[("squeezed_domain_left_alone", L(domid=1, name="guest-1"))] == 1


@pytest.fixture
def sim(short_tmp):
    s = make_sim(short_tmp)
    yield s
    s.stop()


def _ctl(daemon: DaemonProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CTL, "--socket", daemon.socket, *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _slow_domain(sim: SimulatedXenHost) -> None:
    """A domain whose driver frees 512 MiB/s, so that a squeeze lasts seconds."""
    sim.add_running_domain(3, actual_kib=1 * GIB, target_kib=1 * GIB, dynamic_min_kib=256 * MIB,
                           dynamic_max_kib=1 * GIB, driver=Ideal(rate_kib_s=256 * MIB))


@pytest.mark.slow
def test_views_against_the_daemon(short_tmp, sim) -> None:
    prom = short_tmp / "textfile" / "squeezed.prom"
    prom.parent.mkdir()
    daemon = DaemonProcess(short_tmp, sim, "--metrics-textfile", str(prom),
                           "--metrics-textfile-interval", "0.2").start()
    try:
        # top without a terminal: plain text, one frame
        r = _ctl(daemon, "top", "--once", "--width", "100")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("squeezed top") and "operation: none" in lines
        assert any(line.split()[:2] == ["1", "guest-1"] for line in lines)
        r = _ctl(daemon, "top", "-n", "2", "--interval", "0.1")
        assert r.returncode == 0 and r.stdout.count("squeezed top") == 2
        r = subprocess.run([*CTL, "--socket", daemon.json_socket, "--protocol", "json", "top",
                            "--once"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "guest-1" in r.stdout, r.stderr  # the JSON-RPC socket too

        # record while a VM start squeezes the guests, then draw it
        rec_file = short_tmp / "run.jsonl"
        recorder = subprocess.Popen([*CTL, "--socket", daemon.socket, "record", str(rec_file),
                                     "--interval", "0.1", "--duration", "3"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: rec_file.exists() and rec_file.stat().st_size > 0, what="recording")
        r = _ctl(daemon, "--dbg", "xenopsd/VM.start/7", "reserve", str(1536 * MIB))
        assert r.returncode == 0, r.stderr
        _, err = recorder.communicate(timeout=30)
        assert recorder.returncode == 0, err
        rec = record.load(str(rec_file))
        assert len(rec.samples) >= 10
        assert [(o["op"], o["dbg"], o["outcome"]) for o in rec.operations
                if o["op"] != "auto-balance"] == [  # the balancer may tidy up after it
            ("reserve_memory", "xenopsd/VM.start/7", "success")]
        free = [s["host_free_kib"] for s in rec.samples]
        assert max(free) - min(free) >= 512 * MIB  # the recording saw memory move
        if _has_matplotlib():
            png = short_tmp / "run.png"
            r = subprocess.run([sys.executable, "-m", "squeezed.sim.cli", "plot", str(rec_file),
                                "-o", str(png)], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # squeezectl metrics and the textfile say the same about that operation
        r = _ctl(daemon, "metrics")
        assert r.returncode == 0, r.stderr
        _, v = parse(r.stdout)
        key = ("squeezed_operations_total", L(method="reserve_memory", outcome="success"))
        assert v[key] == 1

        def textfile_has_it() -> bool:
            try:
                return parse(prom.read_text())[1].get(key) == 1
            except FileNotFoundError:
                return False

        wait_for(textfile_has_it, what="the operation in the metrics textfile")
        assert sorted(p.name for p in prom.parent.iterdir()) == ["squeezed.prom"]
    finally:
        daemon.stop()


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_views_exit_3_without_a_daemon(short_tmp) -> None:
    for view in (["top", "--once"], ["metrics"], ["record", str(short_tmp / "x.jsonl")]):
        r = subprocess.run([*CTL, "--socket", str(short_tmp / "absent"), *view],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 3 and "Is squeezed running?" in r.stderr, (view, r.stderr)
    assert not (short_tmp / "x.jsonl").exists()


# -- top in a real terminal ---------------------------------------------------------


class Tmux:
    """A private tmux server (its own socket) running one command in a pane."""

    def __init__(self, sock: Path, width: int = 130, height: int = 32) -> None:
        self.base = ["tmux", "-S", str(sock), "-f", "/dev/null"]
        self.status = sock.with_name("status")  # the command's exit status, once it ends
        self.width, self.height = width, height

    def run(self, *args: str) -> str:
        r = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def start(self, argv: list[str], env: dict[str, str]) -> None:
        cmd = " ".join(_quote(a) for a in argv)
        exports = " ".join(f"{k}={_quote(v)}" for k, v in env.items())
        shell = f"env {exports} {cmd}; echo $? > {_quote(str(self.status))}"
        self.run("new-session", "-d", "-s", "top", "-x", str(self.width), "-y",
                 str(self.height), f"sh -c {_quote(shell)}")
        self.run("set-option", "-t", "top", "remain-on-exit", "on")
        # a detached session may keep tmux's default size whatever -x/-y said
        self.run("resize-window", "-t", "top", "-x", str(self.width), "-y", str(self.height))

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "top", *keys)

    def pane(self, fmt: str) -> str:
        return self.run("display-message", "-p", "-t", "top", fmt).strip()

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _tmux_or_skip() -> None:
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing: ./dev installs it (APT_PACKAGES)")
        pytest.skip("tmux is not installed (./dev setup installs it)")


@pytest.mark.slow
def test_top_in_a_real_terminal(short_tmp, sim) -> None:
    _tmux_or_skip()
    _slow_domain(sim)
    daemon = DaemonProcess(short_tmp, sim).start()
    tmux = Tmux(short_tmp / "tmux.sock")
    try:
        env = {"TERM": "xterm-256color", "PYTHONPATH": os.pathsep.join(sys.path)}
        tmux.start([*CTL, "--socket", daemon.socket, "top"], env)
        wait_for(lambda: "DOMID" in tmux.screen(), what="the first frame")
        assert tmux.pane("#{pane_width}x#{pane_height}") == f"{tmux.width}x{tmux.height}"
        screen = tmux.screen()
        assert "sort: actual" in screen and "operation: " in screen
        assert "[" in screen.splitlines()[2]  # the host bar

        tmux.keys("d")
        wait_for(lambda: "sort: distance" in tmux.screen(), what="sort by distance")
        tmux.keys("i")
        wait_for(lambda: "sort: domid" in tmux.screen(), what="sort by domid")
        rows = [line.split()[0] for line in tmux.screen().splitlines()
                if line[:5].strip().isdigit()]
        assert rows == ["1", "2", "3"]

        # a VM start while top watches: the operation, its dbg, then its outcome
        caller = threading.Thread(target=daemon.call, daemon=True,
                                  args=("reserve_memory", "xenopsd/VM.start/9", "default",
                                        1536 * MIB))
        caller.start()
        wait_for(lambda: "operation: reserve_memory running" in tmux.screen()
                 and "dbg='xenopsd/VM.start/9'" in tmux.screen(), what="the running operation")
        wait_for(lambda: any(" v " in line and line.split()[0] == "3"
                             for line in tmux.screen().splitlines()), what="domain 3 freeing")
        caller.join(30)
        wait_for(lambda: "reserve_memory -> success" in tmux.screen(), what="the outcome")

        # the daemon goes away: top says so and keeps trying, still answering keys
        daemon.stop()
        wait_for(lambda: "Is squeezed running? (retrying)" in tmux.screen(),
                 what="the outage", on_timeout=tmux.screen)
        assert tmux.pane("#{pane_dead}") == "0"
        tmux.keys("q")
        wait_for(lambda: tmux.pane("#{pane_dead}") == "1", timeout_s=10, what="q to quit")
        # (the shell writes the status: tmux's pane_dead_status is not always filled in)
        wait_for(tmux.status.exists, timeout_s=5, what="the exit status")
        assert tmux.status.read_text().strip() == "0"
    finally:
        tmux.kill()
        daemon.stop()


class _StateService:
    def get_state(self, dbg: str) -> dict:
        return {"host": {"free_kib": 7, "reserved_kib": 1}, "reservations": [], "domains": []}


def test_daemon_textfile_thread_writes_and_reports_failures_once(tmp_path, caplog) -> None:
    import dataclasses
    import logging

    from squeezed.config import DEFAULTS
    from squeezed.daemon import Daemon

    prom = tmp_path / "squeezed.prom"
    d = Daemon(dataclasses.replace(DEFAULTS, metrics_textfile=str(prom)), None, None)
    d.service = _StateService()  # type: ignore[assignment]
    class OneRound(threading.Event):
        beating = False

        def wait(self, timeout=None) -> bool:
            self.beating = "metrics-textfile" in d.sup.heartbeats.status()
            return True  # one round, then the wait says stop

    one = OneRound()
    d._metrics_textfile(one)
    assert parse(prom.read_text())[1][("squeezed_host_free_kib", L())] == 7
    assert one.beating and "metrics-textfile" not in d.sup.heartbeats.status()

    class ThreeRounds(threading.Event):
        rounds = 0

        def wait(self, timeout=None) -> bool:
            self.rounds += 1
            return self.rounds >= 3

    d.cfg = dataclasses.replace(d.cfg, metrics_textfile=str(tmp_path / "absent" / "x.prom"))
    rounds = ThreeRounds()
    with caplog.at_level(logging.WARNING, logger="squeezed"):
        d._metrics_textfile(rounds)  # the thread carries on; the same failure is said once
    warnings = [r.getMessage() for r in caplog.records if "metrics-textfile" in r.getMessage()]
    assert rounds.rounds == 3 and len(warnings) == 1 and "cannot write" in warnings[0]


def test_backend_facts_become_domain_flags() -> None:
    """Flags in get_state come from what the backend describes: every
    "<flag>_domids" list, and "invalid_domains" (bad xenstore values) as bad-keys."""
    from squeezed.engine.model import Domain, Host

    class Backend:
        def observe(self) -> Host:
            return Host((Domain(1, True, 1, 2, 3, 2, 3), Domain(2, True, 1, 2, 3, 2, 3),
                         Domain(3, False, 2, 2, 2, 2, 2)), 100)

        def describe(self) -> dict:
            return {"uncooperative_domids": [1], "invalid_domains": {2: "target 'x'"},
                    "stuck_domids": [1, 2], "domain_names": {3: "db"}}

        def reservations(self) -> list:
            return []

    st = MemoryService(Backend()).get_state("t")  # type: ignore[arg-type]
    assert {d["domid"]: (d["name"], d["flags"]) for d in st["domains"]} == {
        1: (None, ["stuck", "uncooperative"]), 2: (None, ["bad-keys", "stuck"]), 3: ("db", [])}
    assert st["left_alone"] == [{"domid": 2, "name": None, "reason": "target 'x'"}]
    from squeezed import idl
    from squeezed.rpc.dispatch import marshal

    marshal(idl.load(), "state", st)  # what the daemon sends is what the IDL says


@pytest.mark.slow
def test_views_through_the_message_switch(short_tmp, sim) -> None:
    """top and metrics the way xenopsd reaches squeezed: its queue on message-switch."""
    from squeezed.sim.xenhost.switch import SimulatedSwitch

    switch = SimulatedSwitch(str(short_tmp / "switch")).start()
    daemon = DaemonProcess(short_tmp, sim)
    daemon.switch = switch.path
    daemon.start()
    try:
        wait_for(lambda: "serving queue" in daemon.output(), what="the queue served")
        r = subprocess.run([*CTL, "--switch", switch.path, "--timeout", "20", "top", "--once"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("squeezed top") and f"  {switch.path}" in r.stdout
        assert any(line.split()[:2] == ["1", "guest-1"] for line in r.stdout.splitlines())
        r = subprocess.run([*CTL, "--switch", switch.path, "--timeout", "20", "metrics"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert parse(r.stdout)[1][("squeezed_domain_target_kib", L(domid=2, name="guest-2"))] \
            == 1 * GIB
    finally:
        daemon.stop()
        switch.stop()
