"""What the daemon serves the Memory interface on: the XML-RPC and JSON-RPC sockets,
and the queue org.xen.xapi.memory on message-switch (use-switch)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from squeezed.config import Config
from squeezed.daemon.errors import StartupError
from squeezed.service import MemoryService
from squeezed.supervisor import Heartbeats

if TYPE_CHECKING:
    from squeezed.backend import Reservation
    from squeezed.rpc.server import RpcServer
    from squeezed.switch.exactly_once import XenstoreLike
    from squeezed.switch.server import SwitchServer

log = logging.getLogger("squeezed")

PRUNE_INTERVAL_S = 60.0  # how often the switch's request records are pruned, at most


def start_rpc_servers(service: MemoryService, cfg: Config, xml_path: str, json_path: str,
                      heartbeats: Heartbeats, servers: list[RpcServer]) -> None:
    """Listen on both sockets; each server is appended to `servers` once it listens,
    so that a failure on the second leaves the first to be shut down."""
    from squeezed.rpc.dispatch import Dispatcher
    from squeezed.rpc.server import JsonRpcServer, SocketInUseError, XmlRpcServer

    dispatcher = Dispatcher(service)
    group = cfg.socket_group or None
    for cls, path in ((XmlRpcServer, xml_path), (JsonRpcServer, json_path)):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        server = cls(path, dispatcher, mode=cfg.socket_mode, group=group,
                     heartbeats=heartbeats)
        try:
            server.start()
        except SocketInUseError as e:
            raise StartupError(str(e)) from None
        except (OSError, KeyError) as e:  # KeyError: no such socket-group
            raise StartupError(f"cannot listen on {path}: {e}") from None
        servers.append(server)


def switch_server(service: MemoryService, xs: XenstoreLike,
                  reservations: Callable[[], list[Reservation]], path: str,
                  heartbeats: Heartbeats) -> SwitchServer:
    """The queue's server (not yet running), answering through the same dispatcher
    and codec as json-socket, each request at most once (records in xenstore)."""
    from squeezed.rpc.codec import JsonCodec
    from squeezed.rpc.dispatch import Dispatcher
    from squeezed.switch.exactly_once import ExactlyOnce, RecordStoreError, XenstoreRecords
    from squeezed.switch.server import SwitchServer

    # Test hook: block a request for ever at this point (before-record, before-reply),
    # so that a test can kill squeezed there.
    hold_at = os.environ.get("SQUEEZED_TEST_HOLD_SWITCH")

    def hold(point: str) -> None:
        if point == hold_at:
            log.warning("test hook: holding a request at %s", point)
            threading.Event().wait()

    once = ExactlyOnce(service, XenstoreRecords(xs), reservations,
                       hold=hold if hold_at else None)
    codec = JsonCodec(Dispatcher(once))
    last_prune_s = 0.0

    def prune() -> None:
        nonlocal last_prune_s
        now = time.monotonic()
        if now - last_prune_s < PRUNE_INTERVAL_S:
            return
        last_prune_s = now
        try:
            dropped = once.prune()
        except RecordStoreError as e:
            log.info("request records not pruned this time: %s", e)
            return
        if dropped:
            log.info("dropped %d request records (reservation gone or too old)", dropped)

    return SwitchServer(
        path, lambda payload: codec.handle(payload.encode("utf-8")).decode("utf-8"),
        heartbeats=heartbeats, on_idle=prune, hold=hold if hold_at else None)
