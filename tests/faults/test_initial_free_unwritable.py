"""Issue 11 #9 / issue 10: when the boot-time file cannot be written,
get_host_initial_free_memory answers with the measured value (kept in
memory), the failure is logged once, and nothing waits for ever."""

from __future__ import annotations

import logging

import pytest

from squeezed.errors import InternalError
from squeezed.initial_free import InitialFreeMemory


def test_unwritable_file_keeps_value_and_logs_once(tmp_path, caplog) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # the file's directory cannot be created
    initial = InitialFreeMemory(str(blocker / "boot_time_memory"))
    with caplog.at_level(logging.ERROR, logger="squeezed.service"):
        initial.set(123 * 1024 * 1024)
    assert initial.get(0.0) == 123 * 1024 * 1024
    errors = [r for r in caplog.records if "cannot record boot-time" in r.getMessage()]
    assert len(errors) == 1


def test_writable_file_is_written(tmp_path) -> None:
    path = tmp_path / "d" / "boot_time_memory"
    InitialFreeMemory(str(path)).set(42)
    assert path.read_text() == "42"
    again = InitialFreeMemory(str(path))
    assert again.load_persisted() and again.get(0.0) == 42


def test_unmeasured_value_fails_bounded() -> None:
    with pytest.raises(InternalError, match="not yet measured"):
        InitialFreeMemory("/nonexistent/x").get(0.01)
