"""Revisions and their on-disk encoding (etcd's `revision.go`).

A revision is (main, sub): `main` is the store revision of a write transaction,
`sub` numbers the changes inside that transaction. The key bucket is keyed by
revision bytes so that RocksDB's byte order *is* revision order, which lets
compaction, history reads and index rebuilds scan ranges of revisions.

Encoding (identical to etcd's): 8-byte big-endian main, the byte ``_``, 8-byte
big-endian sub = 17 bytes; a tombstone (a delete) appends the mark byte ``t``
for 18 bytes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

REV_BYTES_LEN = 17
MARKED_REV_BYTES_LEN = REV_BYTES_LEN + 1
TOMBSTONE_MARK = b"t"

_REV = struct.Struct(">QBQ")
_SEP = 0x5F  # "_"


class Revision(NamedTuple):
    """A (main, sub) revision; tuple ordering equals etcd's revision ordering."""

    main: int
    sub: int = 0

    def to_bytes(self, tombstone: bool = False) -> bytes:
        """Encode as the key bucket key (17 bytes, 18 with the tombstone mark)."""
        return rev_to_bytes(self.main, self.sub, tombstone)

    @classmethod
    def from_bytes(cls, b: bytes) -> Revision:
        """Decode 17- or 18-byte revision bytes (the tombstone mark is ignored)."""
        return bytes_to_rev(b)


def rev_to_bytes(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    """Encode without building a Revision: this sits on the put hot path."""
    b = _REV.pack(main, _SEP, sub)
    return b + TOMBSTONE_MARK if tombstone else b


def bytes_to_rev(b: bytes) -> Revision:
    """Decode revision bytes; raises ValueError on a malformed key."""
    if len(b) not in (REV_BYTES_LEN, MARKED_REV_BYTES_LEN):
        raise ValueError(f"bad revision bytes length {len(b)}")
    main, sep, sub = _REV.unpack_from(b)
    if sep != _SEP:
        raise ValueError("bad revision bytes separator")
    return Revision(main, sub)


def is_tombstone(b: bytes) -> bool:
    """True for 18-byte revision bytes carrying the tombstone mark."""
    return len(b) == MARKED_REV_BYTES_LEN and b[REV_BYTES_LEN] == 0x74
