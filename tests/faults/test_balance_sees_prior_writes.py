"""Issue 10 (found on real Xen): writing a guest's memory/dynamic-max and
calling balance_memory at once (xenopsd's set_memory_dynamic_range) logged
"every domain is at its dynamic_max": the operation used the watch cache
before the watch event had been applied. Every operation must see every
xenstore write made before the call.

The watcher here delivers events only once someone has asked it for a
barrier: a watcher as late as possible, so that an operation that merely
trusts the cache is caught every time, not by luck of scheduling."""

from __future__ import annotations

import threading

import pytest

from squeezed.xen.xenstore import Watcher, WatchEvent
from tests.faults.xenenv import GIB, XenEnv, wait_for


class LateWatcher(Watcher):
    def __init__(self, *a, slow_s: float = 0.0, **kw) -> None:
        self.released = threading.Event()
        self.slow_s = slow_s  # and then slow to hand over what it has
        super().__init__(*a, **kw)

    def barrier(self, timeout_s: float = 5.0) -> int:
        self.released.set()
        return super().barrier(timeout_s)

    def events(self, timeout_s: float | None = None) -> list[WatchEvent]:
        if not self.released.wait(timeout_s):
            return []
        if self.slow_s:
            threading.Event().wait(self.slow_s)
        return super().events(timeout_s)


@pytest.fixture
def env(short_tmp, monkeypatch):
    e = XenEnv(short_tmp, monkeypatch, free_gib=2, watcher_cls=LateWatcher)
    yield e
    e.close()


def test_balance_right_after_a_dynamic_max_write_applies_it(env):
    env.svc.balance_memory("t")
    assert env.target(1) == 2 * GIB
    # xenopsd's set_memory_dynamic_range, then balance_memory straight away.
    env.client.write("/local/domain/1/memory/dynamic-max", str(5 * GIB // 2))
    env.svc.balance_memory("t")
    assert env.target(1) == 5 * GIB // 2


def test_reserve_right_after_a_dynamic_min_write_counts_on_it(env):
    # Free 2 GiB; domain 1 can give 1 GiB (min 1 GiB) and domain 2 0.5 GiB. Lower
    # domain 1's dynamic-min to 0.5 GiB: a 3.4 GiB reservation becomes possible.
    env.client.write("/local/domain/1/memory/dynamic-min", str(GIB // 2))
    sid = env.svc.login("t", "xenopsd")
    _, kib = env.svc.reserve_memory_range("t", sid, 3 * GIB + 400 * 1024, 4 * GIB)
    assert kib >= 3 * GIB + 400 * 1024
    assert wait_for(lambda: env.target(1) < 1 * GIB)


def test_a_restarted_watcher_is_waited_for_too(env):
    """The supervisor replaces a dead watcher with a fresh one, whose events
    are numbered from 0 again: the progress of the old one must not count."""
    env.svc.balance_memory("t")  # releases the first watcher
    for i in range(100):  # the old watcher gets far ahead
        env.client.write("/local/domain/2/data/updated", str(i))
    env.svc.balance_memory("t")
    env.stop.set()
    env.wt.join(5)
    env.watcher.close()
    # A fresh watcher, as the supervisor starts after a crash.
    env.stop = threading.Event()
    env.watcher = LateWatcher(env.sim.xenstored_path, slow_s=0.3)
    env.wt = threading.Thread(target=env.host.run_watcher, args=(env.watcher, env.stop),
                              daemon=True)
    env.wt.start()
    assert wait_for(lambda: env.host._watching)
    env.client.write("/local/domain/1/memory/dynamic-max", str(5 * GIB // 2))
    env.svc.balance_memory("t")
    assert env.target(1) == 5 * GIB // 2
