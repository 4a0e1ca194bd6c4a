"""Issue 11 #5: if the xenstore watcher's reader thread died, events() returned
nothing for ever and the cache went stale while the watchdog kept pinging.
Now the watch loop notices (and raises, so that the supervisor starts a
fresh watcher that re-reads every domain), the cache is no longer trusted
meanwhile, and the loop beats a heartbeat every time round."""

from __future__ import annotations

import threading

import pytest

from squeezed.errors import InternalError
from squeezed.supervisor import Heartbeats
from tests.faults.xenenv import GIB, XenEnv, wait_for


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_reader_thread_death_is_noticed_and_the_cache_distrusted(short_tmp, monkeypatch):
    env = XenEnv(short_tmp, monkeypatch)
    try:
        def boom(ev):
            raise RuntimeError("planted bug in the reader thread")

        env.watcher._enqueue = boom  # the next event kills the reader thread
        env.sim.xenstored.write("/local/domain/1/memory/dynamic-max", str(3 * GIB))
        assert wait_for(lambda: env.watcher_error is not None)
        assert isinstance(env.watcher_error, InternalError)
        assert "reader thread died" in str(env.watcher_error)
        assert not env.host._watching
        # Without a watcher every read goes to xenstore: the write is seen.
        assert env.host.snapshot().domain(1).dynamic_max_kib == 3 * GIB
    finally:
        env.close()


def test_watch_loop_beats_its_heartbeat(short_tmp, monkeypatch):
    env = XenEnv(short_tmp, monkeypatch)
    try:
        now = [0.0]
        hb = Heartbeats(clock=lambda: now[0])
        beat = hb.register("xenstore-watcher", 10.0)
        beats = []
        stop = threading.Event()
        t = threading.Thread(target=env.host.run_watcher,
                             args=(env.watcher, stop, lambda: (beats.append(1), beat())))
        t.start()
        assert wait_for(lambda: len(beats) >= 2)
        now[0] = 5.0
        n = len(beats)
        assert wait_for(lambda: len(beats) > n)
        now[0] = 12.0
        assert hb.late() == []  # it beat after the clock moved: not late
        stop.set()
        t.join(5)
    finally:
        env.close()
