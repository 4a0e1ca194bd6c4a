"""Issue 10: start-up without xenstored. squeezed listens first, answers what
needs no xenstore, says why the rest fails, and retries xenstored every 5 s
(upstream's squeezed_xenstore.ml) instead of exiting, so a boot where
xenstored comes up late does not burn systemd's start limit. (A machine
without a hypervisor still exits 1 at once: tests/test_daemon.py.)"""

from __future__ import annotations

import pytest

from squeezed.errors import InternalError
from tests.daemon_harness import GIB, DaemonProcess, make_sim
from tests.faults.xenenv import wait_for


@pytest.fixture
def sim(short_tmp):
    s = make_sim(short_tmp)
    yield s
    s.stop()


def test_late_xenstored_is_waited_for_while_serving(short_tmp, sim):
    sim.xenstored.stop()
    d = DaemonProcess(short_tmp, sim)
    try:
        d.start()  # ready = the socket answers get_host_reserved_memory
        assert d.proc.poll() is None
        with pytest.raises(InternalError) as ei:
            d.call("get_diagnostics", "t")
        assert "xenstore" in ei.value.message
        assert "retrying every 5 s" in d.output()
        sim.xenstored.start()
        sid = d.call("login", "t", "xenopsd")

        def reserved():
            try:
                return d.call("reserve_memory", "t", sid, 1 * GIB // 2)
            except InternalError:
                return None

        assert wait_for(reserved, timeout_s=20)
        assert d.proc.poll() is None
    finally:
        d.stop()
