"""Exactly-once effect for requests the message-switch delivers again.

The switch keeps a message until it is acked, so a squeezed killed between
acting on a request and acking it gets the request again after a restart
(and after any reconnect, since squeezed then transfers from the start). The
four calls that change the reservation table must not act twice:

- every request delivered through the switch carries a `RequestIdentity`:
  its message id *with* its reply queue and a digest of its payload (a
  restarted switch numbers from 0 again, so an id alone proves nothing);
- `ExactlyOnce` wraps the Memory service for the switch's dispatcher: a
  request whose identity has a record is answered with the recorded result
  (value or error) without running again;
- a reservation made for an identified request gets an id derived from the
  identity (`new_reservation_id`), so a request interrupted after its
  reservation was written but before its record finds that reservation;
- a delete writes its intent first, so a delete interrupted after removing
  the reservation answers success, not Unknown_reservation.

Records live in xenstore beside the reservations, at
/squeezed/requests/<key> = JSON, and are bounded: dropped with the
reservation they made or moved (once `GONE_GRACE_S` old), and after
`RECORD_TTL_S` whatever happens.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from squeezed.backend import Reservation
from squeezed.errors import MemoryInterfaceError, from_wire

log = logging.getLogger("squeezed.switch")

RECORDS_PATH = "/squeezed/requests"
RECORD_TTL_S = 3600.0
# A record whose reservation is gone is kept this long all the same: the switch
# redelivers after a restart (seconds), and a caller may delete the reservation
# as soon as it has the reply, possibly before the ack.
GONE_GRACE_S = 300.0
_NAMESPACE = uuid.UUID("5b0c3f8e-7a35-4f3c-9f2e-2f1d9c7e1a40")


@dataclass(frozen=True)
class RequestIdentity:
    queue: str
    message_id: int
    reply_to: str
    payload_sha256: str

    @classmethod
    def of(cls, queue: str, message_id: int, reply_to: str, payload: str) -> RequestIdentity:
        digest = hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()
        return cls(queue, message_id, reply_to, digest)

    @property
    def key(self) -> str:
        text = f"{self.queue}\n{self.message_id}\n{self.reply_to}\n{self.payload_sha256}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


current: contextvars.ContextVar[RequestIdentity | None] = contextvars.ContextVar(
    "squeezed_switch_request", default=None)


def new_reservation_id() -> str:
    """A fresh reservation id: derived from the request being served through
    the switch (the same for a redelivery), else random."""
    ident = current.get()
    if ident is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_NAMESPACE, ident.key))


T = TypeVar("T")


class TableService(Protocol):
    """The Memory service's calls that change the reservation table."""

    def reserve_memory(self, dbg: str, session_id: str, kib: int) -> str: ...

    def reserve_memory_range(self, dbg: str, session_id: str, min_kib: int,
                             max_kib: int) -> tuple[str, int]: ...

    def transfer_reservation_to_domain(self, dbg: str, session_id: str, reservation_id: str,
                                       domid: int) -> None: ...

    def delete_reservation(self, dbg: str, session_id: str, reservation_id: str) -> None: ...


class RecordStoreError(Exception):
    """A record could not be read or written (xenstore unreachable, say)."""


class RecordStore(Protocol):
    """Raises RecordStoreError when the store cannot be reached."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, value: str) -> None: ...

    def remove(self, key: str) -> None: ...

    def keys(self) -> list[str]: ...


class XenstoreLike(Protocol):
    def read(self, path: str) -> str | None: ...

    def write(self, path: str, value: str) -> None: ...

    def rm(self, path: str) -> None: ...

    def directory(self, path: str) -> list[str]: ...


class XenstoreRecords:
    """Records as xenstore nodes under /squeezed/requests."""

    def __init__(self, xs: XenstoreLike, root: str = RECORDS_PATH) -> None:
        self.xs = xs
        self.root = root

    def get(self, key: str) -> str | None:
        with _store_errors():
            return self.xs.read(f"{self.root}/{key}")

    def put(self, key: str, value: str) -> None:
        with _store_errors():
            self.xs.write(f"{self.root}/{key}", value)

    def remove(self, key: str) -> None:
        with _store_errors():
            self.xs.rm(f"{self.root}/{key}")

    def keys(self) -> list[str]:
        with _store_errors():
            return self.xs.directory(self.root)


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    from squeezed.xen.xenstore import XenstoreError

    try:
        yield
    except XenstoreError as e:
        raise RecordStoreError(f"request record: {e}") from e


class MemoryRecords:
    """Records in a dict (tests, and backends without xenstore)."""

    def __init__(self) -> None:
        self.d: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.d.get(key)

    def put(self, key: str, value: str) -> None:
        self.d[key] = value

    def remove(self, key: str) -> None:
        self.d.pop(key, None)

    def keys(self) -> list[str]:
        return list(self.d)


class ExactlyOnce:
    """The Memory service as the switch's dispatcher sees it."""

    def __init__(self, service: TableService, store: RecordStore,
                 reservations: Callable[[], list[Reservation]],
                 clock: Callable[[], float] = time.time, ttl_s: float = RECORD_TTL_S,
                 hold: Callable[[str], None] | None = None) -> None:
        self._service = service
        self.store = store
        self._reservations = reservations
        self._clock = clock
        self.ttl_s = ttl_s
        self.replayed = 0  # requests answered from a record
        self._hold = hold  # test hook: called at "before-record"

    def __getattr__(self, name: str) -> Any:
        # Every other operation goes to the service as it is; the dispatcher finds
        # them by name (the IDL's), so no static type can list them.
        return getattr(self._service, name)

    # -- records --------------------------------------------------------------

    def _load(self, key: str) -> dict[str, Any] | None:
        raw = self.store.get(key)
        if raw is None:
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            log.warning("unreadable request record %s dropped", key)
            self.store.remove(key)
            return None
        return rec if isinstance(rec, dict) else None

    def _save(self, key: str, op: str, reservation: tuple[str, str] | None,
              **what: Any) -> None:
        rec = {"at": self._clock(), "op": op,
               "reservation": list(reservation) if reservation else None, **what}
        self.store.put(key, json.dumps(rec, separators=(",", ":")))

    def _replay(self, key: str, rec: dict[str, Any]) -> object:
        """The recorded result again (or its error raised). A record holds what its own
        call returned (written by `_run`), so callers may cast it to that call's type."""
        self.replayed += 1
        log.info("request %s (%s) delivered again: answering its recorded result", key,
                 rec.get("op"))
        if rec.get("outcome") == "error":
            raise from_wire(rec.get("error"))
        value = rec.get("value")
        return tuple(value) if isinstance(value, list) else value

    def _exists(self, session: str, rid: str) -> Reservation | None:
        return next((r for r in self._reservations()
                     if r.session == session and r.reservation_id == rid), None)

    def _made_before(self, session: str) -> Reservation | None:
        """The reservation this request made before it was interrupted, if any."""
        rid = new_reservation_id()
        found = self._exists(session, rid)
        if found is not None:
            self.replayed += 1
            log.info("request delivered again: its reservation %s was made before an "
                     "interruption; answering with it", rid)
        return found

    def _run(self, key: str, op: str, reservation: tuple[str, str] | None,
             fn: Callable[[], T], result_reservation: Callable[[T], tuple[str, str]] | None
             = None) -> T:
        try:
            value = fn()
        except MemoryInterfaceError as e:
            self._save_done(key, op, reservation, outcome="error", error=e.wire())
            raise
        if result_reservation is not None:
            reservation = result_reservation(value)
        if self._hold is not None:
            self._hold("before-record")
        self._save_done(key, op, reservation, outcome="ok",
                        value=list(value) if isinstance(value, tuple) else value)
        return value

    def _save_done(self, key: str, op: str, reservation: tuple[str, str] | None,
                   **what: Any) -> None:
        """Record an outcome; if the store cannot be reached the caller still
        gets the outcome (a repeat of a reserve then finds its reservation by
        its derived id, a repeat of a transfer does the same again)."""
        try:
            self._save(key, op, reservation, **what)
        except RecordStoreError as e:
            log.warning("%s: outcome not recorded (%s); a redelivery would run it again",
                        op, e)

    # -- the four calls that change the table ------------------------------------

    def reserve_memory(self, dbg: str, session_id: str, kib: int) -> str:
        ident = current.get()
        if ident is None:
            return self._service.reserve_memory(dbg, session_id, kib)
        rec = self._load(ident.key)
        if rec is not None:
            return cast("str", self._replay(ident.key, rec))  # (this call's own record)
        made = self._made_before(session_id)
        if made is not None:  # made before a crash, never recorded
            return self._run(ident.key, "reserve_memory", (session_id, made.reservation_id),
                             lambda: made.reservation_id)
        return self._run(ident.key, "reserve_memory", None,
                         lambda: self._service.reserve_memory(dbg, session_id, kib),
                         lambda rid: (session_id, rid))

    def reserve_memory_range(self, dbg: str, session_id: str, min_kib: int,
                             max_kib: int) -> tuple[str, int]:
        ident = current.get()
        if ident is None:
            return self._service.reserve_memory_range(dbg, session_id, min_kib, max_kib)
        rec = self._load(ident.key)
        if rec is not None:
            # (this call's own record)
            return cast("tuple[str, int]", self._replay(ident.key, rec))
        made = self._made_before(session_id)
        if made is not None:
            return self._run(ident.key, "reserve_memory_range",
                             (session_id, made.reservation_id),
                             lambda: (made.reservation_id, made.kib))
        return self._run(ident.key, "reserve_memory_range", None,
                         lambda: self._service.reserve_memory_range(dbg, session_id, min_kib,
                                                                    max_kib),
                         lambda v: (session_id, v[0]))

    def transfer_reservation_to_domain(self, dbg: str, session_id: str, reservation_id: str,
                                       domid: int) -> None:
        ident = current.get()
        if ident is None:
            return self._service.transfer_reservation_to_domain(dbg, session_id,
                                                                reservation_id, domid)
        rec = self._load(ident.key)
        if rec is not None and "outcome" in rec:
            self._replay(ident.key, rec)  # raises a recorded error
            return None
        # Transferring again writes the same keys: safe to repeat if interrupted.
        return self._run(ident.key, "transfer_reservation_to_domain",
                         (session_id, reservation_id),
                         lambda: self._service.transfer_reservation_to_domain(
                             dbg, session_id, reservation_id, domid))

    def delete_reservation(self, dbg: str, session_id: str, reservation_id: str) -> None:
        ident = current.get()
        if ident is None:
            return self._service.delete_reservation(dbg, session_id, reservation_id)
        rec = self._load(ident.key)
        if rec is not None and "outcome" in rec:
            self._replay(ident.key, rec)  # raises a recorded error
            return None
        if rec is not None and self._exists(session_id, reservation_id) is None:
            # interrupted after the removal: it was deleted by this very request
            self._save(ident.key, "delete_reservation", None, outcome="ok", value=None)
            self._replay(ident.key, {"op": "delete_reservation", "value": None})
            return None
        self._save(ident.key, "delete_reservation", None)  # the intent, no outcome yet
        return self._run(ident.key, "delete_reservation", None,
                         lambda: self._service.delete_reservation(dbg, session_id,
                                                                  reservation_id))

    # -- bounds -----------------------------------------------------------------

    def prune(self) -> int:
        """Drop records older than the time limit and records of reservations
        that are gone; returns how many were dropped."""
        now = self._clock()
        live = {(r.session, r.reservation_id) for r in self._reservations()}
        dropped = 0
        for key in self.store.keys():
            rec = self._load(key)
            if rec is None:
                continue
            at = rec.get("at")
            res = rec.get("reservation")
            drop = not isinstance(at, int | float) or now - at > self.ttl_s
            if not drop and isinstance(at, int | float) and isinstance(res, list) \
                    and len(res) == 2:
                drop = (tuple(res) not in live and "outcome" in rec
                        and now - at > GONE_GRACE_S)
            if drop:
                self.store.remove(key)
                dropped += 1
        return dropped
