"""The production Xen backend (cffi binding, xenstore client, XenHost, the
Memory service) on the simulated Xen host, for fault tests: host memory =
Xen 256 MiB + dom0 1 GiB + guest 1 (2 GiB, range 1-2 GiB) + guest 2 (1 GiB,
range 0.5-1 GiB) + `free_gib` free."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from squeezed.engine.operations import EngineConfig
from squeezed.service import MemoryService
from squeezed.sim.drivers import Driver
from squeezed.sim.xenhost.host import SimulatedXenHost, ideal_driver
from squeezed.xen.host import XenHost
from squeezed.xen.xenctrl import XenCtrl
from squeezed.xen.xenstore import Watcher, XenstoreClient

GIB = 1 << 20  # in KiB
MIB = 1 << 10
FAST = ideal_driver(8 * GIB)  # KiB/s


def wait_for(pred: Callable[[], Any], timeout_s: float = 10.0) -> bool:
    """Poll a state predicate (not a sleep standing in for one)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


class XenEnv:
    def __init__(self, tmp: Path, monkeypatch: Any, *, free_gib: int = 1,
                 driver2: Driver | None = None, cfg: EngineConfig | None = None,
                 watcher_cls: type[Watcher] = Watcher, xs: Any = None) -> None:
        self.sim = SimulatedXenHost(tmp, total_kib=(1 + 3 + free_gib) * GIB + 256 * MIB,
                                    dom0_kib=1 * GIB)
        self.sim.start()
        for k, v in self.sim.env().items():
            monkeypatch.setenv(k, v)
        self.sim.add_running_domain(1, actual_kib=2 * GIB, target_kib=2 * GIB,
                                    dynamic_min_kib=1 * GIB, dynamic_max_kib=2 * GIB, driver=FAST)
        self.sim.add_running_domain(2, actual_kib=1 * GIB, target_kib=1 * GIB,
                                    dynamic_min_kib=512 * MIB, dynamic_max_kib=1 * GIB,
                                    driver=driver2 or FAST)
        self.xc = XenCtrl.open(self.sim.libxenctrl_path)
        self.client = XenstoreClient(self.sim.xenstored_path)
        self.xs = xs(self.client) if xs is not None else self.client
        self.cfg = cfg or EngineConfig(stuck_after_s=0.5, uncooperative_after_s=1.0)
        self.host = XenHost(self.xc, self.xs, uncooperative_after_s=self.cfg.uncooperative_after_s)
        self.svc = MemoryService(self.host, self.cfg)
        self.stop = threading.Event()
        self.watcher = watcher_cls(self.sim.xenstored_path)
        self.watcher_error: BaseException | None = None
        self.wt = threading.Thread(target=self._run_watcher, daemon=True)
        self.wt.start()
        assert wait_for(lambda: self.host._watching)

    def _run_watcher(self) -> None:
        try:
            self.host.run_watcher(self.watcher, self.stop)
        except BaseException as e:  # the test inspects it
            self.watcher_error = e

    def restart_host(self) -> None:
        """A restarted squeezed: a fresh XenHost (which loads the reservation
        table again), service and watcher on the same host."""
        self.stop.set()
        self.wt.join(5)
        self.watcher.close()
        self.stop = threading.Event()
        self.host = XenHost(self.xc, self.xs, uncooperative_after_s=self.cfg.uncooperative_after_s)
        self.svc = MemoryService(self.host, self.cfg)
        self.watcher = Watcher(self.sim.xenstored_path)
        self.wt = threading.Thread(target=self._run_watcher, daemon=True)
        self.wt.start()
        assert wait_for(lambda: self.host._watching)

    def with_cfg(self, **changes: Any) -> None:
        self.cfg = replace(self.cfg, **changes)
        self.svc.cfg = self.cfg

    def close(self) -> None:
        self.stop.set()
        self.wt.join(5)
        self.watcher.close()
        self.client.close()
        self.sim.stop()

    def target(self, domid: int) -> int:
        v = self.sim.xenstored.read(f"/local/domain/{domid}/memory/target")
        assert v is not None
        return int(v)
