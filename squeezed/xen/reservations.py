"""The reservation table in xenstore, as upstream keeps it:
/squeezed/state/<session>/<reservation> = KiB, with `in-transfer` = domid once
transferred, so that a restarted daemon finds every reservation.

An entry whose amount is not a KiB count the host could hold (negative,
>= 2^63, not an integer, above the host's total) is never counted: it is
logged once and listed by `invalid()`."""

from __future__ import annotations

import logging
import threading

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
        self._invalid: dict[str, str] = {}  # path -> why it is not counted

    def read(self, total_kib: int) -> list[Reservation]:
        """Every valid entry; invalid ones are remembered (and logged once)."""
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
        with self._lock:
            new = {p: why for p, why in bad.items() if self._invalid.get(p) != why}
            self._invalid = bad
        for path, why in sorted(new.items()):
            log.warning("reservation %s ignored: %s", path, why)
        return out

    def invalid(self) -> dict[str, str]:
        """/squeezed/state path -> why the entry is not counted, as of the last read."""
        with self._lock:
            return dict(sorted(self._invalid.items()))

    def add(self, r: Reservation) -> None:
        self.xs.write(f"{STATE_PATH}/{r.session}/{r.reservation_id}", str(r.kib))

    def remove(self, session: str, reservation_id: str) -> None:
        self.xs.rm(f"{STATE_PATH}/{session}/{reservation_id}")
        if not self.xs.directory(f"{STATE_PATH}/{session}"):
            self.xs.rm(f"{STATE_PATH}/{session}")

    @staticmethod
    def mark_in_transfer(t: Transaction, r: Reservation, domid: int) -> None:
        """Within the caller's transaction (which also writes the domain's keys)."""
        t.write(f"{STATE_PATH}/{r.session}/{r.reservation_id}/in-transfer", str(domid))
