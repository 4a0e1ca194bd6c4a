"""A client of the Memory interface over its Unix sockets.

Like xenopsd (xapi-idl's Xcp_client.http_rpc) it opens one connection per
call and POSTs the request with a Content-Length; `keep_alive=True` reuses
one connection instead.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
from typing import Any

from squeezed.errors import MemoryInterfaceError, from_wire
from squeezed.rpc import CodecError, jsonrpc, xmlrpc

DIALECTS = ("xmlrpc", "json")


class ConnectionFailed(OSError):
    """The daemon's socket is absent, refuses connections, or hung up."""

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"cannot talk to {socket_path}: {reason}")
        self.socket_path = socket_path
        self.reason = reason


class NoReply(ConnectionFailed):
    """The request was sent but no reply came in time: it may still complete."""


class ProtocolError(Exception):
    """The reply was not a well-formed RPC reply."""


class _Stale(Exception):
    """The connection closed before any byte of the reply."""


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle kept-alive socket the server has hung up (readable, at EOF)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _read_only(method: str) -> bool:
    """Calls that change nothing, so a blind retry is harmless."""
    name = method.rsplit(".", 1)[-1]
    return name.startswith(("get_", "query")) or name == "get_state"


class MemoryClient:
    def __init__(
        self,
        socket_path: str,
        dialect: str = "xmlrpc",
        *,
        timeout: float | None = None,
        keep_alive: bool = False,
        user_agent: str = "squeezed-client",
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}")
        self.socket_path = socket_path
        self.dialect = dialect
        self.timeout = timeout
        self.keep_alive = keep_alive
        self.user_agent = user_agent
        self._sock: socket.socket | None = None
        self._next_id = 0

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.socket_path)
        except OSError as e:
            s.close()
            raise ConnectionFailed(self.socket_path, e.strerror or str(e)) from e
        return s

    def encode(self, method: str, params: list[Any]) -> bytes:
        """The request body for a call."""
        if self.dialect == "xmlrpc":
            return xmlrpc.encode_call(method, params)
        self._next_id += 1
        return jsonrpc.encode_call(method, params, self._next_id)

    def request_bytes(self, body: bytes) -> bytes:
        ctype = "text/xml" if self.dialect == "xmlrpc" else "application/json"
        head = (
            f"POST {self.socket_path} HTTP/1.1\r\n"
            "Host: localhost\r\n"
            f"User-Agent: {self.user_agent}\r\n"
            f"Content-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n"
            + ("" if self.keep_alive else "Connection: close\r\n")
            + "\r\n"
        )
        return head.encode("ascii", "replace") + body

    def call_raw(self, method: str, *params: Any) -> tuple[str, Any]:
        """("Success", value) or ("Failure", error wire form)."""
        request = self.request_bytes(self.encode(method, list(params)))
        reused, self._sock = self._sock, None
        if reused is not None and _closed_by_peer(reused):
            reused.close()  # closed while idle: nothing was sent, just reconnect
            reused = None
        if reused is not None:
            try:
                return self._exchange(reused, request)
            except _Stale as e:
                # The server closed our idle connection, most likely before it
                # read the request; retry only what is safe to run twice.
                if not _read_only(method):
                    raise ConnectionFailed(
                        self.socket_path,
                        "kept-alive connection closed without a reply; not retried "
                        "(the call may have been applied)",
                    ) from e
        try:
            return self._exchange(self._connect(), request)
        except _Stale as e:
            raise ConnectionFailed(self.socket_path, "connection closed without a reply") from e

    def _exchange(self, sock: socket.socket, request: bytes) -> tuple[str, Any]:
        try:
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may have replied (e.g. busy) and hung up; read it
            resp = http.client.HTTPResponse(sock)
            try:
                resp.begin()
            except (http.client.RemoteDisconnected, ConnectionResetError) as e:
                raise _Stale() from e  # not a byte of reply
            try:
                data = resp.read()
            except (http.client.HTTPException, ConnectionError) as e:
                raise ConnectionFailed(self.socket_path, f"broken HTTP reply ({e!r})") from e
        except http.client.HTTPException as e:
            sock.close()
            raise ConnectionFailed(self.socket_path, f"no valid HTTP reply ({e!r})") from e
        except TimeoutError as e:
            sock.close()
            raise NoReply(self.socket_path, "timed out waiting for a reply") from e
        except BaseException:
            sock.close()
            raise
        if self.keep_alive and not resp.will_close:
            self._sock = sock
        else:
            sock.close()
        try:
            if self.dialect == "xmlrpc":
                return xmlrpc.parse_response(data)
            return jsonrpc.parse_response(data)
        except CodecError as e:
            raise ProtocolError(f"HTTP {resp.status}: malformed reply: {e}") from None

    def call(self, method: str, *params: Any) -> Any:
        """The wire result of a call; raises the squeezed.errors exception the
        server replied with, ConnectionFailed or ProtocolError."""
        status, value = self.call_raw(method, *params)
        if status == "Success":
            return value
        err: MemoryInterfaceError = from_wire(value)
        raise err
