"""The pidfile: an exclusive lock held for the daemon's lifetime."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from types import TracebackType

from squeezed.daemon.errors import StartupError


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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._cm is not None:
            self._cm.__exit__(exc_type, exc, tb)

