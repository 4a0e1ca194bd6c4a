"""What XenHost uses of its collaborators, as Protocols: libxenctrl
(`xenctrl.XenCtrl`), the xenstore request connection (`xenstore.XenstoreClient`)
and the watch connection (`xenstore.Watcher`). Tests pass fakes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from squeezed.xen.xenctrl import DomainInfo, PhysInfo
from squeezed.xen.xenstore import Transaction, WatchEvent

T = TypeVar("T")


class XenCtrlLike(Protocol):
    """What XenHost uses of libxenctrl (squeezed.xen.xenctrl.XenCtrl)."""

    def physinfo(self) -> PhysInfo: ...

    def domain_list(self) -> list[DomainInfo]: ...

    def set_maxmem_kib(self, domid: int, kib: int) -> None: ...

    def shadow_allocation_mib(self, domid: int) -> int: ...


class XenstoreLike(Protocol):
    """What XenHost uses of the xenstore request connection (XenstoreClient)."""

    def read(self, path: str) -> str | None: ...

    def write(self, path: str, value: str) -> None: ...

    def mkdir(self, path: str) -> None: ...

    def rm(self, path: str) -> None: ...

    def directory(self, path: str) -> list[str]: ...

    def transaction(self, fn: Callable[[Transaction], T], max_retries: int = 16) -> T: ...


class WatcherLike(Protocol):
    """What XenHost uses of the watch connection (squeezed.xen.xenstore.Watcher)."""

    drained_seq: int

    def watch(self, path: str, token: str) -> None: ...

    def unwatch(self, path: str, token: str) -> None: ...

    def events(self, timeout_s: float | None = None) -> list[WatchEvent]: ...

    def barrier(self, timeout_s: float = 5.0) -> int: ...

    def alive(self) -> bool: ...
