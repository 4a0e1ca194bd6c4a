"""The reservation table, as upstream keeps it in xenstore:
/squeezed/state/<session>/<reservation> = KiB, with `in-transfer` = domid once
transferred, so that a restarted daemon finds every reservation.

Kept in memory and written through (issue 12): the table is read from
xenstore once, at the first use after start, and never again. Only squeezed
writes /squeezed/state (login drops a session's tree through this table
too), so the copy in memory cannot fall behind; a snapshot then costs no
xenstore request for the table. A write that fails leaves the copy as it was
(the error goes to the caller); a write that succeeds updates it before the
call returns.

An entry whose amount is not a KiB count the host could hold (negative,
>= 2^63, not an integer, above the host's total) is never counted: it is
logged once at load and listed by `invalid()`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from squeezed.backend import Reservation
from squeezed.xen.protocols import XenstoreLike
from squeezed.xen.values import INT64_MAX, parse_int
from squeezed.xen.xenstore import Transaction

log = logging.getLogger("squeezed.xen.host")

STATE_PATH = "/squeezed/state"


class ReservationTable:
    def __init__(self, xs: XenstoreLike) -> None:
        self.xs = xs
        self._lock = threading.Lock()
        self._loaded = False
        self._entries: dict[tuple[str, str], Reservation] = {}
        self._invalid: dict[str, str] = {}  # path -> why it is not counted

    def load(self, total_kib: Callable[[], int]) -> None:
        """Read the table from xenstore unless it was read already. Invalid
        entries are remembered and logged once."""
        with self._lock:
            if self._loaded:
                return
            entries, bad = self._read(total_kib())
            self._entries = {(r.session, r.reservation_id): r for r in entries}
            self._invalid = bad
            self._loaded = True
        for path, why in sorted(bad.items()):
            log.warning("reservation %s ignored: %s", path, why)

    def _read(self, total_kib: int) -> tuple[list[Reservation], dict[str, str]]:
        out: list[Reservation] = []
        bad: dict[str, str] = {}
        for session in self.xs.directory(STATE_PATH):
            for rid in self.xs.directory(f"{STATE_PATH}/{session}"):
                base = f"{STATE_PATH}/{session}/{rid}"
                raw = self.xs.read(base)
                if raw is None:
                    continue  # deleted meanwhile
                kib = parse_int(raw)
                if kib is None or not 0 <= kib <= min(total_kib, INT64_MAX):
                    bad[base] = f"amount {raw[:40]!r} is not a KiB count between 0 and " \
                                f"the host's {total_kib} KiB"
                    continue
                domid = parse_int(self.xs.read(f"{base}/in-transfer"))
                out.append(Reservation(session, rid, kib, domid))
        return out, bad

    def entries(self) -> list[Reservation]:
        """Every valid entry (call `load` first), in session then id order."""
        with self._lock:
            return [self._entries[k] for k in sorted(self._entries)]

    def invalid(self) -> dict[str, str]:
        """/squeezed/state path -> why the entry is not counted, as loaded."""
        with self._lock:
            return dict(sorted(self._invalid.items()))

    def add(self, r: Reservation) -> None:
        self.xs.write(f"{STATE_PATH}/{r.session}/{r.reservation_id}", str(r.kib))
        with self._lock:
            self._entries[(r.session, r.reservation_id)] = r

    def remove(self, session: str, reservation_id: str) -> None:
        self.xs.rm(f"{STATE_PATH}/{session}/{reservation_id}")
        with self._lock:
            self._entries.pop((session, reservation_id), None)
            self._invalid.pop(f"{STATE_PATH}/{session}/{reservation_id}", None)
        if not self.xs.directory(f"{STATE_PATH}/{session}"):
            self.xs.rm(f"{STATE_PATH}/{session}")

    @staticmethod
    def mark_in_transfer(t: Transaction, r: Reservation, domid: int) -> None:
        """Within the caller's transaction (which also writes the domain's
        keys); `transferred` once the transaction has committed."""
        t.write(f"{STATE_PATH}/{r.session}/{r.reservation_id}/in-transfer", str(domid))

    def transferred(self, r: Reservation, domid: int) -> None:
        with self._lock:
            key = (r.session, r.reservation_id)
            if key in self._entries:
                self._entries[key] = Reservation(r.session, r.reservation_id, r.kib, domid)
