"""An InternalRaftRequest framed around a client request's own encoding.

Why: a Put, DeleteRange or Txn arrives encoded, is decoded to be checked, and then has to
be logged as an InternalRaftRequest holding it. Building that message copies the decoded
request into it and encodes it again: about 2 us of the event loop per Txn (0.8 us framed
as here, microbenchmark), on the thread every request waits for. An embedded message is
on the wire just its field's tag, its length and its own bytes, so the entry can be put
together from the bytes the client sent, with a request header encoded beside them, and
every member decodes exactly what the client sent. Fields the client sent that etcdpy does
not know stay in the entry, as they did in the re-encoded copy (the protobuf runtime keeps
unknown fields), and are ignored by every member alike.

The request field comes before the header; a protobuf parser takes fields in any order,
and the result equals the message built field by field (checked in the tests).
"""

from __future__ import annotations

from etcdpy.pb import raft_internal_pb2
from etcdpy.pb.wire import uvarint

_IRR = raft_internal_pb2.InternalRaftRequest.DESCRIPTOR.fields_by_name


def _tag(field: str) -> bytes:
    """The key of a length-delimited field of InternalRaftRequest."""
    return uvarint(_IRR[field].number << 3 | 2)


PUT = _tag("put")
DELETE_RANGE = _tag("delete_range")
TXN = _tag("txn")
_HEADER = _tag("header")
_ID = uvarint(raft_internal_pb2.RequestHeader.DESCRIPTOR.fields_by_name["ID"].number << 3)


def frame(tag: bytes, wire: bytes, header: bytes) -> bytes:
    """The entry: the request's own bytes as field `tag`, and the encoded RequestHeader."""
    return b"".join((tag, uvarint(len(wire)), wire, _HEADER, uvarint(len(header)), header))


class HeaderEncoder:
    """RequestHeader{ID} encoded for consecutive ids at the cost of a byte.

    Ids from `IdGenerator` count up by one, so the varint of all but their low seven bits
    changes once every 128 ids: that part is kept, and the first byte is made per id.
    """

    def __init__(self) -> None:
        self._high = -1
        self._rest = b""

    def encode(self, req_id: int) -> bytes:
        high = req_id >> 7
        if high != self._high:
            self._high = high
            self._rest = uvarint(high) if high else b""
        if not high:
            return _ID + bytes((req_id,)) if req_id else b""  # proto3 leaves a zero out
        return _ID + bytes(((req_id & 0x7F) | 0x80,)) + self._rest


def header_with_caller(req_id: int, username: str, auth_revision: int) -> bytes:
    """RequestHeader for a caller known to auth (the uncommon case: encoded the plain way)."""
    return raft_internal_pb2.RequestHeader(
        ID=req_id, username=username, auth_revision=auth_revision
    ).SerializeToString()
