"""The message-switch protocol codec, without sockets, against bytes written
by hand from xen-api's definitions (ocaml/message-switch/core/protocol.ml
In.of_request / In.to_request / Out.to_response) and rpclib's encoding rules
(ppx_deriving_rpc: option = [] / [x], option record fields omitted / bare,
constructors ["Name", arg], tuples as arrays; Jsonrpc prints floats as 30.0)."""

from __future__ import annotations

import pytest

from squeezed.switch import protocol as p

Q = "org.xen.xapi.memory"

# (frame, the request line + body that In.to_request gives for it)
REQUESTS = [
    (p.Login("xenopsd:1234"), "GET /login/xenopsd:1234", b""),
    (p.CreatePersistent(Q), "GET /persistent/org.xen.xapi.memory", b""),
    (p.CreateTransient("squeezectl:99"), "GET /transient/squeezectl:99", b""),
    (p.Destroy("q"), "GET /destroy/q", b""),
    (p.Ack((Q, 42)), "GET /ack/org.xen.xapi.memory/42", b""),
    (p.List("org.xen"), "GET /list/org.xen", b""),
    (p.List("org.xen", alive_only=True), "GET /list/alive/org.xen", b""),
    (p.Diagnostics(), "GET /", b""),
    (p.Shutdown(), "POST /shutdown", b""),
    (p.Transfer(None, 30.0, (Q,)), "POST /transfer",
     b'{"timeout":30.0,"queues":["org.xen.xapi.memory"]}'),
    (p.Transfer("7", 5.0, (Q, "b")), "POST /transfer",
     b'{"from":"7","timeout":5.0,"queues":["org.xen.xapi.memory","b"]}'),
    (p.Send(Q, p.Message('{"method":"balance_memory","params":["d"],"id":1}',
                         p.Request("xenopsd:1234"))),
     "POST /request/org.xen.xapi.memory/xenopsd:1234",
     b'{"method":"balance_memory","params":["d"],"id":1}'),
    (p.Send("xenopsd:1234", p.Message('{"result":null,"error":null,"id":1}',
                                      p.Response((Q, 3)))),
     "POST /response/xenopsd:1234/org.xen.xapi.memory/3",
     b'{"result":null,"error":null,"id":1}'),
]


@pytest.mark.parametrize("frame,line,body", REQUESTS, ids=lambda x: type(x).__name__)
def test_request_bytes_and_back(frame, line, body):
    raw = p.encode_request(frame)
    assert raw == (f"{line} HTTP/1.1\r\nuser-agent: squeezed\r\ncontent-length: {len(body)}"
                   "\r\nconnection: keep-alive\r\n\r\n").encode() + body
    meth, path = line.split(" ")
    assert p.parse_request(meth, path, body) == frame


def test_percent_encoded_segments_are_decoded():
    # cohttp percent-encodes what a path segment cannot hold; of_request decodes
    assert p.parse_request("GET", "/login/a%2Fb%20c", b"") == p.Login("a/b c")
    assert p.parse_request("GET", "/ack/a%2Fb/9", b"") == p.Ack(("a/b", 9))
    assert p.encode_request(p.Login("a/b c")).startswith(b"GET /login/a%2Fb%20c HTTP/1.1")


def test_transfer_body_as_ocaml_writes_it():
    # Yojson writes the float with a fraction; an integer and upper-case keys parse too
    t = p.parse_request("POST", "/transfer",
                        b'{"from":"12","timeout":30.,"queues":["q"]}'.replace(b"30.", b"30.0"))
    assert t == p.Transfer("12", 30.0, ("q",))
    assert p.parse_request("POST", "/transfer", b'{"TIMEOUT":1,"queues":[]}') == \
        p.Transfer(None, 1.0, ())


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/nonsense/x", b""), ("POST", "/transfer", b"{}"), ("POST", "/transfer", b"[1"),
    ("GET", "/ack/q/notanumber", b""), ("PUT", "/login/x", b""), ("GET", "/login", b""),
    ("POST", "/request/q", b"x"), ("GET", "/login/x", b"body"),
])
def test_not_a_frame(method, path, body):
    assert p.parse_request(method, path, body) is None


def test_out_bodies():
    # Out.Send (Some ("q", 3)) / Out.Send None: a message_id option at top level
    assert p.send_reply_body((Q, 3)) == b'[["org.xen.xapi.memory",3]]'
    assert p.send_reply_body(None) == b"[]"
    assert p.parse_send_reply(b'[["org.xen.xapi.memory",3]]') == (Q, 3)
    assert p.parse_send_reply(b"[]") is None
    assert p.parse_list_reply(b'["a","b"]') == ["a", "b"]


TRANSFER_REPLY = (
    b'{"messages":[[["org.xen.xapi.memory",4],{"payload":"{\\"method\\":\\"x\\"}",'
    b'"kind":["Request","xenopsd:1"]}],[["xenopsd:1",0],{"payload":"r",'
    b'"kind":["Response",["org.xen.xapi.memory",4]]}]],"next":"4"}'
)


def test_transfer_reply_both_ways():
    r = p.parse_transfer_reply(TRANSFER_REPLY)
    assert r == p.TransferReply(
        (((Q, 4), p.Message('{"method":"x"}', p.Request("xenopsd:1"))),
         (("xenopsd:1", 0), p.Message("r", p.Response((Q, 4))))),
        "4")
    assert p.dumps(p.transfer_reply_to_rpc(r)) == TRANSFER_REPLY
    # rpclib matches constructor tags case-insensitively
    low = TRANSFER_REPLY.replace(b'"Request"', b'"request"')
    assert p.parse_transfer_reply(low).messages[0][1].kind == p.Request("xenopsd:1")


@pytest.mark.parametrize("body", [
    b'{"messages":[],"next":4}', b'{"messages":{},"next":"4"}', b'{"next":"4"}',
    b'{"messages":[[["q"],{"payload":"","kind":["Request","r"]}]],"next":"0"}',
    b'{"messages":[[["q",1],{"payload":"","kind":["Nope","r"]}]],"next":"0"}',
    b'{"messages":[[["q",1],{"payload":1,"kind":["Request","r"]}]],"next":"0"}',
    b"not json",
])
def test_bad_transfer_replies(body):
    with pytest.raises(p.SwitchProtocolError):
        p.parse_transfer_reply(body)


# --- the framer --------------------------------------------------------------


def test_reader_frames_keep_alive_responses_split_anywhere():
    stream = (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc"
              b"HTTP/1.1 404 Not Found\r\nContent-Length: 14\r\n\r\nPlease log in."
              b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    for cut in range(len(stream) + 1):
        r = p.HttpReader("response")
        events = []
        for chunk in (stream[:cut], stream[cut:], None):
            if chunk == b"":
                continue  # b"" means end of stream
            r.receive_data(chunk or b"")
            while True:
                ev = r.next_event()
                if ev is p.NEED_DATA:
                    break
                events.append(ev)
                if ev is p.CLOSED:
                    break
        assert [(e.status, e.body) for e in events[:-1]] == [
            (200, b"abc"), (404, b"Please log in."), (200, b"")]
        assert events[-1] is p.CLOSED


def test_reader_requests():
    r = p.HttpReader("request")
    r.receive_data(b"POST /request/q/r HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                   b"GET / HTTP/1.1\r\n\r\n")
    a, b = r.next_event(), r.next_event()
    assert (a.method, a.path, a.body, dict(a.headers)["host"]) == ("POST", "/request/q/r", b"hi",
                                                                    "x")
    assert (b.method, b.path, b.body) == ("GET", "/", b"")
    assert r.next_event() is p.NEED_DATA


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
    "HTTP/1.1 200 OK\r\ncontent-length: \u00b2\r\n\r\n".encode(),  # a digit, not ASCII
    "HTTP/1.1 2\u0662\u0660 OK\r\n\r\n".encode(),
    b"HTTP/1.1 2xx OK\r\n\r\n",
    b"SMTP hello\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
])
def test_reader_rejects(data):
    r = p.HttpReader("response")
    r.receive_data(data)
    with pytest.raises(p.SwitchProtocolError):
        r.next_event()


def test_reader_eof_inside_a_message_is_an_error():
    r = p.HttpReader("response")
    r.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")
    assert r.next_event() is p.NEED_DATA
    r.receive_data(b"")
    with pytest.raises(p.SwitchProtocolError):
        r.next_event()


def test_encode_response():
    assert p.encode_response(404, p.NOT_LOGGED_IN) == (
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 14\r\n\r\nPlease log in.")
