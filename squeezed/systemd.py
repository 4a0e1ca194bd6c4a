"""systemd integration without libsystemd: sd_notify(3) and the service watchdog.

The notification protocol is one datagram of newline-separated ``KEY=VALUE`` lines sent
to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a leading ``@`` names a socket in
the abstract namespace. When the variable is unset (not started by systemd, or
``NotifyAccess=none``) every call is a cheap no-op, so the daemon calls these
unconditionally. Failures are logged, never raised: a lost notification must not take
the memory daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("squeezed.systemd")


def _address(environ: Mapping[str, str]) -> str | None:
    path = environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    if path:
        # e.g. "vsock:..." (systemd >= 253 inside VMs): not needed on a dom0.
        log.debug("unsupported NOTIFY_SOCKET %r; notifications disabled", path)
    return None


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (each ``KEY=VALUE``) as one notification; True if it was sent."""
    address = _address(os.environ if environ is None else environ)
    if address is None or not lines:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(lines).encode("utf-8"), address)
        return True
    except OSError as e:
        log.warning("sd_notify %s failed: %s", ", ".join(lines), e)
        return False


def ready(status_text: str | None = None) -> bool:
    """Start-up is complete: the sockets are listening."""
    return notify("READY=1", *([f"STATUS={status_text}"] if status_text else []))


def status(text: str) -> bool:
    """Free-form status shown by ``systemctl status``."""
    return notify(f"STATUS={text}")


def reloading() -> bool:
    """A SIGHUP reload started; follow with `ready()` when done."""
    # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this to the reload.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def stopping() -> bool:
    """Shutdown started."""
    return notify("STOPPING=1")


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for more start-up/shutdown time (the boot-time free memory wait can be long)."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd expects pings within, or None if it is not enabled.

    Like sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` must be a positive integer, and
    ``$WATCHDOG_PID``, when set, must be this process (it is not for children).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Watchdog:
    """Pings the systemd watchdog every ``interval_s / 2`` while `healthy()` says so.

    When the health check returns False (or raises), pings stop, so systemd restarts the
    service once the timeout expires: a wedged balancing thread gets a restart instead
    of a daemon that answers nothing. Pings resume if health returns.
    """

    def __init__(
        self,
        interval_s: float,
        healthy: Callable[[], bool],
        ping: Callable[[], bool] = watchdog_ping,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"watchdog interval must be > 0, got {interval_s}")
        self.period_s = interval_s / 2
        self._healthy = healthy
        self._ping = ping
        self._stop = threading.Event()
        self._was_healthy = True
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)

    def tick(self) -> bool:
        """One check: ping if healthy. Returns whether it pinged."""
        try:
            ok = bool(self._healthy())
        except Exception:
            log.exception("watchdog health check raised")
            ok = False
        if ok != self._was_healthy:
            if ok:
                log.info("health check passes again; resuming watchdog pings")
            else:
                log.error("health check failed; withholding watchdog pings")
            self._was_healthy = ok
        if ok:
            self._ping()
        return ok

    def _run(self) -> None:
        self.tick()  # a first ping straight away
        while not self._stop.wait(self.period_s):
            self.tick()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
