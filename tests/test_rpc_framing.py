"""The RPC sockets' framing rules, with no sockets and no sleeps. Expected
values are written by hand from RFC 9112 (HTTP/1.1 message framing) and
RFC 8259 (JSON), not computed by the code under test."""

from __future__ import annotations

import pytest

from squeezed.rpc.framing import (
    FramingError,
    JsonObjectScanner,
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
