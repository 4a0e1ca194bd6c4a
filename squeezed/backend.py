"""What the Memory service needs from a host, beyond the engine's HostIO.

Two implementations: the Xen backend (`squeezed.xen.host.XenHost`, keeping
the reservation table in xenstore under /squeezed/state so that a restarted
daemon finds it) and the virtual-time simulator (`squeezed.sim.virtual`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from squeezed.engine.io import HostIO
from squeezed.engine.model import Host


@dataclass(frozen=True)
class Reservation:
    session: str
    reservation_id: str
    kib: int
    in_transfer_domid: int | None = None  # set by transfer_reservation_to_domain


class Backend(HostIO, Protocol):
    """A host the Memory service can run on.

    Host free memory in `snapshot()` already excludes every reservation that
    still counts: untransferred ones, and transferred ones whose domain does
    not exist (yet); a transferred reservation whose domain exists counts
    through that domain's unallocated initial-reservation instead, never both.
    """

    def observe(self) -> Host:
        """Like snapshot() but without side effects or waiting: for queries
        that run beside an operation."""
        ...

    def reservations(self) -> list[Reservation]: ...

    def add_reservation(self, r: Reservation) -> None: ...

    def remove_reservation(self, session: str, reservation_id: str) -> None: ...

    def transfer_reservation(self, r: Reservation, domid: int) -> None:
        """Write memory/initial-reservation and memory/reservation-id under the
        domain, mark the reservation in transfer to it and set its maxmem to
        the reservation so the domain builder can allocate it."""
        ...

    def domain_reservation_id(self, domid: int) -> str | None:
        """memory/reservation-id of a domain, None if unset or no such domain."""
        ...

    def domain_exists(self, domid: int) -> bool: ...

    def describe(self) -> dict[str, Any]:
        """Raw host facts for diagnostics: free/scrub/total KiB etc."""
        ...
