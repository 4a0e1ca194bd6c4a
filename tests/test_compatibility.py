"""Walks docs/compatibility.md: every row saying "same (checked)" has a check
here that runs against the code, every check belongs to such a row, and every
row that differs gives a reason.

The checks compare with upstream's values written down by hand from the
upstream files each row names (never with our own code's output), and, where
the read-only upstream mirror is on this machine, with upstream's golden wire
files themselves.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from squeezed import config as c
from squeezed import idl, logsetup
from squeezed.engine import EngineConfig
from squeezed.errors import (
    CannotFreeThisMuchMemory,
    InvalidMemoryValue,
    NoReservation,
    UnknownReservation,
)
from squeezed.rpc import jsonrpc
from squeezed.rpc.dispatch import Dispatcher, unmarshal
from squeezed.service import Dom0Policy, MemoryService
from squeezed.sim.virtual.host import SimulatedHost, VirtualDomain

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "compatibility.md"
MIRROR = Path(os.environ.get("SQUEEZED_UPSTREAM_MIRROR",
                             "/work/.mirror/xapi-project+xen-api/repo"))
GOLDEN_DIR = "ocaml/xapi-idl/lib_test/test_data/memory"
MIB = 1024


def rows() -> list[dict[str, str]]:
    out = []
    section = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("| ") or line.startswith("| what ") or line.startswith("|---"):
            continue
        cells = [x.strip().replace("\\|", "|")
                 for x in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 4, line
        out.append({"section": section, "what": cells[0], "upstream": cells[1],
                    "squeezed": cells[2], "why": cells[3]})
    return out


def service(free_kib: int = 4000 * MIB, domains=(), **kw) -> tuple[MemoryService, SimulatedHost]:
    host = SimulatedHost(free_kib, list(domains))
    return MemoryService(host, EngineConfig(reserve_kib=8 * MIB), **kw), host


# ------------------------------------------------------------------ the checks

CHECKS: dict[str, Callable[[], None]] = {}


def check(what: str):
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        CHECKS[what] = fn
        return fn
    return register


@check("XML-RPC socket path")
def _socket_path() -> None:
    assert idl.load().sockets["xmlrpc"] == "/var/xapi/memory"
    assert c.DEFAULTS.socket == "/var/xapi/memory"


@check("Wire bytes of every call, reply and error")
def _golden() -> None:
    if not (MIRROR / "HEAD").exists():
        pytest.skip("upstream mirror not on this machine (tests/test_wire_golden.py still runs)")
    names = subprocess.run(
        ["git", "--git-dir", str(MIRROR), "ls-tree", "-r", "--name-only", "HEAD", GOLDEN_DIR],
        capture_output=True, text=True, check=True).stdout.split()
    assert len(names) >= 100
    batch = subprocess.run(["git", "--git-dir", str(MIRROR), "cat-file", "--batch"],
                           input="".join(f"HEAD:{n}\n" for n in names).encode(),
                           capture_output=True, check=True).stdout
    iface = idl.load()
    dispatcher = Dispatcher(service()[0])
    pos = 0
    for name in names:
        header_end = batch.index(b"\n", pos)
        size = int(batch[pos:header_end].split()[2])
        body = batch[header_end + 1:header_end + 1 + size].strip()
        pos = header_end + 1 + size + 1
        method = Path(name).name.split(".")[0]
        if "/requests/" in name:
            m, params, rid = jsonrpc.parse_call(body)
            assert m == method
            dispatcher.bind(m, params)  # every upstream request binds
            assert jsonrpc.encode_call(m, params, rid) == body, name
            continue
        kind, value = jsonrpc.parse_response(body)
        meth = iface.method(method)
        if kind == "Success":
            unmarshal(iface, meth.result, value)  # fits the declared result type
            assert jsonrpc.encode_success(value, 0) == body, name
        else:
            tag = value if isinstance(value, str) else value[0]
            assert tag in iface.error_names, (name, tag)
            assert jsonrpc.encode_failure(value, 0) == body, name


@check("Extra parameters")
def _extra_parameters() -> None:
    svc, _ = service()
    d = Dispatcher(svc)
    assert d.call("get_host_reserved_memory", ["dbg", "extra", 1]) == 8 * MIB
    assert d.call("Memory.balance", [{"dbg": "d", "unknown": 1}]) is None


@check("`delete_reservation` of an unknown or already deleted id")
def _delete_idempotent() -> None:
    svc, host = service()
    rid = svc.reserve_memory("t", "xenopsd", MIB)
    assert svc.delete_reservation("t", "xenopsd", rid) is None
    assert svc.delete_reservation("t", "xenopsd", rid) is None
    assert svc.delete_reservation("t", "xenopsd", "never-was") is None
    assert host.reservations() == []
    spec = idl.load().method("delete_reservation")
    assert "Unknown_reservation" not in spec.errors


@check("`login`")
def _login() -> None:
    svc, host = service()
    a = svc.reserve_memory("t", "xenopsd", MIB)
    svc.transfer_reservation_to_domain("t", "xenopsd", a, 3)
    svc.reserve_memory("t", "xenopsd", MIB)
    other = svc.reserve_memory("t", "other", MIB)
    svc.login("t", "xenopsd")
    assert [r.reservation_id for r in host.reservations()] == [other]


@check("`Cannot_free_this_much_memory` amounts")
def _net_amounts() -> None:
    # 100 MiB free, nothing can balloon, reserve 8 MiB: upstream answers
    # (asked + 8 - 8, 100 - 8) MiB.
    svc, _ = service(100 * MIB, [VirtualDomain(1, 500 * MIB, 500 * MIB, 500 * MIB, 500 * MIB,
                                            500 * MIB, can_balloon=False)])
    with pytest.raises(CannotFreeThisMuchMemory) as e:
        svc.reserve_memory("t", "s", 300 * MIB)
    assert (e.value.needed_kib, e.value.free_kib) == (300 * MIB, 92 * MIB)


@check("`get_domain_zero_policy` with `domain-zero-dynamic-max = auto`")
def _dom0_auto() -> None:
    svc, _ = service(dom0=Dom0Policy(True, 1 << 30, None), dom0_total_bytes=lambda: 5 << 30)
    assert svc.get_domain_zero_policy("t") == ("Auto_balloon", (1 << 30, 5 << 30))


@check("`get_domain_zero_policy` without `manage-domain-zero`")
def _dom0_fixed() -> None:
    svc, _ = service(dom0_total_bytes=lambda: 5 << 30)
    assert svc.get_domain_zero_policy("t") == ("Fixed_size", 5 << 30)


@check("`get_host_reserved_memory`")
def _reserved() -> None:
    assert service()[0].get_host_reserved_memory("t") == 8 * MIB


@check("`query_reservation_of_domain`")
def _query_domain() -> None:
    svc, host = service()
    rid = svc.reserve_memory("t", "xenopsd", MIB)
    svc.transfer_reservation_to_domain("t", "xenopsd", rid, 4)
    host.create_domain(4, target_kib=MIB)
    assert svc.query_reservation_of_domain("t", "some-other-session", 4) == rid
    with pytest.raises(NoReservation):
        svc.query_reservation_of_domain("t", "xenopsd", 5)


@check("`transfer_reservation_to_domain` of an unknown id")
def _transfer_unknown() -> None:
    with pytest.raises(UnknownReservation):
        service()[0].transfer_reservation_to_domain("t", "xenopsd", "nope", 1)


@check("Negative amounts")
def _negative() -> None:
    svc, _ = service()
    with pytest.raises(InvalidMemoryValue):
        svc.reserve_memory("t", "s", -1)
    with pytest.raises(InvalidMemoryValue):
        svc.reserve_memory_range("t", "s", -1, 5)


UPSTREAM_SHIPPED_CONF = (  # ocaml/squeezed/scripts/squeezed.conf, as its keys read
    "# Configuration file for squeezed\n\nlog=syslog:squeezed\npidfile=/var/run/squeezed.pid\n\n"
    "disable-logging-for=http\n\nbalance-check-interval=10\n\n# manage-domain-zero=false\n"
    "# domain-zero-dynamic-min = 1073741824\n# domain-zero-dynamic-max = auto\n"
)


@check("Configuration file format (`key = value`, `#` comments, quotes)")
def _file_format(tmp_path_factory=None) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        conf = Path(d) / "squeezed.conf"
        conf.write_text(UPSTREAM_SHIPPED_CONF + 'loglevel = "debug"  # quoted\n')
        loaded = c.load([], config_file=str(conf), config_dir=str(Path(d) / "none"))
    assert loaded.config.pidfile == "/var/run/squeezed.pid"
    assert loaded.config.balance_check_interval_s == 10.0
    assert loaded.config.loglevel == "debug"
    assert logsetup.log_target(loaded.config.log, loaded.config.log_facility).kind == "syslog"


@check("Single-dash command line (`-config F`, `-pidfile P`, `-key value`, `-key=value`)")
def _single_dash() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        conf = Path(d) / "x.conf"
        conf.write_text("")
        loaded = c.load(["-config", str(conf), "-pidfile", "/run/p.pid",
                         "-balance-check-interval=3", "-loglevel", "debug"],
                        config_dir=str(Path(d) / "none"))
    assert loaded.options.config_file == str(conf)
    assert loaded.config.pidfile == "/run/p.pid"
    assert loaded.config.balance_check_interval_s == 3.0 and loaded.config.loglevel == "debug"


@check("Default syslog facility")
def _facility() -> None:
    assert logsetup.log_target(c.DEFAULTS.log, c.DEFAULTS.log_facility).facility == "local5"
    assert logsetup.DEFAULT_FACILITY == "local5"


@check("Log line fields")
def _log_fields() -> None:
    import io

    from squeezed import debuginfo

    out = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logsetup.setup_logging("stderr", "info", stream=out, environ={})
        with debuginfo.task("VM.start R:9"):
            logging.getLogger("squeezed.service").info("x")
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
        root.setLevel(saved[1])
    # [time|level|(host)|thread-id name|task|component] message
    assert re.fullmatch(r"\[\d{8}T[\d:.]+Z\| info\|[^|]*\|\d+ [^|]+\|VM\.start R:9\|"
                        r"squeezed\.service\] x\n", out.getvalue()), out.getvalue()
    # syslog: upstream's "[%5s|%s|%d %s|%s|%s]" (syslog adds time and host)
    assert logsetup.line_format("syslog").count("|") == 4


@check("`pidfile` default")
def _pidfile() -> None:
    assert c.DEFAULTS.pidfile == "/var/run/squeezed.pid"


@check("`boot-time-memory-file`")
def _boot_time_file() -> None:
    assert c.DEFAULTS.boot_time_memory_file == "/var/run/nonpersistent/xapi/boot_time_memory"


@check("`balance-check-interval` default")
def _interval() -> None:
    assert c.DEFAULTS.balance_check_interval_s == 10.0


# ------------------------------------------------------------------ the walk

ROWS = rows()
CHECKED = [r for r in ROWS if r["squeezed"].startswith("same (checked)")]


@pytest.mark.parametrize("row", CHECKED, ids=[r["what"][:60] for r in CHECKED])
def test_same_as_upstream_rows(row: dict[str, str]) -> None:
    fn = CHECKS.get(row["what"])
    assert fn is not None, f"no check for the checked row {row['what']!r}"
    fn()


def test_every_check_has_its_row() -> None:
    assert set(CHECKS) <= {r["what"] for r in CHECKED}, set(CHECKS) - {r["what"] for r in CHECKED}


def test_every_difference_gives_a_reason() -> None:
    assert ROWS, "the table is empty"
    for r in ROWS:
        assert r["upstream"], r
        if not r["squeezed"].startswith("same"):  # a difference
            assert len(r["why"]) > 10, f"row {r['what']!r} differs without a reason"


def test_idl_agrees_on_extra_parameters_and_delete() -> None:
    # the IDL's documentation says what the rows say
    doc = idl.load().method("delete_reservation").doc
    assert "Idempotent" in doc
    assert json.loads((ROOT / "idl" / "memory.json").read_text())["name"] == "Memory"
