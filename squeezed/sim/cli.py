"""`squeezed-sim`: run scenarios on the virtual-time simulator.

    squeezed-sim run FILE [--json] [--plot FILE.png]
    squeezed-sim demo [--json] [--plot FILE.png]     (the built-in demo scenario)
    squeezed-sim plot RECORDING [-o FILE.png]        (draw a `squeezectl record` file)
    squeezed-sim xenstored --socket PATH             (a simulated xenstored)
    squeezed-sim switch --socket PATH                (a simulated message-switch)

Exit status: 0 every expectation held and the simulated hypervisor saw no
violation; 1 otherwise; 2 the scenario is malformed (or --plot cannot work).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from squeezed.sim.plot import Marker, Series, have_matplotlib, plot
from squeezed.sim.scenario import Scenario, ScenarioError, demo_path, load
from squeezed.sim.virtual.runner import build_host, run

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


def _run(scenario: Scenario, as_json: bool, plot_path: str | None) -> int:
    if plot_path and not have_matplotlib("squeezed-sim"):
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
        plot(host.series,
             [Marker(s["t_start_s"], s["op"]) for s in result["steps"]],
             f"scenario {result['name']}", plot_path)
        if not as_json:
            print(f"plot written to {plot_path}")
    return EXIT_OK if result["ok"] else EXIT_FAILED


def plot_recording(path: str, output: str | None) -> int:
    """`squeezed-sim plot`: a run recorded by `squeezectl record`."""
    from squeezed.ctl.record import RecordError
    from squeezed.ctl.record import load as load_recording

    try:
        rec = load_recording(path)
    except RecordError as e:
        print(f"squeezed-sim: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not have_matplotlib("squeezed-sim"):
        return EXIT_USAGE
    out = output or str(Path(path).with_suffix(".png"))
    series = [Series(s["t_s"], s["host_free_kib"], tuple(tuple(d) for d in s["domains"]))
              for s in rec.samples]
    markers = [Marker(o["t_s"], o["op"] if o["outcome"] == "success"
                      else f"{o['op']}: {o['outcome']}") for o in rec.operations]
    plot(series, markers, f"recorded run {Path(path).name}", out, xlabel="time (s)")
    print(f"plot of {len(series)} samples and {len(markers)} operations written to {out}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "xenstored":
        from squeezed.sim.xenhost.xenstored.server import main_xenstored  # imported lazily

        return main_xenstored(argv[1:])
    if argv and argv[0] == "switch":
        sp = argparse.ArgumentParser(prog="squeezed-sim switch",
                                     description="Run a simulated message-switch.")
        sp.add_argument("--socket", required=True, help="Unix socket to listen on")
        from squeezed.sim.xenhost.switch import serve_forever

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
    p = sub.add_parser("plot", help="draw a `squeezectl record` file like --plot")
    p.add_argument("file", metavar="RECORDING")
    p.add_argument("-o", "--output", metavar="FILE.png",
                   help="the picture (default: RECORDING with .png)")
    sub.add_parser("xenstored", help="run a simulated xenstored (see its --help)")
    sub.add_parser("switch", help="run a simulated message-switch (--socket PATH)")
    args = parser.parse_args(argv)
    if args.cmd == "plot":
        return plot_recording(args.file, args.output)
    path = str(demo_path()) if args.cmd == "demo" else args.file
    try:
        scenario = load(path)
    except ScenarioError as e:
        print(f"squeezed-sim: malformed scenario: {e}", file=sys.stderr)
        return EXIT_USAGE
    return _run(scenario, args.json, args.plot)


if __name__ == "__main__":
    sys.exit(main())
