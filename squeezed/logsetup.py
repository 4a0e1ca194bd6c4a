"""Logging set-up: syslog (``/dev/log``) or stderr, on the root logger.

Under systemd, stderr goes to the journal (``$JOURNAL_STREAM`` is set): there lines carry
a ``<N>`` syslog priority prefix, which journald turns into the entry's priority, and no
timestamp, since the journal adds its own. On a terminal, lines get ISO 8601 timestamps.

The syslog handler's socket is opened here, so when daemonizing (python-daemon closes
every file descriptor) call `setup_logging` after detaching, or preserve the handler's
socket.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Mapping
from datetime import datetime
from logging.handlers import SysLogHandler
from typing import TextIO

SYSLOG_ADDRESS = "/dev/log"
IDENT = "squeezed"

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Python level -> syslog priority, for the journal's "<N>" line prefix.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

_MARK = "_squeezed_handler"  # set on handlers we install, so a re-setup replaces them


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{prio}>{super().format(record)}"


class _IsoFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created).astimezone()
        return stamp.isoformat(timespec="milliseconds")


def _level(level: str) -> int:
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}"
        ) from None


def on_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is connected to the journal, as sd_journal_stream_fd(3) advises:
    ``$JOURNAL_STREAM`` names the device and inode of the journal's stream socket."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return True  # no descriptor to compare (e.g. a test stream): trust the variable
    return value == f"{st.st_dev}:{st.st_ino}"


def _stderr_handler(stream: TextIO, environ: Mapping[str, str] | None) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    if on_journal(stream, environ):
        handler.setFormatter(_JournalFormatter("%(threadName)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(
            _IsoFormatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
        )
    return handler


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def setup_logging(
    target: str = "syslog",
    level: str = "info",
    facility: str = "daemon",
    *,
    syslog_address: str = SYSLOG_ADDRESS,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Route the root logger to `target` at `level`; returns the handler installed.

    `target` is the ``log`` configuration value: ``"stderr"``, ``"syslog"`` or
    ``"syslog:SUFFIX"``, where a facility name as SUFFIX overrides `facility` (anything
    else, like upstream's ``syslog:squeezed``, is ignored). Replaces any handler a
    previous call installed, so it is safe to call again (after daemonizing, on reload).
    """
    numeric_level = _level(level)
    target, _, suffix = target.partition(":")
    if target == "syslog" and suffix in SysLogHandler.facility_names:
        facility = suffix
    if target not in ("syslog", "stderr"):
        raise ValueError(f"unknown log target {target!r}; expected syslog or stderr")
    out = sys.stderr if stream is None else stream
    fallback: str | None = None
    handler: logging.Handler
    if target == "syslog" and facility not in SysLogHandler.facility_names:
        raise ValueError(f"unknown syslog facility {facility!r}")
    if target == "syslog" and not _is_socket(syslog_address):
        # SysLogHandler would accept a missing socket silently and then print a traceback
        # for every message; say so once and use stderr instead.
        fallback = f"cannot log to syslog: no socket at {syslog_address}; logging to stderr"
        target = "stderr"
    if target == "syslog":
        handler = SysLogHandler(
            address=syslog_address, facility=SysLogHandler.facility_names[facility]
        )
        # The pid is formatted per record, so it stays right after a daemonizing fork.
        handler.setFormatter(
            logging.Formatter(
                f"{IDENT}[%(process)d]: %(levelname)s %(threadName)s %(name)s: %(message)s"
            )
        )
    else:
        handler = _stderr_handler(out, environ)
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    if fallback:
        logging.getLogger("squeezed").warning("%s", fallback)
    return handler


def set_level(level: str) -> None:
    """Change the level at run time (SIGHUP reload of ``loglevel``)."""
    logging.getLogger().setLevel(_level(level))
