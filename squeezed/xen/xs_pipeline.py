"""Pipelined xenstore requests, sans-I/O: many requests sent without waiting
for each reply, replies matched back by req_id.

xenstored answers one connection's requests in order, but nothing here relies
on it: a reply is matched by its req_id, a watch event met on the way is handed
back to the owner (who routes it as for a single request), and a reply nobody
asked for is dropped.  At most ``window`` requests are outstanding at once, so
neither side's socket buffer can fill while the other waits (no deadlock
however many requests there are).

The socket part is `XenstoreClient.pipeline` (xs_client.py); the batch
"write if the domain still exists" built on it is `target_writes.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from squeezed.xen.xs_link import XenstoreConnectionError, XenstoreError
from squeezed.xen.xs_wire import Op, Packet, encode

log = logging.getLogger("squeezed.xen.xenstore")

DEFAULT_WINDOW = 128  # requests in flight: ~10 KiB each way, far below socket buffers


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a pipeline; ``path`` only names it in errors."""

    op: Op
    payload: bytes
    tx_id: int = 0
    path: str | None = None


Outcome = Packet | XenstoreError
"""A request's result: its reply, or the error it met (an XS_ERROR reply, or
:class:`XenstoreConnectionError` when the connection failed before it was answered)."""


class Pipeline:
    """The state of one pipelined batch, without sockets.

    The owner loops: send :meth:`next_bytes` (empty when the window is full or
    everything is sent), :meth:`receive` each packet read, until :attr:`done`;
    on a lost connection or a timeout, :meth:`fail_unanswered`.  Then
    :meth:`outcomes` gives one result per request, in request order."""

    def __init__(
        self, requests: Sequence[Request], next_req_id: Callable[[], int],
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self._requests = list(requests)
        self._next_req_id = next_req_id
        self._window = max(1, window)
        self._sent = 0  # requests[:_sent] have been framed for sending
        self._waiting: dict[int, int] = {}  # req_id -> request index
        self._outcomes: list[Outcome | None] = [None] * len(self._requests)
        self._answered = 0
        self.dropped = 0  # replies matching no outstanding request

    @property
    def done(self) -> bool:
        return self._answered == len(self._requests)

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._waiting)

    def next_bytes(self) -> bytes:
        """Frames of the next requests the window allows ("" if none)."""
        room = min(self._window - len(self._waiting), len(self._requests) - self._sent)
        frames = []
        for _ in range(max(0, room)):
            r = self._requests[self._sent]
            req_id = self._next_req_id()
            self._waiting[req_id] = self._sent
            frames.append(encode(r.op, req_id, r.tx_id, r.payload))
            self._sent += 1
        return b"".join(frames)

    def receive(self, pkt: Packet) -> Packet | None:
        """Take one packet read from the connection; a watch event is returned
        for the owner to route, anything else is consumed (None)."""
        if pkt.type == Op.WATCH_EVENT:
            return pkt
        index = self._waiting.pop(pkt.req_id, None)
        if index is None:
            self.dropped += 1
            log.warning("xenstore: dropping reply to unknown req_id %d", pkt.req_id)
            return None
        name = pkt.error_name()
        path = self._requests[index].path
        self._outcomes[index] = pkt if name is None else XenstoreError(name, path)
        self._answered += 1
        return None

    def fail_unanswered(self, detail: str, *, timed_out: bool = False) -> None:
        """The connection failed (``timed_out``: no reply in time): every
        request not yet answered fails.  Those sent may have been acted on
        (``in_flight``); the others never left."""
        sent = set(self._waiting.values())
        for index, outcome in enumerate(self._outcomes):
            if outcome is None:
                r = self._requests[index]
                in_flight = index in sent
                self._outcomes[index] = XenstoreConnectionError(
                    r.path, f"{r.op.name}: {detail}", in_flight=in_flight, timed_out=timed_out)
                self._answered += 1
        self._waiting.clear()
        self._sent = len(self._requests)

    def outcomes(self) -> list[Outcome]:
        if not self.done:
            raise RuntimeError("pipeline not finished: call fail_unanswered first")
        return [o for o in self._outcomes if o is not None]
