"""End-to-end freeing speed through the production stack.

The Memory service on XenHost (cffi libxenctrl binding, xenstore client,
watcher) against the simulated Xen host (xenstored over its socket, the
stand-in libxenctrl, guests whose drivers move in real time): the wall time of
reserve_memory(X) against the physical limit X / (N * R). Upstream squeezed
polls once a second, so its time is at least ceil(limit) + 1 s.

    python bench/bench_stack.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

from squeezed.engine.operations import EngineConfig
from squeezed.service import MemoryService
from squeezed.sim.drivers import Ideal
from squeezed.sim.xenhost.host import SimulatedXenHost
from squeezed.xen.host import XenHost
from squeezed.xen.xenctrl import XenCtrl
from squeezed.xen.xenstore import Watcher, XenstoreClient

MIB = 1024
GIB = 1024 * MIB


def one_run(n: int, rate_kib_s: int, x_kib: int) -> float:
    run_dir = tempfile.mkdtemp(prefix="sqz-bench-", dir="/tmp")
    per_kib = 2 * x_kib // n
    sim = SimulatedXenHost(run_dir, total_kib=256 * MIB + 1 * GIB + n * (256 * MIB + per_kib))
    sim.start()
    try:
        os.environ.update(sim.env())
        for i in range(n):
            size = 256 * MIB + per_kib
            sim.add_running_domain(i + 1, actual_kib=size, target_kib=size,
                                   dynamic_min_kib=256 * MIB, dynamic_max_kib=size,
                                   driver=Ideal(rate_kib_s=rate_kib_s))
        xc = XenCtrl.open(sim.libxenctrl_path)
        xs = XenstoreClient(sim.xenstored_path)
        host = XenHost(xc, xs)
        stop = threading.Event()
        watcher = Watcher(sim.xenstored_path)
        t = threading.Thread(target=host.run_watcher, args=(watcher, stop), daemon=True)
        t.start()
        svc = MemoryService(host, EngineConfig(reserve_kib=0))
        time.sleep(0.2)  # watches registered
        t0 = time.perf_counter()
        svc.reserve_memory("bench", "bench", x_kib)
        elapsed = time.perf_counter() - t0
        stop.set()
        t.join(2)
        watcher.close()
        xs.close()
        xc.close()
        return elapsed
    finally:
        sim.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print("| N | R (MiB/s) | X (MiB) | limit (s) | median wall (s) | ratio | upstream >= (s) |")
    print("|---|---|---|---|---|---|---|")
    for n, rate_mib, x_mib in ((4, 256, 1024), (8, 128, 1024), (1, 512, 512)):
        limit = x_mib / (n * rate_mib)
        walls = [one_run(n, rate_mib * MIB, x_mib * MIB) for _ in range(args.runs)]
        med = statistics.median(walls)
        print(f"| {n} | {rate_mib} | {x_mib} | {limit:.2f} | {med:.3f} | {med / limit:.2f} "
              f"| {int(limit + 0.999) + 1} |")


if __name__ == "__main__":
    main()
