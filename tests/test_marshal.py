"""Both directions of the IDL type walk, against hand-written wire values
(rpclib's Rpcmarshal rules), independent of the codecs."""

from __future__ import annotations

import pytest

from squeezed import idl
from squeezed.rpc.dispatch import TypeMismatch, marshal, unmarshal

IFACE = idl.load()
POLICY = next(m for m in IFACE.methods if m.name == "get_domain_zero_policy").result


def test_variant_out_is_name_or_name_and_contents():
    assert marshal(IFACE, POLICY, ("Fixed_size", 1024)) == ["Fixed_size", 1024]
    assert marshal(IFACE, POLICY, ("Auto_balloon", (1, 2))) == ["Auto_balloon", [1, 2]]
    with pytest.raises(TypeMismatch):
        marshal(IFACE, POLICY, ("fixed_size", 1024))  # we send exact tags


def test_variant_in_matches_tags_case_insensitively_as_rpclib():
    assert unmarshal(IFACE, POLICY, ["fixed_size", "1024"]) == ["Fixed_size", 1024]
    assert unmarshal(IFACE, POLICY, ["AUTO_BALLOON", ["1", 2]]) == ["Auto_balloon", [1, 2]]
    with pytest.raises(TypeMismatch, match="unknown variant"):
        unmarshal(IFACE, POLICY, ["Ballooned", 1])


def test_struct_out_omits_absent_options_and_rejects_extra_fields():
    t = "reservation_state"
    v = {"reservation_id": "r", "session_id": "s", "kib": 5, "domid": None}
    assert marshal(IFACE, t, v) == {"reservation_id": "r", "session_id": "s", "kib": 5}
    assert marshal(IFACE, t, {**v, "domid": 3})["domid"] == 3
    with pytest.raises(TypeMismatch, match="unexpected struct fields"):
        marshal(IFACE, t, {**v, "colour": "red"})
    with pytest.raises(TypeMismatch, match="missing struct field 'kib'"):
        marshal(IFACE, t, {"reservation_id": "r", "session_id": "s"})


def test_struct_in_converts_known_fields_and_passes_unknown_ones():
    t = "reservation_state"
    wire = {"reservation_id": "r", "session_id": "s", "kib": "5", "colour": "red"}
    assert unmarshal(IFACE, t, wire) == {"reservation_id": "r", "session_id": "s", "kib": 5,
                                         "colour": "red"}


def test_integers_are_strict_going_out_and_forgiving_coming_in():
    with pytest.raises(TypeMismatch):
        marshal(IFACE, "int64", "5")
    with pytest.raises(TypeMismatch):
        marshal(IFACE, "int64", True)
    assert unmarshal(IFACE, "int64", "5") == 5
    with pytest.raises(TypeMismatch):
        unmarshal(IFACE, "int64", "5.0")
    with pytest.raises(TypeMismatch):
        marshal(IFACE, "int", 1 << 62)  # OCaml's int is 63-bit
