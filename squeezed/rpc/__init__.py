"""The Memory interface on the wire: sans-I/O codecs (xmlrpc, jsonrpc), the
IDL-driven dispatcher, the Unix-socket server shell and the client."""

from __future__ import annotations


class CodecError(ValueError):
    """A message could not be decoded (or a value cannot be encoded).

    The codecs raise nothing else on any input; servers turn it into a
    well-formed Internal_error reply."""
