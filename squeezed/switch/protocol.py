"""Sans-I/O message-switch protocol (xen-api ocaml/message-switch/core/protocol.ml).

The switch speaks HTTP/1.1 on a Unix socket, Content-Length framed, keep-alive.
Each request (`In`) is a GET or POST whose path names the operation; each
reply (`Out`) is a 200 whose body is empty, a queue name, or JSON in rpclib's
ppx_deriving_rpc encoding:

- a top-level option is a list: None = ``[]``, Some x = ``[x]``;
- an option *record field* is omitted when None and bare when Some;
- tuples are arrays; int64 is a JSON number; a constructor with an argument
  is ``["Name", arg]`` (tags match case-insensitively when decoding);
- a list of pairs whose first element is a string becomes an object
  (``(string * queue) list`` in the diagnostics), other pair lists arrays.

Nothing here touches a socket: `encode_request`/`parse_request` and
`encode_response`/`parse_*` work on bytes and values, and `HttpReader` frames
a byte stream into messages in h11's receive_data / next_event shape.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal

QUEUE_NAME = "org.xen.xapi.memory"  # Xcp_service.common_prefix ^ Memory_interface.service_name
DEFAULT_SWITCH_PATH = "/var/run/message-switch/sock"
TRANSFER_TIMEOUT_S = 30.0  # Protocol.timeout: the long-poll of Server.listen
NOT_LOGGED_IN = b"Please log in."
MAX_BODY = 16 << 20
MAX_HEAD = 64 << 10


class SwitchProtocolError(ValueError):
    """Bytes or JSON that are not the message-switch protocol."""


MessageId = tuple[str, int]


@dataclass(frozen=True)
class Request:
    """Message.kind Request: the queue to send the response to."""

    reply_to: str


@dataclass(frozen=True)
class Response:
    """Message.kind Response: the id of the request answered."""

    request: MessageId


@dataclass(frozen=True)
class Message:
    payload: str
    kind: Request | Response


# ---------------------------------------------------------------- In frames


@dataclass(frozen=True)
class Login:
    token: str


@dataclass(frozen=True)
class CreatePersistent:
    name: str


@dataclass(frozen=True)
class CreateTransient:
    name: str


@dataclass(frozen=True)
class Destroy:
    name: str


@dataclass(frozen=True)
class Send:
    queue: str
    message: Message


@dataclass(frozen=True)
class Transfer:
    from_: str | None  # the previous reply's `next`; None = from the start
    timeout_s: float
    queues: tuple[str, ...]


@dataclass(frozen=True)
class Ack:
    id: MessageId


@dataclass(frozen=True)
class List:
    prefix: str
    alive_only: bool = False


@dataclass(frozen=True)
class Diagnostics:
    pass


@dataclass(frozen=True)
class Shutdown:
    pass


In = Login | CreatePersistent | CreateTransient | Destroy | Send | Transfer | Ack | List \
    | Diagnostics | Shutdown


# ------------------------------------------------------------- JSON encodings


def dumps(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise SwitchProtocolError(f"invalid JSON: {str(e)[:120]}") from None


def _int64(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise SwitchProtocolError(f"{what}: expected an int64, got {v!r:.60}")
    try:
        n = int(v)
    except ValueError:
        raise SwitchProtocolError(f"{what}: expected an int64, got {v!r:.60}") from None
    if not -(1 << 63) <= n < (1 << 63):
        raise SwitchProtocolError(f"{what}: out of int64 range")
    return n


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise SwitchProtocolError(f"{what}: expected a string, got {v!r:.60}")
    return v


def message_id_to_rpc(mid: MessageId) -> list[Any]:
    return [mid[0], mid[1]]


def message_id_of_rpc(v: Any) -> MessageId:
    if not isinstance(v, list) or len(v) != 2:
        raise SwitchProtocolError(f"message_id: expected [queue, id], got {v!r:.60}")
    return _str(v[0], "message_id queue"), _int64(v[1], "message_id id")


def message_to_rpc(m: Message) -> dict[str, Any]:
    kind: list[Any] = (["Request", m.kind.reply_to] if isinstance(m.kind, Request)
                       else ["Response", message_id_to_rpc(m.kind.request)])
    return {"payload": m.payload, "kind": kind}


def _fields(v: Any, what: str) -> dict[str, Any]:
    """A record's fields, keys lower-cased as rpclib's decoder does (first wins)."""
    if not isinstance(v, dict):
        raise SwitchProtocolError(f"{what}: expected an object, got {v!r:.60}")
    out: dict[str, Any] = {}
    for k, x in v.items():
        out.setdefault(k.lower(), x)
    return out


def message_of_rpc(v: Any) -> Message:
    d = _fields(v, "message")
    if "payload" not in d or "kind" not in d:
        raise SwitchProtocolError("message: needs payload and kind")
    payload = _str(d["payload"], "message payload")
    k = d["kind"]
    if not (isinstance(k, list) and len(k) == 2 and isinstance(k[0], str)):
        raise SwitchProtocolError(f"message kind: expected [tag, arg], got {k!r:.60}")
    tag = k[0].lower()
    if tag == "request":
        return Message(payload, Request(_str(k[1], "reply queue")))
    if tag == "response":
        return Message(payload, Response(message_id_of_rpc(k[1])))
    raise SwitchProtocolError(f"message kind: unknown tag {k[0]!r:.40}")


def transfer_to_rpc(t: Transfer) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if t.from_ is not None:
        d["from"] = t.from_  # an option field: omitted when None, bare when Some
    d["timeout"] = float(t.timeout_s)
    d["queues"] = list(t.queues)
    return d


def transfer_of_rpc(v: Any) -> Transfer:
    d = _fields(v, "transfer")
    if "timeout" not in d or "queues" not in d:
        raise SwitchProtocolError("transfer: needs timeout and queues")
    from_ = d.get("from")
    if from_ is not None:
        from_ = _str(from_, "transfer from")
    t = d["timeout"]
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise SwitchProtocolError(f"transfer timeout: expected a float, got {t!r:.60}")
    qs = d["queues"]
    if not isinstance(qs, list):
        raise SwitchProtocolError("transfer queues: expected a list")
    return Transfer(from_, float(t), tuple(_str(q, "transfer queue") for q in qs))


@dataclass(frozen=True)
class TransferReply:
    messages: tuple[tuple[MessageId, Message], ...]
    next: str


def transfer_reply_to_rpc(r: TransferReply) -> dict[str, Any]:
    return {"messages": [[message_id_to_rpc(i), message_to_rpc(m)] for i, m in r.messages],
            "next": r.next}


def parse_transfer_reply(body: bytes | str) -> TransferReply:
    d = _fields(_loads(body), "transfer reply")
    msgs = d.get("messages")
    if not isinstance(msgs, list) or "next" not in d:
        raise SwitchProtocolError("transfer reply: needs messages and next")
    out = []
    for pair in msgs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise SwitchProtocolError("transfer reply: each message is [id, message]")
        out.append((message_id_of_rpc(pair[0]), message_of_rpc(pair[1])))
    return TransferReply(tuple(out), _str(d["next"], "transfer next"))


def parse_send_reply(body: bytes | str) -> MessageId | None:
    """Out.Send: a message_id option (None: no such queue, message dropped)."""
    v = _loads(body)
    if v == []:
        return None
    if isinstance(v, list) and len(v) == 1:
        return message_id_of_rpc(v[0])
    raise SwitchProtocolError(f"send reply: expected a message_id option, got {v!r:.60}")


def send_reply_body(mid: MessageId | None) -> bytes:
    return dumps([] if mid is None else [message_id_to_rpc(mid)])


def parse_list_reply(body: bytes | str) -> list[str]:
    v = _loads(body)
    if not isinstance(v, list):
        raise SwitchProtocolError("list reply: expected a list of names")
    return [_str(x, "queue name") for x in v]


# ------------------------------------------------------- In <-> HTTP request


def _seg(s: str) -> str:
    return urllib.parse.quote(s, safe=":@!$&'()*+,;=-._~")


def request_line(req: In) -> tuple[str, str, bytes]:
    """(method, path, body) of a frame, as In.to_request makes them."""
    if isinstance(req, Login):
        return "GET", f"/login/{_seg(req.token)}", b""
    if isinstance(req, CreatePersistent):
        return "GET", f"/persistent/{_seg(req.name)}", b""
    if isinstance(req, CreateTransient):
        return "GET", f"/transient/{_seg(req.name)}", b""
    if isinstance(req, Destroy):
        return "GET", f"/destroy/{_seg(req.name)}", b""
    if isinstance(req, Ack):
        return "GET", f"/ack/{_seg(req.id[0])}/{req.id[1]}", b""
    if isinstance(req, List):
        return "GET", ("/list/alive/" if req.alive_only else "/list/") + _seg(req.prefix), b""
    if isinstance(req, Transfer):
        return "POST", "/transfer", dumps(transfer_to_rpc(req))
    if isinstance(req, Send):
        m = req.message
        body = m.payload.encode("utf-8")
        if isinstance(m.kind, Request):
            return "POST", f"/request/{_seg(req.queue)}/{_seg(m.kind.reply_to)}", body
        q, n = m.kind.request
        return "POST", f"/response/{_seg(req.queue)}/{_seg(q)}/{n}", body
    if isinstance(req, Diagnostics):
        return "GET", "/", b""
    if isinstance(req, Shutdown):
        return "POST", "/shutdown", b""
    raise TypeError(f"not a message-switch frame: {req!r}")


def encode_request(req: In) -> bytes:
    """The whole HTTP/1.1 request, with upstream's In.headers."""
    meth, path, body = request_line(req)
    head = (f"{meth} {path} HTTP/1.1\r\nuser-agent: squeezed\r\n"
            f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n")
    return head.encode("ascii") + body


_INT = re.compile(r"-?[0-9]{1,19}")


def parse_request(method: str, path: str, body: bytes) -> In | None:
    """In.of_request: the frame for an HTTP request, None if it is none."""
    raw = path.split("?", 1)[0].split("/")
    if not raw or raw[0] != "":
        return None
    seg = [urllib.parse.unquote(s) for s in raw[1:]]
    try:
        if method == "GET" and not body:
            if seg == [""]:
                return Diagnostics()
            if len(seg) == 2:
                op, arg = seg
                if op == "login":
                    return Login(arg)
                if op == "persistent":
                    return CreatePersistent(arg)
                if op == "transient":
                    return CreateTransient(arg)
                if op == "destroy":
                    return Destroy(arg)
                if op == "list":
                    return List(arg)
            if len(seg) == 3 and seg[0] == "ack" and _INT.fullmatch(raw[3]):
                return Ack((seg[1], int(raw[3])))
            if len(seg) == 3 and seg[:2] == ["list", "alive"]:
                return List(seg[2], alive_only=True)
            return None
        if method == "POST":
            text = body.decode("utf-8")
            if seg == ["transfer"]:
                return transfer_of_rpc(_loads(text))
            if len(seg) == 3 and seg[0] == "request":
                return Send(seg[1], Message(text, Request(seg[2])))
            if len(seg) == 4 and seg[0] == "response" and _INT.fullmatch(raw[4]):
                return Send(seg[1], Message(text, Response((seg[2], int(raw[4])))))
            if seg == ["shutdown"] and not body:
                return Shutdown()
    except (UnicodeDecodeError, SwitchProtocolError):
        return None
    return None


# ----------------------------------------------------------------- HTTP framing


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large",
            500: "Internal Server Error"}


def encode_response(status: int, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class NeedData:
    """next_event(): more bytes are needed."""


NEED_DATA = NeedData()


class Closed:
    """next_event(): the peer closed the stream between messages."""


CLOSED = Closed()


@dataclass
class HttpReader:
    """Frames a byte stream into HTTP/1.1 messages (Content-Length only).

    `receive_data(b"")` means end of stream; `next_event()` returns an
    HttpRequest/HttpResponse, NEED_DATA, or CLOSED; raises SwitchProtocolError
    on bytes that are not HTTP (or a stream cut inside a message)."""

    role: Literal["request", "response"]
    max_body: int = MAX_BODY
    _buf: bytearray = field(default_factory=bytearray)
    _eof: bool = False

    def receive_data(self, data: bytes) -> None:
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> HttpRequest | HttpResponse | NeedData | Closed:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise SwitchProtocolError("HTTP header too long")
            if self._eof:
                if self._buf.strip():
                    raise SwitchProtocolError("stream ended inside an HTTP header")
                return CLOSED
            return NEED_DATA
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        start = lines[0]
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise SwitchProtocolError(f"bad HTTP header line {line!r:.60}")
            headers.append((name.lower(), value.strip()))
        hd = dict(headers)
        if "transfer-encoding" in hd:
            raise SwitchProtocolError("chunked transfer encoding is not supported")
        lengths = {v for k, v in headers if k == "content-length"}
        if len(lengths) > 1:
            raise SwitchProtocolError("conflicting Content-Length headers")
        n_text = lengths.pop() if lengths else "0"
        if not (n_text.isascii() and n_text.isdigit()):
            raise SwitchProtocolError(f"bad Content-Length {n_text!r:.30}")
        n = int(n_text)
        if n > self.max_body:
            raise SwitchProtocolError(f"body of {n} bytes is too large")
        if len(self._buf) < end + 4 + n:
            if self._eof:
                raise SwitchProtocolError("stream ended inside an HTTP body")
            return NEED_DATA
        body = bytes(self._buf[end + 4:end + 4 + n])
        del self._buf[:end + 4 + n]
        parts = start.split(" ", 2)
        if self.role == "request":
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise SwitchProtocolError(f"bad HTTP request line {start!r:.60}")
            return HttpRequest(parts[0], parts[1], tuple(headers), body)
        status_ok = parts[1].isascii() and parts[1].isdigit() if len(parts) >= 2 else False
        if not status_ok or not parts[0].startswith("HTTP/1."):
            raise SwitchProtocolError(f"bad HTTP status line {start!r:.60}")
        return HttpResponse(int(parts[1]), tuple(headers), body)
