"""Reading the daemon's state through any transport."""

from __future__ import annotations

from typing import Any, Protocol

from squeezed import idl
from squeezed.cli import EXIT_CONNECT, EXIT_NO_REPLY, EXIT_SERVICE
from squeezed.errors import MemoryInterfaceError
from squeezed.rpc.client import ConnectionFailed, NoReply, ProtocolError
from squeezed.rpc.dispatch import TypeMismatch

# What can go wrong reading the state: the caller reports it and goes on or stops.
FETCH_ERRORS = (ConnectionFailed, ProtocolError, TypeMismatch, MemoryInterfaceError)


class Caller(Protocol):
    """A transport: MemoryClient, or anything else that makes a call and
    returns its wire result (raising ConnectionFailed / NoReply when it cannot)."""

    def call(self, method: str, *params: Any) -> Any: ...


class StateSource:
    """get_state through a transport, unmarshalled as the IDL says."""

    def __init__(self, caller: Caller, dbg: str, iface: idl.Interface | None = None) -> None:
        self.caller = caller
        self.dbg = dbg
        self.iface = iface if iface is not None else idl.load()
        self._result = self.iface.method("get_state").result

    def state(self) -> dict[str, Any]:
        from squeezed.rpc.dispatch import unmarshal

        value = unmarshal(self.iface, self._result, self.caller.call("get_state", self.dbg))
        if not isinstance(value, dict):
            raise TypeMismatch("get_state did not return a struct")
        return value


def describe_error(e: BaseException, where: str) -> tuple[str, int]:
    """A one-line message and squeezectl's exit status for a failed fetch."""
    if isinstance(e, NoReply):
        return f"no reply from {where}: {e.reason}", EXIT_NO_REPLY
    if isinstance(e, ConnectionFailed):
        return f"cannot connect to {where}: {e.reason}. Is squeezed running?", EXIT_CONNECT
    if isinstance(e, MemoryInterfaceError):
        return f"get_state failed: {e.name} ({e})", EXIT_SERVICE
    return f"unreadable reply from {where}: {e}", EXIT_SERVICE
