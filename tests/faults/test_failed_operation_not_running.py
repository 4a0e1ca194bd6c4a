"""Issue 11 #9: an operation that fails with an unexpected exception is not
left "running" in diagnostics."""

from __future__ import annotations

import pytest

from faults.svc_helpers import service


def test_failed_operation_shows_failed(monkeypatch) -> None:
    svc, host = service()

    def broken():
        raise RuntimeError("xenstored went away")

    monkeypatch.setattr(host, "snapshot", broken)
    with pytest.raises(RuntimeError):
        svc.reserve_memory("t", "xenopsd", 1024)
    monkeypatch.undo()
    diag = svc.get_diagnostics("t")
    last = [line for line in diag.splitlines() if "reserve_memory" in line]
    assert last and "-> failed: RuntimeError" in last[-1], diag
    assert "running" not in last[-1]
