"""The RPC sockets' framing rules, with no sockets and no sleeps. Expected
values are written by hand from RFC 9112 (HTTP/1.1 message framing) and
RFC 8259 (JSON), not computed by the code under test."""

from __future__ import annotations

import pytest

from squeezed.rpc.framing import (
    CLOSED,
    CONTINUE,
    NEED_DATA,
    BareJson,
    FramingError,
    JsonObjectScanner,
    Request,
    RequestFramer,
    content_length,
    json_space_run,
)

CAP = 1024


@pytest.mark.parametrize(
    ("lengths", "te", "expected"),
    [
        (["0"], None, 0),
        (["12"], None, 12),
        ([" 12 "], None, 12),  # optional whitespace around a field value
        (["12", "12"], None, 12),  # repeated identical values are one length
        (["1024"], None, 1024),  # exactly the cap
        (["1025"], None, FramingError(413, "body larger than 1024 bytes")),
        ([], None, FramingError(411, "Content-Length required")),
        (["12", "13"], None, FramingError(400, "bad Content-Length")),
        (["-1"], None, FramingError(400, "bad Content-Length")),
        (["+5"], None, FramingError(400, "bad Content-Length")),
        (["0x10"], None, FramingError(400, "bad Content-Length")),
        (["1e3"], None, FramingError(400, "bad Content-Length")),
        (["\u00b2"], None, FramingError(400, "bad Content-Length")),  # "²".isdigit()
        (["\u0661"], None, FramingError(400, "bad Content-Length")),  # Arabic-Indic 1
        ([""], None, FramingError(400, "bad Content-Length")),
        (["1 2"], None, FramingError(400, "bad Content-Length")),
        (["1" * 20], None, FramingError(400, "bad Content-Length")),
        (["5"], "chunked",
         FramingError(501, "Transfer-Encoding not supported; send Content-Length")),
        ([], "chunked",
         FramingError(501, "Transfer-Encoding not supported; send Content-Length")),
    ],
)
def test_content_length_rules(lengths: list[str], te: str | None,
                              expected: int | FramingError) -> None:
    assert content_length(lengths, te, CAP) == expected


@pytest.mark.parametrize(
    ("data", "run"),
    [(b"", 0), (b"{}", 0), (b"  {", 2), (b" \t\r\n \n{", 6), (b"\n" * 5000, 5000), (b"\x0b{", 0)],
)
def test_json_space_run_takes_the_whole_run(data: bytes, run: int) -> None:
    assert json_space_run(data) == run


def scan(chunks: list[bytes]) -> tuple[bytes, bool, int]:
    """Feed chunks as the shell does; return the object's bytes, done, size."""
    s = JsonObjectScanner()
    taken = b""
    for c in chunks:
        if s.done:
            break
        taken += c[: s.feed(c)]
    return taken, s.done, s.size


OBJECTS = [
    b"{}",
    b'{"method":"get_diagnostics","params":[],"id":1}',
    b'{"a":"}"}',  # a brace inside a string
    b'{"a":"\\"}"}',  # an escaped quote, then a brace, inside a string
    b'{"a":"\\\\"}',  # an escaped backslash ends just before the closing quote
    b'{"a":[{"b":[1,2,{}]}],"c":"[{"}',
]


@pytest.mark.parametrize("obj", OBJECTS)
def test_object_ends_at_its_closing_brace(obj: bytes) -> None:
    tail = b'\n{"next":1}'
    assert scan([obj + tail]) == (obj, True, len(obj))


@pytest.mark.parametrize("obj", OBJECTS)
def test_split_at_every_byte_boundary(obj: bytes) -> None:
    tail = b" {}"
    whole = obj + tail
    for k in range(len(whole) + 1):
        assert scan([whole[:k], whole[k:]]) == (obj, True, len(obj)), k
    assert scan([bytes([b]) for b in whole]) == (obj, True, len(obj))


def test_incomplete_object_is_not_done() -> None:
    assert scan([b'{"a":{"b":1}']) == (b'{"a":{"b":1}', False, 12)
    assert scan([b'{"a":"}']) == (b'{"a":"}', False, 7)


def test_size_counts_every_byte_taken() -> None:
    s = JsonObjectScanner()
    assert s.feed(b'{"pad":"' + b"x" * 2000) == 2008
    assert (s.done, s.size) == (False, 2008)
    assert s.feed(b'"}trailing') == 2
    assert (s.done, s.size) == (True, 2010)


def test_pipelined_objects_with_whitespace_runs() -> None:
    stream = b'  {"id":1}\n\n\t {"id":"}"}\r\n{"id":[3]}   '
    objects = []
    while True:
        stream = stream[json_space_run(stream):]
        if not stream:
            break
        s = JsonObjectScanner()
        n = s.feed(stream)
        assert s.done
        objects.append(stream[:n])
        stream = stream[n:]
    assert objects == [b'{"id":1}', b'{"id":"}"}', b'{"id":[3]}']


# ------------------------------------------------------------ the framer

def events(chunks: list[bytes], *, bare_json: bool = False, eof: bool = True,
           max_body: int = CAP) -> list[object]:
    """Every event the framer gives for these chunks (NEED_DATA left out)."""
    f = RequestFramer(max_body, bare_json=bare_json)
    out: list[object] = []
    for c in [*filter(None, chunks), *([b""] if eof else [])]:  # b"" is the end
        f.receive_data(c)
        while True:
            ev = f.next_event()
            if ev is NEED_DATA:
                break
            out.append(ev)
            if ev is CLOSED or isinstance(ev, FramingError):
                return out
    return out


POST = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: text/xml\r\n\r\nhello"
POST_EV = Request("POST", "/x", (("Content-Length", "5"), ("Content-Type", "text/xml")),
                  b"hello", True)


def test_one_post_then_end_of_stream() -> None:
    assert events([POST]) == [POST_EV, CLOSED]


def test_post_split_at_every_byte_boundary() -> None:
    stream = POST + POST
    for k in range(len(stream) + 1):
        assert events([stream[:k], stream[k:]]) == [POST_EV, POST_EV, CLOSED], k
    assert events([bytes([b]) for b in stream]) == [POST_EV, POST_EV, CLOSED]


def test_incomplete_request_needs_data() -> None:
    for k in range(len(POST)):
        assert events([POST[:k]], eof=False) == [], k


def test_pipelined_requests_and_connection_close() -> None:
    close = b"POST / HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nab"
    old = b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n"
    old_ka = b"POST / HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
    got = events([POST + close + old + old_ka])
    assert [(e.body, e.keep_alive) for e in got[:4]] == [  # type: ignore[attr-defined]
        (b"hello", True), (b"ab", False), (b"", False), (b"", True)]
    assert got[4] is CLOSED


def test_body_cut_short_closes_without_reply() -> None:
    assert events([POST[:-1]]) == [CLOSED]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n", 400),  # judged on the request line alone, no blank line needed
        (b"POST / HTTP/1.1 extra\r\n", 400),
        (b"POST / HTTX/1.1\r\n", 400),
        (b"POST / HTTP/1\r\n", 400),
        (b"POST / HTTP/2.0\r\n", 505),
        (b"POST /\r\n\r\n", 400),  # HTTP/0.9 only knows GET
        (b"GET / HTTP/1.1\r\n\r\n", 405),
        (b"POST / HTTP/1.1\r\n\r\n", 411),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nX-A: " + b"b" * 65536 + b"\r\n\r\n", 431),
        (b"POST /" + b"a" * 65536 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_framing_errors_and_their_status(data: bytes, status: int) -> None:
    got = events([data], eof=False)
    assert len(got) == 1 and isinstance(got[0], FramingError), got
    assert got[0].status == status


def test_header_limits_just_inside() -> None:
    # 99 headers and the blank line make the 100 lines http.client allows
    head = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n" + b"X-A: b\r\n" * 98 + b"\r\n"
    assert isinstance(events([head])[0], Request)
    line = b"X-A: " + b"b" * (65536 - 7) + b"\r\n"  # exactly 65536 bytes
    assert isinstance(events([b"POST / HTTP/1.1\r\nContent-Length: 0\r\n" + line + b"\r\n"])[0],
                      Request)


def test_expect_100_continue_comes_before_the_body() -> None:
    data = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    assert events([data, b"ok"]) == [
        CONTINUE, Request("POST", "/", (("Expect", "100-continue"), ("Content-Length", "2")),
                          b"ok", True), CLOSED]


def test_empty_request_line_closes_quietly() -> None:
    assert events([b"\r\n" + POST]) == [CLOSED]


def test_bare_json_objects_with_whitespace_runs_and_http_between() -> None:
    stream = b' \n\t{"id":1}\r\n\r\n  {"id":"}"}' + POST + b'\n\n{"id":[3]}  \n'
    want = [BareJson(b'{"id":1}'), BareJson(b'{"id":"}"}'), POST_EV, BareJson(b'{"id":[3]}'),
            CLOSED]
    for k in range(len(stream) + 1):
        assert events([stream[:k], stream[k:]], bare_json=True) == want, k


def test_bare_json_whitespace_is_not_a_start() -> None:
    f = RequestFramer(CAP, bare_json=True)
    f.receive_data(b" \r\n\t" * 1000)
    assert not f.started()
    f.receive_data(b"{")
    assert f.started()


def test_bare_json_off_leading_whitespace_is_an_empty_request_line() -> None:
    assert events([b"\n{}"]) == [CLOSED]


def test_bare_json_cap_and_cut() -> None:
    assert events([b'{"a":"' + b"x" * CAP], bare_json=True, eof=False) == [
        FramingError(413, f"body larger than {CAP} bytes")]
    obj = b'{"a":"' + b"x" * (CAP - 8) + b'"}'  # exactly CAP bytes
    assert events([obj], bare_json=True) == [BareJson(obj), CLOSED]
    assert events([b'{"a":'], bare_json=True) == [CLOSED]
