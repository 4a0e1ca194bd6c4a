"""idl/memory.json is the single source of truth: the dispatcher, the service
signature, squeezectl's subcommands, docs/api.md, the error classes and the
golden wire tests must all cover exactly its methods and errors."""

from __future__ import annotations

import copy
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import test_cli
import test_wire_golden
from rpc_fake import FakeService

from squeezed import errors, idl
from squeezed.cli import build_parser
from squeezed.rpc.dispatch import Dispatcher, marshal

ROOT = Path(__file__).resolve().parent.parent
IFACE = idl.load()


def test_dispatcher_serves_exactly_the_idl_methods() -> None:
    assert Dispatcher(FakeService()).methods == IFACE.method_names


def test_service_signature_is_the_idl_operations() -> None:
    """The fake has exactly the operations the dispatcher calls, with the IDL's
    parameter names: this is the contract squeezed/service.py must meet."""
    ops = IFACE.operations()
    public = {n for n, _ in inspect.getmembers(FakeService, inspect.isfunction)}
    assert {n for n in public if not n.startswith("_")} == set(ops)
    for op, names in ops.items():
        params = list(inspect.signature(getattr(FakeService, op)).parameters)[1:]
        assert params == names, op


def test_dispatcher_refuses_an_incomplete_service() -> None:
    class Partial:
        def get_diagnostics(self, dbg: str) -> str:
            return ""

    with pytest.raises(TypeError, match="lacks operations"):
        Dispatcher(Partial())
    assert "get_state" in Dispatcher(Partial(), strict=False).missing_operations()


def test_cli_subcommands_are_the_idl_methods() -> None:
    parser = build_parser(IFACE)
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    # one per IDL method, then the operator views built on get_state
    assert list(sub.choices) == [m.cli for m in IFACE.methods] + ["top", "metrics", "record"]
    for m in IFACE.methods:
        assert sub.choices[m.cli].get_default("method") == m.name
    for view in ("top", "metrics", "record"):
        assert sub.choices[view].get_default("view") is not None
    assert set(test_cli.CASES) == {m.cli for m in IFACE.methods}


def test_golden_tests_cover_every_method_and_error() -> None:
    assert {c.method for c in test_wire_golden.GOLDEN} == set(IFACE.method_names)
    assert [e.name for e, _, _ in test_wire_golden.ERROR_GOLDEN] == IFACE.error_names


def test_error_classes_are_the_idl_errors() -> None:
    assert [c.name for c in errors.ALL_ERRORS] == IFACE.error_names
    for err, _, _ in test_wire_golden.ERROR_GOLDEN:
        (edef,) = [e for e in IFACE.errors if e.name == err.name]
        if edef.contents is None:
            assert err.wire() == err.name
        else:  # the arguments errors.py puts on the wire have the IDL's type
            assert marshal(IFACE, edef.contents, err.args_wire()) == err.wire()[1]


def test_api_md_is_generated_from_the_idl() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert text == idl.markdown(IFACE), (
        "regenerate: python -m squeezed.idl --markdown > docs/api.md"
    )
    for m in IFACE.methods:
        assert f"\n### {m.name}\n" in text


def test_markdown_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "squeezed.idl", "--markdown"],
        capture_output=True,
        check=True,
        cwd=ROOT,
    ).stdout.decode()
    assert out == (ROOT / "docs" / "api.md").read_text(encoding="utf-8")


def test_packaged_copy_is_the_canonical_file() -> None:
    packaged = ROOT / "squeezed" / "_idl" / "memory.json"
    assert packaged.read_bytes() == (ROOT / "idl" / "memory.json").read_bytes()
    assert idl.load(packaged) == IFACE


def _broken(mutate) -> dict:
    doc = json.loads((ROOT / "idl" / "memory.json").read_text(encoding="utf-8"))
    doc = copy.deepcopy(doc)
    mutate(doc)
    return doc


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["methods"].append(copy.deepcopy(d["methods"][0])),  # duplicate name
        lambda d: d["methods"][2]["params"][2].update(type="int128"),
        lambda d: d["methods"][2].update(errors=["Out_of_cheese"]),
        lambda d: d["methods"][2].update(result={"type": "nonesuch"}),
        lambda d: d["methods"][11].update(args=["dbg", "amount"]),  # Memory.reserve arity
        lambda d: d["methods"][3].update(cli="reserve"),  # duplicate subcommand
        lambda d: d["methods"][0]["params"].reverse() or d["methods"][1]["params"].reverse(),
    ],
)
def test_inconsistent_idl_is_rejected(mutate) -> None:
    with pytest.raises(idl.IdlError):
        idl.parse(_broken(mutate))
