"""The squeezed program: configuration, start-up, threads, signals, systemd.

Start-up order matters to callers: READY=1 is sent only once the host has
been read and both sockets accept. Threads (RPC servers, periodic balancer,
xenstore watcher, boot-time free-memory measurement) run under a supervisor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squeezed import __version__, systemd
from squeezed.config import (
    Config,
    ConfigError,
    Options,
    Provenance,
    apply_reloadable,
    format_config,
    help_text,
    load,
)
from squeezed.engine.errors import DeadlineExceeded, HostFailed, OperationAbandoned
from squeezed.errors import InternalError
from squeezed.logsetup import set_level, setup_logging
from squeezed.service import Dom0Policy, InitialFreeMemory, MemoryService, measure_stable
from squeezed.supervisor import Supervisor

if TYPE_CHECKING:  # imported when used: a production start never loads the simulator
    from squeezed.sim.xenhost.host import SimulatedXenHost
    from squeezed.xen.host import XenHost
    from squeezed.xen.xenstore import XenstoreClient

log = logging.getLogger("squeezed")


XENSTORED_RETRY_S = 5.0  # as upstream (squeezed_xenstore.ml)
WATCHER_MAX_SILENCE_S = 120.0


class StartupError(Exception):
    """A fatal start-up problem, reported in one line; exit status 1."""


class BadScenario(Exception):
    """The --simulate scenario file is wrong; exit status 2, like a bad option."""


class StopDuringStartup(BaseException):
    """SIGTERM arrived before the daemon was ready: clean up and exit 0.
    (A BaseException, so that no `except Exception` on the way swallows it.)"""


@contextlib.contextmanager
def pidfile_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive lock on the pidfile for the daemon's lifetime."""
    if not path:
        yield
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:  # never through a symlink (someone else's file)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise StartupError(f"cannot open pidfile {path}: {e.strerror}"
                           + (" (a symlink?)" if e.errno == errno.ELOOP else "")) from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(
            f"another squeezed (pid {other}) is running: it holds the lock on {path}"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


class PidLockContext:
    """python-daemon wants a context manager for its pidfile; take the lock
    after the fork so the pid written is the daemon's."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._cm: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> PidLockContext:
        self._cm = pidfile_lock(self.path)
        self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)


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
        self.servers: list[Any] = []
        self.switch: Any = None  # the message-switch queue server, with use-switch
        self.sim_switch: Any = None
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
        xs_path = self.cfg.xenstored_socket_path()
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
        self.xs_path = xs_path
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
        from squeezed.rpc.dispatch import Dispatcher
        from squeezed.rpc.server import JsonRpcServer, SocketInUseError, XmlRpcServer

        assert self.service is not None
        dispatcher = Dispatcher(self.service)
        group = self.cfg.socket_group or None
        for cls, key, name in ((XmlRpcServer, "socket", "memory"),
                               (JsonRpcServer, "json-socket", "memory.json")):
            path = self._path(key, name)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            server = cls(path, dispatcher, mode=self.cfg.socket_mode, group=group,
                         heartbeats=self.sup.heartbeats)
            try:
                server.start()
            except SocketInUseError as e:
                raise StartupError(str(e)) from None
            except (OSError, KeyError) as e:  # KeyError: no such socket-group
                raise StartupError(f"cannot listen on {path}: {e}") from None
            self.servers.append(server)

    def _start_switch(self) -> None:
        """Serve the queue on message-switch, beside the sockets (use-switch)."""
        if not self.cfg.use_switch:
            return
        from squeezed.rpc.dispatch import Dispatcher
        from squeezed.rpc.server import _JsonCodec
        from squeezed.switch.exactly_once import ExactlyOnce, RecordStoreError, XenstoreRecords
        from squeezed.switch.server import SwitchServer

        assert self.service is not None
        path = self._path("switch-path", "switch")
        if self.opts.simulate is not None and not self._explicit("switch-path"):
            from squeezed.sim.xenhost.switch import SimulatedSwitch

            self.sim_switch = SimulatedSwitch(path).start()
        # Test hook: block a request for ever at this point (before-record, before-reply),
        # so that a test can kill squeezed there.
        hold_at = os.environ.get("SQUEEZED_TEST_HOLD_SWITCH")

        def hold(point: str) -> None:
            if point == hold_at:
                log.warning("test hook: holding a request at %s", point)
                threading.Event().wait()

        assert self.xs is not None
        once = ExactlyOnce(self.service, XenstoreRecords(self.xs), self._xen().reservations,
                           hold=hold if hold_at else None)
        codec = _JsonCodec(Dispatcher(once))  # the same dispatcher and codec as json-socket
        last_prune = [0.0]

        def prune() -> None:
            now = time.monotonic()
            if now - last_prune[0] >= 60:
                last_prune[0] = now
                try:
                    dropped = once.prune()
                except RecordStoreError as e:
                    log.info("request records not pruned this time: %s", e)
                    return
                if dropped:
                    log.info("dropped %d request records (reservation gone or too old)", dropped)

        self.switch = SwitchServer(
            path, lambda payload: codec.handle(payload.encode("utf-8")).decode("utf-8"),
            heartbeats=self.sup.heartbeats, on_idle=prune, hold=hold if hold_at else None)
        self.sup.spawn("message-switch", self.switch.run)

    def _balancer(self, stop: threading.Event) -> None:
        assert self.service is not None
        # A pass may last up to one whole operation: silent longer, it is hung.
        beat = self.sup.heartbeats.register(
            "balancer", self.cfg.balance_check_interval_s + self.cfg.operation_timeout_s + 60.0)
        try:
            while not stop.wait(self.cfg.balance_check_interval_s):
                beat()
                try:
                    if self.service.balance_if_unbalanced():
                        log.info("periodic balancer rebalanced host memory")
                except (InternalError, HostFailed, DeadlineExceeded) as e:
                    # the host failed (a refused write), or the deadline passed
                    log.error("periodic balance failed: %s", e)
                beat()
        finally:
            self.sup.heartbeats.unregister("balancer")

    def _metrics_textfile(self, stop: threading.Event) -> None:
        """metrics-textfile: the state in Prometheus text, rewritten every
        metrics-textfile-interval seconds (both reloadable; empty: idle)."""
        from squeezed.ctl.metrics import exposition, write_textfile

        assert self.service is not None
        reported = ""
        try:
            while True:
                interval_s = self.cfg.metrics_textfile_interval_s
                # (re-registered each round: the interval is reloadable)
                self.sup.heartbeats.register("metrics-textfile", max(60.0, 3 * interval_s))
                path = self.cfg.metrics_textfile
                if path:
                    problem = ""
                    try:
                        text = exposition(self.service.get_state("metrics-textfile"))
                        write_textfile(path, text)
                    except OSError as e:  # e.g. its directory is missing
                        # (not str(e): it names the temporary file, new each time)
                        problem = f"cannot write {path}: {e.strerror or e}"
                    except InternalError as e:  # the host could not be read
                        problem = f"cannot read the host: {e.message}"
                    if problem and problem != reported:  # say so once, keep trying
                        log.warning("metrics-textfile: %s", problem)
                    reported = problem
                if stop.wait(interval_s):
                    return
        finally:
            self.sup.heartbeats.unregister("metrics-textfile")

    def _watcher(self, stop: threading.Event) -> None:
        from squeezed.xen.xenstore import Watcher

        # The loop comes round every 0.5 s; a resync of many domains takes longer.
        beat = self.sup.heartbeats.register("xenstore-watcher", WATCHER_MAX_SILENCE_S)
        watcher = Watcher(self.xs_path)
        try:
            self._xen().run_watcher(watcher, stop, beat)
        finally:
            self.sup.heartbeats.unregister("xenstore-watcher")
            watcher.close()

    def _measure_initial_free(self, stop: threading.Event) -> None:
        assert self.service is not None and self.service.initial_free is not None
        initial = self.service.initial_free
        if initial.known:
            return
        systemd.status("measuring boot-time host free memory")

        def sleep(s: float) -> None:
            if stop.wait(s):
                raise SystemExit(0)

        value = measure_stable(
            self._xen().boot_time_free_bytes,
            self.cfg.boot_time_host_free_memory_minimal_constant_count,
            self.cfg.boot_time_host_free_memory_check_interval_s,
            sleep=sleep,
        )
        initial.set(value)
        log.info("boot-time host free memory: %d bytes (recorded in %s)", value, initial.path)
        systemd.status("serving")

    def _apply_scenario_settings(self) -> None:
        """A scenario's [host] reserve/tolerance and [engine] table hold on its
        simulated host, unless configured explicitly."""
        if not self.opts.simulate:
            return
        from squeezed.sim.scenario import load as load_scenario

        sc = load_scenario(self.opts.simulate)
        changes: dict[str, Any] = {}
        if not self._explicit("host-reserved-kib"):
            changes["host_reserved_kib"] = sc.host.reserved_kib
        if not self._explicit("balance-tolerance-kib"):
            changes["balance_tolerance_kib"] = sc.host.tolerance_kib
        for key, attr in (("stuck_after_s", "stuck_after_s"), ("min_poll_s", "poll_min_s"),
                          ("max_poll_s", "poll_max_s"),
                          ("uncooperative_after_s", "uncooperative_after_s")):
            if key in sc.engine and not self._explicit(attr[:-2].replace("_", "-")):
                changes[attr] = sc.engine[key]
        self.cfg = replace(self.cfg, **changes)

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
            initial, host.dom0_total_bytes, host.dom0_dynamic_max_bytes,
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

    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True
        if not self.ready:
            raise StopDuringStartup()  # interrupts whatever start-up is doing

    def request_reload(self, *_: Any) -> None:
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg, provenance, warnings, opts = load(argv)
    except ConfigError as e:
        print(f"squeezed: {e}", file=sys.stderr)
        return 2
    if opts.help:
        print(help_text(), end="")
        return 0
    if opts.version:
        print(f"squeezed {__version__}")
        return 0
    if opts.print_config:
        for w in warnings:
            print(f"squeezed: warning: {w}", file=sys.stderr)
        print(format_config(cfg, provenance), end="")
        return 0
    if opts.simulate is not None and provenance["log"].kind == "default":
        cfg = replace(cfg, log="stderr")  # a simulated host is run by a person at a terminal
    setup_logging(cfg.log, cfg.loglevel, cfg.log_facility)
    for w in warnings:
        log.warning("%s", w)
    daemon = Daemon(cfg, opts, provenance)
    pidfile = None if opts.simulate is not None and not daemon._explicit("pidfile") else cfg.pidfile
    try:
        if opts.daemon:
            import daemon as pydaemon  # type: ignore[import-untyped]  # python-daemon

            if not pidfile:
                raise StartupError("--daemon needs a pidfile")
            ctx = pydaemon.DaemonContext(
                pidfile=PidLockContext(pidfile),
                signal_map={signal.SIGTERM: daemon.request_stop,
                            signal.SIGHUP: daemon.request_reload},
                files_preserve=None, working_directory="/",
            )
            with pidfile_lock(pidfile):
                pass  # refuse now, in the foreground, if another instance holds it
            with ctx:
                setup_logging(cfg.log, cfg.loglevel, cfg.log_facility)
                return daemon.run()
        signal.signal(signal.SIGTERM, daemon.request_stop)
        signal.signal(signal.SIGINT, daemon.request_stop)
        signal.signal(signal.SIGHUP, daemon.request_reload)
        with pidfile_lock(pidfile):
            return daemon.run()
    except BadScenario as e:
        daemon.shutdown()
        print(f"squeezed: {e}", file=sys.stderr)
        return 2
    except StopDuringStartup:
        log.info("stopped before start-up completed")
        return daemon.shutdown()
    except StartupError as e:
        daemon.shutdown()
        log.error("%s", e)
        print(f"squeezed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
