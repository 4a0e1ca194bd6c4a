"""The daemon's state in the Prometheus text exposition format (0.0.4).

`exposition(state)` turns a get_state result into text; `squeezectl metrics`
prints it, and the daemon writes the same to a node_exporter textfile when
`metrics-textfile` is set (`write_textfile`: write a temporary file, then an
atomic rename, so the collector never reads half a file).

Memory is in KiB, as everywhere in squeezed (the names say so).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
from collections.abc import Iterable
from typing import Any, TextIO

from squeezed.ctl.source import FETCH_ERRORS, Caller, StateSource, describe_error

# The libxenctrl calls squeezed makes (squeezed.xen.xenctrl).
HYPERCALLS = ("xc_domain_getinfolist", "xc_domain_setmaxmem", "xc_physinfo", "xc_shadow_control")
_HOST_GAUGES = (
    ("free_kib", "squeezed_host_free_kib",
     "Host memory free for new reservations (free and scrub pages less reservations)."),
    ("reserved_kib", "squeezed_host_reserved_kib", "Host memory squeezed always keeps free."),
    ("reservations_kib", "squeezed_host_reservations_kib",
     "Host memory held back for reservations and unbuilt domains."),
    ("xen_free_kib", "squeezed_host_xen_free_kib", "Xen's free pages."),
    ("xen_scrub_kib", "squeezed_host_xen_scrub_kib", "Xen's pages waiting to be scrubbed."),
    ("xen_total_kib", "squeezed_host_xen_total_kib", "The host's memory."),
)
_DOMAIN_GAUGES = (
    ("target_kib", "squeezed_domain_target_kib", "The domain's balloon target."),
    ("memory_actual_kib", "squeezed_domain_actual_kib", "Memory the domain holds."),
    ("dynamic_min_kib", "squeezed_domain_dynamic_min_kib", "Lower bound of the target."),
    ("dynamic_max_kib", "squeezed_domain_dynamic_max_kib", "Upper bound of the target."),
    ("memory_max_kib", "squeezed_domain_maxmem_kib", "Xen maxmem of the domain."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[str, dict[str, Any], float | int]]) -> None:
        """HELP and TYPE, then the samples (suffix, labels, value); nothing
        at all for a family without samples."""
        rows = [f"{name}{suffix}{_labels(labels)} {_num(v)}" for suffix, labels, v in samples]
        if not rows:
            return
        self.lines += [f"# HELP {name} {_escape(help_)}", f"# TYPE {name} {kind}", *rows]


def exposition(state: dict[str, Any]) -> str:
    """The text exposition of a get_state result."""
    w = _Writer()
    host = state["host"]
    for key, name, help_ in _HOST_GAUGES:
        if host.get(key) is not None:
            w.family(name, "gauge", help_ + " KiB.", [("", {}, host[key])])
    w.family("squeezed_reservations", "gauge", "Outstanding reservations.",
             [("", {}, len(state.get("reservations", [])))])
    domains = state.get("domains", [])

    def dlabels(d: dict[str, Any]) -> dict[str, Any]:
        return {"domid": d["domid"], "name": d.get("name") or ""}

    for key, name, help_ in _DOMAIN_GAUGES:
        w.family(name, "gauge", help_ + " KiB.", [("", dlabels(d), d[key]) for d in domains])
    w.family("squeezed_domain_can_balloon", "gauge",
             "1 if the domain advertised a balloon driver.",
             [("", dlabels(d), bool(d["can_balloon"])) for d in domains])
    w.family("squeezed_domain_uncooperative", "gauge",
             "1 if the domain missed its target for longer than uncooperative-after.",
             [("", dlabels(d), "uncooperative" in (d.get("flags") or [])) for d in domains])
    w.family("squeezed_domain_flag", "gauge",
             "1 for each flag the daemon has set on a domain.",
             [("", {**dlabels(d), "flag": f}, 1) for d in domains for f in d.get("flags") or []])
    w.family("squeezed_domain_left_alone", "gauge",
             "1 for a domain neither ballooned nor counted on: its xenstore memory values "
             "are unusable.",
             [("", dlabels(la), 1) for la in state.get("left_alone") or []])
    w.family("squeezed_operation_running", "gauge",
             "1 while a squeezing operation runs.",
             [("", {}, state.get("operation") is not None)])
    counters = state.get("counters")
    if counters is not None:
        ops = counters.get("operations", [])
        w.family("squeezed_operations_total", "counter",
                 "Operations finished, by method and outcome.",
                 [("", {"method": o["op"], "outcome": o["outcome"]}, o["count"]) for o in ops])
        bounds = counters.get("duration_bounds_s", [])
        hist: list[tuple[str, dict[str, Any], float | int]] = []
        for o in ops:
            lab = {"method": o["op"], "outcome": o["outcome"]}
            for le, n in zip(bounds, o["duration_buckets"], strict=True):
                hist.append(("_bucket", {**lab, "le": _num(float(le))}, n))
            hist += [("_bucket", {**lab, "le": "+Inf"}, o["count"]),
                     ("_sum", lab, float(o["duration_sum_s"])), ("_count", lab, o["count"])]
        w.family("squeezed_operation_duration_seconds", "histogram",
                 "How long operations took, by method and outcome.", hist)
        w.family("squeezed_engine_iterations_total", "counter",
                 "Iterations of the balancing loop (a host reading and a decision each).",
                 [("", {}, counters.get("iterations", 0))])
        # Known label values start at 0, so that rate() sees the first error.
        xs = {"connection": 0, **{e["error"]: e["count"]
                                  for e in counters.get("xenstore_errors", [])}}
        w.family("squeezed_xenstore_errors_total", "counter",
                 "Failed xenstore requests: error replies other than ENOENT, lost connections.",
                 [("", {"error": k}, v) for k, v in sorted(xs.items())])
        xc = {**dict.fromkeys(HYPERCALLS, 0),
              **{e["error"]: e["count"] for e in counters.get("hypercall_errors", [])}}
        w.family("squeezed_hypercall_errors_total", "counter",
                 "Failed libxenctrl calls, by C function.",
                 [("", {"call": k}, v) for k, v in sorted(xc.items())])
    return "\n".join(w.lines) + "\n"


def write_textfile(path: str, text: str) -> None:
    """Replace `path` atomically: node_exporter's textfile collector reads
    *.prom files at any moment, so it must see the old or the new whole."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".squeezed-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the collector may run as another user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_arguments(p: argparse.ArgumentParser) -> None:
    del p  # no options of its own


def run(args: argparse.Namespace, caller: Caller, where: str, out: TextIO, err: TextIO) -> int:
    try:
        state = StateSource(caller, args.dbg).state()
    except FETCH_ERRORS as e:
        msg, code = describe_error(e, where)
        print(f"squeezectl: metrics: {msg}", file=err)
        return code
    out.write(exposition(state))
    return 0
