"""How a lease is stored in the backend's `lease` bucket (etcd's schema for leases).

etcd keys the bucket by the lease id as 8 big-endian bytes and stores a
`leasepb.Lease{ID int64 = 1, TTL int64 = 2, RemainingTTL int64 = 3}` protobuf.
We keep the same layout, so the bucket reads the same way as etcd's and a
field added later (as etcd 3.6 added RemainingTTL) decodes without a format
change. The message is tiny, so it is encoded by hand here rather than adding
a generated module for it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from etcdpy.pb.wire import uvarint

_U64 = struct.Struct(">Q")
_MASK64 = (1 << 64) - 1
_VARINT = 0
_LEN = 2
_I64 = 1
_I32 = 5


@dataclass(frozen=True)
class LeaseRecord:
    """One row of the lease bucket: what survives a restart (expiry does not, as in etcd)."""

    id: int
    ttl: int
    remaining_ttl: int = 0


def lease_key(lease_id: int) -> bytes:
    """The bucket key: the int64 id as 8 big-endian bytes (negative ids wrap, as Go's uint64 cast)."""
    return _U64.pack(lease_id & _MASK64)


def encode(rec: LeaseRecord) -> bytes:
    """leasepb.Lease wire format; zero fields are omitted (proto3)."""
    out = bytearray()
    for field_no, value in ((1, rec.id), (2, rec.ttl), (3, rec.remaining_ttl)):
        if value:
            out += uvarint(field_no << 3 | _VARINT)
            out += uvarint(value & _MASK64)
    return bytes(out)


def decode(data: bytes) -> LeaseRecord:
    """Inverse of `encode`; unknown fields are skipped so newer records still load."""
    fields = {1: 0, 2: 0, 3: 0}
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field_no, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
            if field_no in fields:
                fields[field_no] = _signed(value)
        elif wire == _LEN:
            n, pos = _read_varint(data, pos)
            pos += n
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise ValueError(f"lease record: unsupported wire type {wire}")
    if pos != len(data):
        raise ValueError("lease record: truncated")
    return LeaseRecord(id=fields[1], ttl=fields[2], remaining_ttl=fields[3])


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("lease record: bad varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value & _MASK64, pos


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value
