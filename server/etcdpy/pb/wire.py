"""Protobuf wire-format pieces for messages etcdpy encodes by hand.

Why by hand at all: some answers are mostly bytes that are already encoded (stored
KeyValues, watch events, raft entries), and building a message object around them only
to encode it again costs more than the rest of the request.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1
_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def uvarint(v: int) -> bytes:
    """Base-128 varint of an integer field; a negative int64 takes ten bytes, as protobuf writes it."""
    if 0 <= v < 0x80:
        return _ONE_BYTE[v]
    if 0 < v < 0x4000:
        return bytes(((v & 0x7F) | 0x80, v >> 7))
    v &= _MASK64
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    """One length-delimited field: tag, length, payload."""
    return b"".join((tag, uvarint(len(payload)), payload))


__all__ = ["length_delimited", "uvarint"]
