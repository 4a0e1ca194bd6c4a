"""Exactly-once effect of redelivered switch requests, on the real Memory
service over the virtual-time host: a repeat is answered with the recorded
result and changes nothing; a request interrupted after acting but before its
record (or before its outcome, for a delete) finds what it did; records are
bounded (dropped with their reservation, and after the time limit)."""

from __future__ import annotations

import pytest

from squeezed.engine import EngineConfig
from squeezed.errors import CannotFreeThisMuchMemory
from squeezed.service import MemoryService
from squeezed.sim.virtual.host import SimulatedHost
from squeezed.switch.exactly_once import (
    ExactlyOnce,
    MemoryRecords,
    RequestIdentity,
    current,
    new_reservation_id,
)

GIB = 1 << 20


class Env:
    def __init__(self) -> None:
        self.host = SimulatedHost(4 * GIB)
        self.svc = MemoryService(self.host, EngineConfig(reserve_kib=0))
        self.store = MemoryRecords()
        self.now = [1000.0]
        self.once = ExactlyOnce(self.svc, self.store, self.host.reservations,
                                clock=lambda: self.now[0], ttl_s=600)

    def as_request(self, mid: int, payload: str = "p", reply_to: str = "xenopsd:1"):
        return RequestIdentity.of("org.xen.xapi.memory", mid, reply_to, payload)

    def call(self, ident, method: str, *args):
        token = current.set(ident)
        try:
            return getattr(self.once, method)(*args)
        finally:
            current.reset(token)

    def table(self):
        return sorted((r.session, r.reservation_id, r.kib, r.in_transfer_domid)
                      for r in self.host.reservations())


@pytest.fixture
def env() -> Env:
    return Env()


def test_identity_needs_id_reply_queue_and_payload() -> None:
    base = RequestIdentity.of("q", 3, "xenopsd:1", "payload")
    assert base.key == RequestIdentity.of("q", 3, "xenopsd:1", "payload").key
    others = [RequestIdentity.of("q", 4, "xenopsd:1", "payload"),
              RequestIdentity.of("q", 3, "xenopsd:2", "payload"),
              RequestIdentity.of("q", 3, "xenopsd:1", "payload2"),
              RequestIdentity.of("q2", 3, "xenopsd:1", "payload")]
    assert len({base.key, *(o.key for o in others)}) == 5


def test_reservation_ids_random_outside_a_switch_request() -> None:
    assert new_reservation_id() != new_reservation_id()
    ident = RequestIdentity.of("q", 1, "r", "p")
    token = current.set(ident)
    try:
        assert new_reservation_id() == new_reservation_id()
    finally:
        current.reset(token)


@pytest.mark.parametrize("method,args", [
    ("reserve_memory", ("d", "xenopsd", GIB)),
    ("reserve_memory_range", ("d", "xenopsd", GIB, 2 * GIB)),
])
def test_repeated_reserve_is_answered_from_its_record(env: Env, method, args) -> None:
    ident = env.as_request(7)
    first = env.call(ident, method, *args)
    table = env.table()
    assert len(table) == 1
    assert env.call(ident, method, *args) == first
    assert env.table() == table and env.once.replayed == 1
    # a different request (another id) does reserve again
    env.call(env.as_request(8), method, *args)
    assert len(env.table()) == 2


def test_reserve_interrupted_before_its_record_finds_its_reservation(env: Env) -> None:
    ident = env.as_request(7)
    rid, kib = env.call(ident, "reserve_memory_range", "d", "xenopsd", GIB, 2 * GIB)
    env.store.d.clear()  # killed after the reservation was written, before the record
    env.host._raw_free_kib = 0  # running it again would now fail (or take more memory)
    assert env.call(ident, "reserve_memory_range", "d", "xenopsd", GIB, 2 * GIB) == (rid, kib)
    assert env.table() == [("xenopsd", rid, kib, None)]


def test_failed_request_replays_its_failure_without_acting(env: Env) -> None:
    ident = env.as_request(9)
    with pytest.raises(CannotFreeThisMuchMemory):
        env.call(ident, "reserve_memory", "d", "xenopsd", 100 * GIB)
    env.host._raw_free_kib = 200 * GIB  # now it would succeed: it must not
    with pytest.raises(CannotFreeThisMuchMemory):
        env.call(ident, "reserve_memory", "d", "xenopsd", 100 * GIB)
    assert env.table() == []


def test_transfer_and_delete_are_not_repeated(env: Env) -> None:
    rid = env.call(env.as_request(1), "reserve_memory", "d", "xenopsd", GIB)
    env.call(env.as_request(2), "transfer_reservation_to_domain", "d", "xenopsd", rid, 5)
    delete = env.as_request(3)
    env.call(delete, "delete_reservation", "d", "xenopsd", rid)
    assert env.table() == []
    # the transfer delivered again after the delete: recorded success, no error
    assert env.call(env.as_request(2), "transfer_reservation_to_domain",
                    "d", "xenopsd", rid, 5) is None
    assert env.call(delete, "delete_reservation", "d", "xenopsd", rid) is None
    # ... and a new delete of the same reservation is unit too: delete is
    # idempotent, as upstream's xenstore rm
    assert env.call(env.as_request(4), "delete_reservation", "d", "xenopsd", rid) is None
    assert env.table() == []


def test_delete_interrupted_before_its_outcome_answers_success(env: Env) -> None:
    rid = env.call(env.as_request(1), "reserve_memory", "d", "xenopsd", GIB)
    delete = env.as_request(3)
    env.call(delete, "delete_reservation", "d", "xenopsd", rid)
    rec = env.once._load(delete.key)
    assert rec is not None
    del rec["outcome"]  # killed after removing it, before recording the outcome
    env.store.put(delete.key, __import__("json").dumps(rec))
    assert env.call(delete, "delete_reservation", "d", "xenopsd", rid) is None


def test_calls_outside_the_switch_are_untouched(env: Env) -> None:
    rid = env.once.reserve_memory("d", "xenopsd", GIB)
    assert env.store.d == {}
    env.once.delete_reservation("d", "xenopsd", rid)
    assert env.once.delete_reservation("d", "xenopsd", rid) is None  # idempotent
    assert env.store.d == {}
    assert env.once.get_host_reserved_memory("d") == 0  # everything else passes through


def test_records_are_bounded(env: Env) -> None:
    a = env.call(env.as_request(1), "reserve_memory", "d", "xenopsd", GIB)
    env.call(env.as_request(2), "reserve_memory", "d", "xenopsd", GIB)
    assert env.once.prune() == 0 and len(env.store.d) == 2
    env.svc.delete_reservation("d", "xenopsd", a)  # over a socket: no record of its own
    assert env.once.prune() == 0  # a redelivery may still come for a while
    env.now[0] += 301
    assert env.once.prune() == 1 and len(env.store.d) == 1  # gone with its reservation
    env.now[0] += 300
    assert env.once.prune() == 1 and env.store.d == {}  # and after the time limit


def test_an_unreachable_record_store_does_not_change_the_answer(env: Env) -> None:
    from squeezed.switch.exactly_once import RecordStoreError

    class Down(MemoryRecords):
        def put(self, key: str, value: str) -> None:
            raise RecordStoreError("xenstored gone")

    env.once.store = Down()
    ident = env.as_request(5)
    rid = env.call(ident, "reserve_memory", "d", "xenopsd", GIB)  # made, not recorded
    assert env.call(ident, "reserve_memory", "d", "xenopsd", GIB) == rid  # found by its id
    with pytest.raises(CannotFreeThisMuchMemory):  # the outcome, not the store's failure
        env.call(env.as_request(6), "reserve_memory", "d", "xenopsd", 100 * GIB)
    assert len(env.table()) == 1
