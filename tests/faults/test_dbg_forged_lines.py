"""Issue 11 #9 / issue 10: a dbg string cannot forge log lines; xapi's
log + "\\n" + trace context shows as the log part and the trace id."""

from __future__ import annotations

import json
import logging

from faults.svc_helpers import service
from squeezed import debuginfo

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_newline_in_dbg_does_not_forge_a_line(caplog) -> None:
    svc, _ = service()
    dbg = "x\nJan 1 00:00:00 host squeezed: [ info||0 |forged|squeezed] pwned\r\x1b[2J"
    with caplog.at_level(logging.INFO, logger="squeezed.service"):
        rid = svc.reserve_memory(dbg, "xenopsd", 1024)
        svc.delete_reservation(dbg, "xenopsd", rid)
    for r in caplog.records:
        assert "\n" not in r.getMessage() and "\r" not in r.getMessage()
        assert "\x1b" not in r.getMessage()
    for line in svc.get_diagnostics("t").splitlines():
        if "pwned" in line:  # only ever inside its own history line
            assert "reserve_memory" in line or "delete_reservation" in line, line
            assert "\x1b" not in line and "\r" not in line


def test_traceparent_and_json_contexts() -> None:
    assert debuginfo.show(f"VM.start R:1234\n{TRACEPARENT}") == \
        "VM.start R:1234 trace=4bf92f3577b34da6a3ce929d0e0e4736"
    ctx = json.dumps({"traceparent": TRACEPARENT, "baggage": "a=b"})
    assert debuginfo.show(f"VM.start R:1234\n{ctx}") == \
        "VM.start R:1234 trace=4bf92f3577b34da6a3ce929d0e0e4736"
    assert debuginfo.show('task\n{"other": 1}') == "task"  # JSON without a context: ignored
    assert debuginfo.show("plain") == "plain"
    assert debuginfo.show("a\nb\nc") == "a\\nb\\nc"  # not upstream's shape: all log, escaped


def test_diagnostics_show_log_part_and_trace_id() -> None:
    svc, _ = service()
    ctx = json.dumps({"traceparent": TRACEPARENT})
    svc.reserve_memory(f"VM.start R:77\n{ctx}", "xenopsd", 1024)
    diag = svc.get_diagnostics("t")
    line = next(x for x in diag.splitlines() if "reserve_memory" in x)
    assert "dbg=VM.start R:77 trace=4bf92f3577b34da6a3ce929d0e0e4736" in line
    assert "traceparent" not in diag and "{" not in line
