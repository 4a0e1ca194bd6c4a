"""Golden, byte-level requests and replies for every method and every error,
in both dialects, through a real Unix socket (one connection per call, as
xenopsd does), against the server with a fake service.

The XML requests are what rpclib's `Xmlrpc.string_of_call` produces for
xenopsd's calls (ints untyped, `<?xml version="1.0"?>` header); the replies
are what rpclib's `Xmlrpc.string_of_response` would produce (docs/wire.md).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

import pytest
from rpc_fake import serving

from squeezed import errors
from squeezed.rpc import jsonrpc, xmlrpc
from squeezed.rpc.client import MemoryClient
from squeezed.rpc.server import JsonRpcServer, XmlRpcServer

XML_CALL = (
    '<?xml version="1.0"?><methodCall><methodName>{}</methodName><params>{}</params></methodCall>'
)
XML_OK = (
    '<?xml version="1.0"?><methodResponse><params><param><value><struct>'
    "<member><name>Status</name><value>Success</value></member>"
    "<member><name>Value</name>{}</member>"
    "</struct></value></param></params></methodResponse>"
)
XML_FAIL = (
    '<?xml version="1.0"?><methodResponse><params><param><value><struct>'
    "<member><name>Status</name><value>Failure</value></member>"
    "<member><name>ErrorDescription</name>{}</member>"
    "</struct></value></param></params></methodResponse>"
)
JSON_CALL = '{{"method":"{}","params":{},"id":8}}'
JSON_OK = '{{"result":{},"error":null,"id":8}}'
JSON_FAIL = '{{"result":null,"error":{},"id":8}}'


@dataclass(frozen=True)
class Case:
    method: str
    xml_params: str  # the <param>s, as rpclib encodes them
    json_params: str  # the params array, as rpclib's Jsonrpc encodes it
    op: str  # the service operation that must be called ...
    args: tuple[Any, ...]  # ... with these converted arguments
    ret: Any  # what the fake service returns
    xml_value: str
    json_value: str


SMALL_STATE = {
    "host": {"free_kib": 2097152, "reserved_kib": 8192},
    "reservations": [
        {"reservation_id": "res-2", "session_id": "default", "kib": 4096, "domid": None}
    ],
    "domains": [
        {
            "domid": 7,
            "can_balloon": True,
            "dynamic_min_kib": 524288,
            "target_kib": 786432,
            "dynamic_max_kib": 1048576,
            "memory_actual_kib": 786430,
            "memory_max_kib": 1048576,
        }
    ],
}

GOLDEN: list[Case] = [
    Case(
        "get_diagnostics",
        "<param><value>dbg-1</value></param>",
        '["dbg-1"]',
        "get_diagnostics",
        ("dbg-1",),
        'squeezed <ok> & "well"\nline 2',
        "<value>squeezed &lt;ok&gt; &amp; &quot;well&quot;\nline 2</value>",
        '"squeezed <ok> & \\"well\\"\\nline 2"',
    ),
    Case(
        "login",
        "<param><value>dbg-1</value></param><param><value>xenopsd</value></param>",
        '["dbg-1","xenopsd"]',
        "login",
        ("dbg-1", "xenopsd"),
        "xenopsd",
        "<value>xenopsd</value>",
        '"xenopsd"',
    ),
    Case(
        "reserve_memory",
        "<param><value>dbg-1</value></param><param><value>xenopsd</value></param>"
        "<param><value>1048576</value></param>",
        '["dbg-1","xenopsd",1048576]',
        "reserve_memory",
        ("dbg-1", "xenopsd", 1048576),
        "res-1",
        "<value>res-1</value>",
        '"res-1"',
    ),
    Case(
        "reserve_memory_range",
        "<param><value>dbg-1</value></param><param><value>xenopsd</value></param>"
        "<param><value>1048576</value></param><param><value>2097152</value></param>",
        '["dbg-1","xenopsd",1048576,2097152]',
        "reserve_memory_range",
        ("dbg-1", "xenopsd", 1048576, 2097152),
        ("res-2", 1572864),
        "<value><array><data><value>res-2</value><value>1572864</value></data></array></value>",
        '["res-2",1572864]',
    ),
    Case(
        "delete_reservation",
        "<param><value>dbg-1</value></param><param><value>xenopsd</value></param>"
        "<param><value>res-2</value></param>",
        '["dbg-1","xenopsd","res-2"]',
        "delete_reservation",
        ("dbg-1", "xenopsd", "res-2"),
        None,
        "<value><nil/></value>",
        "null",
    ),
    Case(
        "transfer_reservation_to_domain",
        "<param><value>dbg-1</value></param><param><value>xenopsd</value></param>"
        "<param><value>res-2</value></param><param><value>7</value></param>",
        '["dbg-1","xenopsd","res-2",7]',
        "transfer_reservation_to_domain",
        ("dbg-1", "xenopsd", "res-2", 7),
        None,
        "<value><nil/></value>",
        "null",
    ),
    Case(
        "query_reservation_of_domain",
        "<param><value>dbg-1</value></param><param><value>xenopsd</value></param>"
        "<param><value>7</value></param>",
        '["dbg-1","xenopsd",7]',
        "query_reservation_of_domain",
        ("dbg-1", "xenopsd", 7),
        "res-2",
        "<value>res-2</value>",
        '"res-2"',
    ),
    Case(
        "balance_memory",
        "<param><value>dbg-1</value></param>",
        '["dbg-1"]',
        "balance_memory",
        ("dbg-1",),
        None,
        "<value><nil/></value>",
        "null",
    ),
    Case(
        "get_host_reserved_memory",
        "<param><value>dbg-1</value></param>",
        '["dbg-1"]',
        "get_host_reserved_memory",
        ("dbg-1",),
        8192,
        "<value>8192</value>",
        "8192",
    ),
    Case(
        "get_host_initial_free_memory",
        "<param><value>dbg-1</value></param>",
        '["dbg-1"]',
        "get_host_initial_free_memory",
        ("dbg-1",),
        17179869184,
        "<value>17179869184</value>",
        "17179869184",
    ),
    Case(
        "get_domain_zero_policy",
        "<param><value>dbg-1</value></param>",
        '["dbg-1"]',
        "get_domain_zero_policy",
        ("dbg-1",),
        ("Fixed_size", 4294967296),
        "<value><array><data><value>Fixed_size</value><value>4294967296</value></data></array></value>",
        '["Fixed_size",4294967296]',
    ),
    Case(
        "get_domain_zero_policy",
        "<param><value>dbg-1</value></param>",
        '["dbg-1"]',
        "get_domain_zero_policy",
        ("dbg-1",),
        ("Auto_balloon", (1073741824, 4294967296)),
        "<value><array><data><value>Auto_balloon</value><value><array><data>"
        "<value>1073741824</value><value>4294967296</value></data></array></value>"
        "</data></array></value>",
        '["Auto_balloon",[1073741824,4294967296]]',
    ),
    Case(
        "Memory.reserve",
        "<param><value><struct><member><name>dbg</name><value>dbg-1</value></member>"
        "<member><name>amount</name><value>1024</value></member></struct></value></param>",
        '[{"dbg":"dbg-1","amount":1024}]',
        "reserve_memory",
        ("dbg-1", "default", 1024),
        "res-1",
        "<value>res-1</value>",
        '"res-1"',
    ),
    Case(
        "Memory.reserve_range",
        "<param><value><struct><member><name>dbg</name><value>dbg-1</value></member>"
        "<member><name>min</name><value>1024</value></member>"
        "<member><name>max</name><value>4096</value></member></struct></value></param>",
        '[{"dbg":"dbg-1","min":1024,"max":4096}]',
        "reserve_memory_range",
        ("dbg-1", "default", 1024, 4096),
        ("res-3", 4096),
        "<value>res-3</value>",
        '"res-3"',
    ),
    Case(
        "Memory.transfer_to_domain",
        "<param><value><struct><member><name>dbg</name><value>dbg-1</value></member>"
        "<member><name>reservation_id</name><value>res-3</value></member>"
        "<member><name>domid</name><value>9</value></member></struct></value></param>",
        '[{"dbg":"dbg-1","reservation_id":"res-3","domid":9}]',
        "transfer_reservation_to_domain",
        ("dbg-1", "default", "res-3", 9),
        None,
        "<value><nil/></value>",
        "null",
    ),
    Case(
        "Memory.delete",
        "<param><value>dbg-1</value></param><param><value>res-3</value></param>",
        '["dbg-1","res-3"]',
        "delete_reservation",
        ("dbg-1", "default", "res-3"),
        None,
        "<value><nil/></value>",
        "null",
    ),
    Case(
        "Memory.balance",
        "<param><value><struct><member><name>dbg</name><value>dbg-1</value></member>"
        "</struct></value></param>",
        '[{"dbg":"dbg-1"}]',
        "balance_memory",
        ("dbg-1",),
        None,
        "<value><nil/></value>",
        "null",
    ),
    Case(
        "Memory.query",
        "<param><value><struct><member><name>dbg</name><value>dbg-1</value></member>"
        "</struct></value></param>",
        '[{"dbg":"dbg-1"}]',
        "query",
        ("dbg-1",),
        {
            "name": "squeezed",
            "vendor": "squeezed developers",
            "version": "0.1.0",
            "features": ["reserve_range"],
            "instance_id": "inst-1",
        },
        "<value><struct><member><name>name</name><value>squeezed</value></member>"
        "<member><name>vendor</name><value>squeezed developers</value></member>"
        "<member><name>version</name><value>0.1.0</value></member>"
        "<member><name>features</name><value><array><data><value>reserve_range</value>"
        "</data></array></value></member>"
        "<member><name>instance_id</name><value>inst-1</value></member></struct></value>",
        '{"name":"squeezed","vendor":"squeezed developers","version":"0.1.0",'
        '"features":["reserve_range"],"instance_id":"inst-1"}',
    ),
    Case(
        "set_log_level",
        "<param><value>dbg-1</value></param><param><value>debug</value></param>",
        '["dbg-1","debug"]',
        "set_log_level",
        ("dbg-1", "debug"),
        None,
        "<value><nil/></value>",
        "null",
    ),
    Case(
        "get_state",
        "<param><value>dbg-1</value></param>",
        '["dbg-1"]',
        "get_state",
        ("dbg-1",),
        SMALL_STATE,
        "<value><struct><member><name>host</name><value><struct>"
        "<member><name>free_kib</name><value>2097152</value></member>"
        "<member><name>reserved_kib</name><value>8192</value></member></struct></value></member>"
        "<member><name>reservations</name><value><array><data><value><struct>"
        "<member><name>reservation_id</name><value>res-2</value></member>"
        "<member><name>session_id</name><value>default</value></member>"
        "<member><name>kib</name><value>4096</value></member>"
        "</struct></value></data></array></value></member>"
        "<member><name>domains</name><value><array><data><value><struct>"
        "<member><name>domid</name><value>7</value></member>"
        "<member><name>can_balloon</name><value><boolean>1</boolean></value></member>"
        "<member><name>dynamic_min_kib</name><value>524288</value></member>"
        "<member><name>target_kib</name><value>786432</value></member>"
        "<member><name>dynamic_max_kib</name><value>1048576</value></member>"
        "<member><name>memory_actual_kib</name><value>786430</value></member>"
        "<member><name>memory_max_kib</name><value>1048576</value></member>"
        "</struct></value></data></array></value></member></struct></value>",
        '{"host":{"free_kib":2097152,"reserved_kib":8192},'
        '"reservations":[{"reservation_id":"res-2","session_id":"default","kib":4096}],'
        '"domains":[{"domid":7,"can_balloon":true,"dynamic_min_kib":524288,'
        '"target_kib":786432,"dynamic_max_kib":1048576,"memory_actual_kib":786430,'
        '"memory_max_kib":1048576}]}',
    ),
]

# (error raised by the service, its XML ErrorDescription, its JSON error)
ERROR_GOLDEN: list[tuple[errors.MemoryInterfaceError, str, str]] = [
    (
        errors.CannotFreeThisMuchMemory(1024, 512),
        "<value><array><data><value>Cannot_free_this_much_memory</value>"
        "<value><array><data><value>1024</value><value>512</value></data></array></value>"
        "</data></array></value>",
        '["Cannot_free_this_much_memory",[1024,512]]',
    ),
    (
        errors.DomainsRefusedToCooperate([3, 1]),
        "<value><array><data><value>Domains_refused_to_cooperate</value>"
        "<value><array><data><value>1</value><value>3</value></data></array></value>"
        "</data></array></value>",
        '["Domains_refused_to_cooperate",[1,3]]',
    ),
    (
        errors.UnknownReservation("r1"),
        "<value><array><data><value>Unknown_reservation</value><value>r1</value>"
        "</data></array></value>",
        '["Unknown_reservation","r1"]',
    ),
    (errors.NoReservation(), "<value>No_reservation</value>", '"No_reservation"'),
    (
        errors.InvalidMemoryValue(-1),
        "<value><array><data><value>Invalid_memory_value</value><value>-1</value>"
        "</data></array></value>",
        '["Invalid_memory_value",-1]',
    ),
    (
        errors.InternalError("disk <full> & co"),
        "<value><array><data><value>Internal_error</value>"
        "<value>disk &lt;full&gt; &amp; co</value></data></array></value>",
        '["Internal_error","disk <full> & co"]',
    ),
    (errors.UnknownError(), "<value>Unknown_error</value>", '"Unknown_error"'),
]


def post(path: str, body: bytes, agent: str = "xenopsd") -> bytes:
    """One HTTP POST on a fresh connection, like xapi-idl's Xcp_client
    (cohttp: lower-case content-length, no Connection header)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    try:
        s.sendall(
            b"POST /var/xapi/memory HTTP/1.1\r\nuser-agent: %s\r\ncontent-length: %d\r\n\r\n"
            % (agent.encode(), len(body))
            + body
        )
        return read_response(s)
    finally:
        s.close()


def read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    n = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def http_ok(ctype: str, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (
            ctype.encode(),
            len(body),
        )
        + body
    )


@pytest.fixture(scope="module")
def xml_server():
    with serving(XmlRpcServer) as (srv, fake):
        yield srv, fake


@pytest.fixture(scope="module")
def json_server():
    with serving(JsonRpcServer) as (srv, fake):
        yield srv, fake


def _ids(cases: list[Case]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for c in cases:
        seen[c.method] = seen.get(c.method, 0) + 1
        out.append(c.method if seen[c.method] == 1 else f"{c.method}-{seen[c.method]}")
    return out


@pytest.mark.parametrize("case", GOLDEN, ids=_ids(GOLDEN))
def test_xml_golden(case: Case, xml_server) -> None:
    srv, fake = xml_server
    fake.results[case.op] = case.ret
    fake.calls.clear()
    request = XML_CALL.format(case.method, case.xml_params).encode()
    reply = post(srv.path, request)
    assert reply == http_ok("text/xml", XML_OK.format(case.xml_value).encode())
    assert fake.calls == [(case.op, case.args)]
    # what our client sends for the same call is the same bytes (non-struct forms)
    assert xmlrpc.encode_call(case.method, json.loads(case.json_params)) == request


@pytest.mark.parametrize("case", GOLDEN, ids=_ids(GOLDEN))
def test_json_golden(case: Case, json_server) -> None:
    srv, fake = json_server
    fake.results[case.op] = case.ret
    fake.calls.clear()
    request = JSON_CALL.format(case.method, case.json_params).encode()
    reply = post(srv.path, request)
    assert reply == http_ok("application/json", JSON_OK.format(case.json_value).encode())
    assert fake.calls == [(case.op, case.args)]
    assert jsonrpc.encode_call(case.method, json.loads(case.json_params), 8) == request


@pytest.mark.parametrize(
    "err,xml_value,json_value", ERROR_GOLDEN, ids=[e.name for e, _, _ in ERROR_GOLDEN]
)
def test_error_golden(err, xml_value: str, json_value: str, xml_server, json_server) -> None:
    for (srv, fake), env, fail, ctype in (
        (xml_server, XML_CALL, XML_FAIL, "text/xml"),
        (json_server, JSON_CALL, JSON_FAIL, "application/json"),
    ):
        fake.raise_next = err
        if env is XML_CALL:
            params = "<param><value>dbg-1</value></param><param><value>xenopsd</value></param>"
            params += "<param><value>1024</value></param>"
            value = xml_value
        else:
            params = '["dbg-1","xenopsd",1024]'
            value = json_value
        reply = post(srv.path, env.format("reserve_memory", params).encode())
        assert reply == http_ok(ctype, fail.format(value).encode())


@pytest.mark.parametrize(
    "err,xml_value,json_value", ERROR_GOLDEN, ids=[e.name for e, _, _ in ERROR_GOLDEN]
)
def test_client_rebuilds_errors(
    err, xml_value: str, json_value: str, xml_server, json_server
) -> None:
    for (srv, fake), dialect in ((xml_server, "xmlrpc"), (json_server, "json")):
        fake.raise_next = err
        with pytest.raises(type(err)) as info:
            MemoryClient(srv.path, dialect).call("reserve_memory", "dbg-1", "xenopsd", 1024)
        assert info.value.wire() == err.wire()


def test_client_results_match_golden(xml_server, json_server) -> None:
    for (srv, fake), dialect in ((xml_server, "xmlrpc"), (json_server, "json")):
        fake.results["reserve_memory_range"] = ("res-2", 1572864)
        got = MemoryClient(srv.path, dialect).call(
            "reserve_memory_range", "dbg-1", "xenopsd", 1048576, 2097152
        )
        # XML-RPC ints travel untyped, so they come back as strings (as in rpclib)
        assert got == (["res-2", "1572864"] if dialect == "xmlrpc" else ["res-2", 1572864])


def test_raw_json_body_golden(json_server) -> None:
    """The JSON socket also takes a bare JSON object, replying with JSON + newline."""
    srv, fake = json_server
    fake.results["reserve_memory"] = "res-1"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(srv.path)
    try:
        s.sendall(b'{"method":"reserve_memory","params":["dbg-1","xenopsd",1048576],"id":8}')
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            assert chunk
            data += chunk
    finally:
        s.close()
    assert data == b'{"result":"res-1","error":null,"id":8}\n'


def test_rpclib_reply_shapes_parse() -> None:
    """Replies as rpclib would write them (its Status/Value struct, a bare value, a
    <fault>) parse as rpclib's response_of_string does."""
    ok = XML_OK.format("<value>res-1</value>").encode()
    assert xmlrpc.parse_response(ok) == ("Success", "res-1")
    bare = b'<?xml version="1.0"?><methodResponse><params><param><value><i8>5</i8></value>'
    bare += b"</param></params></methodResponse>"
    assert xmlrpc.parse_response(bare) == ("Success", 5)
    fault = (
        b"<methodResponse><fault><value><struct><member><name>faultCode</name>"
        b"<value><int>4</int></value></member><member><name>faultString</name>"
        b"<value><string>Too many parameters.</string></value></member></struct></value>"
        b"</fault></methodResponse>"
    )
    assert xmlrpc.parse_response(fault) == ("Failure", ["fault", 4, "Too many parameters."])
    assert jsonrpc.parse_response(b'{"result":null,"error":null,"id":0}') == ("Success", None)
