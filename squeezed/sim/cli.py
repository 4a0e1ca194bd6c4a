"""`squeezed-sim`: run scenarios on the virtual-time simulator.

    squeezed-sim run FILE [--json] [--plot FILE.png]
    squeezed-sim demo [--json] [--plot FILE.png]     (the built-in demo scenario)
    squeezed-sim xenstored --socket PATH             (a simulated xenstored)
    squeezed-sim switch --socket PATH                (a simulated message-switch)

Exit status: 0 every expectation held and the simulated hypervisor saw no
violation; 1 otherwise; 2 the scenario is malformed (or --plot cannot work).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from squeezed.sim.scenario import Scenario, ScenarioError, build_host, demo_path, load, run

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _fmt_kib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib:,}"


def format_step(index: int, s: dict[str, Any]) -> str:
    params = " ".join(f"{k}={v}" for k, v in s["params"].items())
    outcome = s["outcome"] if s["detail"] is None else f"{s['outcome']} {s['detail']}"
    verdict = "ok" if s["ok"] else "FAILED: " + "; ".join(s["failures"])
    head = f"step {index}: {s['op']} {params}".rstrip()
    lines = [
        head + (f"  # {s['note']}" if s["note"] else ""),
        f"  outcome {outcome}; expected {s['expect'] or '(anything)'}: {verdict}",
        f"  {s['sim_seconds']:.2f} s simulated, {s['iterations']} iterations, host free "
        f"{_fmt_kib(s['host_free_kib'])} KiB (lowest {_fmt_kib(s['min_free_kib'])})"
        + (f", granted {_fmt_kib(s['amount_kib'])} KiB" if s["amount_kib"] is not None else ""),
        f"  {'domid':>5} {'target_kib':>12} {'actual_kib':>12} {'maxmem_kib':>12}"
        f" {'dyn_min_kib':>12} {'dyn_max_kib':>12}",
    ]
    for d in s["domains"]:
        flag = "" if d["can_balloon"] else "  (no balloon driver)"
        lines.append(
            f"  {d['domid']:>5} {d['target_kib']:>12,} {d['actual_kib']:>12,}"
            f" {d['maxmem_kib']:>12,} {d['dynamic_min_kib']:>12,} {d['dynamic_max_kib']:>12,}"
            + flag
        )
    return "\n".join(lines)


def format_result(result: dict[str, Any]) -> str:
    out = [f"scenario {result['name']}: {result['description'].strip()}".rstrip(": "), ""]
    for i, s in enumerate(result["steps"]):
        out += [format_step(i, s), ""]
    if result["violations"]:
        out.append("violations:")
        out += [f"  t={v['time_s']:.2f} s domid={v['domid']} {v['kind']}: {v['detail']}"
                for v in result["violations"]]
    else:
        out.append("violations: none")
    out.append("PASS" if result["ok"] else "FAIL")
    return "\n".join(out)


def _check_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("squeezed-sim: --plot needs matplotlib; install it with"
              " `pip install 'squeezed[plot]'` (or `pip install matplotlib`)", file=sys.stderr)
        return False
    return True


def plot(host_series: list, result: dict[str, Any], path: str) -> None:
    """Host free memory and each domain's target (dashed) and actual over time."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    t = [s.t_s for s in host_series]
    fig, ax = plt.subplots(figsize=(11, 6))
    ax.plot(t, [s.host_free_kib / 1024 for s in host_series], color="black", lw=2,
            label="host free")
    domids = sorted({d[0] for s in host_series for d in s.domains})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, domid in enumerate(domids):
        pts = [(s.t_s, d) for s in host_series for d in s.domains if d[0] == domid]
        ts = [p[0] for p in pts]
        c = colours[i % len(colours)]
        ax.plot(ts, [p[1][2] / 1024 for p in pts], color=c, label=f"dom{domid} actual")
        ax.plot(ts, [p[1][1] / 1024 for p in pts], color=c, ls="--", lw=1,
                label=f"dom{domid} target")
    for s in result["steps"]:
        ax.axvline(s["t_start_s"], color="grey", ls=":", lw=1)
        ax.annotate(s["op"], (s["t_start_s"], 1), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8, color="grey")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("memory (MiB)")
    ax.set_title(f"scenario {result['name']}")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run(scenario: Scenario, as_json: bool, plot_path: str | None) -> int:
    if plot_path and not _check_matplotlib():
        return EXIT_USAGE
    host = build_host(scenario)
    result = run(scenario, host)
    if as_json:
        keep = ("op", "outcome", "detail", "amount_kib", "sim_seconds", "iterations",
                "host_free_kib", "domains", "params", "min_free_kib", "t_start_s", "t_end_s",
                "expect", "ok", "failures")
        doc = {
            "name": result["name"],
            "steps": [{k: s[k] for k in keep} for s in result["steps"]],
            "violations": result["violations"],
            "ok": result["ok"],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(format_result(result))
    if plot_path:
        plot(host.series, result, plot_path)
        if not as_json:
            print(f"plot written to {plot_path}")
    return EXIT_OK if result["ok"] else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "xenstored":
        from squeezed.sim.xenstored import main_xenstored  # another module; imported lazily

        return main_xenstored(argv[1:])
    if argv and argv[0] == "switch":
        sp = argparse.ArgumentParser(prog="squeezed-sim switch",
                                     description="Run a simulated message-switch.")
        sp.add_argument("--socket", required=True, help="Unix socket to listen on")
        from squeezed.sim.switch import serve_forever

        serve_forever(sp.parse_args(argv[1:]).socket)
        return EXIT_OK
    parser = argparse.ArgumentParser(prog="squeezed-sim", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("run", "run a scenario file"), ("demo", "run the built-in demo")):
        p = sub.add_parser(name, help=help_)
        if name == "run":
            p.add_argument("file", help="scenario TOML file")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--plot", metavar="FILE.png", help="draw memory over time (matplotlib)")
    sub.add_parser("xenstored", help="run a simulated xenstored (see its --help)")
    sub.add_parser("switch", help="run a simulated message-switch (--socket PATH)")
    args = parser.parse_args(argv)
    path = str(demo_path()) if args.cmd == "demo" else args.file
    try:
        scenario = load(path)
    except ScenarioError as e:
        print(f"squeezed-sim: malformed scenario: {e}", file=sys.stderr)
        return EXIT_USAGE
    return _run(scenario, args.json, args.plot)


if __name__ == "__main__":
    sys.exit(main())
