"""Where a configuration value came from, and the error that names it."""

from __future__ import annotations


class Origin(str):
    """Where a value came from: ``"default"``, ``"FILE:LINE"`` or ``"command line"``.

    A str, so it prints and compares as that text (``origin == "default"``), with the
    parts kept in `kind`, `path` and `line`.
    """

    kind: str  # "default" | "file" | "command line"
    path: str | None
    line: int | None

    def __new__(cls, kind: str, path: str | None = None, line: int | None = None) -> Origin:
        self = super().__new__(cls, f"{path}:{line}" if kind == "file" else kind)
        self.kind, self.path, self.line = kind, path, line
        return self


DEFAULT = Origin("default")
COMMAND_LINE = Origin("command line")

# Key name -> where its effective value came from; every key is present.
Provenance = dict[str, Origin]


class ConfigError(Exception):
    """A bad configuration value or command line; the daemon exits with status 2."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        value: str | None = None,
        origin: Origin | None = None,
        allowed: str | None = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.value = value
        self.origin = origin
        self.allowed = allowed

    @classmethod
    def invalid(cls, key: str, value: str, origin: Origin, allowed: str) -> ConfigError:
        return cls(
            f"{origin}: invalid value {value!r} for {key}: expected {allowed}",
            key=key,
            value=value,
            origin=origin,
            allowed=allowed,
        )
