"""The Memory service: sessions, the reservation table and the big lock.

One squeezing operation runs at a time (`_op_lock`); queries, diagnostics and
table look-ups never wait behind it. The reservation table itself lives in
the backend (xenstore on a real host), so a restarted daemon finds it whole.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from squeezed import __version__, debuginfo
from squeezed.backend import Backend, Reservation
from squeezed.engine import errors as engine_errors
from squeezed.engine import operations as ops
from squeezed.engine.operations import EngineConfig, OpStats
from squeezed.errors import (
    CannotFreeThisMuchMemory,
    DomainsRefusedToCooperate,
    InternalError,
    InvalidMemoryValue,
    MemoryInterfaceError,
    NoReservation,
    UnknownReservation,
)
from squeezed.fifolock import FifoLock
from squeezed.initial_free import InitialFreeMemory
from squeezed.stats import OperationStats
from squeezed.switch.exactly_once import new_reservation_id

log = logging.getLogger("squeezed.service")

INT64_MAX = 2**63 - 1
# xenstore's node-name rules (xenstored's valid characters), with a length
# bound of our own: session and reservation ids become path components.
_NODE_NAME = re.compile(r"[A-Za-z0-9_@-]{1,256}")
# get_host_initial_free_memory waits this long for the boot-time measurement.
INITIAL_FREE_WAIT_S = 120.0
_R = TypeVar("_R")  # what an operation run under the squeezing lock gives back
_DOMAIN_STATE_FIELDS = ("domid", "can_balloon", "dynamic_min_kib", "target_kib", "dynamic_max_kib",
                        "memory_actual_kib", "memory_max_kib", "name", "flags")
# Backend facts (XenHost.describe) passed on in get_state's host struct when present.
_HOST_FACTS = ("xen_free_kib", "xen_scrub_kib", "xen_total_kib", "reservations_kib")


def wire_error(e: engine_errors.EngineError, reserve_kib: int) -> MemoryInterfaceError:
    """The one place where the engine's errors become the interface's (as
    upstream's memory_server.ml `wrap`): amounts net of the kept reserve."""
    if isinstance(e, MemoryInterfaceError):  # a host's failure that is one already (XenHost's)
        return e
    if isinstance(e, engine_errors.CannotFree):
        return CannotFreeThisMuchMemory(e.needed_kib - reserve_kib, e.free_kib - reserve_kib)
    if isinstance(e, engine_errors.DomainsRefused):
        return DomainsRefusedToCooperate(e.domids)
    if isinstance(e, engine_errors.InvalidAmount):
        return InvalidMemoryValue(e.value_kib)
    if isinstance(e, engine_errors.OperationAbandoned):
        return InternalError("squeezed is shutting down; operation abandoned")
    return InternalError(str(e))  # DeadlineExceeded, HostFailed


@dataclass(frozen=True)
class Dom0Policy:
    manage: bool = False
    dynamic_min_bytes: int = 1 << 30
    dynamic_max_bytes: int | None = None  # None: its current allocation ("auto")


@dataclass
class _OpRecord:
    at: float
    op: str
    dbg: str
    args: str
    outcome: str = "running"
    elapsed_s: float = 0.0
    started_mono: float = field(default_factory=time.monotonic)
    active: bool = False  # holds the operation lock (others wait for it)

    def public(self) -> dict[str, Any]:
        """The IDL's operation_state."""
        running = self.outcome == "running"
        return {"op": self.op, "dbg": self.dbg, "args": self.args, "started_s": self.at,
                "elapsed_s": time.monotonic() - self.started_mono if running else self.elapsed_s,
                "outcome": self.outcome}


@dataclass
class MemoryService:
    backend: Backend
    cfg: EngineConfig = field(default_factory=EngineConfig)
    dom0: Dom0Policy = field(default_factory=Dom0Policy)
    initial_free: InitialFreeMemory | None = None
    dom0_total_bytes: Callable[[], int] | None = None
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        self._op_lock = FifoLock()  # one squeezing operation at a time, in arrival order
        self._table_lock = threading.Lock()  # short: reservation table updates
        self._history: collections.deque[_OpRecord] = collections.deque(maxlen=32)
        self._history_lock = threading.Lock()
        self.on_set_log_level: Callable[[str], None] | None = None
        self._shutting_down = False
        self.stats = OperationStats()  # for metrics: operations, durations, iterations

    def abandon(self) -> None:
        """The daemon is stopping: an operation that fails from now on (its
        waits abandoned, its xenstore connection closed under it) answers its
        caller "shutting down", whatever the failure looked like."""
        self._shutting_down = True

    # -- helpers -----------------------------------------------------------

    def _record(self, op: str, dbg: str, **args: object) -> _OpRecord:
        rec = _OpRecord(time.time(), op, debuginfo.show(dbg),
                        " ".join(f"{k}={debuginfo.escape(str(v))}" for k, v in args.items()))
        with self._history_lock:
            self._history.append(rec)
        return rec

    def _done(self, rec: _OpRecord, outcome: str) -> None:
        """An operation that ran without the operation lock ended: history and counters."""
        rec.outcome = outcome
        rec.elapsed_s = time.monotonic() - rec.started_mono
        self.stats.observe(rec.op, outcome, rec.elapsed_s)

    def _squeeze(self, op: str, dbg: str, fn: Callable[[OpStats], _R], **args: object) -> _R:
        rec = self._record(op, dbg, **args)
        t0 = time.monotonic()
        st = OpStats()
        try:
            with self._op_lock:
                rec.active = True
                result = fn(st)
            rec.outcome = "success"
        except MemoryInterfaceError as e:  # the service's own, or a host's (XenHostError)
            if self._shutting_down:
                rec.outcome = "abandoned"
                raise InternalError("squeezed is shutting down; operation abandoned") from None
            rec.outcome = e.name
            raise
        except engine_errors.EngineError as e:
            # Shutting down, a failure is the shutdown's doing (Cannot_free fails
            # fast, before anything could be abandoned).
            abandoned = isinstance(e, engine_errors.OperationAbandoned) or (
                self._shutting_down and not isinstance(e, engine_errors.CannotFree))
            err = wire_error(engine_errors.OperationAbandoned() if abandoned else e,
                             self.cfg.reserve_kib)
            rec.outcome = "abandoned" if abandoned else err.name
            raise err from None
        except Exception as e:
            if self._shutting_down:
                # Answered as abandoned, but what broke is not hidden from the log.
                log.warning("%s failed while shutting down: %s: %s", op, type(e).__name__, e,
                            exc_info=True)
                rec.outcome = "abandoned"
                raise InternalError("squeezed is shutting down; operation abandoned") from None
            rec.outcome = f"failed: {type(e).__name__}"
            raise
        except BaseException as e:
            rec.outcome = f"failed: {type(e).__name__}"
            raise
        finally:
            rec.elapsed_s = time.monotonic() - t0
            rec.active = False
            self.stats.add_iterations(st.iterations)
            self.stats.observe(rec.op, rec.outcome, rec.elapsed_s)
        return result

    def _find(self, session_id: str, reservation_id: str) -> Reservation:
        for r in self.backend.reservations():
            if r.session == session_id and r.reservation_id == reservation_id:
                return r
        raise UnknownReservation(reservation_id)

    @staticmethod
    def _check_id(what: str, value: str) -> None:
        """Ids become xenstore path components: check them before anything
        happens (a '/' or a NUL would name another node or split the request)."""
        if not _NODE_NAME.fullmatch(value):
            shown = debuginfo.escape(value[:80]) + ("..." if len(value) > 80 else "")
            raise InternalError(
                f"invalid {what} {shown!r}: must be 1 to 256 characters of A-Z a-z 0-9 _ @ -"
                " (a xenstore node name)")

    @staticmethod
    def _check_kib(value: int) -> None:
        if value < 0 or value > INT64_MAX:
            raise InvalidMemoryValue(value)

    # -- xcp-idl v1 --------------------------------------------------------

    def login(self, dbg: str, service_name: str) -> str:
        """The service name is the session id. As upstream, a login drops the
        session's whole reservation tree: reservations already transferred to
        a domain still count through the domain's own initial-reservation, so
        nothing is lost (docs/compatibility.md)."""
        self._check_id("service name", service_name)
        with self._table_lock:
            for r in self.backend.reservations():
                if r.session != service_name:
                    continue
                self.backend.remove_reservation(r.session, r.reservation_id)
                where = ("" if r.in_transfer_domid is None
                         else f", in transfer to domain {r.in_transfer_domid}")
                log.info("login %s: dropped reservation %s (%d KiB%s) [dbg %s]",
                         service_name, r.reservation_id, r.kib, where, debuginfo.show(dbg))
        self._done(self._record("login", dbg, service=service_name), "success")
        return service_name

    def reserve_memory(self, dbg: str, session_id: str, kib: int) -> str:
        self._check_id("session id", session_id)
        self._check_kib(kib)
        rid = new_reservation_id()  # stable for a redelivered switch request

        def run(st: OpStats) -> str:
            ops.reserve(self.backend, self.cfg, kib, stats=st)
            with self._table_lock:
                self.backend.add_reservation(Reservation(session_id, rid, kib))
            return rid

        self._squeeze("reserve_memory", dbg, run, session=session_id, kib=kib)
        log.info("reservation %s created: session %s, %d KiB [dbg %s]", rid, session_id, kib,
                 debuginfo.show(dbg))
        return rid

    def reserve_memory_range(
        self, dbg: str, session_id: str, min_kib: int, max_kib: int
    ) -> tuple[str, int]:
        self._check_id("session id", session_id)
        self._check_kib(min_kib)
        self._check_kib(max_kib)
        if max_kib < min_kib:
            raise InvalidMemoryValue(max_kib)
        rid = new_reservation_id()  # stable for a redelivered switch request

        def run(st: OpStats) -> int:
            amount_kib, _ = ops.free_memory_range(self.backend, self.cfg, min_kib, max_kib,
                                                  stats=st)
            with self._table_lock:
                self.backend.add_reservation(Reservation(session_id, rid, amount_kib))
            return amount_kib

        amount_kib = self._squeeze(
            "reserve_memory_range", dbg, run, session=session_id, min_kib=min_kib, max_kib=max_kib
        )
        log.info("reservation %s created: session %s, %d KiB (asked %d-%d) [dbg %s]",
                 rid, session_id, amount_kib, min_kib, max_kib, debuginfo.show(dbg))
        return rid, amount_kib

    def delete_reservation(self, dbg: str, session_id: str, reservation_id: str) -> None:
        """Idempotent, as upstream's xenstore rm: xenopsd's clean-up paths
        delete reservations that may already be gone and catch only
        No_reservation, so an unknown id is not an error."""
        self._check_id("session id", session_id)
        self._check_id("reservation id", reservation_id)
        with self._table_lock:
            try:
                r: Reservation | None = self._find(session_id, reservation_id)
            except UnknownReservation:
                r = None
            else:
                self.backend.remove_reservation(session_id, reservation_id)
        rec = self._record("delete_reservation", dbg, id=reservation_id)
        if r is None:
            self._done(rec, "success (no such reservation)")
            log.info("reservation %s: delete of an unknown or already deleted reservation"
                     " (session %s) [dbg %s]", reservation_id, session_id, debuginfo.show(dbg))
            return
        self._done(rec, "success")
        log.info("reservation %s deleted: session %s, %d KiB [dbg %s]",
                 reservation_id, session_id, r.kib, debuginfo.show(dbg))

    def undo_reservation(self, dbg: str, session_id: str, reservation_id: str) -> None:
        """The reply of a reserve could not be delivered (the caller hung up):
        nobody knows this id, so give the memory back now rather than at the
        session's next login."""
        with self._table_lock:
            self.backend.remove_reservation(session_id, reservation_id)
        self._done(self._record("undo-reservation", dbg, id=reservation_id), "success")
        log.warning("reservation %s undone: its reply could not be delivered (caller hung up)"
                    " [dbg %s]", reservation_id, debuginfo.show(dbg))

    def transfer_reservation_to_domain(
        self, dbg: str, session_id: str, reservation_id: str, domid: int
    ) -> None:
        self._check_id("session id", session_id)
        self._check_id("reservation id", reservation_id)
        if domid < 0:
            raise InternalError(f"invalid domid {domid}")
        with self._table_lock:
            r = self._find(session_id, reservation_id)
            self.backend.transfer_reservation(r, domid)
        self._done(self._record("transfer_reservation_to_domain", dbg, id=reservation_id,
                                domid=domid), "success")
        log.info("reservation %s transferred to domain %d: session %s, %d KiB [dbg %s]",
                 reservation_id, domid, session_id, r.kib, debuginfo.show(dbg))

    def query_reservation_of_domain(self, dbg: str, session_id: str, domid: int) -> str:
        rid = self.backend.domain_reservation_id(domid)
        if rid is None:
            raise NoReservation()
        return rid

    def balance_memory(self, dbg: str) -> None:
        self._squeeze("balance_memory", dbg,
                      lambda st: ops.balance(self.backend, self.cfg, stats=st))

    def balance_if_unbalanced(self) -> bool:
        """The periodic balancer's step; skipped while an operation runs."""
        if not self._op_lock.acquire(blocking=False):
            return False
        try:
            if not ops.is_unbalanced(self.backend, self.cfg):
                return False
            rec = self._record("auto-balance", "periodic")
            rec.active = True
            st = OpStats()
            try:
                ops.balance(self.backend, self.cfg, stats=st)
            except engine_errors.OperationAbandoned:
                self._done(rec, "abandoned")
                return False
            except BaseException as e:
                if isinstance(e, engine_errors.EngineError):  # recorded as the wire names it
                    outcome = wire_error(e, self.cfg.reserve_kib).name
                elif isinstance(e, MemoryInterfaceError):
                    outcome = e.name
                else:
                    outcome = f"failed: {type(e).__name__}"
                self._done(rec, outcome)
                raise
            finally:
                rec.active = False
                self.stats.add_iterations(st.iterations)
            self._done(rec, "success")
            return True
        finally:
            self._op_lock.release()

    def get_host_reserved_memory(self, dbg: str) -> int:
        return self.cfg.reserve_kib

    def get_host_initial_free_memory(self, dbg: str) -> int:
        if self.initial_free is None:
            raise InternalError("host initial free memory is not measured by this squeezed")
        return self.initial_free.get(INITIAL_FREE_WAIT_S)

    def get_domain_zero_policy(self, dbg: str) -> tuple[str, int | tuple[int, int]]:
        total_bytes = self.dom0_total_bytes() if self.dom0_total_bytes else None
        if self.dom0.manage:
            # "auto": domain 0's current total, as upstream answers
            max_bytes = self.dom0.dynamic_max_bytes
            if max_bytes is None:
                if total_bytes is None:
                    raise InternalError("failed to obtain domain 0's total memory")
                max_bytes = total_bytes
            return ("Auto_balloon", (self.dom0.dynamic_min_bytes, max_bytes))
        if total_bytes is None:
            raise InternalError("failed to obtain domain 0's total memory")
        return ("Fixed_size", total_bytes)

    # -- Memory.* dialect --------------------------------------------------

    def query(self, dbg: str) -> dict[str, Any]:
        return {
            "name": "squeezed",
            "vendor": "squeezed project",
            "version": __version__,
            "features": ["reserve", "reserve_range", "transfer_to_domain", "delete", "balance",
                         "diagnostics"],
            "instance_id": self.instance_id,
        }

    # -- operator extensions -----------------------------------------------

    def set_log_level(self, dbg: str, level: str) -> None:
        if level.lower() not in ("debug", "info", "warning", "error"):
            raise InternalError(f"unknown log level {level!r}: debug, info, warning or error")
        if self.on_set_log_level:
            self.on_set_log_level(level.lower())
        else:
            logging.getLogger("squeezed").setLevel(level.upper())

    def get_state(self, dbg: str) -> dict[str, Any]:
        """The operator's view (squeezectl state, top, metrics), shaped as the
        IDL's `state`."""
        st = self._state()
        facts = st["facts"]
        with self._history_lock:
            history = list(self._history)
        running = [rec for rec in history if rec.active]
        counters = self.stats.snapshot()
        for key in ("xenstore_errors", "hypercall_errors"):
            counts = st["error_counts"].get(key, {})
            counters[key] = [{"error": k, "count": v} for k, v in sorted(counts.items())]
        return {
            "host": {**st["host"], **{k: facts.get(k) for k in _HOST_FACTS}},
            "reservations": [
                {"reservation_id": r["reservation_id"], "session_id": r["session"],
                 "kib": r["kib"], "domid": r["in_transfer_domid"]}
                for r in st["reservations"]
            ],
            "domains": [{k: d[k] for k in _DOMAIN_STATE_FIELDS} for d in st["domains"]],
            "left_alone": [{"domid": int(domid), "name": st["names"].get(domid), "reason": why}
                           for domid, why in sorted(st["invalid"]["domains"].items())],
            "operation": running[-1].public() if running else None,
            "history": [rec.public() for rec in history],
            "counters": counters,
        }

    def _state(self) -> dict[str, Any]:
        host = self.backend.observe()
        facts = self.backend.describe()
        uncooperative = set(facts.get("uncooperative_domids", ()))
        # Every "<flag>_domids" list the backend describes is a per-domain flag.
        flagged = {k[: -len("_domids")].replace("_", "-"): set(v) for k, v in facts.items()
                   if k.endswith("_domids") and isinstance(v, list | tuple | set)}
        # Domains the backend leaves alone for unusable xenstore values (domid -> why).
        flagged["bad-keys"] = set(facts.get("invalid_domains") or ())
        names = facts.get("domain_names") or {}
        return {
            "host": {"free_kib": host.free_mem_kib, "reserved_kib": self.cfg.reserve_kib},
            "facts": {k: v for k, v in facts.items() if isinstance(v, int)},
            "error_counts": {k: v for k, v in facts.items() if k.endswith("_errors")
                             and isinstance(v, dict)},
            "reservations": [
                {"session": r.session, "reservation_id": r.reservation_id, "kib": r.kib,
                 "in_transfer_domid": r.in_transfer_domid}
                for r in self.backend.reservations()
            ],
            "domains": [
                {"domid": d.domid, "can_balloon": d.can_balloon,
                 "dynamic_min_kib": d.dynamic_min_kib, "target_kib": d.target_kib,
                 "memory_actual_kib": d.memory_actual_kib, "dynamic_max_kib": d.dynamic_max_kib,
                 "memory_max_kib": d.memory_max_kib, "hit_target": d.hit_target,
                 "uncooperative": d.domid in uncooperative, "name": names.get(d.domid),
                 "flags": sorted(f for f, ids in flagged.items() if d.domid in ids)}
                for d in host.domains
            ],
            "operation_running": self._op_lock.locked(),
            "names": names,
            # Left out of the arithmetic by the backend for bad values (issue 11 #1, #2).
            "invalid": {"domains": dict(facts.get("invalid_domains", {})),
                        "reservations": dict(facts.get("invalid_reservations", {}))},
        }

    def get_diagnostics(self, dbg: str) -> str:
        st = self._state()
        h = {**st["facts"], **st["host"]}  # the service's own figures win
        lines = [f"squeezed {__version__} instance {self.instance_id}"]
        lines.append("host: " + " ".join(f"{k}={v}" for k, v in sorted(h.items())
                                          if not isinstance(v, list | tuple | dict)))
        lines.append(f"operation running: {'yes' if st['operation_running'] else 'no'}")
        lines.append(f"reservations ({len(st['reservations'])}):")
        for r in st["reservations"]:
            dom = r["in_transfer_domid"]
            where = "" if dom is None else f" in-transfer to {dom}"
            lines.append(f"  {r['session']}/{r['reservation_id']} {r['kib']} KiB{where}")
        lines.append("domains (KiB): domid min target actual max maxmem flags")
        for d in st["domains"]:
            flags = ",".join(f for f, on in (
                ("balloon", d["can_balloon"]), ("at-target", d["hit_target"]),
                ("uncooperative", d["uncooperative"])) if on) or "-"
            lines.append(
                f"  {d['domid']} {d['dynamic_min_kib']} {d['target_kib']} "
                f"{d['memory_actual_kib']} {d['dynamic_max_kib']} {d['memory_max_kib']} {flags}"
            )
        for domid, why in st["invalid"]["domains"].items():
            lines.append(f"  {domid} left alone: {why}")
        for path, why in st["invalid"]["reservations"].items():
            lines.append(f"  reservation {path} ignored: {why}")
        with self._history_lock:
            history = list(self._history)
        lines.append(f"last operations ({len(history)}):")
        for rec in history:
            at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.at))
            lines.append(f"  {at}Z {rec.op} {rec.args} dbg={rec.dbg} -> {rec.outcome}"
                         f" ({rec.elapsed_s:.3f} s)")
        return "\n".join(lines) + "\n"
