"""Engine benchmarks.

(a) Freeing speed in real time: N domains with ideal drivers at R KiB/s on a
    simulated host driven by the monotonic clock (the engine really sleeps);
    the wall time to free X KiB against the physical limit X / (N * R).
    Goal: within 1.2x the limit plus 0.1 s.
(b) The engine's cost per iteration: one `Squeezer.step` (stuckness update +
    proportional policy + two-phase split) on hosts of 10 .. 10000 domains,
    and one whole loop iteration of `change_host_free_memory` in the worst
    case (every target rewritten). Goal: under 5 ms at 1000 domains.

Prints a table and writes docs/benchmarks.md (unless --no-write).

    python bench/bench_engine.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from squeezed.engine import EngineConfig, free_memory
from squeezed.engine.model import Domain, Host
from squeezed.engine.operations import OperationAbandoned, change_host_free_memory
from squeezed.engine.squeezer import Squeezer, StucknessMonitor
from squeezed.sim.drivers import Ideal
from squeezed.sim.virtual.clock import RealClock
from squeezed.sim.virtual.host import SimulatedHost, VirtualDomain

MIB = 1024
ROOT = Path(__file__).resolve().parent.parent


# ---- (a) real-time freeing -----------------------------------------------------------


def free_in_real_time(n: int, rate_kib_s: int, x_kib: int) -> float:
    """Wall seconds for the engine to free x_kib from n ideal domains."""
    per_kib = x_kib // n
    doms = [
        VirtualDomain(i + 1, 256 * MIB, 256 * MIB + 2 * per_kib, 256 * MIB + 2 * per_kib,
                      256 * MIB + 2 * per_kib, 256 * MIB + 2 * per_kib, 4, True, Ideal(rate_kib_s))
        for i in range(n)
    ]
    host = SimulatedHost(0, doms, clock=RealClock())
    t0 = time.perf_counter()
    free_memory(host, EngineConfig(reserve_kib=0), x_kib)
    elapsed_s = time.perf_counter() - t0
    assert host.snapshot().free_mem_kib >= x_kib and not host.violations
    return elapsed_s


def bench_real_time(runs: int) -> list[dict]:
    rows = []
    for n, rate_mib_s, limit_s in ((4, 100, 1.5), (16, 100, 1.0), (1, 50, 1.0)):
        rate = rate_mib_s * MIB
        x_kib = int(n * rate * limit_s)
        times = [free_in_real_time(n, rate, x_kib) for _ in range(runs)]
        med = statistics.median(times)
        rows.append({
            "n": n, "rate_mib_s": rate_mib_s, "x_mib": x_kib // MIB, "limit_s": limit_s,
            "median_s": med, "ratio": med / limit_s, "runs": runs,
            "goal_met": med <= 1.2 * limit_s + 0.1,
        })
    return rows


# ---- (b) cost per iteration ------------------------------------------------------------


def random_host(n: int, seed: int = 1) -> Host:
    rng = random.Random(seed)
    doms = []
    for i in range(n):
        dmin = rng.randint(256, 4096) * MIB
        dmax = dmin + rng.randint(0, 4096) * MIB
        actual = rng.randint(dmin, dmax)
        doms.append(Domain(i + 1, True, dmin, actual, dmax, actual, actual, 4))
    return Host(tuple(doms), free_mem_kib=0)


def step_cost_s(host: Host, repeats: int) -> float:
    """Median wall time of one steady-state Squeezer.step."""
    aim_kib = sum(d.min_freeable_kib for d in host.domains) // 2
    sq = Squeezer(StucknessMonitor())
    sq.step(host, aim_kib, lambda free: free >= aim_kib, 0.0)  # first sight of each domain
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        sq.step(host, aim_kib, lambda free: free >= aim_kib, 0.02 * (i + 1))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _FrozenIO:
    """A host that never changes, so every iteration rewrites every target:
    the worst case of one loop iteration (decision + writes + logging)."""

    def __init__(self, host: Host, iterations: int) -> None:
        self.host, self.left, self.t = host, iterations, 0.0

    def snapshot(self) -> Host:
        return self.host

    def set_target(self, domid: int, target_kib: int) -> None:
        pass

    def set_maxmem(self, domid: int, maxmem_kib: int) -> None:
        pass

    def now(self) -> float:
        return self.t

    def wait(self, seconds: float) -> None:
        self.left -= 1
        if self.left <= 0:
            raise OperationAbandoned
        self.t += seconds


def loop_iteration_cost_s(host: Host, iterations: int) -> float:
    aim_kib = sum(d.min_freeable_kib for d in host.domains) // 2
    io = _FrozenIO(host, iterations)
    t0 = time.perf_counter()
    try:
        change_host_free_memory(io, EngineConfig(reserve_kib=0), aim_kib,
                                lambda free: free >= aim_kib, None)
    except OperationAbandoned:
        pass
    return (time.perf_counter() - t0) / iterations


def bench_iteration(quick: bool) -> list[dict]:
    rows = []
    for n in (10, 100, 1000, 10000):
        host = random_host(n)
        repeats = max(5, min(200, 200_000 // n)) // (4 if quick else 1)
        rows.append({
            "n": n,
            "step_s": step_cost_s(host, max(3, repeats)),
            "loop_s": loop_iteration_cost_s(host, max(3, repeats // 4)),
        })
    return rows


# ---- report ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt_time(s: float) -> str:
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def report(rt: list[dict], it: list[dict]) -> str:
    lines = [
        "## (a) Freeing memory in real time",
        "",
        "N domains with ideal balloon drivers at R each free X in total; the physical",
        "limit is X / (N·R). Goal: median within 1.2 × limit + 0.1 s.",
        "",
        "| N | R (MiB/s) | X (MiB) | limit (s) | median wall (s) | ratio | runs | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rt:
        lines.append(
            f"| {r['n']} | {r['rate_mib_s']} | {r['x_mib']} | {r['limit_s']:.2f} "
            f"| {r['median_s']:.3f} | {r['ratio']:.3f} | {r['runs']} "
            f"| {'met' if r['goal_met'] else 'MISSED'} |"
        )
    lines += [
        "",
        "## (b) Engine cost per iteration",
        "",
        "`Squeezer.step`: stuckness update, proportional policy and two-phase split on a",
        "snapshot (steady state, median). Loop iteration: one whole iteration of",
        "`change_host_free_memory` where every target is rewritten (worst case).",
        "Goal: under 5 ms at 1000 domains.",
        "",
        "| domains | Squeezer.step | loop iteration (worst case) |",
        "|---|---|---|",
    ]
    for r in it:
        lines.append(f"| {r['n']} | {fmt_time(r['step_s'])} | {fmt_time(r['loop_s'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer runs")
    p.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)
    rt = bench_real_time(runs=3 if args.quick else 5)
    it = bench_iteration(args.quick)
    body = report(rt, it)
    print(body)
    if not args.no_write:
        header = [
            "# Benchmarks",
            "",
            "Written by `bench/bench_engine.py` (`make bench`).",
            "",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- nproc: {os.cpu_count()}",
            f"- CPU: {cpu_model()}",
            f"- Python: {platform.python_version()}",
            "",
            "Timings on a shared machine vary between runs (up to ~2x for (b)).",
            "",
        ]
        (ROOT / "docs" / "benchmarks.md").write_text("\n".join(header) + "\n" + body + "\n")
    ok = all(r["goal_met"] for r in rt) and next(r for r in it if r["n"] == 1000)["step_s"] < 5e-3
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
