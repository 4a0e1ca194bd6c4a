"""Issue 11 #9: whitespace between bare JSON objects is skipped in runs, not
read a byte at a time."""

from __future__ import annotations

import io
from types import SimpleNamespace

from squeezed.rpc.server import _Handler


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, n: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(n)

    def peek(self, n: int = 1) -> bytes:
        return self.getvalue()[self.tell():self.tell() + max(n, 65536)]


def test_whitespace_run_is_skipped_in_few_reads() -> None:
    rfile = CountingReader(b" \n\t\r" * 5000 + b'{"method":"x"}')
    fake = SimpleNamespace(rfile=rfile, server=SimpleNamespace(rpc=SimpleNamespace(raw_json=True)))
    assert _Handler._first_byte(fake) == b"{"  # type: ignore[arg-type]
    assert rfile.reads <= 2, rfile.reads
    assert rfile.read(1) == b"{"


def test_whitespace_then_eof() -> None:
    rfile = CountingReader(b"   \n")
    fake = SimpleNamespace(rfile=rfile, server=SimpleNamespace(rpc=SimpleNamespace(raw_json=True)))
    assert _Handler._first_byte(fake) == b""  # type: ignore[arg-type]
