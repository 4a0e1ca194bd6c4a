"""The simulated xenstored's shell: the real wire protocol on a Unix socket.

:class:`Xenstored` serves `core.XenstoreCore` (sans-I/O: tree, transactions,
watches) from a ``selectors`` loop in one background thread, to any number of
clients, and offers thread-safe in-process methods (``read``/``write``/``rm``/...)
that fire watches exactly like socket writes.

Semantics follow the C and OCaml daemons where they agree; see docs/xenstore.md.
Every socket client is treated as dom0 (relative paths resolve under
``/local/domain/0``) and permissions are stored and reported but not enforced.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import selectors
import signal
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from squeezed.sim.xenhost.xenstored.core import XenstoreCore
from squeezed.sim.xenhost.xenstored.tree import XsError, canonical
from squeezed.xen.xs_wire import Packet, Parser, ProtocolError, decode_value

log = logging.getLogger(__name__)

WriteHook = Callable[[str, "str | None"], None]


@dataclass(slots=True, eq=False)
class _Client:
    id: int
    sock: socket.socket
    parser: Parser = field(default_factory=Parser)
    out: bytearray = field(default_factory=bytearray)
    want_write: bool = False


class Xenstored:
    """Serves :class:`XenstoreCore` on ``socket_path``.

    ``stop()`` closes every connection (their watches and transactions die, as
    with a real daemon restart) but keeps the tree, so ``start()`` again models
    a xenstored restart on the same path.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, max_outbuf: int = 16 << 20) -> None:
        self.socket_path = os.fspath(socket_path)
        self._max_outbuf = max_outbuf  # a client this far behind is disconnected
        self._core = XenstoreCore()
        self._lock = threading.RLock()
        self._hooks: list[WriteHook] = []
        self._clients: dict[int, _Client] = {}
        self._dirty: set[_Client] = set()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._stopping = False
        # Requests served over the socket, by operation name (an instrument for
        # benchmarks: e.g. how many READs an idle daemon makes).
        self.requests: collections.Counter[str] = collections.Counter()

    # lifecycle

    def start(self) -> Xenstored:
        if self._thread is not None:
            raise RuntimeError("already started")
        try:
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                os.unlink(self.socket_path)  # stale socket from a previous run
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="sim-xenstored", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        if thread is threading.current_thread():
            raise RuntimeError("stop() called from the server thread (e.g. a write hook)")
        self._stopping = True
        self._wake()
        thread.join()
        self._thread = None

    def __enter__(self) -> Xenstored:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # in-process API (thread-safe; fires watches and hooks like socket requests)

    def read(self, path: str) -> str | None:
        with self._lock:
            node = self._core.tree.lookup(canonical(path))
            return None if node is None else decode_value(node.value)

    def exists(self, path: str) -> bool:
        with self._lock:
            return self._core.tree.lookup(canonical(path)) is not None

    def directory(self, path: str) -> list[str]:
        with self._lock:
            node = self._core.tree.lookup(canonical(path))
            return [] if node is None else list(node.children)

    def get_perms(self, path: str) -> list[str]:
        with self._lock:
            return list(self._core.tree.get_perms(canonical(path)))

    def write(self, path: str, value: str | bytes) -> None:
        v = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        self._mutate(lambda c: c.write(canonical(path), v))

    def mkdir(self, path: str) -> None:
        self._mutate(lambda c: c.mkdir(canonical(path)))

    def rm(self, path: str) -> None:
        """Remove a subtree; absent paths are ignored."""

        def do(c: XenstoreCore) -> None:
            try:
                c.rm(canonical(path))
            except XsError as e:
                if e.name != "ENOENT":
                    raise

        self._mutate(do)

    def set_perms(self, path: str, perms: list[str]) -> None:
        self._mutate(lambda c: c.set_perms(canonical(path), tuple(perms)))

    def introduce_domain(self, domid: int) -> None:
        """Fire ``@introduceDomain`` (as after XS_INTRODUCE of a new guest)."""
        self._mutate(lambda c: c.introduce(domid))

    def release_domain(self, domid: int) -> None:
        """Fire ``@releaseDomain`` (as when a guest has been destroyed)."""
        self._mutate(lambda c: c.release(domid))

    def on_write(self, callback: WriteHook) -> Callable[[], None]:
        """Call ``callback(path, value)`` after every committed WRITE, and with
        ``value=None`` after every RM, from whichever thread made the change (the
        server thread for socket clients): keep it short.  It may call back into
        this object.  Returns a function that removes the hook."""
        with self._lock:
            self._hooks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._hooks:
                    self._hooks.remove(callback)

        return remove

    def watch_count(self) -> int:
        with self._lock:
            return self._core.watch_count()

    # internals

    def _mutate(self, fn: Callable[[XenstoreCore], None]) -> None:
        with self._lock:
            try:
                fn(self._core)
            finally:
                out, changes = self._core.drain()
                self._queue(out)
                hooks = list(self._hooks)
        self._wake()
        self._run_hooks(hooks, changes)

    def _run_hooks(self, hooks: list[WriteHook], changes: list[tuple[str, str | None]]) -> None:
        for path, value in changes:
            for h in hooks:
                try:
                    h(path, value)
                except Exception:
                    log.exception("xenstored write hook failed for %s", path)

    def _queue(self, out: list[tuple[int, Packet]]) -> None:
        # Caller holds the lock.  Packets for connections that are gone are dropped.
        for cid, pkt in out:
            client = self._clients.get(cid)
            if client is not None:
                client.out += pkt.encode()
                self._dirty.add(client)

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # already pending, or shutting down: the loop will look anyway

    def _serve(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                for key, mask in sel.select():
                    tag = key.data
                    if tag == "listen":
                        self._accept()
                    elif tag == "wake":
                        try:
                            while self._wake_r is not None and self._wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        if mask & selectors.EVENT_READ:
                            self._on_readable(tag)
                        if mask & selectors.EVENT_WRITE and tag.id in self._clients:
                            self._flush(tag)
                with self._lock:
                    dirty, self._dirty = self._dirty, set()
                for client in dirty:
                    if client.id in self._clients:
                        self._flush(client)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        # Stop listening before dropping clients, or they would reconnect to a
        # listener that is about to vanish.
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        with self._lock:
            for client in list(self._clients.values()):
                self._close(client)
        assert self._sel is not None
        self._sel.close()
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None
        self._sel = None

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            with self._lock:
                client = _Client(self._core.connect(), sock)
                self._clients[client.id] = client
            self._sel.register(sock, selectors.EVENT_READ, client)

    def _close(self, client: _Client) -> None:
        with self._lock:
            self._clients.pop(client.id, None)
            self._core.disconnect(client.id)
            self._dirty.discard(client)
        assert self._sel is not None
        try:
            self._sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def _on_readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)
            return
        try:
            packets = client.parser.feed(data)
            bad = False
        except ProtocolError as e:
            log.warning("xenstored: dropping connection %d: %s", client.id, e)
            packets, bad = e.packets, True
        for pkt in packets:
            with self._lock:
                if client.id not in self._clients:
                    return
                op = pkt.op
                self.requests[op.name if op is not None else str(pkt.type)] += 1
                try:
                    self._core.handle(client.id, pkt)
                finally:
                    out, changes = self._core.drain()
                    self._queue(out)
                    hooks = list(self._hooks)
            self._run_hooks(hooks, changes)
        if bad:
            self._flush(client)
            self._close(client)

    def _flush(self, client: _Client) -> None:
        assert self._sel is not None
        with self._lock:
            data = bytes(client.out)
        sent = 0
        if data:
            try:
                sent = client.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(client)
                return
        with self._lock:
            del client.out[:sent]
            pending = len(client.out)
        if pending > self._max_outbuf:
            log.warning("xenstored: connection %d is %d bytes behind; dropping", client.id, pending)
            self._close(client)
            return
        want = pending > 0
        if want != client.want_write:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._sel.modify(client.sock, events, client)
            client.want_write = want


def main_xenstored(argv: list[str] | None = None) -> int:
    """``squeezed-sim xenstored --socket PATH``: serve in the foreground until a signal."""
    ap = argparse.ArgumentParser(prog="squeezed-sim xenstored", description="Simulated xenstored")
    ap.add_argument("--socket", required=True, help="Unix socket path to listen on")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        done.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    xs = Xenstored(args.socket).start()
    log.info("simulated xenstored listening on %s", args.socket)
    try:
        done.wait()
    finally:
        xs.stop()
    return 0
