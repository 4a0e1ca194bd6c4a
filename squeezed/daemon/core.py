"""The daemon: its state, start-up order, main loop, signals, reload and shutdown.

Start-up order matters to callers: READY=1 is sent only once the host has
been read and both sockets accept. Threads (RPC servers, periodic balancer,
xenstore watcher, boot-time free-memory measurement) run under a supervisor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from squeezed import __version__, systemd
from squeezed.config import Config, ConfigError, Options, Provenance, apply_reloadable, load
from squeezed.config.keys import Value, with_values
from squeezed.daemon import serving, workers
from squeezed.daemon.errors import BadScenario, StartupError, StopDuringStartup
from squeezed.engine.errors import OperationAbandoned
from squeezed.initial_free import InitialFreeMemory
from squeezed.logsetup import set_level
from squeezed.service import Dom0Policy, MemoryService
from squeezed.supervisor import Supervisor

if TYPE_CHECKING:  # imported when used: a production start never loads the simulator
    from squeezed.rpc.server import RpcServer
    from squeezed.sim.xenhost.host import SimulatedXenHost
    from squeezed.sim.xenhost.switch import SimulatedSwitch
    from squeezed.switch.server import SwitchServer
    from squeezed.xen.host import XenHost
    from squeezed.xen.xenstore import XenstoreClient

log = logging.getLogger("squeezed")


XENSTORED_RETRY_S = 5.0  # as upstream (squeezed_xenstore.ml)


class Daemon:
    xs_path: str  # set by _open_host
    run_dir: Path  # set by _run

    def __init__(self, cfg: Config, opts: Options, provenance: Provenance) -> None:
        self.cfg = cfg
        self.opts = opts
        self.provenance = provenance
        self.sup = Supervisor()
        self.sim: SimulatedXenHost | None = None
        self.host: XenHost | None = None
        self.service: MemoryService | None = None
        self.servers: list[RpcServer] = []
        self.switch: SwitchServer | None = None  # the queue on message-switch (use-switch)
        self.sim_switch: SimulatedSwitch | None = None
        self.initial: InitialFreeMemory | None = None
        self.ready = False
        self.owns_run_dir = False
        self.xs: XenstoreClient | None = None
        # Set by signal handlers: plain flags, which are safe to set at any
        # instant (an Event's lock may be held by the thread being interrupted).
        self.stop_requested = False
        self.reload_requested = False
        self.late_start_failed = False  # xenstored came late, then the host was unreadable

    # -- paths ------------------------------------------------------------

    def _explicit(self, key: str) -> bool:
        origin = self.provenance.get(key) if self.provenance else None
        return origin is not None and origin.kind != "default"

    def _path(self, key: str, sim_name: str) -> str:
        """With --simulate, paths nobody set explicitly go to the run dir,
        never to a system directory."""
        value: str = getattr(self.cfg, key.replace("-", "_"))
        if self.opts.simulate is not None and not self._explicit(key):
            return str(self.run_dir / sim_name)
        return value

    # -- start-up ---------------------------------------------------------

    def _xen(self) -> XenHost:
        assert self.host is not None, "_open_host comes first"
        return self.host

    def _open_host(self) -> bool:
        """Open libxenctrl (no hypervisor: StartupError, exit 1) and try
        xenstored once; True if the host could be read. A xenstored that is
        not there yet is a late start, not the wrong machine: the caller
        listens anyway and `_await_xenstored` keeps trying."""
        from squeezed.xen.host import XenHost
        from squeezed.xen.xenctrl import XenCtrl, XenCtrlUnavailable
        from squeezed.xen.xenstore import XenstoreClient

        lib = self.cfg.libxenctrl or None
        xs_path = self.cfg.xenstored_socket or None  # None: the client's default
        if self.opts.simulate is not None:
            from squeezed.sim.xenhost.launch import start_simulated_host

            systemd.status("starting the simulated Xen host")
            self.sim = start_simulated_host(self.opts.simulate or None, self.run_dir)
            os.environ.update(self.sim.env())
            lib, xs_path = self.sim.libxenctrl_path, self.sim.xenstored_path
        try:
            xc = XenCtrl.open(lib)
        except XenCtrlUnavailable as e:
            raise StartupError(str(e)) from None
        # Fail at once while xenstored is not there; retry every 5 s ourselves.
        xs = self.xs = XenstoreClient(xs_path, reconnect_timeout_s=0.0)
        self.xs_path = xs.path
        self.host = XenHost(
            xc, xs, manage_domain_zero=self.cfg.manage_domain_zero,
            uncooperative_after_s=self.cfg.uncooperative_after_s,
        )
        systemd.status(f"connecting to xenstored at {xs.path}")
        try:
            xs.connect()
        except OSError as e:  # refused or absent (XenstoreConnectionError is one)
            log.error("cannot connect to xenstored at %s: %s; retrying every %g s",
                      xs.path, str(e) or type(e).__name__, XENSTORED_RETRY_S)
            return False
        self._read_host()
        return True

    def _read_host(self) -> None:
        """First contact with xenstored: publish dom0's policy, read the host once."""
        assert self.xs is not None
        self.xs.set_reconnect_timeout(30.0)  # from now on a restart of xenstored is waited for
        systemd.status("reading the host")
        try:
            if self.cfg.manage_domain_zero:
                self._xen().configure_domain_zero(
                    self.cfg.domain_zero_dynamic_min_bytes, self.cfg.domain_zero_dynamic_max_bytes
                )
            self._xen().snapshot()  # the host has been read once before serving it
        except OperationAbandoned:
            raise StopDuringStartup() from None
        except Exception as e:
            raise StartupError(f"cannot read the host: {type(e).__name__}: {e}") from None

    def _await_xenstored(self, stop: threading.Event) -> None:
        """Upstream's rule: retry xenstored every 5 s, for ever, while the
        sockets already answer what needs no xenstore (and say why others
        fail). Then start what needs it."""
        assert self.xs is not None
        while True:
            if stop.wait(XENSTORED_RETRY_S):
                return
            try:
                self.xs.connect()
                break
            except OSError as e:
                log.info("xenstored at %s still unreachable (%s); retrying in %g s",
                         self.xs.path, str(e) or type(e).__name__, XENSTORED_RETRY_S)
        log.info("connected to xenstored at %s", self.xs.path)
        try:
            self._read_host()
        except StartupError as e:
            # Reached but unusable: exit 1 as a failed start would (systemd restarts us).
            log.error("%s", e)
            self.late_start_failed = True
            self.stop_requested = True
            signal.raise_signal(signal.SIGTERM)
            return
        self._spawn_host_threads()
        systemd.status("serving")

    def _spawn_host_threads(self) -> None:
        self.sup.spawn("xenstore-watcher", self._watcher)
        self.sup.spawn("balancer", self._balancer)
        self.sup.spawn("metrics-textfile", self._metrics_textfile)
        # The queue is served once the host is read: until then requests wait
        # in the switch rather than fail.
        self._start_switch()

    def _start_servers(self) -> None:
        assert self.service is not None
        serving.start_rpc_servers(
            self.service, self.cfg, self._path("socket", "memory"),
            self._path("json-socket", "memory.json"), self.sup.heartbeats, self.servers)

    def _start_switch(self) -> None:
        """Serve the queue on message-switch, beside the sockets (use-switch)."""
        if not self.cfg.use_switch:
            return
        assert self.service is not None and self.xs is not None
        path = self._path("switch-path", "switch")
        if self.opts.simulate is not None and not self._explicit("switch-path"):
            from squeezed.sim.xenhost.switch import SimulatedSwitch

            self.sim_switch = SimulatedSwitch(path).start()
        self.switch = serving.switch_server(self.service, self.xs, self._xen().reservations,
                                            path, self.sup.heartbeats)
        self.sup.spawn("message-switch", self.switch.run)

    # -- the supervised loops (squeezed.daemon.workers) ---------------------

    def _config(self) -> Config:
        return self.cfg  # read afresh by the loops: SIGHUP may replace it

    def _balancer(self, stop: threading.Event) -> None:
        assert self.service is not None
        workers.balance_periodically(self.service, self._config, self.sup.heartbeats, stop)

    def _metrics_textfile(self, stop: threading.Event) -> None:
        assert self.service is not None
        workers.write_metrics_textfile(self.service, self._config, self.sup.heartbeats, stop)

    def _watcher(self, stop: threading.Event) -> None:
        workers.watch_xenstore(self._xen(), self.xs_path, self.sup.heartbeats, stop)

    def _measure_initial_free(self, stop: threading.Event) -> None:
        assert self.service is not None and self.service.initial_free is not None
        workers.measure_initial_free(self.service.initial_free, self._xen().boot_time_free_bytes,
                                     self.cfg, stop)

    def _apply_scenario_settings(self) -> None:
        """A scenario's [host] reserve/tolerance and [engine] table hold on its
        simulated host, unless configured explicitly."""
        if not self.opts.simulate:
            return
        from squeezed.sim.scenario import load as load_scenario

        sc = load_scenario(self.opts.simulate)
        changes: dict[str, Value] = {}  # by key name
        if not self._explicit("host-reserved-kib"):
            changes["host-reserved-kib"] = sc.host.reserved_kib
        if not self._explicit("balance-tolerance-kib"):
            changes["balance-tolerance-kib"] = sc.host.tolerance_kib
        for engine_key, key in (("stuck_after_s", "stuck-after"), ("min_poll_s", "poll-min"),
                                ("max_poll_s", "poll-max"),
                                ("uncooperative_after_s", "uncooperative-after")):
            if engine_key in sc.engine and not self._explicit(key):
                changes[key] = sc.engine[engine_key]
        self.cfg = with_values(self.cfg, changes)

    def run(self) -> int:
        if self.opts.simulate is None:
            return self._run()
        # The simulator is imported only here: a production start never loads it.
        from squeezed.sim.scenario import ScenarioError

        try:
            return self._run()
        except ScenarioError as e:
            raise BadScenario(str(e)) from None

    def _run(self) -> int:
        if self.opts.simulate is not None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="squeezed-sim-", dir="/tmp"))
            self.owns_run_dir = True
            self._apply_scenario_settings()
        else:
            self.run_dir = Path("/var/run/squeezed")
        host_read = self._open_host()
        host, xs = self._xen(), self.xs
        assert xs is not None
        initial = self.initial = InitialFreeMemory(
            self._path("boot-time-memory-file", "boot_time_memory"))
        if self.opts.simulate is not None and not self._explicit("boot-time-memory-file"):
            with contextlib.suppress(OSError):
                os.unlink(initial.path)  # a fresh simulated host each time
        initial.load_persisted()
        self.service = MemoryService(
            host, self.cfg.engine_config(),
            Dom0Policy(self.cfg.manage_domain_zero, self.cfg.domain_zero_dynamic_min_bytes,
                       self.cfg.domain_zero_dynamic_max_bytes),
            initial, host.dom0_total_bytes,
        )
        self.service.on_set_log_level = set_level
        self._start_servers()
        # Needs only libxenctrl: measured even while xenstored is late.
        self.sup.spawn("boot-time-free-memory", self._measure_initial_free, once=True)
        if host_read:
            self._spawn_host_threads()
        else:
            self.sup.spawn("xenstored-connect", self._await_xenstored, once=True)
        # READY once listening, even while xenstored is late: not ready would
        # time the start out, and restarts would burn systemd's start limit.
        systemd.ready()
        systemd.status("serving" if host_read else
                       f"waiting for xenstored at {xs.path} (retrying every "
                       f"{XENSTORED_RETRY_S:g} s)")
        log.info("squeezed %s ready%s", __version__,
                 f" (simulated host in {self.run_dir})" if self.sim else "")
        if self.sim is not None:
            ctl = Path(sys.executable).with_name("squeezectl")
            ctl_cmd = str(ctl) if ctl.exists() else "squeezectl"
            sock = self._path("socket", "memory")
            print(f"squeezed: simulated Xen host in {self.run_dir}; XML-RPC on {sock}\n"
                  f"  try: {ctl_cmd} --socket {sock} top   (diagnostics, state, reserve-range ...)",
                  file=sys.stderr, flush=True)
            if self.switch is not None:
                print(f"squeezed: queue org.xen.xapi.memory on the message-switch at "
                      f"{self.switch.path}\n"
                      f"  try: {ctl_cmd} --switch {self.switch.path} diagnostics",
                      file=sys.stderr, flush=True)
        interval = systemd.watchdog_interval_s()
        if interval:
            systemd.Watchdog(interval, self.sup.healthy).start()
        self.ready = True
        return self._main_loop()

    def _main_loop(self) -> int:
        # Sleep until a signal arrives: its handler sets a flag, and the C-level
        # handler writes to the wake-up socket, which ends the select at once.
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        try:
            while not self.stop_requested:
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                    continue
                select.select([wake_r], [], [], 5.0)
                with contextlib.suppress(BlockingIOError):
                    wake_r.recv(4096)
        finally:
            signal.set_wakeup_fd(previous_fd)
            wake_r.close()
            wake_w.close()
        log.info("SIGTERM: stopping")
        systemd.stopping()
        if self.host is not None:
            self.host.abandon()  # a running squeeze returns an error to its caller
        if self.service is not None:
            self.service.abandon()  # ... saying "shutting down", however it failed
        if self.xs is not None:
            # A request waiting for xenstored to come back gives up now, so its
            # caller gets the error reply before the servers close.
            self.xs.close()
        if self.initial is not None:
            self.initial.abort()  # callers waiting for it get an error reply
        self.sup.stop.set()
        rc = self.shutdown()
        return 1 if self.late_start_failed else rc

    # -- signals ----------------------------------------------------------

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        if not self.ready:
            raise StopDuringStartup()  # interrupts whatever start-up is doing

    def request_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def reload(self) -> None:
        systemd.reloading()
        try:
            loaded = load(list(self.opts.argv), config_file=self.opts.config_file,
                          config_dir=self.opts.config_dir)
        except ConfigError as e:
            log.error("SIGHUP: configuration not reloaded: %s", e)
            systemd.ready("serving")
            return
        for w in loaded.warnings:
            log.warning("%s", w)
        self.cfg, applied, need_restart = apply_reloadable(self.cfg, loaded.config)
        for name in applied:
            log.info("SIGHUP: %s = %s", name, self.cfg.get(name))
        if self.opts.simulate is not None and not self._explicit("log"):
            need_restart = [n for n in need_restart if n != "log"]  # stderr when simulating
        for name in need_restart:
            log.warning("SIGHUP: %s changed but only takes effect after a restart", name)
        log.info("SIGHUP: configuration reloaded (%d applied, %d need a restart)",
                 len(applied), len(need_restart))
        systemd.ready("serving")
        set_level(self.cfg.loglevel)
        if self.service is not None:
            self.service.cfg = self.cfg.engine_config()
        if self.host is not None:
            self.host.uncooperative_after_s = self.cfg.uncooperative_after_s

    def shutdown(self) -> int:
        """Also the clean-up of a failed start: safe with anything half made."""
        systemd.status("shutting down")
        # The operation in flight was abandoned (its waits raise); each server
        # lets requests in progress send their replies before it closes.
        # Every step runs even if an earlier one fails; a failure is logged
        # with its traceback (it may leave a socket or thread behind).
        def step(what: str, fn: Callable[[], object]) -> None:
            try:
                fn()
            except Exception:
                log.exception("shutdown: %s failed", what)

        if self.switch is not None:
            step("stopping the message-switch server", self.switch.shutdown)
        for s in self.servers:
            step(f"closing {s.path}", s.shutdown)
        self.sup.stop.set()
        self.sup.join(5.0)
        if self.xs is not None:
            step("closing the xenstore client", self.xs.close)
        if self.sim_switch is not None:
            step("stopping the simulated message-switch", self.sim_switch.stop)
        if self.sim is not None:
            step("stopping the simulated host", self.sim.stop)
        if self.owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        log.info("squeezed stopped")
        return 0
