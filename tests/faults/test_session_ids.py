"""Issue 11 #3: session and reservation ids are checked against xenstore's
node-name rules before anything happens (no squeezing, no table entry)."""

from __future__ import annotations

import pytest

from faults.svc_helpers import GIB_KIB, service
from squeezed.errors import InternalError

BAD = ["tenant/a", "a\x00b", "", "x" * 257, "a b", "a.b", "ümlaut", "../state"]


@pytest.mark.parametrize("sid", BAD)
def test_bad_session_id_is_refused_before_squeezing(sid: str) -> None:
    svc, host = service()
    targets = {d.domid: d.target_kib for d in host.domains}
    with pytest.raises(InternalError, match="invalid session id"):
        svc.reserve_memory_range("t", sid, GIB_KIB, 2 * GIB_KIB)
    with pytest.raises(InternalError, match="invalid session id"):
        svc.reserve_memory("t", sid, GIB_KIB)
    assert {d.domid: d.target_kib for d in host.domains} == targets  # nobody squeezed
    assert host.reservations() == []
    with pytest.raises(InternalError, match="invalid service name"):
        svc.login("t", sid)


@pytest.mark.parametrize("rid", BAD)
def test_bad_reservation_id_is_refused(rid: str) -> None:
    svc, host = service()
    with pytest.raises(InternalError, match="invalid reservation id"):
        svc.delete_reservation("t", "xenopsd", rid)
    with pytest.raises(InternalError, match="invalid reservation id"):
        svc.transfer_reservation_to_domain("t", "xenopsd", rid, 1)


def test_good_ids_pass() -> None:
    svc, host = service()
    sid = svc.login("t", "xenopsd-xc_2@host-1")
    rid = svc.reserve_memory("t", sid, 1024)
    assert [r.reservation_id for r in host.reservations()] == [rid]
    svc.delete_reservation("t", sid, rid)
    assert host.reservations() == []
