"""Round-trip latency of one Memory call through message-switch versus the
JSON-RPC socket, with the real server shells and codecs and a no-op service
(the simulated switch, in one process). Prints medians and 95th percentiles.

    .venv/bin/python bench/bench_switch.py [CALLS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_scale import pct  # noqa: E402 - bench/ is sys.path[0] when run as a script
from rpc_fake import FakeService  # noqa: E402

from squeezed.rpc.client import MemoryClient  # noqa: E402
from squeezed.rpc.codec import JsonCodec  # noqa: E402
from squeezed.rpc.dispatch import Dispatcher  # noqa: E402
from squeezed.rpc.server import JsonRpcServer  # noqa: E402
from squeezed.sim.xenhost.switch import SimulatedSwitch  # noqa: E402
from squeezed.switch.client import SwitchClient, SwitchMemoryClient  # noqa: E402
from squeezed.switch.server import SwitchServer  # noqa: E402


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def report(name: str, xs: list[float]) -> None:
    xs = sorted(xs)
    p95 = pct(xs, 95)
    print(f"{name:28} median {statistics.median(xs) * 1e3:7.3f} ms   p95 {p95 * 1e3:7.3f} ms")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    d = tempfile.mkdtemp(prefix="sqzb-", dir="/tmp")
    fake = FakeService()
    dispatcher = Dispatcher(fake)
    codec = JsonCodec(dispatcher)
    with SimulatedSwitch(f"{d}/switch"), JsonRpcServer(f"{d}/memory.json", dispatcher):
        server = SwitchServer(f"{d}/switch", lambda b: codec.handle(b.encode()).decode())
        stop = threading.Event()
        t = threading.Thread(target=server.run, args=(stop,), daemon=True)
        t.start()
        assert server.connected.wait(5)
        with SwitchClient(f"{d}/switch", token="bench:1") as sc:
            mc = SwitchMemoryClient(f"{d}/switch", timeout=10, client=sc)
            mc.call("get_host_reserved_memory", "warm")
            report("message-switch", timed(lambda: mc.call("get_host_reserved_memory", "b"), n))
        sock = MemoryClient(f"{d}/memory.json", "json", timeout=10)
        report("JSON socket (conn per call)", timed(
            lambda: sock.call("get_host_reserved_memory", "b"), n))
        stop.set()
        server.shutdown()
        t.join(10)


if __name__ == "__main__":
    main()
