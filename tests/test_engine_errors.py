"""The engine's own exceptions and their one mapping to the interface's
errors (upstream's memory_server.ml `wrap`), and the engine's wait policy.
Expected values are written out by hand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from squeezed import errors as wire
from squeezed.engine import errors as eng
from squeezed.engine.io import poll_delay_s
from squeezed.engine.model import Domain, Host
from squeezed.engine.operations import EngineConfig, reserve
from squeezed.service import MemoryService, wire_error
from squeezed.xen.host import XenHostError


def test_the_engine_does_not_know_the_wire_errors():
    code = ("import sys, squeezed.engine, squeezed.engine.io, squeezed.engine.errors; "
            "print(sorted(m for m in sys.modules if m.startswith('squeezed.')"
            " and not m.startswith('squeezed.engine')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(("err", "wire_value"), [
    (eng.CannotFree(1000, 700), ["Cannot_free_this_much_memory", [900, 600]]),
    (eng.DomainsRefused([7, 3]), ["Domains_refused_to_cooperate", [3, 7]]),
    (eng.InvalidAmount(-5), ["Invalid_memory_value", -5]),
    (eng.OperationAbandoned(),
     ["Internal_error", "squeezed is shutting down; operation abandoned"]),
    (eng.DeadlineExceeded("operation timed out after 2.0 s"),
     ["Internal_error", "operation timed out after 2.0 s"]),
    (eng.HostFailed("xenstore write x = 1 failed"),
     ["Internal_error", "xenstore write x = 1 failed"]),
])
def test_wire_error_nets_out_the_reserve(err, wire_value):
    assert wire_error(err, 100).wire() == wire_value


def test_a_host_failure_that_is_a_wire_error_already_passes_unchanged():
    e = XenHostError("setting maxmem of domain 3 to 10 KiB failed")
    assert isinstance(e, eng.HostFailed) and isinstance(e, wire.InternalError)
    assert wire_error(e, 100) is e
    assert e.wire() == ["Internal_error", "setting maxmem of domain 3 to 10 KiB failed"]


class _OneStuckDomain:
    """A host whose one domain never moves: the engine must blame it."""

    def __init__(self) -> None:
        self.t = 0.0
        self.target_kib = self.maxmem_kib = 1000

    def snapshot(self) -> Host:
        d = Domain(1, True, 100, self.target_kib, 1000, 1000, self.maxmem_kib)
        return Host((d,), 50)

    def set_target(self, domid: int, target_kib: int) -> None:
        self.target_kib = target_kib

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None:
        self.maxmem_kib = maxmem_kib

    def now(self) -> float:
        return self.t

    def wait(self, seconds: float) -> None:
        self.t += seconds


def test_engine_raises_its_own_errors_and_the_service_the_wire_ones():
    cfg = EngineConfig(reserve_kib=10, stuck_after_s=1.0)
    with pytest.raises(eng.DomainsRefused) as ei:
        reserve(_OneStuckDomain(), cfg, 500)
    assert ei.value.domids == [1]
    assert not isinstance(ei.value, wire.MemoryInterfaceError)
    with pytest.raises(eng.CannotFree) as ec:
        reserve(_OneStuckDomain(), cfg, 2000)  # beyond even dynamic_min: fails fast
    assert (ec.value.needed_kib, ec.value.free_kib) == (2010, 50 + 900)
    svc = MemoryService(_OneStuckDomain(), cfg)  # type: ignore[arg-type]
    with pytest.raises(wire.CannotFreeThisMuchMemory) as ew:
        svc.reserve_memory("t", "s", 2000)
    assert (ew.value.needed_kib, ew.value.free_kib) == (2000, 940)


@pytest.mark.parametrize(("args", "expected_s"), [
    # busy: the shortest poll
    ((0.5, True, 10.0, None, 100.0), 0.02),
    # idle: double the previous, up to the longest
    ((0.08, False, 10.0, None, 100.0), 0.16),
    ((0.75, False, 10.0, None, 100.0), 1.0),
    # never past the moment a driver would be declared stuck (plus one poll)
    ((0.5, False, 10.0, 10.3, 100.0), 0.3 + 0.02),
    ((0.5, False, 10.0, 9.0, 100.0), 0.02),
    # nor past the deadline (plus one poll)
    ((0.5, False, 10.0, None, 10.1), 0.1 + 0.02),
    ((0.5, False, 10.0, 10.3, 10.2), 0.2 + 0.02),
])
def test_poll_delay(args, expected_s):
    previous_s, busy, now_s, stuck_at_s, deadline_s = args
    got = poll_delay_s(previous_s, busy, now_s, min_poll_s=0.02, max_poll_s=1.0,
                       stuck_at_s=stuck_at_s, deadline_s=deadline_s)
    assert got == pytest.approx(expected_s)
