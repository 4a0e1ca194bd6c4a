"""A simulated Xen host made of the real interfaces, for `squeezed --simulate`
and the end-to-end tests.

It runs a xenstored speaking the real wire protocol, a simulated hypervisor
whose state the stand-in libxenctrl (compiled from the real <xenctrl.h>)
shares through an mmap'd file, and guests whose balloon drivers follow
`memory/target` in real time. squeezed's production code (cffi binding,
xenstore client, XenHost) runs on top unchanged.

The simulator plays the parts squeezed does not: the toolstack (xenopsd
writes a new domain's memory keys; the domain builder allocates the
initial reservation, bounded by maxmem) and the guests (a booted guest
writes control/feature-balloon, then its driver moves tot_pages).

Guests are event-driven: a write to a guest's memory/target or
memory/initial-reservation (seen through xenstored's write hook) makes it
active, and one shared timer moves the active guests every `tick_s`; a guest
at its target (whose driver stays put there) or waiting for a reservation
drops out, and with none active the timer sleeps until the next write or the
next scheduled destruction. An idle host of any size therefore costs nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from squeezed.sim.drivers import Driver, Ideal
from squeezed.sim.xenhost.build import build_stub
from squeezed.sim.xenhost.hypervisor import InsufficientMemory, NoSuchDomain, SimHypervisor
from squeezed.sim.xenhost.xenstored.server import Xenstored

log = logging.getLogger(__name__)

PAGE_KIB = 4
DEFAULT_RATE_KIB_S = 1 << 20
# The guests' timer gives up the GIL every this many guests: without it a
# tick over a thousand guests held xenstored (same process) up for a whole
# switch interval (5 ms) at a time.
_YIELD_EVERY = 100


def ideal_driver(rate_kib_s: int = DEFAULT_RATE_KIB_S) -> Driver:
    return Ideal(rate_kib_s=rate_kib_s)


@dataclass
class SimGuest:
    domid: int
    driver: Driver
    domain_type: str = "pv"
    offset_kib: int = 0  # memory the guest has beyond what its driver counts
    booted: bool = True
    can_balloon: bool = True
    build_rate_kib_s: int = 4 << 20  # domain builder speed
    destroy_at_s: float | None = None


class SimulatedXenHost:
    """Start with `start()`; `xenstored_path`, `libxenctrl_path` and `env()`
    tell squeezed where to find the simulated interfaces."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        total_kib: int = 16 << 20,
        xen_kib: int = 256 << 10,
        dom0_kib: int = 1 << 20,
        tick_s: float = 0.01,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.xenstored_path = str(self.run_dir / "xenstored.sock")
        self.state_path = str(self.run_dir / "xc-state")
        self.total_kib = total_kib
        self.xen_kib = xen_kib
        self.dom0_kib = dom0_kib
        self.tick_s = tick_s
        self.xenstored = Xenstored(self.xenstored_path)
        self.hv: SimHypervisor | None = None
        self.libxenctrl_path: str | None = None
        self.guests: dict[int, SimGuest] = {}
        self._targets: dict[int, int] = {}
        self._active: set[int] = set()  # guests the timer must move (see the module doc)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # something became active (or stop)
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> SimulatedXenHost:
        if os.path.exists(self.state_path):
            os.unlink(self.state_path)  # a fresh host every start
        self.libxenctrl_path = str(build_stub(self.run_dir / "lib"))
        self.hv = SimHypervisor(self.state_path)
        total_pages = self.total_kib // PAGE_KIB
        self.hv.set_physinfo(total_pages, (self.total_kib - self.xen_kib) // PAGE_KIB, 0)
        self.xenstored.start()
        self.xenstored.on_write(self._on_write)
        self.hv.create_domain(0, self.dom0_kib // PAGE_KIB, self.dom0_kib // PAGE_KIB)
        self.xenstored.write("/local/domain/0/domain-type", "pv")
        self.xenstored.write("/local/domain/0/memory/target", str(self.dom0_kib))
        self.xenstored.write("/local/domain/0/memory/static-max", str(self.dom0_kib))
        self._thread = threading.Thread(target=self._run, name="sim-guests", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join()
        self.xenstored.stop()
        if self.hv:
            self.hv.close()

    def env(self) -> dict[str, str]:
        assert self.hv is not None
        return {**self.hv.env(), "XENSTORED_PATH": self.xenstored_path}

    def now(self) -> float:
        return time.monotonic() - self._t0

    # -- the toolstack's part ----------------------------------------------

    def add_running_domain(
        self,
        domid: int,
        *,
        actual_kib: int,
        target_kib: int,
        dynamic_min_kib: int,
        dynamic_max_kib: int,
        maxmem_kib: int | None = None,
        driver: Driver | None = None,
        can_balloon: bool = True,
        domain_type: str = "pv",
        offset_kib: int = 0,
    ) -> SimGuest:
        """A domain that booted before squeezed started looking."""
        assert self.hv is not None
        overhead = 0 if domain_type == "pv" else 1024
        maxmem_kib = target_kib if maxmem_kib is None else maxmem_kib
        self.hv.create_domain(
            domid, (actual_kib + offset_kib) // PAGE_KIB,
            (maxmem_kib + offset_kib + overhead) // PAGE_KIB, hvm=domain_type == "hvm",
        )
        g = SimGuest(domid, driver or ideal_driver(), domain_type, offset_kib,
                     booted=True, can_balloon=can_balloon)
        with self._lock:
            self.guests[domid] = g
        self.activate(domid)
        self._write_policy(domid, domain_type, target_kib, dynamic_min_kib, dynamic_max_kib,
                           max(dynamic_max_kib, target_kib))
        self.xenstored.write(f"/local/domain/{domid}/memory/memory-offset", str(offset_kib))
        if can_balloon:
            self.xenstored.write(f"/local/domain/{domid}/control/feature-balloon", "1")
        else:  # booted, with a guest agent but no balloon driver
            self.xenstored.write(f"/local/domain/{domid}/data/updated", "1")
        self.xenstored.introduce_domain(domid)
        return g

    def create_domain(
        self,
        domid: int,
        *,
        target_kib: int,
        dynamic_min_kib: int,
        dynamic_max_kib: int,
        static_max_kib: int | None = None,
        driver: Driver | None = None,
        domain_type: str = "pv",
        can_balloon: bool = True,
    ) -> SimGuest:
        """What xenopsd does for a VM start before squeezed's transfer: an
        empty paused domain whose memory keys are written. After the transfer
        the builder allocates memory/initial-reservation (bounded by maxmem),
        then the guest boots and advertises its balloon driver."""
        assert self.hv is not None
        self.hv.create_domain(domid, 0, 0, hvm=domain_type == "hvm", paused=True)
        g = SimGuest(domid, driver or ideal_driver(), domain_type, booted=False,
                     can_balloon=can_balloon)
        with self._lock:
            self.guests[domid] = g
        self.activate(domid)
        self._write_policy(domid, domain_type, target_kib, dynamic_min_kib, dynamic_max_kib,
                           static_max_kib or dynamic_max_kib)
        self.xenstored.introduce_domain(domid)
        return g

    def destroy_domain(self, domid: int) -> None:
        assert self.hv is not None
        with self._lock:
            self.guests.pop(domid, None)
            self._targets.pop(domid, None)
            self._active.discard(domid)
        try:
            self.hv.destroy_domain(domid)
        except NoSuchDomain:
            pass
        self.xenstored.rm(f"/local/domain/{domid}")
        self.xenstored.release_domain(domid)

    def _write_policy(self, domid: int, domain_type: str, target_kib: int, dmin_kib: int,
                      dmax_kib: int, static_max_kib: int) -> None:
        base = f"/local/domain/{domid}"
        self.xenstored.write(f"{base}/name", f"guest-{domid}")  # as the toolstack names it
        self.xenstored.write(f"{base}/domain-type", domain_type)
        self.xenstored.write(f"{base}/memory/static-max", str(static_max_kib))
        self.xenstored.write(f"{base}/memory/dynamic-min", str(dmin_kib))
        self.xenstored.write(f"{base}/memory/dynamic-max", str(dmax_kib))
        self.xenstored.write(f"{base}/memory/target", str(target_kib))

    # -- the guests' part ----------------------------------------------------

    def activate(self, domid: int) -> None:
        """Let the timer look at this guest again (its driver, maxmem or
        allocation changed behind the simulator's back)."""
        with self._lock:
            self._active.add(domid)
        self._wake.set()

    def _on_write(self, path: str, value: str | None) -> None:
        parts = path.strip("/").split("/")
        if len(parts) == 5 and parts[:2] == ["local", "domain"] and parts[3] == "memory":
            if parts[4] not in ("target", "initial-reservation"):
                return
            try:
                domid = int(parts[2])
                with self._lock:
                    if parts[4] == "target":
                        if value is None:
                            self._targets.pop(domid, None)
                        else:
                            self._targets[domid] = int(value)
                    self._active.add(domid)
            except ValueError:
                return
            self._wake.set()

    def _run(self) -> None:
        last = time.monotonic()
        cost_s = 0.0
        while not self._stop.is_set():
            with self._lock:
                idle = not self._active
            if idle:
                # Nothing moves: sleep until a write wakes a guest, or until
                # the next scheduled destruction.
                self._wake.clear()
                with self._lock:
                    idle = not self._active
                    due = [g.destroy_at_s for g in self.guests.values()
                           if g.destroy_at_s is not None]
                if idle:
                    timeout_s = None if not due else max(0.0, min(due) - self.now())
                    self._wake.wait(timeout_s)
                last = time.monotonic() - self.tick_s
            else:
                # A tick must cost well under its length, or the guests' timer
                # starves xenstored (same process): ticks last >= 5x their cost
                # (drivers are exact for any tick length).
                self._stop.wait(max(self.tick_s, 5 * cost_s))
            now = time.monotonic()
            dt = now - last
            last = now
            try:
                self.tick(self.now(), dt)
            except Exception:  # a simulator bug must not kill the host silently
                log.exception("simulated guests: tick failed")
            cost_s = time.monotonic() - now

    def tick(self, now_s: float, dt_s: float) -> None:
        """Move the active guests (and destroy those due): one read of the
        domain list and one batch of allocation changes for all of them."""
        assert self.hv is not None
        with self._lock:
            doomed = [g for g in self.guests.values()
                      if g.destroy_at_s is not None and now_s >= g.destroy_at_s]
            guests = [g for domid in sorted(self._active)
                      if (g := self.guests.get(domid)) is not None]
            self._active.clear()
            targets = dict(self._targets)
        for g in doomed:
            self.destroy_domain(g.domid)
        if not guests:
            return
        infos = {d.domid: d for d in self.hv.domains()}
        free_kib = self.hv.free_pages * PAGE_KIB
        again: set[int] = set()
        moves: dict[int, tuple[int, int, bool]] = {}  # domid -> (pages, kib, stays put there)
        for n, g in enumerate(guests):
            if n % _YIELD_EVERY == _YIELD_EVERY - 1:
                time.sleep(0)  # let xenstored (same process) answer meanwhile
            d = infos.get(g.domid)
            if d is None or (g.destroy_at_s is not None and now_s >= g.destroy_at_s):
                continue
            if not g.booted:
                if self._build(g, d.tot_pages * PAGE_KIB, d.max_pages * PAGE_KIB, dt_s):
                    again.add(g.domid)
                continue
            target = targets.get(g.domid)
            if target is None:
                continue  # woken again when a target is written
            overhead = 0 if g.domain_type == "pv" else 1024
            maxmem_kib = max(0, d.max_pages * PAGE_KIB - overhead - g.offset_kib)
            actual_kib = d.tot_pages * PAGE_KIB - g.offset_kib
            new_kib = g.driver.step(now_s, dt_s, actual_kib, target, maxmem_kib, free_kib)
            # Page rounding: an allocation within a page of its target is there.
            done = (abs(new_kib - target) < PAGE_KIB
                    and getattr(g.driver, "STILL_AT_TARGET", False))
            if new_kib != actual_kib:
                pages = max(0, new_kib + g.offset_kib) // PAGE_KIB
                moves[g.domid] = (pages, new_kib, done)
                free_kib -= (pages - d.tot_pages) * PAGE_KIB
            elif not done:
                again.add(g.domid)
        if moves:
            got = self.hv.balloon_many([(domid, m[0]) for domid, m in moves.items()])
            for domid, (pages, _kib, done) in moves.items():
                if domid in got and (got[domid] != pages or not done):
                    again.add(domid)  # clamped by Xen, or still on its way
        if again:
            with self._lock:
                self._active.update(domid for domid in again if domid in self.guests)

    def _build(self, g: SimGuest, tot_kib: int, max_kib: int, dt_s: float) -> bool:
        """The domain builder's tick; True while there is more to do."""
        assert self.hv is not None
        raw = self.xenstored.read(f"/local/domain/{g.domid}/memory/initial-reservation")
        if raw is None:
            return False  # woken when the toolstack transfers a reservation
        want_kib = int(raw)
        if tot_kib < want_kib:
            step_kib = max(PAGE_KIB, int(g.build_rate_kib_s * dt_s))
            new_kib = min(want_kib, tot_kib + step_kib, max_kib)
            if new_kib > tot_kib:
                try:
                    self.hv.balloon_to(g.domid, new_kib // PAGE_KIB)
                except InsufficientMemory:
                    pass
            return True
        # Built: the guest boots. What the builder gave beyond the target
        # (e.g. firmware, video RAM) is invisible to its balloon driver.
        target_kib = self._targets.get(g.domid, tot_kib)
        g.offset_kib = tot_kib - target_kib  # as squeezed calibrates it; may be negative
        g.booted = True
        self.hv.set_state(g.domid, paused=False)
        base = f"/local/domain/{g.domid}"
        if g.can_balloon:
            self.xenstored.write(f"{base}/control/feature-balloon", "1")
        self.xenstored.write(f"{base}/data/updated", "1")
        return True  # now its driver follows the target
