"""A xenstore client over xenstored's Unix socket, built on :mod:`squeezed.xen.xs_wire`.

Two objects, two connections (as upstream squeezed does): :class:`XenstoreClient`
for requests and :class:`Watcher` for watches.  A dedicated watch connection
means a burst of events can never delay or interleave with a request's reply.

Reconnection (documented in docs/xenstore.md):

* The client reconnects lazily, with exponential back-off, on the next request
  after the connection died.  Before each request it checks the idle socket for
  EOF, so a xenstored restart between requests is invisible.  A request that was
  *in flight* when the connection died is retried once if it is an idempotent
  read outside a transaction; otherwise it raises :class:`XenstoreConnectionError`
  (``errno_name == "EIO"``), because a mutation may or may not have been applied.
* The watcher's reader thread reconnects by itself, re-registers every watch,
  and queues :data:`RECONNECTED` so the owner knows to refresh its cache.

The parts: `xs_link` (socket path, errors, back-off, one connected socket),
`xs_ops` (the operations, and transactions), `xs_client` (the request
connection), `xs_queue` (the coalescing event queue) and `xs_watcher` (the
watch connection and its reader thread). This module is their public face.
"""

from squeezed.xen.xs_client import XenstoreClient
from squeezed.xen.xs_link import (
    DEFAULT_SOCKET,
    XenstoreConnectionError,
    XenstoreError,
    default_socket_path,
)
from squeezed.xen.xs_ops import Transaction
from squeezed.xen.xs_queue import RECONNECTED, CoalescingQueue, WatchEvent
from squeezed.xen.xs_watcher import Watcher

__all__ = [
    "DEFAULT_SOCKET",
    "RECONNECTED",
    "CoalescingQueue",
    "Transaction",
    "WatchEvent",
    "Watcher",
    "XenstoreClient",
    "XenstoreConnectionError",
    "XenstoreError",
    "default_socket_path",
]
