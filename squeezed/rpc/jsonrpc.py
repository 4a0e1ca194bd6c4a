"""Sans-I/O codec for rpclib's JSON-RPC (`Jsonrpc`), as carried by
message-switch for xcp-idl services. Pure functions on bytes.

Requests: `{"method":"reserve_memory","params":["dbg","session",1024],"id":8}`
(v1: params is always a list; the Memory interface has no named parameters,
so the list is positional). JSON-RPC 2.0 requests (`"jsonrpc":"2.0"`, params a
list or an object) are accepted too. Replies, compact, keys in this order:
`{"result":V,"error":null,"id":8}` or `{"result":null,"error":E,"id":8}`.
"""

from __future__ import annotations

import json
from typing import Any

from squeezed.rpc import CodecError

MAX_BODY = 1 << 20
MAX_DEPTH = 64


class JsonRpcError(CodecError):
    """Malformed or unacceptable JSON-RPC."""


def _depth_ok(v: Any) -> bool:
    """Iteratively check nesting (json.loads itself is protected by the
    RecursionError catch below; this bounds what reaches the dispatcher)."""
    stack = [(v, 0)]
    while stack:
        x, d = stack.pop()
        if d > MAX_DEPTH:
            return False
        if isinstance(x, list):
            stack.extend((y, d + 1) for y in x)
        elif isinstance(x, dict):
            stack.extend((y, d + 1) for y in x.values())
    return True


def _reject_constant(name: str) -> Any:
    raise JsonRpcError(f"{name} is not JSON")


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)  # like rpclib's List.assoc on a Dict
    return out


def loads(body: bytes | str) -> Any:
    if isinstance(body, bytes | bytearray | memoryview):
        if len(body) > MAX_BODY:
            raise JsonRpcError(f"body larger than {MAX_BODY} bytes")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonRpcError(f"body is not UTF-8: {e}") from None
    elif isinstance(body, str):
        text = body
    else:
        raise JsonRpcError(f"body must be bytes, not {type(body).__name__}")
    try:
        v = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_first_wins)
    except JsonRpcError:
        raise
    except (ValueError, RecursionError) as e:  # ValueError also covers huge ints
        raise JsonRpcError(f"invalid JSON: {str(e)[:200]}") from None
    if not _depth_ok(v):
        raise JsonRpcError("value nested too deeply")
    return v


def dumps(v: Any) -> bytes:
    """Compact JSON like Yojson's to_string (which also escapes DEL)."""
    try:
        s = json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise JsonRpcError(f"cannot encode: {e}") from None
    return s.replace("\x7f", "\\u007f").encode("utf-8", "replace")


def parse_call(body: bytes | str) -> tuple[str, list[Any], Any]:
    """Decode a request into (method, params, id). A missing id is None."""
    d = loads(body)
    if not isinstance(d, dict):
        raise JsonRpcError("request is not a JSON object")
    name = d.get("method")
    if not isinstance(name, str) or not name:
        raise JsonRpcError("invalid field 'method'")
    v2 = "jsonrpc" in d
    if v2 and d["jsonrpc"] != "2.0":
        raise JsonRpcError("invalid field 'jsonrpc'")
    params = d.get("params")
    if isinstance(params, list):
        pass
    elif v2 and params is None:
        params = []
    elif v2 and isinstance(params, dict):
        params = [params]  # named form: one struct of named members
    else:
        raise JsonRpcError("invalid field 'params'")
    rid = d.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int | str)):
        raise JsonRpcError("invalid field 'id'")
    return name, params, rid


def _safe_id(rid: Any) -> Any:
    ok = rid is None or (isinstance(rid, int | str) and not isinstance(rid, bool))
    return rid if ok else None


def encode_call(method: str, params: list[Any], rid: int | str = 0) -> bytes:
    return dumps({"method": method, "params": list(params), "id": rid})


def encode_success(value: Any, rid: Any = None) -> bytes:
    return dumps({"result": value, "error": None, "id": _safe_id(rid)})


def encode_failure(error: Any, rid: Any = None) -> bytes:
    return dumps({"result": None, "error": error, "id": _safe_id(rid)})


def parse_response(body: bytes | str) -> tuple[str, Any]:
    """Decode a reply into ("Success", value) or ("Failure", error), following
    rpclib's `Jsonrpc.response_of_string` (null error means success)."""
    d = loads(body)
    if not isinstance(d, dict):
        raise JsonRpcError("reply is not a JSON object")
    if "jsonrpc" in d:
        if d["jsonrpc"] != "2.0":
            raise JsonRpcError("invalid field 'jsonrpc'")
        if ("result" in d) == ("error" in d):
            raise JsonRpcError("need exactly one of result and error")
        return ("Success", d["result"]) if "result" in d else ("Failure", d["error"])
    if "result" not in d or "error" not in d:
        raise JsonRpcError("reply needs result and error")
    if d["error"] is None:
        return "Success", d["result"]
    if d["result"] is None:
        return "Failure", d["error"]
    raise JsonRpcError("reply has both result and error")
