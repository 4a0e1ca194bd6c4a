"""How the daemon ends a start: the errors that decide its exit status."""

from __future__ import annotations


class StartupError(Exception):
    """A fatal start-up problem, reported in one line; exit status 1."""


class BadScenario(Exception):
    """The --simulate scenario file is wrong; exit status 2, like a bad option."""


class StopDuringStartup(BaseException):
    """SIGTERM arrived before the daemon was ready: clean up and exit 0.
    (A BaseException, so that no `except Exception` on the way swallows it.)"""

