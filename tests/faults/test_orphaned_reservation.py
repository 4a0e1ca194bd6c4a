"""Issue 11 #8: when the reply of a reserve cannot be delivered (the caller
hung up), the reservation is undone at once."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from rpc_fake import serving

from faults.svc_helpers import GIB_KIB, service
from squeezed.rpc import jsonrpc, xmlrpc
from squeezed.rpc.server import JsonRpcServer, XmlRpcServer


def _request(kind: type, method: str, params: list) -> bytes:
    if kind is XmlRpcServer:
        body = xmlrpc.encode_call(method, params)
        return (b"POST / HTTP/1.1\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n"
                % len(body) + body)
    return jsonrpc.encode_call(method, params, 1)  # bare JSON


@pytest.mark.parametrize("kind", [XmlRpcServer, JsonRpcServer])
@pytest.mark.parametrize("method,params", [
    ("reserve_memory", ["t", "xenopsd", GIB_KIB]),
    ("reserve_memory_range", ["t", "xenopsd", GIB_KIB // 2, GIB_KIB]),
    ("Memory.reserve", ["t", GIB_KIB]),
])
def test_reservation_of_a_caller_that_hung_up_is_undone(kind, method, params) -> None:
    svc, host = service()
    hung_up = threading.Event()
    real_reserve = svc._squeeze

    def squeeze_after_hang_up(*a, **kw):
        result = real_reserve(*a, **kw)
        assert hung_up.wait(10)
        return result

    svc._squeeze = squeeze_after_hang_up  # type: ignore[method-assign]
    with serving(kind, svc) as (srv, _):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(srv.path)
        s.sendall(_request(kind, method, params))
        deadline = time.monotonic() + 10
        while not host.reservations():  # the reservation is made ...
            assert time.monotonic() < deadline
            time.sleep(0.005)
        s.close()  # ... and the caller hangs up before the reply
        hung_up.set()
        while host.reservations():
            assert time.monotonic() < deadline, "reservation not undone"
            time.sleep(0.005)
    diag = svc.get_diagnostics("t")
    assert "undo-reservation" in diag


def test_delivered_reply_keeps_the_reservation() -> None:
    svc, host = service()
    with serving(XmlRpcServer, svc) as (srv, _):
        from squeezed.rpc.client import MemoryClient

        rid = MemoryClient(srv.path).call("reserve_memory", "t", "xenopsd", 1024)
    assert [r.reservation_id for r in host.reservations()] == [rid]
