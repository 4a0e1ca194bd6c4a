"""Run the real squeezed program as a subprocess against a simulated Xen host
that lives in the test process (so the daemon can be killed and restarted
while the host, its xenstored and its guests carry on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from squeezed.errors import MemoryInterfaceError
from squeezed.rpc.client import ConnectionFailed, MemoryClient
from squeezed.sim.xenhost.host import SimulatedXenHost, ideal_driver

GIB = 1 << 20
MIB = 1 << 10
FAST = ideal_driver(8 * GIB)


def make_sim(run_dir: Path, free_kib: int = 1 * GIB) -> SimulatedXenHost:
    sim = SimulatedXenHost(run_dir / "host", total_kib=256 * MIB + 1 * GIB + 3 * GIB + free_kib)
    sim.start()
    sim.add_running_domain(1, actual_kib=2 * GIB, target_kib=2 * GIB, dynamic_min_kib=1 * GIB,
                           dynamic_max_kib=2 * GIB, driver=FAST)
    sim.add_running_domain(2, actual_kib=1 * GIB, target_kib=1 * GIB,
                           dynamic_min_kib=512 * MIB, dynamic_max_kib=1 * GIB, driver=FAST)
    return sim


class DaemonProcess:
    def __init__(self, run_dir: Path, sim: SimulatedXenHost, *extra: str) -> None:
        self.run_dir = run_dir
        self.sim = sim
        self.socket = str(run_dir / "memory")
        self.json_socket = str(run_dir / "memory.json")
        self.pidfile = str(run_dir / "squeezed.pid")
        self.conf = run_dir / "squeezed.conf"
        self.conf_dir = run_dir / "conf.d"
        self.conf_dir.mkdir(exist_ok=True)
        if not self.conf.exists():
            self.conf.write_text("# test configuration\n")
        self.log = run_dir / "squeezed.log"
        self.extra = list(extra)
        self.switch: str | None = None  # a message-switch socket to serve the queue on
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "squeezed.daemon",
            "--config", str(self.conf), "--config-dir", str(self.conf_dir),
            "--socket", self.socket, "--json-socket", self.json_socket,
            "--pidfile", self.pidfile, "--log", "stderr",
            "--boot-time-memory-file", str(self.run_dir / "boot_time_memory"),
            "--boot-time-host-free-memory-check-interval", "0.05",
            "--boot-time-host-free-memory-minimal-constant-count", "3",
            "--xenstored-socket", self.sim.xenstored_path,
            "--libxenctrl", str(self.sim.libxenctrl_path),
            "--stuck-after", "0.5", "--uncooperative-after", "1",
            "--balance-check-interval", "0.3",
            *(["--switch-path", self.switch] if self.switch else ["--use-switch", "false"]),
            *self.extra,
        ]

    def start(self, wait: bool = True) -> DaemonProcess:
        env = {**os.environ, **self.sim.env()}
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self.logf, stderr=subprocess.STDOUT,
                                     env=env, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"squeezed exited {self.proc.returncode}:\n{self.output()}")
            try:
                self.client().call("get_host_reserved_memory", "ready?")
                return
            except (ConnectionFailed, OSError):
                time.sleep(0.05)
        raise AssertionError(f"squeezed did not become ready:\n{self.output()}")

    def client(self, dialect: str = "xmlrpc") -> MemoryClient:
        return MemoryClient(self.socket if dialect == "xmlrpc" else self.json_socket, dialect,
                            timeout=60)

    def call(self, method: str, *params):
        with self.client() as c:
            return c.call(method, *params)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout_s)
        self.logf.close()
        return rc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


__all__ = ["DaemonProcess", "MemoryInterfaceError", "make_sim", "GIB", "MIB", "FAST"]
