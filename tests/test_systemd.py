"""sd_notify over real AF_UNIX datagram sockets, the watchdog, and journal/syslog logging."""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from squeezed import logsetup, systemd


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket, and its address."""
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield s, path
    s.close()


def _recv(s: socket.socket) -> str:
    return s.recv(4096).decode()


def test_notify_to_a_path_socket(listener, monkeypatch) -> None:
    s, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert systemd.notify("READY=1", "STATUS=serving") is True
    assert _recv(s) == "READY=1\nSTATUS=serving"
    assert systemd.ready() and _recv(s) == "READY=1"
    assert systemd.ready("up") and _recv(s) == "READY=1\nSTATUS=up"
    assert systemd.status("measuring") and _recv(s) == "STATUS=measuring"
    assert systemd.stopping() and _recv(s) == "STOPPING=1"
    assert systemd.watchdog_ping() and _recv(s) == "WATCHDOG=1"
    assert systemd.extend_timeout(1.5) and _recv(s) == "EXTEND_TIMEOUT_USEC=1500000"
    assert systemd.reloading()
    first, second = _recv(s).split("\n")
    assert first == "RELOADING=1" and second.startswith("MONOTONIC_USEC=")
    assert int(second.split("=")[1]) > 0


def test_notify_to_an_abstract_socket(monkeypatch) -> None:
    name = f"squeezed-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1") is True
        assert _recv(s) == "READY=1"


def test_notify_explicit_environment(listener) -> None:
    s, path = listener
    assert systemd.notify("X=1", environ={"NOTIFY_SOCKET": path})
    assert _recv(s) == "X=1"


def test_notify_is_a_no_op_without_a_socket(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1"}) is False
    assert systemd.notify(environ={"NOTIFY_SOCKET": "/x"}) is False  # nothing to send


def test_notify_failure_is_logged_not_raised(tmp_path: Path, caplog) -> None:
    gone = str(tmp_path / "nobody-listens")
    with caplog.at_level(logging.WARNING, logger="squeezed.systemd"):
        assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": gone}) is False
    assert "sd_notify READY=1 failed" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "500"}, 0.0005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "lots"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert systemd.watchdog_interval_s(env) == expected


def test_watchdog_period_is_half_the_interval() -> None:
    # The daemon's use: watchdog_interval_s() then Watchdog(interval, healthy)
    # (tests/test_daemon_watchdog.py runs it).
    interval_s = systemd.watchdog_interval_s({"WATCHDOG_USEC": "4000000"})
    assert interval_s == 4.0
    assert systemd.Watchdog(interval_s, lambda: True).period_s == 2.0
    with pytest.raises(ValueError):
        systemd.Watchdog(0, lambda: True)


def test_watchdog_tick_pings_only_while_healthy(caplog) -> None:
    pings: list[int] = []
    health = {"ok": True}

    def healthy() -> bool:
        if health["ok"] is None:
            raise RuntimeError("health check broke")
        return bool(health["ok"])

    w = systemd.Watchdog(10, healthy, ping=lambda: pings.append(1) is None)
    assert w.tick() is True and len(pings) == 1
    health["ok"] = False
    with caplog.at_level(logging.INFO, logger="squeezed.systemd"):
        assert w.tick() is False and w.tick() is False
        assert caplog.text.count("withholding watchdog pings") == 1  # logged once
        health["ok"] = None
        assert w.tick() is False  # a raising check counts as unhealthy
        health["ok"] = True
        assert w.tick() is True
        assert "resuming watchdog pings" in caplog.text
    assert len(pings) == 2


def test_watchdog_thread_pings_the_socket(listener, monkeypatch) -> None:
    s, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    healthy = threading.Event()
    healthy.set()
    w = systemd.Watchdog(0.02, healthy.is_set)  # pings every 10 ms
    w.start()
    try:
        for _ in range(3):
            assert _recv(s) == "WATCHDOG=1"
        healthy.clear()
        # Drain what was in flight, then nothing more arrives while unhealthy.
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            while True:
                _recv(s)
        healthy.set()
        s.settimeout(5)
        assert _recv(s) == "WATCHDOG=1"
    finally:
        w.stop(timeout_s=5)
    assert not w._thread.is_alive()


# --- logging ---


@pytest.fixture
def clean_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def test_stderr_on_a_terminal_has_upstreams_fields(clean_root_logger) -> None:
    """[time|level|host|thread|task|component] message, as upstream's debug.ml."""
    import re
    import socket
    import threading

    from squeezed import debuginfo

    out = io.StringIO()
    logsetup.setup_logging("stderr", "info", stream=out, environ={})
    with debuginfo.task("VM.start R:1a2b\n00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        logging.getLogger("squeezed.test").info("hello %d\nforged", 1)
    logging.getLogger("squeezed.test").debug("hidden")
    line = out.getvalue()
    assert line.count("\n") == 1
    m = re.fullmatch(r"\[(\d{8}T\d\d:\d\d:\d\d\.\d{3}Z)\|(.{5})\|([^|]*)\|(\d+) ([^|]*)\|([^|]*)\|"
                     r"([^\]]*)\] (.*)\n", line)
    assert m, line
    assert m.group(2) == " info" and m.group(3) == socket.gethostname()
    assert int(m.group(4)) == threading.get_native_id() and m.group(5) == "MainThread"
    assert m.group(6) == "VM.start R:1a2b trace=4bf92f3577b34da6a3ce929d0e0e4736"
    assert m.group(7) == "squeezed.test" and m.group(8) == "hello 1\\nforged"


def test_stderr_on_the_journal_has_priorities_and_no_timestamps(clean_root_logger) -> None:
    out = io.StringIO()
    logsetup.setup_logging("stderr", "debug", stream=out, environ={"JOURNAL_STREAM": "8:123"})
    log = logging.getLogger("squeezed.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    import socket
    import threading

    pre = f"|{socket.gethostname()}|{threading.get_native_id()} MainThread||squeezed.test]"
    assert out.getvalue().splitlines() == [
        f"<7>[debug{pre} d",
        f"<6>[ info{pre} i",
        f"<4>[ warn{pre} w",
        f"<3>[error{pre} e",
    ]


def test_journal_stream_must_match_the_descriptor(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert logsetup.on_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logsetup.on_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logsetup.on_journal(f, {})


def test_syslog_format_and_facility(tmp_path: Path, clean_root_logger) -> None:
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(5)
        logsetup.setup_logging("syslog", "info", "local5", syslog_address=path)
        logging.getLogger("squeezed.test").warning("careful")
        msg = s.recv(4096).decode()
        # The config's "syslog:FACILITY" form overrides the facility argument.
        logsetup.setup_logging("syslog:user", "info", "local5", syslog_address=path)
        logging.getLogger("squeezed.test").info("note")
        user_msg = s.recv(4096).decode()
    # local5 = 21, warning = 4: priority 21 * 8 + 4.
    import threading

    tid = threading.get_native_id()
    fields = f"[ warn||{tid} MainThread||squeezed.test]"
    assert msg == f"<172>squeezed[{os.getpid()}]: {fields} careful\0"
    assert user_msg.startswith(f"<14>squeezed[{os.getpid()}]: [ info")  # user = 1, info = 6


def test_syslog_missing_falls_back_to_stderr(tmp_path: Path, clean_root_logger) -> None:
    out = io.StringIO()
    handler = logsetup.setup_logging(
        "syslog", "info", syslog_address=str(tmp_path / "no-dev-log"), stream=out, environ={}
    )
    assert isinstance(handler, logging.StreamHandler)
    assert "cannot log to syslog: no socket at" in out.getvalue()
    assert "logging to stderr" in out.getvalue()


def test_setup_replaces_its_own_handler_and_set_level(clean_root_logger) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    first = io.StringIO()
    second = io.StringIO()
    logsetup.setup_logging("stderr", "info", stream=first, environ={})
    logsetup.setup_logging("stderr", "warning", stream=second, environ={})
    assert len(root.handlers) == before + 1
    log = logging.getLogger("squeezed.test")
    log.info("dropped")
    logsetup.set_level("debug")
    log.debug("kept")
    assert first.getvalue() == "" and "kept" in second.getvalue()
    assert "dropped" not in second.getvalue()
    with pytest.raises(ValueError):
        logsetup.set_level("verbose")
    with pytest.raises(ValueError):
        logsetup.setup_logging("file", "info")
    with pytest.raises(ValueError):
        logsetup.setup_logging("syslog", "info", "nosuch")
