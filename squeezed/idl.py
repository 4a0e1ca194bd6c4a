"""The Memory interface, loaded from its single source of truth `idl/memory.json`.

The dispatcher, squeezectl's subcommands, docs/api.md and the golden wire tests
are all derived from (or checked against) what `load()` returns.

Type expressions are JSON values: a basic type name (`string`, `int64`, `int`,
`bool`, `float`, `unit`), the name of an entry of `types`, or an object with one
of the keys `alias`, `tuple`, `list`, `option`, `struct`, `variant`.

`python -m squeezed.idl --markdown` prints the API reference (docs/api.md).
"""

from __future__ import annotations

import argparse
import functools
import importlib.resources
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TypeExpr = str | dict[str, Any]

BASIC_TYPES = ("string", "int64", "int", "bool", "float", "unit")
DIALECTS = {
    "v1": "xcp-idl v1 (what xenopsd and xapi call)",
    "memory": "Memory.* (simple documented dialect, default session)",
    "extension": "Operator extensions (not in upstream squeezed)",
}
_COMPOSITES = ("alias", "tuple", "list", "option", "struct", "variant")

# The canonical file lives at <repo>/idl/memory.json; installed copies carry it
# as package data squeezed/_idl/memory.json (a symlink in the source tree).
_REPO_IDL = Path(__file__).resolve().parent.parent / "idl" / "memory.json"


class IdlError(ValueError):
    """The IDL file is inconsistent."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # a basic type: what the dispatcher converts the wire value to
    doc: str = ""
    alias: str | None = None  # the upstream type name, e.g. reservation_id


@dataclass(frozen=True)
class Const:
    """A service argument fixed by a dialect (e.g. the `default` session)."""

    value: Any


@dataclass(frozen=True)
class ErrorDef:
    name: str
    contents: TypeExpr | None  # None: a bare constructor on the wire
    args: list[str]
    doc: str


@dataclass(frozen=True)
class Method:
    name: str  # the wire name
    params: list[Param]
    result: TypeExpr
    errors: list[str]
    doc: str
    dialect: str
    operation: str = ""  # the service method called; defaults to name
    args: list[str | Const] = field(default_factory=list)  # service args, in order
    result_index: int | None = None  # pick one element of a tuple result
    result_doc: str = ""
    cli: str = ""

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def signature(self) -> str:
        return f"{self.name} ({', '.join(self.param_names)})"


@dataclass(frozen=True)
class Interface:
    name: str
    namespace: str | None
    version: tuple[int, int, int]
    description: str
    types: dict[str, dict[str, Any]]
    errors: list[ErrorDef]
    methods: list[Method]
    default_session: str
    sockets: dict[str, str]

    def method(self, name: str) -> Method:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]

    @property
    def error_names(self) -> list[str]:
        return [e.name for e in self.errors]

    def resolve(self, t: TypeExpr) -> TypeExpr:
        """Follow named types and aliases down to a basic name or a composite."""
        seen: set[str] = set()
        while True:
            if isinstance(t, str):
                if t in BASIC_TYPES:
                    return t
                if t in seen or t not in self.types:
                    raise IdlError(f"unknown or recursive type {t!r}")
                seen.add(t)
                t = self.types[t]
            elif "alias" in t:
                t = t["alias"]
            else:
                return t

    def operations(self) -> dict[str, list[str]]:
        """Service method name -> its parameter names, as the dispatcher calls it."""
        ops: dict[str, list[str]] = {}
        for m in self.methods:
            if m.operation == m.name:
                ops[m.operation] = m.param_names
        for m in self.methods:
            if m.operation not in ops:
                ops[m.operation] = [a for a in m.args if isinstance(a, str)]
        return ops


def _find() -> str:
    if _REPO_IDL.is_file():
        return _REPO_IDL.read_text(encoding="utf-8")
    res = importlib.resources.files("squeezed") / "_idl" / "memory.json"
    return res.read_text(encoding="utf-8")


def load(path: str | Path | None = None) -> Interface:
    """Load and check the interface (the repo copy, else the packaged one).
    The default interface is read once per process; treat it as read-only."""
    if path is None:
        return _default()
    return parse(json.loads(Path(path).read_text(encoding="utf-8")))


@functools.cache
def _default() -> Interface:
    return parse(json.loads(_find()))


def parse(doc: dict[str, Any]) -> Interface:
    if doc.get("idl_format") != 1:
        raise IdlError("unsupported idl_format")
    methods: list[Method] = []
    for m in doc["methods"]:
        params = [
            Param(p["name"], p["type"], p.get("doc", ""), p.get("alias")) for p in m["params"]
        ]
        args: list[str | Const] = [
            Const(a["const"]) if isinstance(a, dict) else a
            for a in m.get("args", [p.name for p in params])
        ]
        result = m["result"]
        methods.append(
            Method(
                name=m["name"],
                params=params,
                result=result["type"],
                errors=list(m["errors"]),
                doc=m["doc"],
                dialect=m["dialect"],
                operation=m.get("operation", m["name"]),
                args=args,
                result_index=m.get("result_index"),
                result_doc=result.get("doc", ""),
                cli=m["cli"],
            )
        )
    iface = Interface(
        name=doc["name"],
        namespace=doc.get("namespace"),
        version=tuple(doc["version"]),  # type: ignore[arg-type]
        description=doc["description"],
        types=doc["types"],
        errors=[
            ErrorDef(e["name"], e["contents"], list(e["args"]), e["doc"]) for e in doc["errors"]
        ],
        methods=methods,
        default_session=doc["default_session"],
        sockets=dict(doc["sockets"]),
    )
    check(iface)
    return iface


def _check_type(iface: Interface, t: Any, where: str) -> None:
    if isinstance(t, str):
        if t not in BASIC_TYPES and t not in iface.types:
            raise IdlError(f"{where}: unknown type {t!r}")
        return
    if not isinstance(t, dict):
        raise IdlError(f"{where}: bad type expression {t!r}")
    kinds = [k for k in _COMPOSITES if k in t]
    if len(kinds) != 1:
        raise IdlError(f"{where}: type needs exactly one of {_COMPOSITES}")
    k = kinds[0]
    v = t[k]
    if k in ("alias", "list", "option"):
        _check_type(iface, v, where)
    elif k == "tuple":
        if len(v) < 2:
            raise IdlError(f"{where}: a tuple has at least 2 elements")
        for x in v:
            _check_type(iface, x, where)
    elif k == "struct":
        for f in v:
            _check_type(iface, f["type"], f"{where}.{f['name']}")
    else:
        for c in v:
            if c["contents"] is not None:
                _check_type(iface, c["contents"], f"{where}.{c['name']}")


def check(iface: Interface) -> None:
    """Reject an IDL the rest of the code could not honour."""
    for name, t in iface.types.items():
        _check_type(iface, t, f"type {name}")
        iface.resolve(name)
    for e in iface.errors:
        if e.contents is not None:
            _check_type(iface, e.contents, f"error {e.name}")
    names = iface.method_names
    if len(set(names)) != len(names):
        raise IdlError("duplicate method names")
    clis = [m.cli for m in iface.methods]
    if len(set(clis)) != len(clis) or not all(clis):
        raise IdlError("every method needs a unique cli name")
    errs = set(iface.error_names)
    by_name = {m.name: m for m in iface.methods}
    for m in iface.methods:
        where = f"method {m.name}"
        if m.dialect not in DIALECTS:
            raise IdlError(f"{where}: unknown dialect {m.dialect!r}")
        if not m.params or m.params[0].name != "dbg":
            raise IdlError(f"{where}: the first parameter must be dbg")
        for p in m.params:
            if p.type not in BASIC_TYPES or p.type == "unit":
                raise IdlError(f"{where}: parameter {p.name} must have a basic type")
            if p.alias is not None and iface.resolve(p.alias) != p.type:
                raise IdlError(f"{where}: parameter {p.name} alias {p.alias} is not {p.type}")
        if len(set(m.param_names)) != len(m.params):
            raise IdlError(f"{where}: duplicate parameter names")
        _check_type(iface, m.result, where)
        unknown = set(m.errors) - errs
        if unknown:
            raise IdlError(f"{where}: unknown errors {sorted(unknown)}")
        for a in m.args:
            if isinstance(a, str) and a not in m.param_names:
                raise IdlError(f"{where}: args name unknown parameter {a!r}")
        target = by_name.get(m.operation)
        if target is not None and target is not m and len(m.args) != len(target.params):
            raise IdlError(f"{where}: args do not match {target.signature()}")
        if m.result_index is not None:
            base = target.result if target is not None else m.result
            r = iface.resolve(base)
            if not (isinstance(r, dict) and "tuple" in r and m.result_index < len(r["tuple"])):
                raise IdlError(f"{where}: result_index needs a tuple result")


def type_str(t: TypeExpr | None) -> str:
    """OCaml-like rendering of a type expression, for docs and help."""
    if t is None:
        return "(none)"
    if isinstance(t, str):
        return t
    if "alias" in t:
        return type_str(t["alias"])
    if "tuple" in t:
        return " * ".join(type_str(x) for x in t["tuple"])
    if "list" in t:
        return f"{_paren(t['list'])} list"
    if "option" in t:
        return f"{_paren(t['option'])} option"
    if "struct" in t:
        return "{ " + "; ".join(f"{f['name']}: {type_str(f['type'])}" for f in t["struct"]) + " }"
    return " | ".join(
        c["name"] + ("" if c["contents"] is None else f" of {type_str(c['contents'])}")
        for c in t["variant"]
    )


def _paren(t: TypeExpr) -> str:
    s = type_str(t)
    return f"({s})" if " " in s else s


def _wire_example(iface: Interface, t: TypeExpr | None, hint: list[str] | None = None) -> str:
    """A sketch of the wire form of a value of type t."""
    if t is None:
        return ""
    r = iface.resolve(t)
    if isinstance(r, str):
        return {"unit": "nil", "string": '"…"'}.get(r, r)
    if "tuple" in r:
        names = hint or [type_str(x) for x in r["tuple"]]
        return "[" + ", ".join(names) + "]"
    if "list" in r:
        return f"[{type_str(r['list'])}, …]"
    if "option" in r:
        return f"{type_str(r['option'])} or absent"
    if "struct" in r:
        return "{" + ", ".join(f["name"] for f in r["struct"]) + "}"
    return " or ".join(
        f'"{c["name"]}"'
        if c["contents"] is None
        else f'["{c["name"]}", {_wire_example(iface, c["contents"])}]'
        for c in r["variant"]
    )


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(iface: Interface) -> str:
    """The API reference, docs/api.md."""
    v = ".".join(str(x) for x in iface.version)
    out: list[str] = [
        f"# The {iface.name} interface, version {v}",
        "",
        "<!-- Generated from idl/memory.json by `python -m squeezed.idl --markdown`."
        " Do not edit by hand. -->",
        "",
        iface.description,
        "",
        f"- XML-RPC socket: `{iface.sockets['xmlrpc']}`; JSON-RPC socket:"
        f" `{iface.sockets['jsonrpc']}` (HTTP POST framing on both; see docs/wire.md).",
        "- Wire names carry no namespace; parameters are positional, or one struct whose"
        " members are the parameter names.",
        "- `int64` and `int` travel as untyped XML-RPC values (`<value>1024</value>`) and as"
        " JSON numbers; `unit` is `<nil/>` / `null`.",
        f"- Memory.* methods act in the built-in session `{iface.default_session}`.",
        "- Every method may also fail with `Internal_error` (e.g. a malformed request)"
        " and, for forward compatibility, `Unknown_error`.",
        "",
        "## Methods",
        "",
    ]
    for d, title in DIALECTS.items():
        ms = [m for m in iface.methods if m.dialect == d]
        out.append(f"- {title}: " + ", ".join(f"[`{m.name}`](#{_anchor(m.name)})" for m in ms))
    out.append("")
    for d, title in DIALECTS.items():
        out += [f"## {title}", ""]
        for m in (m for m in iface.methods if m.dialect == d):
            out += _method_md(iface, m)
    out += ["## Types", ""]
    for name, t in iface.types.items():
        out += [f"### `{name}`", "", t.get("doc", ""), ""]
        r = t
        if "struct" in r:
            out += ["| field | type | description |", "|---|---|---|"]
            out += [
                f"| `{f['name']}` | `{_cell(type_str(f['type']))}` | {_cell(f.get('doc', ''))} |"
                for f in r["struct"]
            ]
        elif "variant" in r:
            out += ["| constructor | contents | wire form | description |", "|---|---|---|---|"]
            for c in r["variant"]:
                wire = _wire_example(iface, {"variant": [c]})
                out.append(
                    f"| `{c['name']}` | `{_cell(type_str(c['contents']))}` | `{_cell(wire)}` "
                    f"| {_cell(c.get('doc', ''))} |"
                )
        else:
            out.append(f"`{_cell(type_str(r))}`; on the wire `{_wire_example(iface, r)}`.")
        out.append("")
    out += [
        "## Errors",
        "",
        "On the wire an error is its constructor name, or `[name, arguments]`.",
        "",
        "| error | wire form | meaning |",
        "|---|---|---|",
    ]
    for e in iface.errors:
        if e.contents is None:
            wire = f'"{e.name}"'
        else:
            wire = f'["{e.name}", {_wire_example(iface, e.contents, e.args or None)}]'
            if len(e.args) == 1:
                wire = f'["{e.name}", {e.args[0]}]'
        out.append(f"| `{e.name}` | `{_cell(wire)}` | {_cell(e.doc)} |")
    out.append("")
    return "\n".join(out)


def _anchor(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum() or c in "-_")


def _method_md(iface: Interface, m: Method) -> list[str]:
    out = [f"### {m.name}", "", m.doc, ""]
    out += ["| parameter | type | description |", "|---|---|---|"]
    for p in m.params:
        t = p.type if p.alias is None else f"{p.alias} = {p.type}"
        doc = p.doc or (iface.types[p.alias].get("doc", "") if p.alias else "")
        out.append(f"| `{p.name}` | `{t}` | {_cell(doc)} |")
    out += [
        "",
        f"- Returns `{_cell(type_str(m.result))}`: {m.result_doc}"
        f" Wire form: `{_cell(_wire_example(iface, m.result))}`.",
        "- Errors: " + ", ".join(f"`{e}`" for e in m.errors),
    ]
    if m.operation != m.name:
        args = ", ".join(f'"{a.value}"' if isinstance(a, Const) else a for a in m.args)
        pick = "" if m.result_index is None else f", returning element {m.result_index}"
        out.append(f"- Same operation as `{m.operation}({args})`{pick}.")
    cli_args = " ".join(p.name.upper() for p in m.params if p.name not in ("dbg", "session_id"))
    out += [f"- squeezectl: `squeezectl {m.cli}{' ' + cli_args if cli_args else ''}`", ""]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m squeezed.idl", description=__doc__)
    ap.add_argument("--markdown", action="store_true", help="print docs/api.md")
    ap.add_argument("--check", metavar="FILE", help="load and check an IDL file")
    a = ap.parse_args(argv)
    iface = load(a.check)
    if a.markdown:
        sys.stdout.write(markdown(iface))
    else:
        print(f"{iface.name} {'.'.join(map(str, iface.version))}: {len(iface.methods)} methods")
    return 0


if __name__ == "__main__":
    sys.exit(main())
