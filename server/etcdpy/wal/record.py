"""On-disk record format of the WAL.

Layout of one record (little endian), always starting on a 16-byte boundary::

    0   u32  payload length
    4   u8   record type (RecordType)
    5   u8   padding length (0..15)
    6   u16  reserved, 0
    8   u32  header CRC   = crc32(bytes 0..8)
    12  u32  record CRC   = crc32(bytes 0..8 + payload, seed = previous record CRC)
    16  payload
        padding (zeros) up to the next 16-byte boundary

Why this shape:

* The record CRC chains across records (and, through CRC records, across
  segments) like etcd's, so a record from another WAL, a reordered or foreign
  segment, or a dropped record breaks the chain.
* The separate header CRC protects the length: a flipped length bit in the middle
  of the log is reported as corruption instead of looking like a record that
  runs past EOF (which we would otherwise "repair" by truncating good data).
* 16-byte alignment keeps a header inside one 512-byte sector, so a torn write
  leaves a header either complete or all zeros, never half of each.

Payloads: ENTRY ``<QQB`` (term, index, type) + data; STATE ``<QQQ`` (term,
vote, commit); SNAPSHOT ``<QQ`` (index, term); CRC ``<I`` (running CRC at the end
of the previous segment); METADATA opaque bytes.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from etcdpy.raft.types import Entry, EntryType, HardState

from .errors import WalCorruptError

HEADER_SIZE = 16
ALIGN = 16
SECTOR_SIZE = 512

_H8 = struct.Struct("<IBBH")
_CRCS = struct.Struct("<II")
_HEADER = struct.Struct("<IBBHII")
_ENTRY = struct.Struct("<QQB")
_STATE = struct.Struct("<QQQ")
_SNAP = struct.Struct("<QQ")
_U32 = struct.Struct("<I")
_ZEROS = tuple(bytes(n) for n in range(ALIGN))
_ZERO_HEADER = bytes(HEADER_SIZE)
_ENTRY_TYPES = {int(t): t for t in EntryType}


class RecordType(enum.IntEnum):
    """Record kinds; 0 is never used so a zero-filled header is recognisable."""

    METADATA = 1
    ENTRY = 2
    STATE = 3
    CRC = 4
    SNAPSHOT = 5


_KNOWN_TYPES = frozenset(int(t) for t in RecordType)


@dataclass(frozen=True, slots=True)
class WalSnapshot:
    """A snapshot marker: the log may be replayed from `index` (whose term is `term`)."""

    index: int = 0
    term: int = 0


def append_record(parts: list[bytes], rtype: int, payload: bytes, prev_crc: int, extra: bytes = b"") -> int:
    """Append the byte pieces of one record to `parts`; return the record's chained CRC.

    `extra` is concatenated after `payload` on disk; it lets entries avoid copying
    their data into a temporary payload buffer (the batch is joined once later).
    """
    n = len(payload) + len(extra)
    pad = -(HEADER_SIZE + n) % ALIGN
    h8 = _H8.pack(n, rtype, pad, 0)
    crc = zlib.crc32(payload, zlib.crc32(h8, prev_crc))
    if extra:
        crc = zlib.crc32(extra, crc)
    parts.append(h8)
    parts.append(_CRCS.pack(zlib.crc32(h8), crc))
    parts.append(payload)
    if extra:
        parts.append(extra)
    if pad:
        parts.append(_ZEROS[pad])
    return crc


def append_entry(parts: list[bytes], entry: Entry, prev_crc: int) -> int:
    """Encode a raft entry (fixed struct header + raw data)."""
    head = _ENTRY.pack(entry.term, entry.index, entry.type)
    return append_record(parts, RecordType.ENTRY, head, prev_crc, entry.data)


def encode_state(state: HardState) -> bytes:
    return _STATE.pack(state.term, state.vote, state.commit)


def encode_snapshot(snap: WalSnapshot) -> bytes:
    return _SNAP.pack(snap.index, snap.term)


def encode_crc(value: int) -> bytes:
    return _U32.pack(value)


def decode_entry(buf: bytes, start: int, end: int, path: str) -> Entry:
    if end - start < _ENTRY.size:
        raise WalCorruptError("entry record too short", path, start)
    term, index, etype = _ENTRY.unpack_from(buf, start)
    kind = _ENTRY_TYPES.get(etype)
    if kind is None:
        raise WalCorruptError(f"unknown entry type {etype}", path, start)
    return Entry(term=term, index=index, type=kind, data=buf[start + _ENTRY.size : end])


def decode_state(buf: bytes, start: int, end: int, path: str) -> HardState:
    if end - start != _STATE.size:
        raise WalCorruptError("bad hard state record size", path, start)
    term, vote, commit = _STATE.unpack_from(buf, start)
    return HardState(term=term, vote=vote, commit=commit)


def decode_snapshot(buf: bytes, start: int, end: int, path: str) -> WalSnapshot:
    if end - start != _SNAP.size:
        raise WalCorruptError("bad snapshot record size", path, start)
    index, term = _SNAP.unpack_from(buf, start)
    return WalSnapshot(index=index, term=term)


@dataclass(slots=True)
class SegmentScan:
    """Result of scanning one segment file.

    `records` holds (type, payload start, payload end) offsets into the buffer;
    `end` is the offset just past the last valid record; `crc` the running CRC
    there; `torn` tells that bytes after `end` are a torn tail to be cut off
    (an all-zero preallocated tail is a clean end, not torn).
    """

    records: list[tuple[int, int, int]]
    end: int
    crc: int
    torn: bool


def scan_segment(buf: bytes, prev_crc: int | None, *, last: bool, path: str) -> SegmentScan:
    """Validate every record of one segment and locate its payloads.

    `prev_crc` is the running CRC at the end of the previous segment, or None when
    this is the first segment read (the chain is then seeded by this segment's
    CRC record). Only in the `last` segment may a damaged record be a torn write;
    anywhere else, or when the damage does not look torn, it is a hard error.
    """
    size = len(buf)
    records: list[tuple[int, int, int]] = []
    crc = prev_crc if prev_crc is not None else 0
    off = 0
    unpack = _HEADER.unpack_from
    crc32 = zlib.crc32
    view = memoryview(buf)
    while off < size:
        if size - off < HEADER_SIZE:
            return _torn_or_corrupt(records, off, crc, last, path, "truncated record header")
        length, rtype, pad, _rsv, hcrc, rcrc = unpack(buf, off)
        h8 = buf[off : off + 8]
        if crc32(h8) != hcrc:
            if buf[off : off + HEADER_SIZE] == _ZERO_HEADER:
                if buf.count(0, off) == size - off:
                    # Preallocated space: the clean end of what was written. Losing
                    # records to zeros here is caught by the next segment's CRC record.
                    return SegmentScan(records, off, crc, False)
                # Zeros, then data: a multi-sector write whose first sector never landed.
                return _torn_or_corrupt(records, off, crc, last, path, "zero header before data")
            raise WalCorruptError("record header CRC mismatch", path, off)
        start = off + HEADER_SIZE
        end = start + length
        nxt = end + pad
        if nxt > size:
            return _torn_or_corrupt(records, off, crc, last, path, "record runs past end of file")
        if rtype not in _KNOWN_TYPES or pad >= ALIGN or (HEADER_SIZE + length + pad) % ALIGN:
            raise WalCorruptError(f"malformed record header (type {rtype})", path, off)
        if rtype == RecordType.CRC:
            crc = _chain_seed(buf, start, end, off, prev_crc, path)
        elif not records:
            raise WalCorruptError("segment does not start with a CRC record", path, off)
        if crc32(view[start:end], crc32(h8, crc)) != rcrc:
            if last and _has_zero_sector(buf, start, end):
                return SegmentScan(records, off, crc, True)
            raise WalCorruptError("record CRC mismatch", path, off)
        if pad and buf[end:nxt] != _ZEROS[pad]:
            raise WalCorruptError("non-zero record padding", path, end)
        crc = rcrc
        records.append((rtype, start, end))
        off = nxt
    return SegmentScan(records, off, crc, False)


def _chain_seed(buf: bytes, start: int, end: int, off: int, expected: int | None, path: str) -> int:
    """Read a CRC record's carried value and check it continues the chain."""
    if off != 0:
        raise WalCorruptError("CRC record in the middle of a segment", path, off)
    if end - start != _U32.size:
        raise WalCorruptError("bad CRC record size", path, off)
    (value,) = _U32.unpack_from(buf, start)
    if expected is not None and value != expected:
        raise WalCorruptError(
            f"CRC chain broken between segments (carried {value:#010x}, expected {expected:#010x})", path, off
        )
    return value


def _torn_or_corrupt(
    records: list[tuple[int, int, int]], off: int, crc: int, last: bool, path: str, why: str
) -> SegmentScan:
    if not last:
        raise WalCorruptError(f"{why} in a non-final segment", path, off)
    return SegmentScan(records, off, crc, True)


def _has_zero_sector(buf: bytes, start: int, end: int) -> bool:
    """Whether a payload has a sector-aligned chunk of zeros (etcd's torn-write test).

    A write interrupted by a crash typically leaves whole sectors unwritten
    (zeros), while a bit flip does not; only the former is repaired.
    """
    off = start
    while off < end:
        chunk_end = min(end, (off // SECTOR_SIZE + 1) * SECTOR_SIZE)
        if buf.count(0, off, chunk_end) == chunk_end - off:
            return True
        off = chunk_end
    return False
