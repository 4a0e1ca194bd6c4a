"""`squeezectl record FILE`: sample the daemon's state into a file that
`squeezed-sim plot FILE` draws like the simulator's `--plot`.

The file is JSON Lines, one object a line, flushed as it goes (a recording cut
short by Ctrl-C or a kill is still readable up to its last whole line):

    {"format": "squeezed-record", "version": 1, "started_s": <Unix time>,
     "interval_s": 0.5, "source": "<socket>"}
    {"t_s": 0.51, "host_free_kib": 1048576, "reserved_kib": 73728,
     "domains": [[domid, target_kib, actual_kib, maxmem_kib], ...]}
    {"t_s": 3.2, "op": "reserve_memory", "dbg": "xenopsd", "args": "...",
     "outcome": "success", "elapsed_s": 1.9}          # an operation, once it ended

`t_s` counts from the start of the recording (an operation's is when it was
called). `load()` reads it back for plotting.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from squeezed.ctl.source import FETCH_ERRORS, Caller, StateSource, describe_error

FORMAT = "squeezed-record"
VERSION = 1


class RecordError(Exception):
    """The file is not a recording squeezed can read."""


@dataclass
class Recording:
    header: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    operations: list[dict[str, Any]] = field(default_factory=list)


def sample_of(state: dict[str, Any], t_s: float) -> dict[str, Any]:
    return {
        "t_s": round(t_s, 3),
        "host_free_kib": state["host"]["free_kib"],
        "reserved_kib": state["host"]["reserved_kib"],
        "domains": [[d["domid"], d["target_kib"], d["memory_actual_kib"], d["memory_max_kib"]]
                    for d in state.get("domains", [])],
    }


class Recorder:
    """Turns successive states into the file's lines. Each finished
    operation of the daemon's history is written once."""

    def __init__(self, started_s: float) -> None:
        self.started_s = started_s
        self._written: set[tuple[float, str, str]] = set()

    def lines(
        self, state: dict[str, Any], now_s: float, *, final: bool = False
    ) -> list[dict[str, Any]]:
        """A sample and the operations that ended since the last call (with
        `final`, those still running too, as they stand)."""
        out = [sample_of(state, now_s - self.started_s)]
        for rec in state.get("history") or []:
            key = (rec["started_s"], rec["op"], rec["dbg"])
            if (rec["outcome"] == "running" and not final) or key in self._written:
                continue
            self._written.add(key)
            if rec["started_s"] + rec["elapsed_s"] < self.started_s:
                continue  # ended before the recording began
            out.append({"t_s": round(rec["started_s"] - self.started_s, 3), "op": rec["op"],
                        "dbg": rec["dbg"], "args": rec["args"], "outcome": rec["outcome"],
                        "elapsed_s": round(rec["elapsed_s"], 3)})
        return out


def _numbers(obj: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(obj.get(k), int | float) and not isinstance(obj.get(k), bool)
               for k in keys)


def _domain_rows(rows: Any) -> bool:
    return isinstance(rows, list) and all(
        isinstance(r, list) and len(r) == 4
        and all(isinstance(x, int) and not isinstance(x, bool) for x in r) for r in rows)


def load(path: str) -> Recording:
    """A recording; a truncated last line (the recorder was killed) is ignored."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise RecordError(f"cannot read {path}: {e.strerror}") from None
    rows = text.split("\n")
    objs: list[dict[str, Any]] = []
    for i, line in enumerate(rows):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if i == len(rows) - 1:
                break  # cut short while writing its last line
            raise RecordError(f"{path}:{i + 1}: not JSON") from None
        if not isinstance(obj, dict):
            raise RecordError(f"{path}:{i + 1}: not a JSON object")
        objs.append(obj)
    if not objs or objs[0].get("format") != FORMAT:
        raise RecordError(f"{path}: not a squeezectl recording (no {FORMAT} header)")
    if objs[0].get("version") != VERSION:
        raise RecordError(f"{path}: recording version {objs[0].get('version')} is not {VERSION}")
    rec = Recording(objs[0])
    for i, obj in enumerate(objs[1:], start=2):
        if "op" in obj and _numbers(obj, "t_s", "elapsed_s") and isinstance(obj["op"], str):
            rec.operations.append(obj)
        elif _numbers(obj, "t_s", "host_free_kib") and _domain_rows(obj.get("domains")):
            rec.samples.append(obj)
        else:
            raise RecordError(f"{path}: line {i} is not a sample or an operation")
    return rec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="where to write the recording (JSON Lines)")
    p.add_argument("--interval", type=float, default=0.5,
                   help="seconds between samples (default 0.5)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until Ctrl-C)")


def run(
    args: argparse.Namespace,
    caller: Caller,
    where: str,
    out: TextIO,
    err: TextIO,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    if not args.interval > 0 or (args.duration is not None and not args.duration > 0):
        print("squeezectl: record: --interval and --duration must be more than 0", file=err)
        return 2
    source = StateSource(caller, args.dbg)
    try:
        first = source.state()  # fail before creating the file if the daemon is not there
    except FETCH_ERRORS as e:
        msg, code = describe_error(e, where)
        print(f"squeezectl: record: {msg}", file=err)
        return code
    started = clock()
    recorder = Recorder(started)
    n = 0
    stopping = [False]
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends a recording as Ctrl-C does (a background job ignores SIGINT)
        signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    try:
        with open(args.file, "w") as f:
            header = {"format": FORMAT, "version": VERSION, "started_s": started,
                      "interval_s": args.interval, "source": where}
            f.write(json.dumps(header) + "\n")
            state: dict[str, Any] | None = first
            next_s = started
            while True:
                last = stopping[0] or (args.duration is not None
                                       and next_s + args.interval - started > args.duration)
                if state is not None:
                    for obj in recorder.lines(state, clock(), final=last):
                        f.write(json.dumps(obj) + "\n")
                    f.flush()
                    n += 1
                if last:
                    break
                next_s += args.interval
                sleep(max(0.0, next_s - clock()))
                try:
                    state = source.state()
                except FETCH_ERRORS as e:
                    print(f"squeezectl: record: {describe_error(e, where)[0]}; still trying",
                          file=err)
                    state = None
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print(f"squeezectl: record: cannot write {args.file}: {e.strerror}", file=err)
        return 1
    print(f"squeezectl: recorded {n} samples in {args.file} "
          f"(draw it with: squeezed-sim plot {args.file})", file=err)
    return 0
