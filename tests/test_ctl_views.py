"""squeezectl's views on hand-built states: the top frame (bars, markers,
direction, flags, sorting, the operation in progress, fitting the screen),
the Prometheus text checked with prometheus_client's own parser, the
duration histogram, and recordings."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from squeezed.ctl import metrics, record, top
from squeezed.stats import DURATION_BOUNDS_S, OperationStats

GIB = 1 << 20  # KiB
MIB = 1 << 10
WEIRD = 'we"ird\\name\nx'  # a name from xenstore: quotes, backslash, newline


def dom(domid: int, mn: int, target: int, actual: int, mx: int, maxmem: int,
        can_balloon: bool = True, **kw: Any) -> dict[str, Any]:
    return {"domid": domid, "can_balloon": can_balloon, "dynamic_min_kib": mn,
            "target_kib": target, "dynamic_max_kib": mx, "memory_actual_kib": actual,
            "memory_max_kib": maxmem, **kw}


def state(**kw: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "host": {"free_kib": 1 * GIB, "reserved_kib": 72 * MIB, "xen_free_kib": 1 * GIB,
                 "xen_scrub_kib": 256 * MIB, "xen_total_kib": 16 * GIB,
                 "reservations_kib": 256 * MIB},
        "reservations": [{"reservation_id": "r1", "session_id": "xenopsd", "kib": 256 * MIB}],
        "domains": [
            dom(1, 1 * GIB, 1536 * MIB, 2 * GIB, 2 * GIB, 2 * GIB, name="web", flags=[]),
            dom(2, 512 * MIB, 1 * GIB, 1 * GIB, 1 * GIB, 1 * GIB, name=WEIRD,
                flags=["uncooperative"]),
            dom(3, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, 4 * GIB, can_balloon=False, flags=[]),
        ],
        "operation": {"op": "reserve_memory", "dbg": "xenopsd/VM.start/42",
                      "args": "session=xenopsd kib=262144", "started_s": 1000.0,
                      "elapsed_s": 3.25, "outcome": "running"},
        "history": [
            {"op": "balance_memory", "dbg": "xapi", "args": "", "started_s": 990.0,
             "elapsed_s": 0.5, "outcome": "success"},
            {"op": "reserve_memory_range", "dbg": "xenopsd/VM.start/41", "args": "min_kib=1",
             "started_s": 995.0, "elapsed_s": 20.0, "outcome": "Domains_refused_to_cooperate"},
            {"op": "reserve_memory", "dbg": "xenopsd/VM.start/42",
             "args": "session=xenopsd kib=262144", "started_s": 1000.0, "elapsed_s": 3.25,
             "outcome": "running"},
        ],
    }
    s.update(kw)
    return s


# -- top ---------------------------------------------------------------------


def test_domain_bar_markers_by_hand() -> None:
    # scale 100 over 11 cells: cell = round(kib * 10 / 100)
    d = dom(1, 20, 50, 60, 80, 100)
    assert top.domain_bar(d, 100, 11) == "##[##T#.].|"
    # the target wins where markers meet; nothing held draws no '#'
    assert top.domain_bar(dom(1, 0, 100, 0, 100, 100), 100, 5) == "[...T"


def test_host_bar_shares_by_hand() -> None:
    assert top.host_bar([("D", 50), ("R", 25), ("f", 25)], 8) == "DDDDRRff"
    assert top.host_bar([("D", 1), ("R", 1), ("f", 1)], 4) == "DDRf"  # largest remainder
    assert top.host_bar([("D", 29), ("R", 21), ("f", 50)], 10) == "DDDRRfffff"  # 2.9 2.1 5
    assert top.host_bar([("D", 0)], 3) == "..."


def test_host_segments_add_up_to_the_host() -> None:
    parts = dict(top.host_segments(state()))
    # domains 2+1+4 GiB; 1 GiB free = 72 MiB kept + 256 MiB scrub + the rest
    assert parts == {"D": 7 * GIB, "R": 256 * MIB, "f": 1 * GIB - 72 * MIB - 256 * MIB,
                     "s": 256 * MIB, "k": 72 * MIB,
                     ".": 16 * GIB - 7 * GIB - 256 * MIB - 1 * GIB}


def _rows(lines: list[str]) -> list[int]:
    start = next(i for i, line in enumerate(lines) if line.startswith("DOMID")) + 1
    end = lines.index("", start)
    return [int(line.split()[0]) for line in lines[start:end]]


@pytest.mark.parametrize(("sort", "order"), [("actual", [3, 1, 2]), ("distance", [1, 2, 3]),
                                             ("domid", [1, 2, 3])])
def test_sort_keys(sort: str, order: list[int]) -> None:
    assert _rows(top.render(state(), sort=sort, now_s=1003.25)) == order


def test_frame_shows_operation_flags_and_history() -> None:
    lines = top.render(state(), width=120, now_s=1003.25, source="/var/xapi/memory")
    text = "\n".join(lines)
    assert all(len(line) <= 120 for line in lines)
    assert lines[0].endswith("/var/xapi/memory")
    assert ("operation: reserve_memory running 3.2 s  dbg='xenopsd/VM.start/42'  "
            "session=xenopsd kib=262144") in text
    row = {int(line.split()[0]): line for line in lines if line[:5].strip().isdigit()}
    assert row[1].split()[1:8] == ["web", "1.0G", "1.5G", "2.0G", "2.0G", "2.0G", "v"]
    assert "uncooperative" in row[2] and " = " in row[2]
    assert "no-balloon" in row[3]
    # a name cannot break the frame: cut to fit, the newline never printed raw
    assert all("\n" not in line for line in lines)
    # newest first; the running one is the operation line, not history
    hist = lines[lines.index("last operations:") + 1:]
    assert hist[0].split()[1:4] == ["reserve_memory_range", "->", "Domains_refused_to_cooperate"]
    assert hist[1].split()[1:5] == ["balance_memory", "->", "success", "(0.50"]
    assert len(hist) == 2


def test_callers_waiting_behind_the_operation_are_counted() -> None:
    s = state()
    s["history"].append({**s["history"][2], "dbg": "xenopsd/VM.start/43", "started_s": 1001.0})
    op_line = next(line for line in top.render(s, width=160, now_s=1003.25)
                   if line.startswith("operation:"))
    assert op_line.endswith("kib=262144  (+1 waiting)")
    assert "waiting" not in "\n".join(top.render(state(), width=160, now_s=1003.25))


def test_screen_kinds_of_lines() -> None:
    kinds = {line.split()[0]: kind for line, kind in top.frame(state(), now_s=1003.25)
             if line[:5].strip().isdigit()}
    assert kinds == {"1": "moving", "2": "alarm", "3": ""}  # v; uncooperative; at target
    heads = [line.split()[0] for line, kind in top.frame(state(), now_s=0) if kind == "head"]
    assert heads == ["squeezed", "operation:", "sort:", "DOMID", "last"]


def test_domains_left_alone_for_bad_keys() -> None:
    s = state(left_alone=[{"domid": 9, "name": "bad", "reason": "memory/target 'x'"}])
    rows = [(line, kind) for line, kind in top.frame(s, width=160, now_s=0)
            if line.startswith("    9")]
    assert rows == [(rows[0][0], "alarm")]
    assert rows[0][0].split()[1:3] == ["bad", "-"] and rows[0][0].endswith(
        "bad-keys       left alone: memory/target 'x'")
    _, v = parse(metrics.exposition(s))
    assert v[("squeezed_domain_left_alone", L(domid=9, name="bad"))] == 1


def test_frame_without_an_operation_or_xen_figures() -> None:
    s = state(operation=None, history=[])
    s["host"] = {"free_kib": 2 * GIB, "reserved_kib": 0}
    s["reservations"] = []
    lines = top.render(s, now_s=0)
    assert "operation: none" in lines and "  (none)" in lines
    assert lines[1].startswith("host 9.0G:")  # domains + free when Xen does not say


def test_frame_fits_a_small_screen() -> None:
    many = [dom(i, GIB, GIB, GIB, GIB, GIB) for i in range(1, 40)]
    lines = top.render(state(domains=many), width=60, height=20, now_s=1003.25)
    assert len(lines) == 20 and all(len(line) <= 60 for line in lines)
    assert any(line.strip().startswith("...") and "more" in line for line in lines)
    assert "last operations:" in lines


def test_tracker_speed_and_stuck() -> None:
    tr = top.Tracker(stuck_after_s=5.0)
    s = state()
    tr.update(s, 0.0)
    assert top.direction(s["domains"][0], tr.rate_kib_s(1)) == "v"  # one frame: no speed yet
    s["domains"][0]["memory_actual_kib"] -= 100 * MIB
    tr.update(s, 1.0)
    assert top.direction(s["domains"][0], tr.rate_kib_s(1)) == "v 100M/s"
    for t in (2.0, 3.0, 4.0, 5.0):
        tr.update(s, t)
    assert "stuck" not in top.flags(s["domains"][0], tr, 5.0)  # still 4 s
    tr.update(s, 6.0)
    assert "stuck" in top.flags(s["domains"][0], tr, 6.0)  # 5 s without progress
    # at its target it is not stuck, however long it stays
    assert "stuck" not in top.flags(s["domains"][1], tr, 6.0)


# -- metrics -----------------------------------------------------------------


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """prometheus_client's parser: family types, and every sample's value."""
    from prometheus_client.parser import text_string_to_metric_families

    types, samples = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, key
            samples[key] = s.value
    return types, samples


def L(**kw: Any) -> frozenset:  # noqa: N802
    return frozenset((k, str(v)) for k, v in kw.items())


def test_metrics_parse_with_the_official_parser() -> None:
    stats = OperationStats()
    for d in (0.005, 0.3, 200.0):  # first bucket (le is inclusive), le=0.5, only +Inf
        stats.observe("reserve_memory", "success", d)
    stats.observe("reserve_memory", "Cannot_free_this_much_memory", 0.001)
    stats.add_iterations(17)
    counters = stats.snapshot()
    counters["xenstore_errors"] = [{"error": "EACCES", "count": 3}]
    counters["hypercall_errors"] = [{"error": "xc_domain_setmaxmem", "count": 1}]
    types, v = parse(metrics.exposition(state(counters=counters)))

    assert types["squeezed_host_free_kib"] == "gauge"
    assert v[("squeezed_host_free_kib", L())] == 1 * GIB
    assert v[("squeezed_host_reserved_kib", L())] == 72 * MIB
    assert v[("squeezed_host_reservations_kib", L())] == 256 * MIB
    assert v[("squeezed_reservations", L())] == 1
    assert v[("squeezed_domain_target_kib", L(domid=1, name="web"))] == 1536 * MIB
    assert v[("squeezed_domain_actual_kib", L(domid=2, name=WEIRD))] == 1 * GIB  # escaped
    assert v[("squeezed_domain_dynamic_min_kib", L(domid=3, name=""))] == 4 * GIB
    assert v[("squeezed_domain_dynamic_max_kib", L(domid=1, name="web"))] == 2 * GIB
    assert v[("squeezed_domain_uncooperative", L(domid=2, name=WEIRD))] == 1
    assert v[("squeezed_domain_uncooperative", L(domid=1, name="web"))] == 0
    assert v[("squeezed_domain_can_balloon", L(domid=3, name=""))] == 0
    assert v[("squeezed_operation_running", L())] == 1

    assert types["squeezed_operations"] == "counter"
    ok = dict(method="reserve_memory", outcome="success")
    assert v[("squeezed_operations_total", L(**ok))] == 3
    assert v[("squeezed_operations_total", L(method="reserve_memory",
                                             outcome="Cannot_free_this_much_memory"))] == 1
    assert types["squeezed_operation_duration_seconds"] == "histogram"
    buckets = {float(dict(k[1])["le"]): val for k, val in v.items()
               if k[0] == "squeezed_operation_duration_seconds_bucket" and ok.items() <= dict(
                   k[1]).items()}
    assert sorted(buckets) == sorted([*DURATION_BOUNDS_S, math.inf])
    assert buckets[0.005] == 1 and buckets[0.25] == 1 and buckets[0.5] == 2
    assert buckets[120.0] == 2 and buckets[math.inf] == 3
    assert v[("squeezed_operation_duration_seconds_count", L(**ok))] == 3
    assert v[("squeezed_operation_duration_seconds_sum", L(**ok))] == pytest.approx(200.305)
    assert v[("squeezed_engine_iterations_total", L())] == 17
    assert v[("squeezed_xenstore_errors_total", L(error="EACCES"))] == 3
    assert v[("squeezed_xenstore_errors_total", L(error="connection"))] == 0
    assert v[("squeezed_hypercall_errors_total", L(call="xc_domain_setmaxmem"))] == 1
    assert v[("squeezed_hypercall_errors_total", L(call="xc_physinfo"))] == 0


def test_metrics_of_a_minimal_state() -> None:
    # an older daemon: no Xen figures, no counters, no operation
    s = {"host": {"free_kib": 5, "reserved_kib": 1}, "reservations": [], "domains": []}
    types, v = parse(metrics.exposition(s))
    assert v == {("squeezed_host_free_kib", L()): 5, ("squeezed_host_reserved_kib", L()): 1,
                 ("squeezed_reservations", L()): 0, ("squeezed_operation_running", L()): 0}


def test_textfile_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "squeezed.prom"
    path.write_text("old\n")
    metrics.write_textfile(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["squeezed.prom"]  # no temp left
    with pytest.raises(OSError):
        metrics.write_textfile(str(tmp_path / "absent" / "x.prom"), "x\n")


# -- recordings --------------------------------------------------------------


def test_recorder_writes_each_finished_operation_once() -> None:
    rec = record.Recorder(started_s=995.0)
    s1 = state()  # balance ended before the start; range finished; reserve still running
    lines1 = rec.lines(s1, 1001.0)
    assert lines1[0] == {"t_s": 6.0, "host_free_kib": 1 * GIB, "reserved_kib": 72 * MIB,
                         "domains": [[1, 1536 * MIB, 2 * GIB, 2 * GIB],
                                     [2, 1 * GIB, 1 * GIB, 1 * GIB],
                                     [3, 4 * GIB, 4 * GIB, 4 * GIB]]}
    assert [o["op"] for o in lines1[1:]] == ["reserve_memory_range"]
    assert lines1[1]["t_s"] == 0.0 and lines1[1]["outcome"] == "Domains_refused_to_cooperate"
    s2 = state()
    s2["history"][2] = {**s2["history"][2], "outcome": "success", "elapsed_s": 4.0}
    lines2 = rec.lines(s2, 1005.0)
    assert [o.get("op") for o in lines2] == [None, "reserve_memory"]
    assert lines2[1]["t_s"] == 5.0 and lines2[1]["elapsed_s"] == 4.0
    assert [o.get("op") for o in rec.lines(s2, 1006.0)] == [None]
    # the end of a recording also writes what is still running, as it stands
    s3 = state()
    s3["history"].append({**s3["history"][2], "started_s": 1005.5, "elapsed_s": 1.0})
    last = record.Recorder(started_s=995.0)
    assert [(o.get("op"), o.get("outcome")) for o in last.lines(s3, 1007.0, final=True)] == [
        (None, None), ("reserve_memory_range", "Domains_refused_to_cooperate"),
        ("reserve_memory", "running"), ("reserve_memory", "running")]


class ListCaller:
    """A transport that answers get_state from a list."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.calls = 0

    def call(self, method: str, *params: Any) -> Any:
        assert method == "get_state"
        self.calls += 1
        return self.states[min(self.calls, len(self.states)) - 1]


def test_record_run_with_a_fake_clock_and_load(tmp_path: Path, capsys) -> None:
    import argparse

    now = [100.0]
    out = tmp_path / "run.jsonl"
    args = argparse.Namespace(file=str(out), interval=0.5, duration=1.0, dbg="t")
    rc = record.run(args, ListCaller([state(history=[])]), "sock", None, None,  # type: ignore[arg-type]
                    clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert rc == 0
    rec = record.load(str(out))
    assert rec.header["format"] == "squeezed-record" and rec.header["started_s"] == 100.0
    assert [s["t_s"] for s in rec.samples] == [0.0, 0.5, 1.0]
    # a recorder killed mid-line leaves a readable file
    out.write_text(out.read_text() + '{"t_s": 1.5, "host_fr')
    assert len(record.load(str(out)).samples) == 3


@pytest.mark.parametrize("text", ['{"format": "other"}\n', "",
                                  '{"format": "squeezed-record", "version": 1}\nnope\n{}\n',
                                  '{"format": "squeezed-record", "version": 1}\n{"t_s": 1}\n',
                                  '{"format": "squeezed-record", "version": 2}\n'])
def test_bad_recordings_are_refused(tmp_path: Path, text: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(text)
    with pytest.raises(record.RecordError):
        record.load(str(p))


def test_squeezed_sim_plot_draws_a_recording(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from squeezed.sim import cli

    p = tmp_path / "run.jsonl"
    rows = [{"format": "squeezed-record", "version": 1, "started_s": 0, "interval_s": 0.5}]
    rows += [{"t_s": t / 2, "host_free_kib": GIB + t * MIB, "reserved_kib": 0,
              "domains": [[1, GIB, GIB + (10 - t) * MIB, 2 * GIB]]} for t in range(10)]
    rows += [{"t_s": 1.0, "op": "reserve_memory", "dbg": "x", "args": "", "outcome": "success",
              "elapsed_s": 2.0}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["plot", str(p)]) == 0
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "10 samples and 1 operations" in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text("{}\n")
    assert cli.main(["plot", str(tmp_path / "bad.jsonl"), "-o", str(tmp_path / "b.png")]) == 2
    assert "not a squeezectl recording" in capsys.readouterr().err


# -- bars, for any figures -------------------------------------------------------


@given(st.lists(st.integers(0, 1 << 40), min_size=1, max_size=6), st.integers(1, 200))
def test_host_bar_gives_each_part_its_share(values: list[int], width: int) -> None:
    parts = [(c, v) for c, v in zip("DRfsk.", values, strict=False)]
    bar = top.host_bar(parts, width)
    assert len(bar) == width
    total = sum(values)
    if total == 0:
        assert bar == "." * width
        return
    rounded_up, rounded_down = [], []
    for c, v in parts:
        exact = v * width / total
        # the exact share, rounded by less than one cell either way...
        assert abs(bar.count(c) - exact) < 1 + 1e-9, (c, v, bar)
        (rounded_up if bar.count(c) > exact else rounded_down).append(exact - int(exact))
    # ...and the cells left over by rounding down go to the largest remainders
    assert not rounded_up or not rounded_down or min(rounded_up) >= max(rounded_down) - 1e-9


@given(st.integers(0, 1 << 30), st.integers(0, 1 << 30), st.integers(0, 1 << 30),
       st.integers(0, 1 << 30), st.integers(0, 1 << 30), st.integers(1, 120))
def test_domain_bar_is_as_wide_as_asked_and_shows_the_target(
        mn: int, target: int, actual: int, mx: int, maxmem: int, width: int) -> None:
    d = dom(1, mn, target, actual, mx, maxmem)
    scale = max(mn, target, actual, mx, maxmem, 1)
    bar = top.domain_bar(d, scale, width)
    assert len(bar) == width and bar.count("T") == 1
    assert bar.index("T") == round(target * (width - 1) / scale)
