"""A fake Memory service and server helpers for the RPC tests.

The fake has exactly the operations the dispatcher expects (one Python method
per IDL operation), records every call with its converted arguments, and
returns canned results unless told to raise.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from squeezed.errors import MemoryInterfaceError
from squeezed.rpc.dispatch import Dispatcher
from squeezed.rpc.server import JsonRpcServer, RpcServer, XmlRpcServer

STATE = {
    "host": {"free_kib": 2097152, "reserved_kib": 8192},
    "reservations": [
        {"reservation_id": "res-1", "session_id": "xenopsd", "kib": 1048576, "domid": 7},
        {"reservation_id": "res-2", "session_id": "default", "kib": 4096, "domid": None},
    ],
    "domains": [
        {
            "domid": 0,
            "can_balloon": False,
            "dynamic_min_kib": 1048576,
            "target_kib": 1048576,
            "dynamic_max_kib": 1048576,
            "memory_actual_kib": 1048576,
            "memory_max_kib": 1048576,
        },
        {
            "domid": 7,
            "can_balloon": True,
            "dynamic_min_kib": 524288,
            "target_kib": 786432,
            "dynamic_max_kib": 1048576,
            "memory_actual_kib": 786430,
            "memory_max_kib": 1048576,
        },
    ],
}

QUERY = {
    "name": "squeezed",
    "vendor": "squeezed developers",
    "version": "0.1.0",
    "features": ["reserve_range"],
    "instance_id": "inst-1",
}


class FakeService:
    """Canned answers; `raise_next` makes the next call raise it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.raise_next: BaseException | None = None
        self.results: dict[str, Any] = {
            "get_diagnostics": 'squeezed <ok> & "well"',
            "reserve_memory": "res-1",
            "reserve_memory_range": ("res-2", 1572864),
            "query_reservation_of_domain": "res-2",
            "get_host_reserved_memory": 8192,
            "get_host_initial_free_memory": 17179869184,
            "get_domain_zero_policy": ("Fixed_size", 4294967296),
            "query": QUERY,
            "get_state": STATE,
        }

    def _do(self, op: str, *args: Any) -> Any:
        self.calls.append((op, args))
        if self.raise_next is not None:
            e, self.raise_next = self.raise_next, None
            raise e
        return self.results.get(op)

    def get_diagnostics(self, dbg: str) -> str:
        return self._do("get_diagnostics", dbg)

    def login(self, dbg: str, service_name: str) -> str:
        self._do("login", dbg, service_name)
        return service_name

    def reserve_memory(self, dbg: str, session_id: str, kib: int) -> str:
        return self._do("reserve_memory", dbg, session_id, kib)

    def reserve_memory_range(
        self, dbg: str, session_id: str, min_kib: int, max_kib: int
    ) -> tuple[str, int]:
        return self._do("reserve_memory_range", dbg, session_id, min_kib, max_kib)

    def delete_reservation(self, dbg: str, session_id: str, reservation_id: str) -> None:
        return self._do("delete_reservation", dbg, session_id, reservation_id)

    def transfer_reservation_to_domain(
        self, dbg: str, session_id: str, reservation_id: str, domid: int
    ) -> None:
        return self._do("transfer_reservation_to_domain", dbg, session_id, reservation_id, domid)

    def query_reservation_of_domain(self, dbg: str, session_id: str, domid: int) -> str:
        return self._do("query_reservation_of_domain", dbg, session_id, domid)

    def balance_memory(self, dbg: str) -> None:
        return self._do("balance_memory", dbg)

    def get_host_reserved_memory(self, dbg: str) -> int:
        return self._do("get_host_reserved_memory", dbg)

    def get_host_initial_free_memory(self, dbg: str) -> int:
        return self._do("get_host_initial_free_memory", dbg)

    def get_domain_zero_policy(self, dbg: str) -> Any:
        return self._do("get_domain_zero_policy", dbg)

    def query(self, dbg: str) -> dict[str, Any]:
        return self._do("query", dbg)

    def set_log_level(self, dbg: str, level: str) -> None:
        return self._do("set_log_level", dbg, level)

    def get_state(self, dbg: str) -> dict[str, Any]:
        return self._do("get_state", dbg)


def raise_next(fake: FakeService, e: MemoryInterfaceError | Exception) -> None:
    fake.raise_next = e


@contextlib.contextmanager
def short_dir() -> Iterator[str]:
    """A short directory: AF_UNIX paths are limited to 107 bytes, and pytest's
    tmp_path can be longer than that."""
    d = tempfile.mkdtemp(prefix="sq", dir="/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def serving(
    kind: type[RpcServer] = XmlRpcServer, fake: FakeService | None = None, **kw: Any
) -> Iterator[tuple[RpcServer, FakeService]]:
    fake = fake if fake is not None else FakeService()
    with short_dir() as d:
        name = "memory.json" if kind is JsonRpcServer else "memory"
        srv = kind(f"{d}/{name}", Dispatcher(fake), **kw)
        srv.start()
        try:
            yield srv, fake
        finally:
            srv.shutdown()
