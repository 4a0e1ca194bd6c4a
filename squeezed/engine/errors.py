"""The engine's own exceptions, apart from the interface's (squeezed.errors).

Amounts here are gross: host free memory *including* the kept reserve, as the
engine sees it. The service turns these into the xcp-idl errors in one place
(`squeezed.service.wire_error`, upstream's memory_server.ml `wrap`), netting
the reserve out, so a gross amount can never reach a caller by mistake.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every exception the engine raises."""


class OperationFailed(EngineError):
    """An operation could not reach its goal. What it had freed was given back."""


class CannotFree(OperationFailed):
    """Even every balloonable domain at dynamic_min cannot free enough.

    Upstream's arguments, gross: `needed_kib` is the free memory aimed at,
    `free_kib` what was free (or would be, every domain at dynamic_min)."""

    def __init__(self, needed_kib: int, free_kib: int) -> None:
        super().__init__(f"cannot free {needed_kib} KiB (gross): only {free_kib} KiB free")
        self.needed_kib = needed_kib
        self.free_kib = free_kib


class DomainsRefused(OperationFailed):
    """Enough could be freed only with the help of these stuck or flagged domains."""

    def __init__(self, domids: list[int]) -> None:
        super().__init__(f"domains refused to cooperate: {sorted(domids)}")
        self.domids = sorted(domids)


class DeadlineExceeded(OperationFailed):
    """The operation ran past its deadline (operation-timeout)."""


class HostFailed(EngineError):
    """Raised by a `HostIO` whose host failed: a refused write, a host that
    cannot be read. The operation gives back what it freed, then re-raises."""


class InvalidAmount(EngineError):
    """A negative amount, or a range whose max is below its min."""

    def __init__(self, value_kib: int) -> None:
        super().__init__(f"invalid memory value {value_kib}")
        self.value_kib = value_kib


class OperationAbandoned(EngineError):
    """Raised by `HostIO.wait` when the daemon is shutting down; nothing is
    given back (the next squeezed finds the targets where they were)."""
