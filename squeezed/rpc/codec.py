"""A request body in, a reply body out: a wire codec around the dispatcher, sans I/O.

Every malformed request, failing call or unencodable result becomes a well-formed
Internal_error reply in the codec's dialect. `handle_undoable` also gives back how to
undo what the call made (a reservation), for a transport that cannot deliver the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from squeezed.errors import InternalError, MemoryInterfaceError
from squeezed.rpc import CodecError, jsonrpc, xmlrpc
from squeezed.rpc.dispatch import Dispatcher

log = logging.getLogger("squeezed.rpc")

Undo = Callable[[], None] | None  # gives back what a call made, if its reply is lost


class XmlCodec:
    """The ocaml-rpc XML-RPC dialect (xenopsd's socket)."""

    content_type = "text/xml"

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def failure(self, message: str, rid: Any = None) -> bytes:
        return xmlrpc.encode_failure(InternalError(message).wire())

    def handle(self, body: bytes) -> bytes:
        return self.handle_undoable(body)[0]

    def handle_undoable(self, body: bytes) -> tuple[bytes, Undo]:
        try:
            method, params = xmlrpc.parse_call(body)
        except CodecError as e:
            log.info("malformed XML-RPC request: %s", e)
            return self.failure(f"malformed request: {e}"), None
        undo: Undo = None
        try:
            result, undo = self.dispatcher.call_undoable(method, params)
            return xmlrpc.encode_success(result), undo
        except MemoryInterfaceError as e:
            log.debug("%s -> %s", method, e.wire())
            try:
                return xmlrpc.encode_failure(e.wire()), None
            except CodecError as ce:
                return self.failure(f"cannot encode error {e.name}: {ce}"), None
        except CodecError as e:
            if undo is not None:
                undo()
            return self.failure(f"cannot encode result: {e}"), None


class JsonCodec:
    """JSON-RPC (json-socket, and the message-switch queue's payloads)."""

    content_type = "application/json"

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def failure(self, message: str, rid: Any = None) -> bytes:
        return jsonrpc.encode_failure(InternalError(message).wire(), rid)

    def handle(self, body: bytes) -> bytes:
        return self.handle_undoable(body)[0]

    def handle_undoable(self, body: bytes) -> tuple[bytes, Undo]:
        try:
            method, params, rid = jsonrpc.parse_call(body)
        except CodecError as e:
            log.info("malformed JSON-RPC request: %s", e)
            return self.failure(f"malformed request: {e}"), None
        undo: Undo = None
        try:
            result, undo = self.dispatcher.call_undoable(method, params)
            return jsonrpc.encode_success(result, rid), undo
        except MemoryInterfaceError as e:
            log.debug("%s -> %s", method, e.wire())
            try:
                return jsonrpc.encode_failure(e.wire(), rid), None
            except CodecError as ce:
                return self.failure(f"cannot encode error {e.name}: {ce}", rid), None
        except CodecError as e:
            if undo is not None:
                undo()
            return self.failure(f"cannot encode result: {e}", rid), None
