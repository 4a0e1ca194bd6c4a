"""The errors of the xcp-idl Memory interface, as Python exceptions.

Each carries its wire form: ``wire()`` returns the rpclib value, either the bare
constructor name (a string) or ``[name, args]``.
"""

from __future__ import annotations

from typing import Any


class MemoryInterfaceError(Exception):
    """Base class of every error the Memory interface can return."""

    name = "Unknown_error"

    def args_wire(self) -> Any | None:
        """The error's argument on the wire, or None for a bare constructor."""
        return None

    def wire(self) -> Any:
        a = self.args_wire()
        return self.name if a is None else [self.name, a]


class CannotFreeThisMuchMemory(MemoryInterfaceError):
    name = "Cannot_free_this_much_memory"

    def __init__(self, needed_kib: int, free_kib: int) -> None:
        super().__init__(f"cannot free {needed_kib} KiB: only {free_kib} KiB free")
        self.needed_kib = needed_kib
        self.free_kib = free_kib

    def args_wire(self) -> Any:
        return [self.needed_kib, self.free_kib]


class DomainsRefusedToCooperate(MemoryInterfaceError):
    name = "Domains_refused_to_cooperate"

    def __init__(self, domids: list[int]) -> None:
        super().__init__(f"domains refused to cooperate: {sorted(domids)}")
        self.domids = sorted(domids)

    def args_wire(self) -> Any:
        return list(self.domids)


class UnknownReservation(MemoryInterfaceError):
    name = "Unknown_reservation"

    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"unknown reservation {reservation_id!r}")
        self.reservation_id = reservation_id

    def args_wire(self) -> Any:
        return self.reservation_id


class NoReservation(MemoryInterfaceError):
    name = "No_reservation"

    def __init__(self) -> None:
        super().__init__("no reservation")


class InvalidMemoryValue(MemoryInterfaceError):
    name = "Invalid_memory_value"

    def __init__(self, value: int) -> None:
        super().__init__(f"invalid memory value {value}")
        self.value = value

    def args_wire(self) -> Any:
        return self.value


class InternalError(MemoryInterfaceError):
    name = "Internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def args_wire(self) -> Any:
        return self.message


class UnknownError(MemoryInterfaceError):
    name = "Unknown_error"

    def __init__(self) -> None:
        super().__init__("unknown error")


ALL_ERRORS: tuple[type[MemoryInterfaceError], ...] = (
    CannotFreeThisMuchMemory,
    DomainsRefusedToCooperate,
    UnknownReservation,
    NoReservation,
    InvalidMemoryValue,
    InternalError,
    UnknownError,
)


def from_wire(value: Any) -> MemoryInterfaceError:
    """Rebuild an exception from its wire form (used by clients)."""
    arg: Any = None  # whatever the server sent: checked by the conversions below
    if isinstance(value, str):
        name = value
    elif isinstance(value, list) and value and isinstance(value[0], str):
        name = value[0]
        arg = value[1] if len(value) == 2 else value[1:]
    else:
        return InternalError(f"malformed error from server: {value!r}")
    try:
        if name == "Cannot_free_this_much_memory":
            return CannotFreeThisMuchMemory(int(arg[0]), int(arg[1]))
        if name == "Domains_refused_to_cooperate":
            return DomainsRefusedToCooperate([int(d) for d in arg])
        if name == "Unknown_reservation":
            return UnknownReservation(str(arg))
        if name == "No_reservation":
            return NoReservation()
        if name == "Invalid_memory_value":
            return InvalidMemoryValue(int(arg))
        if name == "Internal_error":
            return InternalError(str(arg))
        if name == "Unknown_error":
            return UnknownError()
    except (TypeError, ValueError, IndexError):
        return InternalError(f"malformed {name} error from server: {value!r}")
    return UnknownError()  # as rpclib does for a constructor it does not know
