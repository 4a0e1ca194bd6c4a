"""squeezectl against a real server with a fake service: every subcommand,
human and --json output, and the exit codes 0/1/2/3."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from rpc_fake import QUERY, STATE, serving, short_dir

from squeezed import errors
from squeezed.cli import main
from squeezed.rpc.server import JsonRpcServer, XmlRpcServer

D = "squeezectl"  # the default --dbg
S = "default"  # the default --session

# subcommand -> (arguments, service operation, its arguments, human output)
CASES: dict[str, tuple[list[str], str, tuple[Any, ...], str]] = {
    "diagnostics": ([], "get_diagnostics", (D,), 'squeezed <ok> & "well"\n'),
    "login": (["xenopsd"], "login", (D, "xenopsd"), "xenopsd\n"),
    "reserve": (["1024"], "reserve_memory", (D, S, 1024), "res-1\n"),
    "reserve-range": (
        ["1048576", "2097152"],
        "reserve_memory_range",
        (D, S, 1048576, 2097152),
        "res-2 1572864\n",
    ),
    "delete": (["res-2"], "delete_reservation", (D, S, "res-2"), ""),
    "transfer": (["res-2", "7"], "transfer_reservation_to_domain", (D, S, "res-2", 7), ""),
    "query-domain": (["7"], "query_reservation_of_domain", (D, S, 7), "res-2\n"),
    "balance": ([], "balance_memory", (D,), ""),
    "reserved": ([], "get_host_reserved_memory", (D,), "8192\n"),
    "initial-free": ([], "get_host_initial_free_memory", (D,), "17179869184\n"),
    "dom0-policy": ([], "get_domain_zero_policy", (D,), "Fixed_size 4294967296\n"),
    "memory-reserve": (["1024"], "reserve_memory", (D, S, 1024), "res-1\n"),
    "memory-reserve-range": (["1", "2"], "reserve_memory_range", (D, S, 1, 2), "res-2\n"),
    "memory-transfer": (["r9", "9"], "transfer_reservation_to_domain", (D, S, "r9", 9), ""),
    "memory-delete": (["r9"], "delete_reservation", (D, S, "r9"), ""),
    "memory-balance": ([], "balance_memory", (D,), ""),
    "query": (
        [],
        "query",
        (D,),
        "name:        squeezed\nvendor:      squeezed developers\nversion:     0.1.0\n"
        "features:    reserve_range\ninstance_id: inst-1\n",
    ),
    "log-level": (["debug"], "set_log_level", (D, "debug"), ""),
    "state": (
        [],
        "get_state",
        (D,),
        "host:\n"
        "  free_kib:     2097152\n"
        "  reserved_kib: 8192\n"
        "reservations:\n"
        "  reservation_id  session_id      kib  domid\n"
        "  res-1           xenopsd     1048576      7\n"
        "  res-2           default        4096      -\n"
        "domains:\n"
        "  domid  can_balloon  dynamic_min_kib  target_kib  dynamic_max_kib"
        "  memory_actual_kib  memory_max_kib\n"
        "      0  no                   1048576     1048576          1048576"
        "            1048576         1048576\n"
        "      7  yes                   524288      786432          1048576"
        "             786430         1048576\n",
    ),
}

JSON_OUT = {
    "diagnostics": 'squeezed <ok> & "well"',
    "login": "xenopsd",
    "reserve": "res-1",
    "reserve-range": ["res-2", 1572864],
    "delete": None,
    "reserved": 8192,
    "initial-free": 17179869184,
    "dom0-policy": ["Fixed_size", 4294967296],
    "query": QUERY,
}


@pytest.fixture(scope="module")
def servers():
    with serving(XmlRpcServer) as xml, serving(JsonRpcServer) as js:
        yield {"xmlrpc": xml, "json": js}


@pytest.mark.parametrize("protocol", ["xmlrpc", "json"])
@pytest.mark.parametrize("cmd", sorted(CASES))
def test_subcommand(cmd: str, protocol: str, servers, capsys) -> None:
    srv, fake = servers[protocol]
    argv, op, args, human = CASES[cmd]
    fake.calls.clear()
    assert main(["--socket", srv.path, "--protocol", protocol, cmd, *argv]) == 0
    assert fake.calls == [(op, args)]
    out, err = capsys.readouterr()
    assert (out, err) == (human, "")


@pytest.mark.parametrize("protocol", ["xmlrpc", "json"])
def test_json_output(protocol: str, servers, capsys) -> None:
    srv, _ = servers[protocol]
    for cmd, expected in JSON_OUT.items():
        argv = CASES[cmd][0]
        assert main(["--socket", srv.path, "--protocol", protocol, "--json", cmd, *argv]) == 0
        assert json.loads(capsys.readouterr().out) == expected
    assert main(["--socket", srv.path, "--protocol", protocol, "--json", "state"]) == 0
    state = json.loads(capsys.readouterr().out)
    # option fields left out when absent, as rpclib does; all ints are numbers
    assert state["reservations"][1] == {k: v for k, v in STATE["reservations"][1].items() if v}
    assert state["domains"] == STATE["domains"]


def test_session_and_dbg_options(servers) -> None:
    srv, fake = servers["xmlrpc"]
    fake.calls.clear()
    assert (
        main(["--socket", srv.path, "--session", "xenopsd", "--dbg", "op-7", "reserve", "5"]) == 0
    )
    assert fake.calls == [("reserve_memory", ("op-7", "xenopsd", 5))]


def test_socket_from_environment(servers, monkeypatch, capsys) -> None:
    srv, _ = servers["xmlrpc"]
    monkeypatch.setenv("SQUEEZED_SOCKET", srv.path)
    assert main(["reserved"]) == 0
    assert capsys.readouterr().out == "8192\n"


@pytest.mark.parametrize(
    "err,shown",
    [
        (errors.CannotFreeThisMuchMemory(1024, 512), "Cannot_free_this_much_memory [1024, 512]"),
        (errors.DomainsRefusedToCooperate([2, 5]), "Domains_refused_to_cooperate [2, 5]"),
        (errors.UnknownReservation("r1"), 'Unknown_reservation "r1"'),
        (errors.NoReservation(), "No_reservation"),
        (errors.InvalidMemoryValue(-1), "Invalid_memory_value -1"),
        (errors.InternalError("boom"), 'Internal_error "boom"'),
        (errors.UnknownError(), "Unknown_error"),
    ],
)
def test_service_error_exit_1(err, shown: str, servers, capsys) -> None:
    srv, fake = servers["xmlrpc"]
    fake.raise_next = err
    assert main(["--socket", srv.path, "reserve", "1024"]) == 1
    out, errtext = capsys.readouterr()
    assert out == ""
    assert errtext.startswith(f"squeezectl: reserve_memory failed: {shown} (")
    fake.raise_next = err
    assert main(["--socket", srv.path, "--json", "reserve", "1024"]) == 1
    assert json.loads(capsys.readouterr().out) == {"error": err.wire()}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["reserve"],
        ["reserve", "lots"],
        ["reserve", "1", "2"],
        ["reserve", "9223372036854775808"],
        ["transfer", "r", "4611686018427387904"],
        ["--protocol", "soap", "balance"],
        ["--bogus", "balance"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], servers, capsys) -> None:
    srv, fake = servers["xmlrpc"]
    fake.calls.clear()
    assert main(["--socket", srv.path, *argv]) == 2
    assert "usage:" in capsys.readouterr().err
    assert fake.calls == []


def test_help_lists_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in CASES:
        assert f"\n    {cmd}" in out
    assert main(["reserve-range", "--help"]) == 0
    assert "reserve_memory_range(dbg, session_id, min_kib, max_kib)" in capsys.readouterr().out


def test_cannot_connect_exit_3(capsys) -> None:
    with short_dir() as d:
        assert main(["--socket", f"{d}/absent", "balance"]) == 3
        err = capsys.readouterr().err
        assert f"cannot connect to {d}/absent" in err and "Is squeezed running?" in err
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"{d}/stale")
        s.close()  # a socket file nobody listens on
        assert main(["--socket", f"{d}/stale", "--protocol", "json", "state"]) == 3
        assert "refused" in capsys.readouterr().err


def test_a_reader_that_stops_early_ends_squeezectl_quietly(servers) -> None:
    """`squeezectl state | head -1`: no traceback, the shell's SIGPIPE status."""
    import subprocess
    import sys

    srv, _ = servers["xmlrpc"]
    p = subprocess.Popen([sys.executable, "-m", "squeezed.cli", "--socket", srv.path, "state"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before squeezectl writes a byte
    err = p.stderr.read().decode()
    assert p.wait(30) == 141, err
    assert err == ""
