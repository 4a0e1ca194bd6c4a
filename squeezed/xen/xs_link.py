"""The xenstore connection's parts: where xenstored listens, its errors,
back-off between attempts, and one connected socket with its parser.
Used by the request client (`xs_client`) and the watcher (`xs_watcher`)."""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import threading
from collections.abc import Mapping

from squeezed.xen.xs_wire import (
    Packet,
    Parser,
    ProtocolError,
)

log = logging.getLogger("squeezed.xen.xenstore")

DEFAULT_SOCKET = "/var/run/xenstored/socket"
REQ_ID_MASK = 0xFFFFFFFF


def default_socket_path(environ: Mapping[str, str] | None = None) -> str:
    """``$XENSTORED_PATH`` (honoured by libxenstore too), else the standard socket.
    The one place this is decided (the configuration's default defers to it)."""
    env = os.environ if environ is None else environ
    return env.get("XENSTORED_PATH") or DEFAULT_SOCKET


class XenstoreError(Exception):
    """xenstored answered XS_ERROR (``errno_name`` is e.g. "ENOENT"), or the link failed."""

    def __init__(self, errno_name: str, path: str | None = None, detail: str | None = None):
        msg = f"{errno_name}: {path}" if path is not None else errno_name
        if detail:
            msg = f"{msg} ({detail})"
        super().__init__(msg)
        self.errno_name = errno_name
        self.path = path
        # Raised by a batch of writes (target_writes): the domains it settled
        # before failing (domid -> written, False if gone), which did happen.
        self.written: dict[int, bool] = {}


class XenstoreConnectionError(XenstoreError, ConnectionError):
    """The connection to xenstored was lost or could not be made (``errno_name`` "EIO").

    ``in_flight`` is True when the request had been sent, so xenstored may or may
    not have acted on it; False when it certainly never reached xenstored.
    ``timed_out`` is True when xenstored did not answer within the client's
    timeout: such a request is never tried again (a hung xenstored would cost
    one full timeout per try)."""

    def __init__(
        self, path: str | None = None, detail: str | None = None, *, in_flight: bool = False,
        timed_out: bool = False,
    ) -> None:
        XenstoreError.__init__(self, "EIO", path, detail)
        self.in_flight = in_flight
        self.timed_out = timed_out


class Backoff:
    """Exponential back-off whose sleeps end early when ``stop`` is set."""

    def __init__(self, initial_s: float, max_s: float, stop: threading.Event) -> None:
        self._initial, self._max, self._stop = initial_s, max_s, stop
        self._delay = initial_s

    def reset(self) -> None:
        self._delay = self._initial

    def sleep(self) -> bool:
        """Sleep one step; False if ``stop`` was set meanwhile."""
        stopped = self._stop.wait(self._delay)
        self._delay = min(self._max, self._delay * 2)
        return not stopped


def connect(path: str, timeout_s: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


class Link:
    """One connected socket and its parser.  Not thread-safe: the owner serialises."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = Parser()
        self.backlog: collections.deque[Packet] = collections.deque()

    def _fill(self, data: bytes) -> None:
        if not data:
            raise ConnectionResetError("xenstored closed the connection")
        self.backlog.extend(self.parser.feed(data))

    def recv(self) -> Packet:
        while not self.backlog:
            self._fill(self.sock.recv(65536))
        return self.backlog.popleft()

    def poll_alive(self) -> bool:
        """Drain whatever is already readable without blocking; False on EOF/error."""
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        try:
            while p.poll(0):
                self._fill(self.sock.recv(65536))
        except (OSError, ProtocolError):
            return False
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

