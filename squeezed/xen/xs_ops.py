"""The xenstore operations (read, write, mkdir, rm, directory, permissions)
in terms of one request function, shared by the client and its transactions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from squeezed.xen.xs_link import XenstoreError
from squeezed.xen.xs_wire import (
    Op,
    Packet,
    decode_value,
    join_strings,
    split_strings,
    write_payload,
)

if TYPE_CHECKING:
    from squeezed.xen.xs_client import XenstoreClient


class Ops:
    """read/write/... in terms of ``_call``; shared by the client and transactions."""

    def _call(self, op: Op, payload: bytes, path: str | None) -> Packet:
        raise NotImplementedError

    def read(self, path: str) -> str | None:
        """The node's value, or None if it does not exist."""
        try:
            return decode_value(self._call(Op.READ, join_strings([path]), path).payload)
        except XenstoreError as e:
            if e.errno_name == "ENOENT":
                return None
            raise

    def exists(self, path: str) -> bool:
        return self.read(path) is not None

    def write(self, path: str, value: str | bytes) -> None:
        """Set a node's value, creating it and any missing ancestors."""
        self._call(Op.WRITE, write_payload(path, value), path)

    def mkdir(self, path: str) -> None:
        """Create a node (and ancestors) with an empty value; existing nodes are kept."""
        self._call(Op.MKDIR, join_strings([path]), path)

    def rm(self, path: str) -> None:
        """Remove a node and its whole subtree; an absent node is not an error."""
        try:
            self._call(Op.RM, join_strings([path]), path)
        except XenstoreError as e:
            if e.errno_name != "ENOENT":
                raise

    def directory(self, path: str) -> list[str]:
        """The names of a node's children ([] if the node does not exist)."""
        try:
            try:
                return split_strings(self._call(Op.DIRECTORY, join_strings([path]), path).payload)
            except XenstoreError as e:
                if e.errno_name != "E2BIG":
                    raise
            return self._directory_part(path)
        except XenstoreError as e:
            if e.errno_name == "ENOENT":
                return []
            raise

    def _directory_part(self, path: str) -> list[str]:
        # Listing too big for one reply: page through it by byte offset, restarting if
        # the directory's generation changes between pages (as libxenstore does).
        for _ in range(16):
            chunks: list[bytes] = []
            gen: bytes | None = None
            offset = 0
            while True:
                reply = self._call(
                    Op.DIRECTORY_PART, join_strings([path, str(offset)]), path
                ).payload
                g, _, chunk = reply.partition(b"\0")
                if gen is None:
                    gen = g
                elif g != gen:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                if len(chunk) <= 1 or chunk.endswith(b"\0\0"):
                    return split_strings(b"".join(chunks)[:-1])
        raise XenstoreError("EAGAIN", path, "directory kept changing while paging")

    def get_perms(self, path: str) -> list[str]:
        """Permission strings, owner first, e.g. ["n0", "r3"]."""
        return split_strings(self._call(Op.GET_PERMS, join_strings([path]), path).payload)

    def set_perms(self, path: str, perms: list[str]) -> None:
        self._call(Op.SET_PERMS, join_strings([path, *perms]), path)


class Transaction(Ops):
    """Handle passed to the function given to :meth:`XenstoreClient.transaction`."""

    def __init__(self, client: XenstoreClient, tx_id: int, epoch: int) -> None:
        self._client = client
        self.tx_id = tx_id
        self._epoch = epoch

    def _call(self, op: Op, payload: bytes, path: str | None) -> Packet:
        return self._client._request(op, payload, path, tx_id=self.tx_id, epoch=self._epoch)


