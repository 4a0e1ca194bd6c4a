"""The daemon's background loops, each the body of a supervised thread: the periodic
balancer, the metrics textfile writer, the xenstore watcher and the boot-time
free-memory measurement. Each takes what it uses; `cfg` is a function because the
configuration is reloadable (SIGHUP) while they run."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from squeezed import systemd
from squeezed.config import Config
from squeezed.engine.errors import DeadlineExceeded, HostFailed
from squeezed.errors import InternalError
from squeezed.initial_free import InitialFreeMemory, measure_stable
from squeezed.supervisor import Heartbeats

if TYPE_CHECKING:
    from squeezed.xen.protocols import WatcherLike

log = logging.getLogger("squeezed")

WATCHER_MAX_SILENCE_S = 120.0


class Balancing(Protocol):
    def balance_if_unbalanced(self) -> bool: ...


class StateSource(Protocol):
    # get_state's value is the IDL's `state` record, a JSON-shaped dict.
    def get_state(self, dbg: str) -> dict[str, Any]: ...


class WatchedHost(Protocol):
    """What the watcher loop uses of XenHost."""

    def run_watcher(self, watcher: WatcherLike, stop: threading.Event,
                    beat: Callable[[], None] | None = None) -> None: ...


def balance_periodically(service: Balancing, cfg: Callable[[], Config],
                         heartbeats: Heartbeats, stop: threading.Event) -> None:
    """Every balance-check-interval, rebalance if the host is unbalanced."""
    # A pass may last up to one whole operation: silent longer, it is hung.
    beat = heartbeats.register(
        "balancer", cfg().balance_check_interval_s + cfg().operation_timeout_s + 60.0)
    try:
        while not stop.wait(cfg().balance_check_interval_s):
            beat()
            try:
                if service.balance_if_unbalanced():
                    log.info("periodic balancer rebalanced host memory")
            except (InternalError, HostFailed, DeadlineExceeded) as e:
                # the host failed (a refused write), or the deadline passed
                log.error("periodic balance failed: %s", e)
            beat()
    finally:
        heartbeats.unregister("balancer")


def write_metrics_textfile(service: StateSource, cfg: Callable[[], Config],
                           heartbeats: Heartbeats, stop: threading.Event) -> None:
    """metrics-textfile: the state in Prometheus text, rewritten every
    metrics-textfile-interval seconds (both reloadable; empty: idle)."""
    from squeezed.ctl.metrics import exposition, write_textfile

    reported = ""
    try:
        while True:
            interval_s = cfg().metrics_textfile_interval_s
            # (re-registered each round: the interval is reloadable)
            heartbeats.register("metrics-textfile", max(60.0, 3 * interval_s))
            path = cfg().metrics_textfile
            if path:
                problem = ""
                try:
                    text = exposition(service.get_state("metrics-textfile"))
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
        heartbeats.unregister("metrics-textfile")


def watch_xenstore(host: WatchedHost, xs_path: str, heartbeats: Heartbeats,
                   stop: threading.Event) -> None:
    """The watch connection that keeps the host's per-domain key cache fresh."""
    from squeezed.xen import xenstore  # looked up now: tests replace xenstore.Watcher

    # The loop comes round every 0.5 s; a resync of many domains takes longer.
    beat = heartbeats.register("xenstore-watcher", WATCHER_MAX_SILENCE_S)
    watcher = xenstore.Watcher(xs_path)
    try:
        host.run_watcher(watcher, stop, beat)
    finally:
        heartbeats.unregister("xenstore-watcher")
        watcher.close()


def measure_initial_free(initial: InitialFreeMemory, sample_bytes: Callable[[], int],
                         cfg: Config, stop: threading.Event) -> None:
    """The boot-time host free memory, once it is stable (unless already recorded)."""
    if initial.known:
        return
    systemd.status("measuring boot-time host free memory")

    def sleep(s: float) -> None:
        if stop.wait(s):
            raise SystemExit(0)

    value = measure_stable(
        sample_bytes,
        cfg.boot_time_host_free_memory_minimal_constant_count,
        cfg.boot_time_host_free_memory_check_interval_s,
        sleep=sleep,
    )
    initial.set(value)
    log.info("boot-time host free memory: %d bytes (recorded in %s)", value, initial.path)
    systemd.status("serving")
