"""`squeezectl top`: who is being squeezed, how fast, and why.

One frame shows the host as a bar (domains, reservations, free memory, the
kept reserve, scrub), one row per domain with its memory as a bar with
markers, the direction and speed it is moving, its flags, the operation in
progress with its caller's dbg and elapsed time, and the last operations.

`render()` is pure (state + motion tracker -> lines of text); the same lines
are printed by `--once` and when stdout is not a terminal, and drawn by the
curses loop, which refreshes every second (q quits; a, d, i sort).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from squeezed.ctl.source import FETCH_ERRORS, Caller, StateSource, describe_error
from squeezed.engine.model import DEFAULT_INACCURACY_KIB
from squeezed.engine.squeezer import DEFAULT_STUCK_AFTER_S

SORTS = {"a": "actual", "d": "distance", "i": "domid"}  # key -> sort name
DEFAULT_WIDTH = 100
ALARM_FLAGS = ("uncooperative", "stuck", "bad-keys")  # drawn in red
HOST_LEGEND = (("D", "domains"), ("R", "reservations"), ("f", "free"), ("s", "scrub"),
               ("k", "kept"), (".", "other"))


def fmt_kib(kib: int | float | None) -> str:
    """Compact binary units: 512K, 900M, 2.0G."""
    if kib is None:
        return "-"
    sign = "-" if kib < 0 else ""
    k = abs(kib)
    if k >= 1 << 20:
        return f"{sign}{k / (1 << 20):.1f}G"
    if k >= 1024:
        return f"{sign}{k / 1024:.0f}M"
    return f"{sign}{k:.0f}K"


@dataclass
class _Motion:
    t_s: float
    actual_kib: int
    still_since_s: float  # when actual last changed
    rate_kib_s: float | None = None


@dataclass
class Tracker:
    """What successive frames tell that one state cannot: how fast each domain
    moves, and which have made no progress towards their target for a while."""

    stuck_after_s: float = DEFAULT_STUCK_AFTER_S  # the daemon's default: no progress this long
    _last: dict[int, _Motion] = field(default_factory=dict)

    def update(self, state: dict[str, Any], now_s: float) -> None:
        seen = set()
        for d in state.get("domains", []):
            domid, actual = d["domid"], d["memory_actual_kib"]
            seen.add(domid)
            m = self._last.get(domid)
            if m is None:
                self._last[domid] = _Motion(now_s, actual, now_s)
                continue
            dt = now_s - m.t_s
            if dt <= 0:
                continue
            rate = (actual - m.actual_kib) / dt
            still = m.still_since_s if actual == m.actual_kib else now_s
            self._last[domid] = _Motion(now_s, actual, still, rate)
        for domid in set(self._last) - seen:
            del self._last[domid]

    def rate_kib_s(self, domid: int) -> float | None:
        m = self._last.get(domid)
        return None if m is None else m.rate_kib_s

    def stuck(self, d: dict[str, Any], now_s: float) -> bool:
        """Away from its target and not moving for stuck_after_s (as seen here)."""
        m = self._last.get(d["domid"])
        if m is None or _at_target(d):
            return False
        return now_s - m.still_since_s >= self.stuck_after_s


def _at_target(d: dict[str, Any]) -> bool:
    return abs(d["memory_actual_kib"] - d["target_kib"]) <= DEFAULT_INACCURACY_KIB


def direction(d: dict[str, Any], rate_kib_s: float | None) -> str:
    """'v' freeing memory (actual above target), '^' taking, '=' at target;
    with its speed once two frames have shown it."""
    if _at_target(d):
        return "="
    arrow = "v" if d["memory_actual_kib"] > d["target_kib"] else "^"
    if rate_kib_s is None or rate_kib_s == 0:
        return arrow
    return f"{arrow} {fmt_kib(abs(rate_kib_s))}/s"


def flags(d: dict[str, Any], tracker: Tracker | None, now_s: float) -> list[str]:
    out = [] if d.get("can_balloon", True) else ["no-balloon"]
    out += list(d.get("flags") or [])
    if tracker is not None and d.get("can_balloon") and tracker.stuck(d, now_s):
        out.append("stuck")
    return out


def sort_domains(domains: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    if key == "actual":
        return sorted(domains, key=lambda d: (-d["memory_actual_kib"], d["domid"]))
    if key == "distance":
        return sorted(domains, key=lambda d: (-abs(d["memory_actual_kib"] - d["target_kib"]),
                                              d["domid"]))
    return sorted(domains, key=lambda d: d["domid"])


def domain_bar(d: dict[str, Any], scale_kib: int, width: int) -> str:
    """'#' up to actual, with markers: [ dynamic-min, ] dynamic-max, | maxmem,
    T target (drawn last, so it wins where they meet)."""
    if width <= 0:
        return ""

    def pos(kib: int) -> int:
        return min(width - 1, max(0, round(kib * (width - 1) / max(1, scale_kib))))

    filled = 0 if d["memory_actual_kib"] <= 0 else pos(d["memory_actual_kib"]) + 1
    cells = ["#"] * filled + ["."] * (width - filled)
    for key, mark in (("memory_max_kib", "|"), ("dynamic_min_kib", "["),
                      ("dynamic_max_kib", "]"), ("target_kib", "T")):
        cells[pos(d[key])] = mark
    return "".join(cells)


def host_segments(state: dict[str, Any]) -> list[tuple[str, int]]:
    """The host's memory in parts that add up to its total (when Xen says it)."""
    h = state["host"]
    domains_kib = sum(max(0, d["memory_actual_kib"]) for d in state.get("domains", []))
    free_kib = max(0, h["free_kib"])
    kept_kib = min(h["reserved_kib"], free_kib)
    scrub_kib = min(h.get("xen_scrub_kib") or 0, free_kib - kept_kib)
    avail_kib = free_kib - kept_kib - scrub_kib
    reservations_kib = h.get("reservations_kib")
    if reservations_kib is None:
        reservations_kib = sum(r["kib"] for r in state.get("reservations", [])
                               if r.get("domid") is None)
    parts = [("D", domains_kib), ("R", reservations_kib), ("f", avail_kib), ("s", scrub_kib),
             ("k", kept_kib)]
    total = h.get("xen_total_kib")
    if total:
        parts.append((".", max(0, total - sum(v for _, v in parts))))
    return parts


def host_bar(parts: list[tuple[str, int]], width: int) -> str:
    """Each part gets its share of the width (largest remainders, so a part
    that exists gets at least a cell when it can)."""
    total = sum(v for _, v in parts)
    if total <= 0 or width <= 0:
        return "." * max(0, width)
    exact = [v * width / total for _, v in parts]
    cells = [int(x) for x in exact]
    for i in sorted(range(len(parts)), key=lambda i: exact[i] - cells[i],
                    reverse=True)[: width - sum(cells)]:
        cells[i] += 1
    return "".join(ch * n for (ch, _), n in zip(parts, cells, strict=True))


def _clock(t_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t_s))


def _operation_line(op: dict[str, Any]) -> str:
    return f"{op['op']} {op['outcome']} {op['elapsed_s']:.1f} s  dbg={op['dbg']!r}  {op['args']}"


def render(state: dict[str, Any], **kw: Any) -> list[str]:
    """One frame as lines of plain text, at most `width` columns (and
    `height` lines: the domain rows and the history are cut to fit)."""
    return [text for text, _ in frame(state, **kw)]


def frame(
    state: dict[str, Any],
    *,
    width: int = DEFAULT_WIDTH,
    height: int | None = None,
    sort: str = "actual",
    tracker: Tracker | None = None,
    now_s: float | None = None,
    source: str = "",
) -> list[tuple[str, str]]:
    """The frame's lines, each with its kind for the screen: "head",
    "alarm" (a domain in trouble), "moving" (a domain away from its
    target) or "" (the rest)."""
    now = time.time() if now_s is None else now_s
    width = max(40, width)
    h = state["host"]
    parts = host_segments(state)
    total = h.get("xen_total_kib") or sum(v for _, v in parts)
    head = [
        f"squeezed top  {_clock(now)}  {source}".rstrip(),
        f"host {fmt_kib(total)}: free {fmt_kib(h['free_kib'])} (kept {fmt_kib(h['reserved_kib'])})"
        f"  reservations {fmt_kib(dict(parts)['R'])} ({len(state.get('reservations', []))})"
        f"  scrub {fmt_kib(h.get('xen_scrub_kib'))}  domains {len(state.get('domains', []))}",
        "[" + host_bar(parts, width - 2) + "]",
        "  " + "  ".join(f"{ch} {name} {fmt_kib(v)}" for (ch, name), (_, v)
                         in zip(HOST_LEGEND, parts, strict=False)),
    ]
    op = state.get("operation")
    # callers queued behind the operation in progress (one squeeze at a time)
    waiting = sum(1 for r in state.get("history") or [] if r["outcome"] == "running") - bool(op)
    head.append("operation: " + (_operation_line(op) if op else "none")
                + (f"  (+{waiting} waiting)" if waiting > 0 else ""))
    head.append(f"sort: {sort}  (a actual, d distance to target, i domid; q quits)")
    head.append("")

    domains = sort_domains(list(state.get("domains", [])), sort)
    name_w = max([4] + [len(d.get("name") or "") for d in domains])
    name_w = min(name_w, 16)
    cols = (f"{'DOMID':>5} {'NAME':<{name_w}} {'MIN':>6} {'TARGET':>6} {'ACTUAL':>6} "
            f"{'MAX':>6} {'MAXMEM':>6} {'MOVE':<10} {'FLAGS':<14}")
    bar_w = max(0, width - len(cols) - 1)
    scale = max([1] + [max(d["dynamic_max_kib"], d["memory_max_kib"], d["target_kib"],
                           d["memory_actual_kib"]) for d in domains])
    title = f"MEMORY 0..{fmt_kib(scale)}"
    lines = head + [(cols + " " + title[:bar_w]).rstrip()]
    rows: list[tuple[str, str]] = []
    for d in domains:
        move = direction(d, tracker.rate_kib_s(d["domid"]) if tracker else None)
        fls = flags(d, tracker, now)
        fl = ",".join(fls) or "-"
        kind = "alarm" if set(fls) & set(ALARM_FLAGS) else "" if move == "=" else "moving"
        name = (d.get("name") or "-")[:name_w]
        row = (f"{d['domid']:>5} {name:<{name_w}} {fmt_kib(d['dynamic_min_kib']):>6} "
               f"{fmt_kib(d['target_kib']):>6} {fmt_kib(d['memory_actual_kib']):>6} "
               f"{fmt_kib(d['dynamic_max_kib']):>6} {fmt_kib(d['memory_max_kib']):>6} "
               f"{move:<10} {fl:<14}")
        rows.append(((row + " " + domain_bar(d, scale, max(0, width - len(row) - 1))).rstrip(),
                     kind))
    for la in state.get("left_alone") or []:  # no usable figures: only why
        name = (la.get("name") or "-")[:name_w]
        dashes = " ".join(f"{'-':>6}" for _ in range(5))
        rows.append((f"{la['domid']:>5} {name:<{name_w}} {dashes} {'?':<10} {'bad-keys':<14} "
                     f"left alone: {la['reason']}", "alarm"))
    history = list(reversed(state.get("history") or []))
    history = [r for r in history if r["outcome"] != "running"]
    tail_head = ["", "last operations:"]
    tail = [f"  {_clock(r['started_s'])} {r['op']} -> {r['outcome']} ({r['elapsed_s']:.2f} s)"
            f"  dbg={r['dbg']!r}  {r['args']}".rstrip() for r in history] or ["  (none)"]
    if height is not None:
        room = height - len(lines) - len(tail_head)
        keep_ops = min(len(tail), max(1, min(5, room - len(rows))))
        room_rows = max(0, room - keep_ops)
        if len(rows) > room_rows:
            rows = rows[: max(0, room_rows - 1)] + [
                (f"  ... {len(domains) - room_rows + 1} more", "")]
        tail = tail[:keep_ops]
    else:
        tail = tail[:5]
    heads = {0, len(head) - 3, len(head) - 2, len(lines) - 1}  # title, operation, sort, columns
    out = ([(line, "head" if i in heads else "") for i, line in enumerate(lines)] + rows
           + [(line, "head" if line else "") for line in tail_head] + [(t, "") for t in tail])
    if height is not None:
        out = out[:height]
    # Names and dbg strings come from guests and callers: no control characters.
    return [("".join(c if c.isprintable() else "?" for c in line)[:width], kind)
            for line, kind in out]


# -- the shells ------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true",
                   help="print one frame as plain text and exit")
    p.add_argument("--sort", choices=sorted(SORTS.values()), default="actual",
                   help="order of the domain rows (default: actual)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between refreshes (default 1)")
    p.add_argument("--iterations", "-n", type=int, default=None,
                   help="stop after this many frames (plain-text mode)")
    p.add_argument("--width", type=int, default=None,
                   help=f"columns of a plain-text frame (default: $COLUMNS or {DEFAULT_WIDTH})")


def _plain_width(args: argparse.Namespace) -> int:
    if args.width:
        return int(args.width)
    try:
        return int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return DEFAULT_WIDTH


def run(args: argparse.Namespace, caller: Caller, where: str, out: TextIO, err: TextIO) -> int:
    source = StateSource(caller, args.dbg)
    tracker = Tracker()
    if not args.once and out.isatty() and sys.stdin.isatty():
        return _curses(source, tracker, args, where)
    try:
        return _plain(source, tracker, args, where, out, err)
    except BrokenPipeError:  # `squeezectl top | head`: the reader has gone
        with contextlib.suppress(OSError, ValueError):  # no second error at exit's flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 0


def _plain(source: StateSource, tracker: Tracker, args: argparse.Namespace, where: str,
           out: TextIO, err: TextIO) -> int:
    n = 0
    while True:
        try:
            state = source.state()
        except FETCH_ERRORS as e:
            msg, code = describe_error(e, where)
            print(f"squeezectl: top: {msg}", file=err)
            return code
        now = time.time()
        tracker.update(state, now)
        if n:
            print(file=out)
        for line in render(state, width=_plain_width(args), sort=args.sort, tracker=tracker,
                           now_s=now, source=where):
            print(line, file=out)
        out.flush()
        n += 1
        if args.once or (args.iterations is not None and n >= args.iterations):
            return 0
        time.sleep(max(0.05, args.interval))


def _curses(source: StateSource, tracker: Tracker, args: argparse.Namespace, where: str) -> int:
    import curses

    def loop(scr: Any) -> int:
        with contextlib.suppress(curses.error):
            curses.curs_set(0)
        if curses.has_colors():
            with contextlib.suppress(curses.error):
                curses.use_default_colors()
                curses.init_pair(1, curses.COLOR_RED, -1)
                curses.init_pair(2, curses.COLOR_YELLOW, -1)
        scr.timeout(100)  # getch waits at most 0.1 s, so keys are answered at once
        sort = args.sort
        state: dict[str, Any] | None = None
        problem = ""
        next_fetch = 0.0
        while True:
            now = time.time()
            if now >= next_fetch:
                try:
                    state = source.state()
                    tracker.update(state, now)
                    problem = ""
                except FETCH_ERRORS as e:
                    problem = describe_error(e, where)[0] + " (retrying)"
                next_fetch = now + max(0.05, args.interval)
                _draw(scr, state, problem, sort, tracker, now, where)
            key = scr.getch()
            if key in (ord("q"), ord("Q"), 27):
                return 0
            ch = chr(key) if 0 <= key < 256 else ""
            if ch in SORTS:
                sort = SORTS[ch]
                _draw(scr, state, problem, sort, tracker, time.time(), where)
            elif key == curses.KEY_RESIZE:
                _draw(scr, state, problem, sort, tracker, time.time(), where)

    # The size from the terminal itself (its ioctl), which follows resizes: ncurses
    # would prefer $COLUMNS/$LINES, which may have been exported at another size.
    for var in ("COLUMNS", "LINES"):
        os.environ.pop(var, None)
    try:
        return int(curses.wrapper(loop))
    except KeyboardInterrupt:
        return 0


def _draw(scr: Any, state: dict[str, Any] | None, problem: str, sort: str, tracker: Tracker,
          now: float, where: str) -> None:
    import curses

    height, width = scr.getmaxyx()
    scr.erase()
    lines: list[tuple[str, str]] = []
    if problem:
        lines.append((problem, "alarm"))
    if state is not None:
        lines += frame(state, width=width - 1, height=height - len(lines), sort=sort,
                       tracker=tracker, now_s=now, source=where)
    colour = curses.has_colors()
    attrs = {"head": curses.A_BOLD,
             "alarm": (curses.color_pair(1) if colour else 0) | curses.A_BOLD,
             "moving": curses.color_pair(2) if colour else curses.A_NORMAL}
    for i, (line, kind) in enumerate(lines[:height]):
        with contextlib.suppress(curses.error):  # the bottom-right cell cannot be written
            scr.addnstr(i, 0, line, width - 1, attrs.get(kind, curses.A_NORMAL))
    scr.refresh()
