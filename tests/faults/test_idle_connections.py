"""Issue 11 #6: idle connections neither hold a request slot nor park the
accept loop; a xenopsd-style call (connect, send, read) is served while many
connections sit idle, and idle ones are closed after the first-byte timeout."""

from __future__ import annotations

import socket
import time

from rpc_fake import serving

from squeezed.rpc.client import MemoryClient
from squeezed.rpc.server import XmlRpcServer


def test_idle_connections_do_not_starve_a_call() -> None:
    # 8 slots, 60 idle connections; timeouts far longer than the client waits,
    # so only "idle connections hold nothing" can let the call through.
    with serving(XmlRpcServer, max_connections=8, request_timeout=60.0,
                 first_byte_timeout_s=60.0, slot_wait_s=60.0) as (srv, _):
        idle = []
        try:
            for _ in range(60):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(srv.path)
                idle.append(s)
            deadline = time.monotonic() + 10
            while srv._server._open < 60:  # all accepted, none sent a byte
                assert time.monotonic() < deadline
                time.sleep(0.01)
            client = MemoryClient(srv.path, timeout=10.0)
            assert client.call("reserve_memory", "d", "s", 1) == "res-1"
        finally:
            for s in idle:
                s.close()


def test_an_idle_connection_is_closed_after_the_first_byte_timeout() -> None:
    with serving(XmlRpcServer, request_timeout=60.0, first_byte_timeout_s=0.2) as (srv, _):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(srv.path)
        try:
            assert s.recv(10) == b""  # closed quietly, no unsolicited reply
        finally:
            s.close()


def test_the_accept_loop_beats_its_heartbeat() -> None:
    from squeezed.supervisor import Heartbeats

    now = [0.0]
    hb = Heartbeats(clock=lambda: now[0])
    with serving(XmlRpcServer, heartbeats=hb) as (srv, _):
        name = f"rpc {srv.path}"
        assert name in hb.status()
        now[0] = 1000.0
        assert hb.late() == [name]
        deadline = time.monotonic() + 10
        while hb.late():  # the loop wakes every poll interval and beats
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert name not in hb.status()  # unregistered at shutdown
