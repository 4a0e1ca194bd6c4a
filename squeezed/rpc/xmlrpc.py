"""Sans-I/O codec for the XML-RPC dialect of ocaml-rpc (rpclib `Xmlrpc`), the
one xenopsd and xapi speak to squeezed. Pure functions on bytes.

Python values stand for rpclib's `Rpc.t`: int (Int), bool (Bool), float
(Float), str (String), bytes (Base64), list (Enum), dict (Dict), None (Null).
Encoding follows rpclib's non-strict mode byte for byte (see docs/wire.md):
an integer is written untyped (`<value>1024</value>`), so it decodes as the
string "1024"; the dispatcher converts strings per the IDL, as rpclib does.
Decoding also accepts the typed forms other XML-RPC clients send.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as DET

from squeezed.rpc import CodecError

MAX_BODY = 1 << 20  # bytes; the server's framing enforces the same cap
MAX_DEPTH = 64  # nesting of arrays/structs; deeper is surely an attack
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

HEADER = '<?xml version="1.0"?>'
_INT_RE = re.compile(r"[+-]?[0-9]{1,40}")

# rpclib escapes & < > " and drops C0 controls other than tab, LF and CR
# (XML 1.0 cannot carry them); everything else is copied through as UTF-8.
_ESCAPE: dict[int, str | None] = {
    ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord('"'): "&quot;"}
_ESCAPE.update({c: None for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)})


class XmlRpcError(CodecError):
    """Malformed or unacceptable XML-RPC."""


def escape(s: str) -> str:
    return s.translate(_ESCAPE)


# ---------------------------------------------------------------- encoding


def _add(out: list[str], v: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise XmlRpcError("value nested too deeply")
    if v is None:
        out.append("<value><nil/></value>")
    elif isinstance(v, bool):  # before int: bool is an int subclass
        out.append(
            "<value><boolean>1</boolean></value>" if v else "<value><boolean>0</boolean></value>"
        )
    elif isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise XmlRpcError(f"integer out of int64 range: {v}")
        out.append(f"<value>{v}</value>")
    elif isinstance(v, float):
        out.append(f"<value><double>{v:.16g}</double></value>")
    elif isinstance(v, str):
        out.append(f"<value>{escape(v)}</value>")
    elif isinstance(v, bytes | bytearray):
        out.append(f"<value><base64>{base64.b64encode(bytes(v)).decode()}</base64></value>")
    elif isinstance(v, list | tuple):
        out.append("<value><array><data>")
        for x in v:
            _add(out, x, depth + 1)
        out.append("</data></array></value>")
    elif isinstance(v, dict):
        out.append("<value><struct>")
        for k, x in v.items():
            if not isinstance(k, str):
                raise XmlRpcError(f"struct member name is not a string: {k!r}")
            out.append(f"<member><name>{escape(k)}</name>")
            _add(out, x, depth + 1)
            out.append("</member>")
        out.append("</struct></value>")
    else:
        raise XmlRpcError(f"cannot encode a {type(v).__name__}")


def encode_value(v: Any) -> str:
    """One `<value>` element, exactly as rpclib's `Xmlrpc.to_string`."""
    out: list[str] = []
    _add(out, v, 0)
    return "".join(out)


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "replace")  # lone surrogates cannot be sent


def encode_call(method: str, params: list[Any]) -> bytes:
    """A request, as rpclib's `Xmlrpc.string_of_call` (what xenopsd sends)."""
    body = "".join(f"<param>{encode_value(p)}</param>" for p in params)
    return _utf8(
        f"{HEADER}<methodCall><methodName>{escape(method)}</methodName>"
        f"<params>{body}</params></methodCall>"
    )


def _response(status: str, key: str, v: Any) -> bytes:
    return _utf8(
        f"{HEADER}<methodResponse><params><param><value><struct>"
        f"<member><name>Status</name><value>{status}</value></member>"
        f"<member><name>{key}</name>{encode_value(v)}</member>"
        "</struct></value></param></params></methodResponse>"
    )


def encode_success(value: Any) -> bytes:
    """A success reply, as rpclib's `Xmlrpc.string_of_response`."""
    return _response("Success", "Value", value)


def encode_failure(error: Any) -> bytes:
    """A failure reply; error is the wire form, e.g. `["Unknown_reservation", "r1"]`."""
    return _response("Failure", "ErrorDescription", error)


# ---------------------------------------------------------------- decoding


def _parse_xml(body: bytes | str) -> Element:
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise XmlRpcError(f"body must be bytes, not {type(body).__name__}")
    if len(body) > MAX_BODY:
        raise XmlRpcError(f"body larger than {MAX_BODY} bytes")
    try:
        # No DTD at all (so no entity or external-reference tricks); the
        # parser's exception zoo (ParseError, DefusedXmlException, LookupError
        # for unknown encodings, ...) all mean "not acceptable XML".
        return DET.fromstring(
            bytes(body), forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except Exception as e:  # noqa: BLE001 - untrusted input, see above
        raise XmlRpcError(f"invalid XML: {type(e).__name__}: {e}") from None


def _blank(s: str | None) -> bool:
    return s is None or s.strip(" \t\r\n") == ""


def _kids(el: Element, allowed: tuple[str, ...]) -> list[Element]:
    """Element children, allowing only whitespace between them."""
    if not _blank(el.text):
        raise XmlRpcError(f"unexpected text in <{el.tag}>")
    kids = list(el)
    for k in kids:
        if not _blank(k.tail):
            raise XmlRpcError(f"unexpected text after <{k.tag}>")
        if k.tag not in allowed:
            raise XmlRpcError(f"unexpected <{k.tag}> in <{el.tag}>")
    return kids


def _leaf(el: Element) -> str:
    if len(el):
        raise XmlRpcError(f"<{el.tag}> must not contain elements")
    return el.text or ""


def _int(s: str) -> int:
    s = s.strip(" \t\r\n")
    if not _INT_RE.fullmatch(s):
        raise XmlRpcError(f"not an integer: {s[:50]!r}")
    return int(s)


def _value(el: Element, depth: int) -> Any:
    if el.tag != "value":
        raise XmlRpcError(f"expected <value>, got <{el.tag}>")
    if depth > MAX_DEPTH:
        raise XmlRpcError("value nested too deeply")
    if len(el) == 0:
        return el.text or ""  # untyped: a string, whitespace kept (as rpclib)
    (t,) = _one(el)
    tag = t.tag
    if tag in ("int", "i4", "i8"):
        return _int(_leaf(t))
    if tag in ("string", "dateTime.iso8601"):
        return _leaf(t)
    if tag == "boolean":
        b = _leaf(t).strip(" \t\r\n").lower()
        if b not in ("1", "0", "true", "false"):
            raise XmlRpcError(f"not a boolean: {b[:20]!r}")
        return b in ("1", "true")
    if tag == "double":
        try:
            return float(_leaf(t).strip(" \t\r\n"))
        except ValueError:
            raise XmlRpcError("not a double") from None
    if tag == "base64":
        try:
            return base64.b64decode("".join(_leaf(t).split()), validate=True)
        except (binascii.Error, ValueError):
            raise XmlRpcError("bad base64") from None
    if tag == "nil":
        if _leaf(t).strip(" \t\r\n"):
            raise XmlRpcError("<nil/> must be empty")
        return None
    if tag == "array":
        data = _kids(t, ("data",))
        if len(data) > 1:
            raise XmlRpcError("<array> needs one <data>")
        return [_value(v, depth + 1) for d in data for v in _kids(d, ("value",))]
    if tag == "struct":
        out: dict[str, Any] = {}
        for m in _kids(t, ("member",)):
            parts = _kids(m, ("name", "value"))
            if [p.tag for p in parts] != ["name", "value"]:
                raise XmlRpcError("<member> needs <name> then <value>")
            # rpclib's List.assoc: the first of duplicate members wins
            out.setdefault(_leaf(parts[0]), _value(parts[1], depth + 1))
        return out
    raise XmlRpcError(f"unknown value type <{tag[:40]}>")


def _one(el: Element) -> list[Element]:
    kids = list(el)
    if len(kids) != 1 or not _blank(el.text) or not _blank(kids[0].tail):
        raise XmlRpcError(f"<{el.tag}> must hold exactly one element")
    return kids


def parse_value(body: bytes | str) -> Any:
    """Decode a lone `<value>` document."""
    return _value(_parse_xml(body), 0)


def parse_call(body: bytes | str) -> tuple[str, list[Any]]:
    """Decode a request into (method name, positional params)."""
    root = _parse_xml(body)
    if root.tag != "methodCall":
        raise XmlRpcError(f"expected <methodCall>, got <{root.tag[:40]}>")
    kids = _kids(root, ("methodName", "params"))
    if not kids or kids[0].tag != "methodName" or [k.tag for k in kids[1:]] not in ([], ["params"]):
        raise XmlRpcError("<methodCall> needs <methodName> then <params>")
    name = _leaf(kids[0])
    if not name:
        raise XmlRpcError("empty <methodName>")
    params: list[Any] = []
    for p in _kids(kids[1], ("param",)) if len(kids) == 2 else []:
        (v,) = _one(p)
        params.append(_value(v, 0))
    return name, params


def parse_response(body: bytes | str) -> tuple[str, Any]:
    """Decode a reply into ("Success", value) or ("Failure", error), as rpclib's
    `Xmlrpc.response_of_string` (a plain value counts as success; a standard
    XML-RPC <fault> becomes ["fault", code, string])."""
    root = _parse_xml(body)
    if root.tag != "methodResponse":
        raise XmlRpcError(f"expected <methodResponse>, got <{root.tag[:40]}>")
    (kid,) = _one(root)
    if kid.tag == "fault":
        (fv,) = _one(kid)
        f = _value(fv, 0)
        if not isinstance(f, dict) or "faultCode" not in f or "faultString" not in f:
            raise XmlRpcError("malformed <fault>")
        return "Failure", ["fault", f["faultCode"], f["faultString"]]
    if kid.tag != "params":
        raise XmlRpcError(f"unexpected <{kid.tag[:40]}> in <methodResponse>")
    (param,) = _one(kid)
    if param.tag != "param":
        raise XmlRpcError("expected <param>")
    (ve,) = _one(param)
    v = _value(ve, 0)
    if isinstance(v, dict):
        if v.get("Status") == "Success" and "Value" in v:
            return "Success", v["Value"]
        if v.get("Status") == "Failure" and "ErrorDescription" in v:
            return "Failure", v["ErrorDescription"]
    return "Success", v
