"""Issue 11 #9: Content-Length must be ASCII digits: `²` (which str.isdigit
accepts and int() refuses) is a 400, not a 500 with a traceback."""

from __future__ import annotations

import logging
import socket

import pytest
from rpc_fake import serving

from squeezed.rpc.server import XmlRpcServer


@pytest.mark.parametrize("value", ["²", "١٢", "+5", "-1", "5 5", "0x10", "9" * 30])
def test_non_ascii_digits_are_a_bad_request(value: str, caplog) -> None:
    with serving(XmlRpcServer) as (srv, _), caplog.at_level(logging.INFO):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(srv.path)
        s.sendall(f"POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
    assert data.startswith(b"HTTP/1.1 400 "), data[:80]
    assert b"bad Content-Length" in data
    assert not [r for r in caplog.records if r.exc_info]  # no traceback logged
