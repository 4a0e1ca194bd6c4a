"""Sans-I/O codec for the xenstore wire protocol (``xen/io/xs_wire.h``).

Every message is a 16-byte little-endian header ``struct xsd_sockmsg``
(type, req_id, tx_id, len) followed by ``len`` bytes of payload, at most
``XENSTORE_PAYLOAD_MAX``.  Payloads are mostly NUL-terminated strings; the
exceptions (READ replies, the value part of WRITE requests) carry raw bytes.

Nothing here touches a socket: the client (``squeezed.xen.xenstore``) and the
simulated daemon (``squeezed.sim.xenhost.xenstored``) share this module, so the two ends
cannot disagree about framing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class Op(IntEnum):
    """``enum xsd_sockmsg_type``; numbers checked against xs_wire.h (Xen 4.17)."""

    CONTROL = 0  # alias XS_DEBUG
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT, removed upstream: it stays unassigned.
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


DEBUG = Op.CONTROL
INVALID_TYPE = 0xFFFF  # XS_INVALID: guaranteed never to be a valid type

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size  # 16
PAYLOAD_MAX = 4096  # XENSTORE_PAYLOAD_MAX
ABS_PATH_MAX = 3072  # XENSTORE_ABS_PATH_MAX
REL_PATH_MAX = 2048  # XENSTORE_REL_PATH_MAX

# The xsd_errors table, in header order (the order is ABI for old clients).
ERRORS: tuple[str, ...] = (
    "EINVAL",
    "EACCES",
    "EEXIST",
    "EISDIR",
    "ENOENT",
    "ENOMEM",
    "ENOSPC",
    "EIO",
    "ENOTEMPTY",
    "ENOSYS",
    "EROFS",
    "EBUSY",
    "EAGAIN",
    "EISCONN",
    "E2BIG",
    "EPERM",
)

# Watch event payload: path then token (enum xs_watch_type).
WATCH_PATH = 0
WATCH_TOKEN = 1

OK = b"OK\0"


class ProtocolError(ValueError):
    """The byte stream cannot be a valid xenstore message sequence.

    ``packets`` holds the complete packets that preceded the fault in the
    same :meth:`Parser.feed` call, so a caller may still act on them.
    """

    def __init__(self, message: str, packets: list[Packet] | None = None) -> None:
        super().__init__(message)
        self.packets: list[Packet] = packets or []


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded message.  ``type`` stays an int so unknown types survive parsing."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    @property
    def op(self) -> Op | None:
        try:
            return Op(self.type)
        except ValueError:
            return None

    def strings(self) -> list[str]:
        return split_strings(self.payload)

    def error_name(self) -> str | None:
        """The errno name of an ERROR reply, else None."""
        if self.type != Op.ERROR:
            return None
        return self.payload.split(b"\0", 1)[0].decode("ascii", "replace")

    def encode(self) -> bytes:
        return encode(self.type, self.req_id, self.tx_id, self.payload)


def encode(type_: int, req_id: int, tx_id: int, payload: bytes = b"") -> bytes:
    """Frame one message; refuses payloads the peer would have to reject."""
    if len(payload) > PAYLOAD_MAX:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {PAYLOAD_MAX}")
    return HEADER.pack(int(type_), req_id & 0xFFFFFFFF, tx_id & 0xFFFFFFFF, len(payload)) + payload


# --- payload helpers -----------------------------------------------------------------------


def _b(s: str | bytes) -> bytes:
    # surrogateescape lets undecodable bytes read from xenstore be written back unchanged.
    return s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")


def join_strings(parts: Iterable[str | bytes]) -> bytes:
    """Each part NUL-terminated: the form of paths, tokens and directory listings."""
    return b"".join(_b(p) + b"\0" for p in parts)


def split_strings(payload: bytes) -> list[str]:
    """Inverse of :func:`join_strings`; a missing final NUL is tolerated."""
    if not payload:
        return []
    if payload.endswith(b"\0"):
        payload = payload[:-1]
    return [p.decode("utf-8", "surrogateescape") for p in payload.split(b"\0")]


def decode_value(payload: bytes) -> str:
    return payload.decode("utf-8", "surrogateescape")


def write_payload(path: str, value: str | bytes) -> bytes:
    """WRITE: NUL-terminated path then the raw value, with no terminator."""
    return _b(path) + b"\0" + _b(value)


def split_write(payload: bytes) -> tuple[str, bytes]:
    path, sep, value = payload.partition(b"\0")
    if not sep:
        raise ProtocolError("WRITE payload has no NUL after the path")
    return path.decode("utf-8", "surrogateescape"), value


def error_payload(name: str) -> bytes:
    return name.encode("ascii") + b"\0"


def error_packet(req_id: int, tx_id: int, name: str) -> Packet:
    return Packet(Op.ERROR, req_id, tx_id, error_payload(name))


def watch_event(path: str, token: str) -> Packet:
    """WATCH_EVENT messages are unsolicited: req_id and tx_id are 0."""
    return Packet(Op.WATCH_EVENT, 0, 0, join_strings((path, token)))


# --- incremental parser --------------------------------------------------------------------


class Parser:
    """Reassembles packets from arbitrary chunks of a byte stream.

    After a :class:`ProtocolError` the stream cannot be resynchronised (there
    are no frame markers), so the parser stays failed: the owner must drop the
    connection.
    """

    def __init__(self, max_payload: int = PAYLOAD_MAX) -> None:
        self._buf = bytearray()
        self._max = max_payload
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        """Append ``data``; return every packet it completes, in stream order."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        out: list[Packet] = []
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            type_, req_id, tx_id, length = HEADER.unpack_from(buf, pos)
            if length > self._max:
                del buf[:pos]
                msg = f"message length {length} exceeds maximum {self._max}"
                self._error = ProtocolError(msg)
                raise ProtocolError(msg, out)
            end = pos + HEADER_SIZE + length
            if len(buf) < end:
                break
            out.append(Packet(type_, req_id, tx_id, bytes(buf[pos + HEADER_SIZE : end])))
            pos = end
        # Compact once per feed, not per packet: keeps byte-by-byte feeding linear.
        del buf[:pos]
        return out
