"""The sans-I/O xenstore codec: framing, payload helpers, incremental parsing."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezed.xen import xs_wire
from squeezed.xen.xs_wire import (
    ERRORS,
    HEADER_SIZE,
    PAYLOAD_MAX,
    Op,
    Packet,
    Parser,
    ProtocolError,
    encode,
    join_strings,
    split_strings,
    split_write,
    write_payload,
)

XS_WIRE_H = Path("/usr/include/xen/io/xs_wire.h")


def test_header_is_four_le_u32() -> None:
    assert HEADER_SIZE == 16
    raw = encode(Op.WRITE, 7, 3, b"/a\0v")
    assert raw[:16] == struct.pack("<IIII", 11, 7, 3, 4)
    assert raw[16:] == b"/a\0v"


def test_message_numbers() -> None:
    expected = {
        "CONTROL": 0, "DIRECTORY": 1, "READ": 2, "GET_PERMS": 3, "WATCH": 4, "UNWATCH": 5,
        "TRANSACTION_START": 6, "TRANSACTION_END": 7, "INTRODUCE": 8, "RELEASE": 9,
        "GET_DOMAIN_PATH": 10, "WRITE": 11, "MKDIR": 12, "RM": 13, "SET_PERMS": 14,
        "WATCH_EVENT": 15, "ERROR": 16, "IS_DOMAIN_INTRODUCED": 17, "RESUME": 18,
        "SET_TARGET": 19, "RESET_WATCHES": 21, "DIRECTORY_PART": 22,
    }  # fmt: skip
    assert {op.name: op.value for op in Op} == expected
    assert xs_wire.DEBUG == Op.CONTROL


@pytest.mark.skipif(not XS_WIRE_H.exists(), reason="libxen-dev's xs_wire.h is not installed")
def test_numbers_and_errors_match_installed_header() -> None:
    text = XS_WIRE_H.read_text()
    body = text[text.index("enum xsd_sockmsg_type") : text.index("XS_TYPE_COUNT")]
    value = -1
    seen: dict[str, int] = {}
    for m in re.finditer(r"^\s*XS_(\w+)(?:\s*=\s*XS_(\w+)\s*\+\s*(\d+))?,", body, re.M):
        name, base, plus = m.groups()
        value = seen[base] + int(plus) if base else value + 1
        seen[name] = value
    for op in Op:
        assert seen[op.name] == op.value, op.name
    assert tuple(re.findall(r"XSD_ERROR\((E\w+)\)", text)) == ERRORS
    assert f"#define XENSTORE_PAYLOAD_MAX {PAYLOAD_MAX}" in text


def test_string_helpers() -> None:
    assert join_strings(["/a", "tok"]) == b"/a\0tok\0"
    assert split_strings(b"/a\0tok\0") == ["/a", "tok"]
    assert split_strings(b"") == []
    assert split_strings(b"noterm") == ["noterm"]
    assert write_payload("/p", "v\0x") == b"/p\0v\0x"
    assert split_write(b"/p\0v\0x") == ("/p", b"v\0x")
    with pytest.raises(ProtocolError):
        split_write(b"nonul")


def test_non_utf8_values_round_trip() -> None:
    raw = b"\xff\xfe"
    s = xs_wire.decode_value(raw)
    assert split_write(write_payload("/p", s)) == ("/p", raw)


def test_error_packet() -> None:
    p = xs_wire.error_packet(5, 0, "ENOENT")
    assert p.type == Op.ERROR and p.payload == b"ENOENT\0"
    assert p.error_name() == "ENOENT"
    assert Packet(Op.READ, 1, 0, b"x").error_name() is None


def test_unknown_type_survives_parsing() -> None:
    p = Parser().feed(encode(20, 1, 0, b""))[0]
    assert p.type == 20 and p.op is None


def test_round_trip_and_byte_by_byte() -> None:
    pkts = [
        Packet(Op.READ, 1, 0, b"/local/domain/0\0"),
        Packet(Op.WATCH_EVENT, 0, 0, b"/a\0tok\0"),
        Packet(Op.TRANSACTION_END, 2**32 - 1, 9, b"T\0"),
        Packet(Op.RESET_WATCHES, 3, 0, b""),
        Packet(Op.WRITE, 4, 0, b"/x\0" + b"v" * (PAYLOAD_MAX - 3)),
    ]
    stream = b"".join(p.encode() for p in pkts)
    assert Parser().feed(stream) == pkts
    parser = Parser()
    out: list[Packet] = []
    for i in range(len(stream)):
        out += parser.feed(stream[i : i + 1])
    assert out == pkts
    assert parser.buffered == 0


def test_encode_refuses_oversize_payload() -> None:
    encode(Op.WRITE, 1, 0, b"x" * PAYLOAD_MAX)
    with pytest.raises(ProtocolError):
        encode(Op.WRITE, 1, 0, b"x" * (PAYLOAD_MAX + 1))


def test_parser_rejects_oversize_length_and_stays_failed() -> None:
    good = encode(Op.READ, 1, 0, b"/a\0")
    bad = struct.pack("<IIII", Op.WRITE, 2, 0, PAYLOAD_MAX + 1)
    parser = Parser()
    with pytest.raises(ProtocolError) as exc:
        parser.feed(good + bad)
    assert exc.value.packets == [Packet(Op.READ, 1, 0, b"/a\0")]
    with pytest.raises(ProtocolError):
        parser.feed(good)


def test_parser_rejects_oversize_header_before_body_arrives() -> None:
    # Only the header is needed to know the stream is bad: no waiting for 4 GiB.
    with pytest.raises(ProtocolError):
        Parser().feed(struct.pack("<IIII", Op.WRITE, 1, 0, 0xFFFFFFFF))


packets_st = st.builds(
    Packet,
    type=st.integers(0, 0xFFFF),
    req_id=st.integers(0, 2**32 - 1),
    tx_id=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=300),
)


@settings(max_examples=200, deadline=None)
@given(pkts=st.lists(packets_st, max_size=8), data=st.data())
def test_any_split_parses_to_same_packets(pkts: list[Packet], data: st.DataObject) -> None:
    stream = b"".join(p.encode() for p in pkts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    parser = Parser()
    out: list[Packet] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        out += parser.feed(stream[prev:c])
        prev = c
    assert out == pkts
    assert parser.buffered == 0
