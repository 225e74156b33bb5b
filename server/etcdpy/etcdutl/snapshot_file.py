"""Reading snapshot files offline: full verification, status numbers, and the data to restore.

A snapshot file is, as with etcd, a bbolt database with etcd's buckets
(`etcdpy.mvcc.etcd_db`), followed by the sha256 of the database when it was
saved from the Maintenance.Snapshot stream (`etcdctl snapshot save`,
`etcdpy snapshot save`). etcd recognises that trailer by "size % 512 == 32"
(a bbolt file is whole pages). `inspect` checks the trailer, then every page of
the database, so a truncated or damaged file is refused with a one-line
`SnapshotFileError` before anything is built from it. The status numbers are
etcd's: a crc32 (Castagnoli) over every bucket name and every key and value in
it, the main revision of the last key of the `key` bucket, the number of
entries in all buckets, and the database size (bbolt's tx.Size()).

Files in etcdpy's earlier own format (written before etcdpy streamed bbolt) are
still read; that format (see `etcdpy.mvcc.backend`) is:

    header | records | terminator | sha256 of all that      (the backend stream)
    [zero bytes up to a multiple of 512]                     (added by the Snapshot RPC)
    [sha256 of everything before it]                         (the RPC's last message)

The RPC pads because etcdctl 3.4 recognises the checksum it appends by
"size % 512 == 32" (etcd's bbolt files are page-aligned). `inspect` reads the
whole file once and checks every part — record framing, the inner sha256, that
padding is zero, the outer sha256 — so a truncated or damaged file is refused
before anything is built from it, with a one-line `SnapshotFileError`.

The status numbers follow etcd's `snapshot status`: a crc32 over every bucket
name and every key and value in it (etcd uses Castagnoli, etcdpy zlib's IEEE
crc32), the revision of the last entry of the `key` bucket, the number of
entries in all buckets, and the size of the data without the etcdctl checksum.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from etcdpy.mvcc.backend import BUCKET_KEY, SNAPSHOT_MAGIC, SNAPSHOT_VERSION
from etcdpy.mvcc.bbolt import BoltError, BoltReader
from etcdpy.mvcc.revision import bytes_to_rev

try:
    from crc32c import crc32c as _crc32c_c
except ImportError:  # pragma: no cover - the dependency is declared; this keeps status usable without it
    _crc32c_c = None  # type: ignore[assignment]

_HEADER = struct.Struct(">8sII")
_REC = struct.Struct(">II")
_END_MARK = 0xFFFFFFFF
SHA_LEN = 32
ALIGN = 512
_READ_BLOCK = 1 << 20


class SnapshotFileError(Exception):
    """A snapshot file that cannot be used; the message is one line meant for the operator."""


@dataclass(frozen=True)
class SnapshotInfo:
    path: str
    file_size: int
    data_len: int  # the backend stream: header, records, terminator and its sha256
    has_checksum: bool  # whether etcdctl's trailing sha256 is present (it was verified)
    hash: int
    revision: int
    total_keys: int
    format: str = "etcdpy"  # "bbolt" (etcd's, and etcdpy's since it streams bbolt) or "etcdpy" (legacy)
    db_size: int = 0  # bbolt: pages in use × page size

    @property
    def total_size(self) -> int:
        """What `snapshot status` reports: bbolt's tx.Size(), or the legacy file without checksum."""
        if self.format == "bbolt":
            return self.db_size
        return self.file_size - (SHA_LEN if self.has_checksum else 0)


class _Reader:
    """Exact reads over a file, feeding two sha256s: the inner stream's and the whole file's."""

    def __init__(self, f: BinaryIO, path: str, size: int) -> None:
        self._f = f
        self.path = path
        self.size = size
        self.pos = 0
        self.inner = hashlib.sha256()
        self.outer = hashlib.sha256()

    def read(self, n: int, inner: bool = True) -> bytes:
        if n > self.size - self.pos:
            raise SnapshotFileError(f"snapshot file {self.path} is truncated (at byte {self.pos} of {self.size})")
        data = self._f.read(n)
        if len(data) != n:
            raise SnapshotFileError(f"snapshot file {self.path} is truncated (at byte {self.pos} of {self.size})")
        self.pos += n
        if inner:
            self.inner.update(data)
        self.outer.update(data)
        return data


def inspect(path: str, verify_checksum: bool = True, require_checksum: bool = False) -> SnapshotInfo:
    """Read and verify a snapshot file completely; raise SnapshotFileError if anything is wrong.

    `verify_checksum=False` (etcd's --skip-hash-check) still checks the framing and the
    backend stream's own sha256, but accepts a file whose etcdctl checksum does not match.
    `require_checksum` (restore without --skip-hash-check, as etcd) refuses a bare bbolt
    database without the trailing sha256.
    """
    try:
        f = open(path, "rb", buffering=_READ_BLOCK)
    except OSError as e:
        raise SnapshotFileError(f"cannot open snapshot {path}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(SNAPSHOT_MAGIC)) != SNAPSHOT_MAGIC:
            info = _inspect_bolt(f, path, size, verify_checksum)
            if require_checksum and not info.has_checksum:
                raise SnapshotFileError(
                    f"snapshot file {path} has no sha256 checksum (truncated, or a bare database: "
                    "use --skip-hash-check)"
                )
            return info
        f.seek(0)
        r = _Reader(f, path, size)
        h, rev, keys = _scan_records(r)
        if r.read(SHA_LEN, inner=False) != r.inner.digest():
            raise SnapshotFileError(f"snapshot file {path} is corrupt: sha256 of the data does not match")
        data_len = r.pos
        has_checksum = _check_tail(r, verify_checksum)
    return SnapshotInfo(path, size, data_len, has_checksum, h, rev, keys)


def _inspect_bolt(f: BinaryIO, path: str, size: int, verify: bool) -> SnapshotInfo:
    """etcd's rules: a trailing sha256 when size % 512 == 32, checked; then the whole database."""
    has_checksum = size % ALIGN == SHA_LEN
    data_len = size - SHA_LEN if has_checksum else size
    if has_checksum:
        f.seek(0)
        sha = hashlib.sha256()
        left = data_len
        while left:
            block = f.read(min(_READ_BLOCK, left))
            if not block:
                raise SnapshotFileError(f"snapshot file {path} is truncated")
            sha.update(block)
            left -= len(block)
        if verify and f.read(SHA_LEN) != sha.digest():
            raise SnapshotFileError(f"snapshot file {path} is corrupt: sha256 checksum mismatch")
    try:
        with BoltReader(path, length=data_len) as db:
            if data_len % db.page_size:
                raise SnapshotFileError(
                    f"snapshot file {path} is truncated (not whole {db.page_size}-byte pages, no checksum)"
                )
            db.check()
            h, rev, keys = _bolt_status(db)
            db_size = db.size
    except BoltError as e:
        raise SnapshotFileError(f"snapshot file {path}: {e}") from None
    except OSError as e:
        raise SnapshotFileError(f"cannot read snapshot {path}: {e.strerror}") from None
    return SnapshotInfo(path, size, data_len, has_checksum, h, rev, keys, "bbolt", db_size)


def _bolt_status(db: BoltReader) -> tuple[int, int, int]:
    """etcdutl's snapshot status numbers: crc32c over names, keys and values; last revision; entries."""
    h = 0
    rev = 0
    keys = 0
    crc: Callable[[bytes, int], int] = _crc32c_c if _crc32c_c is not None else _crc32c_py
    for name in db.buckets():
        h = crc(name, h)
        is_key = name == b"key"
        last = b""
        for k, v in db.items(name):
            h = crc(k, h)
            if v:
                h = crc(v, h)
            last = k
            keys += 1
        if is_key and last:
            try:
                rev = bytes_to_rev(last[:17] if len(last) >= 17 else last).main
            except ValueError:
                raise SnapshotFileError("snapshot is corrupt: bad revision key in the key bucket") from None
    return h, rev, keys


_CRC32C_TABLE: list[int] = []


def _crc32c_py(data: bytes, crc: int = 0) -> int:
    """Castagnoli crc32, table-driven (used only when the crc32c package is missing)."""
    if not _CRC32C_TABLE:
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC32C_TABLE.append(c)
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = _CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _scan_records(r: _Reader) -> tuple[int, int, int]:
    magic, version, _flags = _HEADER.unpack(r.read(_HEADER.size))
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotFileError(
            f"{r.path} is not an etcdpy snapshot (etcd's bbolt snapshots cannot be restored by etcdpy)"
        )
    if version != SNAPSHOT_VERSION:
        raise SnapshotFileError(f"{r.path}: unsupported etcdpy snapshot version {version}")
    h = 0
    rev = 0
    keys = 0
    bucket: bytes | None = None
    key_prefix = BUCKET_KEY.encode() + b"\x00"
    while True:
        klen, vlen = _REC.unpack(r.read(_REC.size))
        if klen == _END_MARK:
            if vlen != 0:
                raise SnapshotFileError(f"snapshot file {r.path} is corrupt: bad terminator")
            return h, rev, keys
        raw = r.read(klen)
        value = r.read(vlen)
        name, sep, key = raw.partition(b"\x00")
        if not sep:
            raise SnapshotFileError(f"snapshot file {r.path} is corrupt: entry outside any bucket")
        if name != bucket:
            bucket = name
            h = zlib.crc32(name, h)
        h = zlib.crc32(value, zlib.crc32(key, h))
        if raw.startswith(key_prefix):
            try:
                rev = bytes_to_rev(key).main
            except ValueError:
                raise SnapshotFileError(f"snapshot file {r.path} is corrupt: bad revision key") from None
        keys += 1


def _check_tail(r: _Reader, verify: bool) -> bool:
    """After the stream: nothing, or zero padding to ALIGN then etcdctl's sha256 of all before it."""
    rest = r.size - r.pos
    if rest == 0:
        return False
    if r.size % ALIGN != SHA_LEN:  # the Snapshot RPC pads so that a saved file always ends so
        raise SnapshotFileError(
            f"snapshot file {r.path} is truncated (it does not end with a complete etcdctl checksum)"
        )
    if rest > ALIGN + SHA_LEN:
        raise SnapshotFileError(f"snapshot file {r.path} is corrupt: {rest} unexpected bytes after the data")
    pad = r.read(rest - SHA_LEN, inner=False)
    if pad.strip(b"\x00"):
        raise SnapshotFileError(f"snapshot file {r.path} is corrupt: non-zero padding after the data")
    expected = r.outer.digest()
    got = r.read(SHA_LEN, inner=False)
    if verify and got != expected:
        raise SnapshotFileError(f"snapshot file {r.path} is corrupt: sha256 checksum mismatch")
    return True


class BoundedReader(io.RawIOBase):
    """The first `limit` bytes of a file: the backend stream without padding and checksum."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self._f = f
        self._left = limit

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if n < 0 or n > self._left:
            n = self._left
        data = self._f.read(n)
        self._left -= len(data)
        return data


def human_bytes(n: int) -> str:
    """go-humanize's Bytes (SI units), as etcdctl prints sizes: 61440 -> "61 kB"."""
    if n < 10:
        return f"{n} B"
    sizes = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    e = 0
    while n >= 1000 ** (e + 1) and e < len(sizes) - 1:
        e += 1
    val = int(n / 1000**e * 10 + 0.5) / 10
    return f"{val:.0f} {sizes[e]}" if val >= 10 else f"{val:.1f} {sizes[e]}"
