"""Issue 11 #9: whitespace between bare JSON objects is skipped in runs, not
read a byte at a time."""

from __future__ import annotations

import time
from types import SimpleNamespace

from squeezed.rpc import framing
from squeezed.rpc.server import _Handler


class CountingSocket:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    def settimeout(self, t: float) -> None:
        pass

    def recv(self, n: int) -> bytes:
        self.reads += 1
        out, self.data = self.data[:n], self.data[n:]
        return out


def handler(data: bytes) -> tuple[SimpleNamespace, CountingSocket]:
    sock = CountingSocket(data)
    fake = SimpleNamespace(request=sock, deadline=time.monotonic() + 60,
                           framer=framing.RequestFramer(1 << 20, bare_json=True))
    fake._recv = lambda: _Handler._recv(fake)  # type: ignore[arg-type]
    return fake, sock


def test_whitespace_run_is_skipped_in_few_reads() -> None:
    fake, sock = handler(b" \n\t\r" * 5000 + b'{"method":"x"}')
    assert _Handler._await_start(fake) is True  # type: ignore[arg-type]
    assert sock.reads <= 2, sock.reads
    assert fake.framer.next_event() == framing.BareJson(b'{"method":"x"}')


def test_whitespace_then_eof() -> None:
    fake, sock = handler(b"   \n")
    assert _Handler._await_start(fake) is False  # type: ignore[arg-type]
