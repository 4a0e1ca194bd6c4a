"""Issue 11 #7: squeezing operations are served in arrival order."""

from __future__ import annotations

import socket
import threading
import time

from rpc_fake import FakeService, serving

from faults.svc_helpers import service
from squeezed.engine import operations as ops
from squeezed.fifolock import FifoLock, arrived
from squeezed.rpc import xmlrpc
from squeezed.rpc.server import XmlRpcServer


def _wait_for(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for a state"
        time.sleep(0.001)


def test_fifo_lock_hands_over_in_arrival_order() -> None:
    lock = FifoLock()
    lock.acquire()
    order: list[int] = []

    def worker(i: int) -> None:
        with lock:
            order.append(i)

    threads = []
    for i in range(20):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        threads.append(t)
        _wait_for(lambda n=i + 1: lock.waiting() == n)  # i is queued before i+1 comes
    lock.release()
    for t in threads:
        t.join(10)
    assert order == list(range(20))
    assert not lock.locked()


def test_fifo_lock_timeout_and_nonblocking() -> None:
    lock = FifoLock()
    assert lock.acquire()
    assert not lock.acquire(blocking=False)
    assert not lock.acquire(timeout=0.01)
    assert lock.waiting() == 0  # the timed-out waiter left the queue
    lock.release()
    assert lock.acquire(blocking=False)
    lock.release()


def test_service_operations_run_in_arrival_order(monkeypatch) -> None:
    svc, _ = service()
    order: list[str] = []
    monkeypatch.setattr(ops, "balance", lambda backend, cfg, stats=None: order.append(
        threading.current_thread().name))
    svc._op_lock.acquire()  # an operation is running
    threads = []
    for i in range(12):
        t = threading.Thread(target=svc.balance_memory, args=(f"t{i}",), name=f"caller-{i}")
        t.start()
        threads.append(t)
        _wait_for(lambda n=i + 1: svc._op_lock.waiting() == n)
    svc._op_lock.release()
    for t in threads:
        t.join(10)
    assert order == [f"caller-{i}" for i in range(12)]


def test_fifo_lock_serves_by_arrival_stamp_not_by_who_reached_it_first() -> None:
    """A request's thread may reach the lock after a later request's (load,
    the GIL): the lock is handed in the order the requests arrived."""
    lock = FifoLock()
    lock.acquire()
    order: list[float] = []

    def worker(stamp_s: float) -> None:
        with arrived(stamp_s), lock:
            order.append(stamp_s)

    threads = []
    for n, stamp_s in enumerate([30.0, 10.0, 20.0, 5.0], start=1):
        t = threading.Thread(target=worker, args=(stamp_s,))
        t.start()
        threads.append(t)
        _wait_for(lambda n=n: lock.waiting() == n)
    lock.release()
    for t in threads:
        t.join(10)
    assert order == [5.0, 10.0, 20.0, 30.0]
    assert not lock.locked()


def test_a_timed_out_stamped_waiter_leaves_the_queue_in_order() -> None:
    lock = FifoLock()
    lock.acquire()
    order: list[str] = []
    with arrived(1.0):
        assert not lock.acquire(timeout=0.01)  # the earliest arrival gives up
    assert lock.waiting() == 0

    def worker(name: str, stamp_s: float) -> None:
        with arrived(stamp_s), lock:
            order.append(name)

    late = threading.Thread(target=worker, args=("late", 3.0))
    late.start()
    _wait_for(lambda: lock.waiting() == 1)
    early = threading.Thread(target=worker, args=("early", 2.0))
    early.start()
    _wait_for(lambda: lock.waiting() == 2)
    lock.release()
    late.join(10)
    early.join(10)
    assert order == ["early", "late"]


class _LockedFake(FakeService):
    """balance_memory queues on one FifoLock, as the service's operations do."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = FifoLock()
        self.served: list[str] = []

    def balance_memory(self, dbg: str) -> None:
        with self.lock:
            self.served.append(dbg)


def _request(dbg: str) -> bytes:
    body = xmlrpc.encode_call("balance_memory", [dbg])
    return (f"POST / HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def test_rpc_requests_are_served_in_the_order_their_connections_came() -> None:
    """The second caller's request reaches the lock first; the first caller,
    who connected first, is still served first."""
    fake = _LockedFake()
    with serving(XmlRpcServer, fake) as (srv, _):
        fake.lock.acquire()  # an operation is running
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for s in (first, second):
                s.settimeout(10)
                s.connect(srv.path)
            second.sendall(_request("second"))
            _wait_for(lambda: fake.lock.waiting() == 1)
            first.sendall(_request("first"))
            _wait_for(lambda: fake.lock.waiting() == 2)
            fake.lock.release()
            for s in (first, second):
                assert b"200 OK" in s.recv(65536)
        finally:
            first.close()
            second.close()
    assert fake.served == ["first", "second"]


def test_fifo_lock_under_timeouts_racing_release_keeps_one_holder_and_loses_no_waiter() -> None:
    """12 threads, stamped and unstamped, with timeouts that race release():
    never two holders, nobody left waiting, the lock free at the end."""
    import contextlib
    import random

    lock = FifoLock()
    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def worker(seed: int) -> None:
        nonlocal inside, most_inside
        rnd = random.Random(seed)
        for _ in range(300):
            stamp = (arrived(time.monotonic() - rnd.random() * 0.001) if rnd.random() < 0.5
                     else contextlib.nullcontext())
            with stamp:
                if lock.acquire(timeout=rnd.choice([0, 0.0001, 0.001, -1])):
                    with guard:
                        inside += 1
                        most_inside = max(most_inside, inside)
                    time.sleep(rnd.random() * 0.0002)
                    with guard:
                        inside -= 1
                    lock.release()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert most_inside == 1
    assert not lock.locked() and lock.waiting() == 0


def test_a_waiter_handed_the_lock_as_its_timeout_fires_keeps_it(monkeypatch) -> None:
    """The race the stress test rarely hits, made certain: the gate's timed wait
    reports a timeout although release() has just handed the lock over."""
    import squeezed.fifolock as fifolock

    lock = FifoLock()  # its own mutex is a real lock
    lock.acquire()

    class LateGate:
        """A gate whose timed acquire waits for the hand-over, then says 'timed out'."""

        def __init__(self) -> None:
            self._real = threading.Lock()

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            if timeout == -1:
                return self._real.acquire()
            self._real.acquire()  # handed over by release()...
            return False  # ...just as the timeout fired

        def release(self) -> None:
            self._real.release()

    class Shim:
        Lock = LateGate

    monkeypatch.setattr(fifolock, "threading", Shim)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=5)))
    waiter.start()
    _wait_for(lambda: lock.waiting() == 1)
    lock.release()  # hands over to the waiter
    waiter.join(10)
    assert got == [True]  # the lock is the waiter's: it must know
    assert lock.locked() and lock.waiting() == 0
    lock.release()
    assert not lock.locked()
