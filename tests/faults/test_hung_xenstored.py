"""A xenstored that accepts connections and never answers.

Each request waits one client timeout; a timed-out request used to become a
"connection lost" that the batched target write and `XenstoreClient.transaction`
both ran again, 17 times: with the 30 s default, ~510 s for one batch, past the
300 s operation deadline.  Now a timed-out request is never run again: one
connection, one timeout, then the error (XenHost turns it into XenHostError,
Internal_error to the caller).  Counted in connections made, not in seconds."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from squeezed.xen.target_writes import write_targets
from squeezed.xen.xenstore import XenstoreClient, XenstoreConnectionError

TIMEOUT_S = 0.1  # each test waits one of these


class Hung:
    """A listening socket nobody answers; connections wait in its backlog."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(64)  # more than the 17 tries the fault made
        self.accepted: list[socket.socket] = []

    def connections(self) -> int:
        """Connections made so far (the kernel queued them: no thread, no sleep)."""
        self.srv.setblocking(False)
        while True:
            try:
                self.accepted.append(self.srv.accept()[0])
            except BlockingIOError:
                return len(self.accepted)

    def close(self) -> None:
        for c in self.accepted:
            c.close()
        self.srv.close()


@pytest.fixture
def hung(short_tmp) -> Iterator[Hung]:
    h = Hung(os.path.join(short_tmp, "sock"))
    yield h
    h.close()


def client(hung: Hung) -> XenstoreClient:
    return XenstoreClient(hung.path, timeout_s=TIMEOUT_S, reconnect_timeout_s=0.0)


def test_hung_xenstored_batch_is_bounded_by_one_timeout(hung: Hung) -> None:
    with client(hung) as xs, pytest.raises(XenstoreConnectionError) as e:
        write_targets(xs, {1: 1000, 2: 2000})
    assert e.value.timed_out and e.value.written == {}
    assert hung.connections() == 1


def test_hung_single_transaction(hung: Hung) -> None:
    with client(hung) as xs, pytest.raises(XenstoreConnectionError) as e:
        xs.transaction(lambda t: t.read("/local/domain/1"))
    assert e.value.timed_out
    assert hung.connections() == 1


def test_a_timed_out_read_is_not_sent_again(hung: Hung) -> None:
    # Reads are idempotent and run again on a lost connection, not on a timeout.
    with client(hung) as xs:
        with pytest.raises(XenstoreConnectionError) as e:
            xs.read("/local/domain/1/memory/target")
        assert e.value.timed_out
        with pytest.raises(XenstoreConnectionError) as e:
            xs.read_many(["/local/domain/1/memory/target"])
        assert e.value.timed_out
    assert hung.connections() == 2  # one each
