"""Issue 11 #7: squeezing operations are served in arrival order."""

from __future__ import annotations

import threading
import time

from faults.svc_helpers import service
from squeezed.engine import operations as ops
from squeezed.fifolock import FifoLock


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
