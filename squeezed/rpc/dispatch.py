"""Dispatch decoded calls to the service, as the IDL says.

`Dispatcher.call(method, params)` checks arity, converts every parameter to its
IDL type (untyped XML-RPC strings become int64 where the IDL says int64, as
rpclib's unmarshaller does), calls the service method named by the IDL's
operation, and marshals the result back to a wire value. Any failure raises a
`squeezed.errors.MemoryInterfaceError`; a malformed request is an `Internal_error`
naming the method, the parameter and the value. Parameters beyond the IDL's
(positional or named) are ignored, as rpclib's server ignores them.

`call_undoable` also returns how to undo a call whose reply cannot be
delivered: a reservation nobody knows the id of is given back at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from squeezed import debuginfo, idl
from squeezed.errors import InternalError, MemoryInterfaceError

log = logging.getLogger("squeezed.rpc")

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# IDL `int` is OCaml's native int, 63-bit on the 64-bit hosts squeezed runs
# on; that is exactly what rpclib's int_of_rpc accepts there.
INT_MIN, INT_MAX = -(1 << 62), (1 << 62) - 1
_DECIMAL = re.compile(r"[+-]?[0-9]{1,40}")


class TypeMismatch(ValueError):
    """A value does not fit its IDL type (the message says why)."""


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def _to_int(v: object, lo: int, hi: int, tname: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TypeMismatch(f"must be an {tname}, got {_short(v)}")
    if isinstance(v, str) and not _DECIMAL.fullmatch(v):
        raise TypeMismatch(f"must be an {tname}, got {_short(v)}")
    n = int(v)
    if not lo <= n <= hi:
        raise TypeMismatch(f"is out of {tname} range: {n}")
    return n


def convert_param(ptype: str, v: Any) -> Any:
    """Wire value -> Python value of a basic IDL type (raises TypeMismatch)."""
    if ptype == "string":
        if not isinstance(v, str):
            raise TypeMismatch(f"must be a string, got {_short(v)}")
        return v
    if ptype == "int64":
        return _to_int(v, INT64_MIN, INT64_MAX, "int64")
    if ptype == "int":
        return _to_int(v, INT_MIN, INT_MAX, "int")
    if ptype == "bool":
        if not isinstance(v, bool):
            raise TypeMismatch(f"must be a bool, got {_short(v)}")
        return v
    if ptype == "float":
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise TypeMismatch(f"must be a float, got {_short(v)}")
        try:
            return float(v)
        except ValueError:
            raise TypeMismatch(f"must be a float, got {_short(v)}") from None
    raise TypeMismatch(f"has unsupported type {ptype}")


class _Direction:
    """What differs between the two directions of the one type walk
    (`_walk`): the leaves, and how forgiving structs and variants are."""

    outgoing = True  # Python -> wire

    def leaf(self, r: str, v: Any) -> Any:
        if r == "string":
            if not isinstance(v, str):
                raise TypeMismatch(f"expected a string, got {_short(v)}")
            return v
        if r in ("int64", "int"):
            lo, hi = (INT64_MIN, INT64_MAX) if r == "int64" else (INT_MIN, INT_MAX)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise TypeMismatch(f"expected an {r}, got {_short(v)}")
            return v
        if r == "bool":
            if not isinstance(v, bool):
                raise TypeMismatch(f"expected a bool, got {_short(v)}")
            return v
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeMismatch(f"expected a float, got {_short(v)}")
        return float(v)

    def is_sequence(self, v: Any) -> bool:
        return isinstance(v, tuple | list)

    def tag_matches(self, tag: str, name: str) -> bool:
        return tag == name


class _Incoming(_Direction):
    """Wire -> Python, as rpclib's unmarshaller: untyped XML-RPC strings become
    integers where the type says so, tags match case-insensitively, unknown
    struct fields pass through (a newer server may add some)."""

    outgoing = False

    def leaf(self, r: str, v: Any) -> Any:
        return convert_param(r, v)

    def is_sequence(self, v: Any) -> bool:
        return isinstance(v, list)

    def tag_matches(self, tag: str, name: str) -> bool:
        return tag.lower() == name.lower()


_OUT, _IN = _Direction(), _Incoming()


def _walk(iface: idl.Interface, t: idl.TypeExpr, v: Any, d: _Direction) -> Any:
    r = iface.resolve(t)
    if isinstance(r, str):
        if r == "unit":
            if v is not None:
                raise TypeMismatch(f"expected nothing, got {_short(v)}")
            return None
        return d.leaf(r, v)
    if "tuple" in r:
        ts = r["tuple"]
        if not d.is_sequence(v) or len(v) != len(ts):
            raise TypeMismatch(f"expected a {len(ts)}-tuple, got {_short(v)}")
        return [_walk(iface, ti, vi, d) for ti, vi in zip(ts, v, strict=True)]
    if "list" in r:
        if not d.is_sequence(v):
            raise TypeMismatch(f"expected a list, got {_short(v)}")
        return [_walk(iface, r["list"], x, d) for x in v]
    if "option" in r:
        return None if v is None else _walk(iface, r["option"], v, d)
    if "struct" in r:
        return _walk_struct(iface, r["struct"], v, d)
    # variant: "Name", or ("Name", contents) / ["Name", contents]
    if isinstance(v, str):
        name, contents = v, None
    elif d.is_sequence(v) and len(v) == 2 and isinstance(v[0], str):
        name, contents = v
    else:
        raise TypeMismatch(f"expected a variant, got {_short(v)}")
    for c in r["variant"]:
        if d.tag_matches(c["name"], name):
            if c["contents"] is None:
                if d.outgoing and contents is not None:
                    raise TypeMismatch(f"{name} takes no contents")
                return c["name"]
            return [c["name"], _walk(iface, c["contents"], contents, d)]
    if d.outgoing:
        raise TypeMismatch(
            f"expected one of {[c['name'] for c in r['variant']]}, got {_short(v)}")
    raise TypeMismatch(f"unknown variant {name!r}")


def _walk_struct(iface: idl.Interface, fields: list[dict[str, Any]], v: Any,
                 d: _Direction) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise TypeMismatch(f"expected a struct, got {_short(v)}")
    known = {f["name"]: f["type"] for f in fields}
    if not d.outgoing:
        return {k: _walk(iface, known[k], x, d) if k in known else x for k, x in v.items()}
    extra = set(v) - set(known)
    if extra:
        raise TypeMismatch(f"unexpected struct fields {sorted(extra)}")
    out: dict[str, Any] = {}
    for name, ftype in known.items():
        ft = iface.resolve(ftype)
        optional = isinstance(ft, dict) and "option" in ft
        if name not in v or (optional and v[name] is None):
            if optional:
                continue  # rpclib omits an absent option field
            raise TypeMismatch(f"missing struct field {name!r}")
        out[name] = _walk(iface, ftype, v[name], d)
    return out


def marshal(iface: idl.Interface, t: idl.TypeExpr, v: Any) -> Any:
    """Python result -> wire value, following rpclib's Rpcmarshal rules:
    tuple -> array, option -> the value or nothing, variant -> "Name" or
    ["Name", contents], unit -> nil."""
    return _walk(iface, t, v, _OUT)


def unmarshal(iface: idl.Interface, t: idl.TypeExpr, v: Any) -> Any:
    """Wire value -> Python value of IDL type t, as rpclib's client does
    (untyped XML-RPC "1024" becomes 1024 where t says int64). Tuples and
    variants with contents come back as lists. Raises TypeMismatch."""
    return _walk(iface, t, v, _IN)


class Dispatcher:
    """Calls `service.<operation>(...)` for each IDL method.

    The service has one Python method per operation (see `operations()`), found by
    name at run time from the IDL (hence typed `object`: no static protocol names
    them), and raises `MemoryInterfaceError` subclasses; any other exception is logged with its
    traceback and becomes `Internal_error` carrying its message.
    """

    def __init__(
        self, service: object, interface: idl.Interface | None = None, *, strict: bool = True
    ) -> None:
        self.service = service
        self.interface = interface if interface is not None else idl.load()
        self._methods = {m.name: m for m in self.interface.methods}
        missing = self.missing_operations()
        if strict and missing:
            raise TypeError(f"service {type(service).__name__} lacks operations: {missing}")

    @property
    def methods(self) -> list[str]:
        """The wire names served (exactly the IDL's)."""
        return list(self._methods)

    def operations(self) -> dict[str, list[str]]:
        return self.interface.operations()

    def missing_operations(self) -> list[str]:
        return sorted(
            op for op in self.operations() if not callable(getattr(self.service, op, None))
        )

    def bind(self, method: str, params: list[Any]) -> tuple[idl.Method, list[Any]]:
        """Check and convert the params of a call (raises InternalError)."""
        m = self._methods.get(method)
        if m is None:
            raise InternalError(f"unknown method: {method}")
        if not isinstance(params, list):
            raise InternalError(f"{method}: params must be a list")
        names = m.param_names
        # The named form: one struct whose members are the parameter names.
        # No parameter of this interface is a struct, so this is unambiguous.
        if len(params) == 1 and isinstance(params[0], dict):
            members: dict[str, Any] = params[0]
            missing = [n for n in names if n not in members]
            if missing:
                raise InternalError(
                    f"{method} expects members ({', '.join(names)}): missing {', '.join(missing)}"
                )
            extra = sorted(str(k) for k in members if k not in names)
            if extra:
                log.debug("%s: ignoring extra members %s", method, _short(extra))
            params = [members[n] for n in names]
        elif len(params) < len(names):
            raise InternalError(
                f"{method} expects {len(names)} parameter{'s' if len(names) != 1 else ''}"
                f" ({', '.join(names)}), got {len(params)}"
            )
        elif len(params) > len(names):
            log.debug("%s: ignoring %d extra parameters", method, len(params) - len(names))
            params = params[: len(names)]
        out = []
        for p, v in zip(m.params, params, strict=True):
            try:
                out.append(convert_param(p.type, v))
            except TypeMismatch as e:
                raise InternalError(f"{method}: parameter {p.name} {e}") from None
        return m, out

    def call(self, method: str, params: list[Any]) -> Any:
        """Run one call; returns the wire result or raises MemoryInterfaceError."""
        return self.call_undoable(method, params)[0]

    def call_undoable(
        self, method: str, params: list[Any]
    ) -> tuple[Any, Callable[[], None] | None]:
        """Run one call; returns the wire result and, for a call that created
        a reservation, a function that deletes it again (for a transport that
        finds it cannot deliver the reply). Raises MemoryInterfaceError."""
        m, args = self.bind(method, params)
        by_name = dict(zip(m.param_names, args, strict=True))
        sargs = [a.value if isinstance(a, idl.Const) else by_name[a] for a in m.args]
        fn: Callable[..., Any] | None = getattr(self.service, m.operation, None)
        if not callable(fn):
            raise InternalError(f"{method}: not implemented by this daemon")
        dbg = by_name.get("dbg", "")
        with debuginfo.task(dbg if isinstance(dbg, str) else ""):
            log.debug("%s %s", method, debuginfo.escape(_short(args)))
            try:
                result = fn(*sargs)
            except MemoryInterfaceError:
                raise
            except Exception as e:  # noqa: BLE001 - the wire must get an answer
                log.exception("%s failed with an unexpected exception", method)
                raise InternalError(str(e) or type(e).__name__) from e
        undo = self._undo(m, by_name, sargs, result)
        if m.result_index is not None:
            if not isinstance(result, tuple | list) or len(result) <= m.result_index:
                log.error("%s: service returned %r", m.operation, result)
                raise InternalError(f"{method}: service returned an invalid result")
            result = result[m.result_index]
        try:
            return marshal(self.interface, m.result, result), undo
        except TypeMismatch as e:
            log.error("%s: service returned %r: %s", method, result, e)
            if undo is not None:
                undo()
            raise InternalError(f"{method}: service returned an invalid result: {e}") from None

    def _undo(self, m: idl.Method, by_name: dict[str, Any], sargs: list[Any],
              result: Any) -> Callable[[], None] | None:
        """For reserve_memory and reserve_memory_range (either dialect)."""
        if m.operation not in ("reserve_memory", "reserve_memory_range"):
            return None
        undo_fn: Callable[..., Any] | None = getattr(self.service, "undo_reservation", None)
        if not callable(undo_fn):
            return None
        rid = result if m.operation == "reserve_memory" else (
            result[0] if isinstance(result, tuple | list) and result else None)
        if not isinstance(rid, str):
            return None
        dbg, session = sargs[0], sargs[1]

        def undo() -> None:
            assert undo_fn is not None
            try:
                undo_fn(dbg, session, rid)
            except Exception:  # noqa: BLE001 - reported; the caller is gone anyway
                log.exception("cannot undo reservation %s", rid)

        return undo
