"""The engine's one interface to the world, and its wait policy.

`HostIO` is all an operation may do to a host: take a snapshot, write a
balloon target or maxmem, read the clock, wait. The Xen backend implements it
over xenstore and libxenctrl with the wall clock; the simulators implement it
in virtual time, so the same loop is tested deterministically.

`poll_delay_s` is the wait policy, a pure function: the operation loop asks
it how long to wait and then calls `HostIO.wait`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from squeezed.engine.model import Host


class HostIO(Protocol):
    """Everything the engine needs from the outside world.

    A host that fails (a refused write, a host that cannot be read) raises
    `squeezed.engine.errors.HostFailed` (or an OSError); `wait` raises
    `OperationAbandoned` at shutdown.

    A host may also offer ``begin_operation()`` (see `begin_operation`):
    called once when an operation starts, it makes every later snapshot
    reflect every change made to the host before the call (the Xen backend
    uses it to wait for xenstore watch events already sent to it), and
    ``quick_free_kib()`` (see `quick_free_kib`).

    And ``set_targets(targets: Mapping[int, int])`` (see `target_batch`):
    several domains' targets in one call, as if `set_target` were called for
    each (the Xen backend pipelines them: one round trip per phase, not four
    per domain). The engine keeps each domain's maxmem ordering around it."""

    def snapshot(self) -> Host: ...

    def set_target(self, domid: int, target_kib: int) -> None: ...

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None: ...

    def now(self) -> float: ...

    def wait(self, seconds: float) -> None:
        """Let time pass; may raise OperationAbandoned to stop the operation."""
        ...


def begin_operation(io: HostIO) -> None:
    """Call the host's optional ``begin_operation()``: optional, so that hosts
    without caches (simulators, benchmarks) need nothing."""
    begin = getattr(io, "begin_operation", None)
    if begin is not None:
        begin()


def target_batch(io: HostIO) -> Callable[[Mapping[int, int]], None] | None:
    """The host's optional ``set_targets``, or None: optional, so that
    simulators write one target at a time as before."""
    batch: Callable[[Mapping[int, int]], None] | None = getattr(io, "set_targets", None)
    return batch


def quick_free_kib(io: HostIO) -> int | None:
    """The host's optional ``quick_free_kib()``: host free memory exactly as
    ``snapshot()`` would count it, when the host knows, without reading every
    domain, that every balloonable domain is at its target; else None (and
    for hosts without it), and the operation takes a snapshot."""
    quick = getattr(io, "quick_free_kib", None)
    if quick is None:
        return None
    kib = quick()
    return kib if isinstance(kib, int) else None


def poll_delay_s(
    previous_s: float,
    busy: bool,
    now_s: float,
    *,
    min_poll_s: float,
    max_poll_s: float,
    stuck_at_s: float | None,
    deadline_s: float,
) -> float:
    """How long to wait before looking at the host again.

    Upstream sleeps 1 s per iteration. Here: `min_poll_s` while the host is
    `busy` (memory moved or targets were just written), doubling from
    `previous_s` up to `max_poll_s` while nothing moves; never past the moment
    a driver would be declared stuck (`stuck_at_s`) nor past the operation's
    deadline, each plus one `min_poll_s` so that the next look falls just
    after it."""
    delay_s = min_poll_s if busy else min(previous_s * 2, max_poll_s)
    if stuck_at_s is not None:
        delay_s = min(delay_s, max(0.0, stuck_at_s - now_s) + min_poll_s)
    return min(delay_s, max(0.0, deadline_s - now_s) + min_poll_s)
