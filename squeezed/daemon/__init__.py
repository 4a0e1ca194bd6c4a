"""The squeezed program: configuration, start-up, threads, signals, systemd.

`main` reads the configuration and runs a `Daemon` (``core.py``: state, start-up order,
main loop, signals, reload, shutdown), which serves through ``serving.py`` (sockets and
message-switch) and runs the loops of ``workers.py`` under a supervisor; ``pidfile.py``
holds the pidfile lock, ``errors.py`` the errors that set the exit status.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import replace

from squeezed import __version__
from squeezed.config import ConfigError, format_config, help_text, load
from squeezed.daemon.core import Daemon
from squeezed.daemon.errors import BadScenario, StartupError, StopDuringStartup
from squeezed.daemon.pidfile import PidLockContext, pidfile_lock
from squeezed.logsetup import setup_logging

__all__ = ["Daemon", "main"]

log = logging.getLogger("squeezed")


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

