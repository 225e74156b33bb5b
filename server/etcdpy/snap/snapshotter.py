"""Raft snapshot files: `<term>-<index>.snap` (etcd's server/etcdserver/api/snap).

A file holds the snapshot metadata (index, term, voters, learners) and the opaque
`data` the server stores with it (membership JSON). The MVCC state itself lives in
RocksDB and is not part of these files.

File layout (little endian)::

    0   8s   magic b"ETCDPYSN"
    8   u32  format version (1)
    12  u32  crc32 of everything after this field
    16  u64  index, u64 term
    32  u32  voter count, u32 learner count
    40  u64 * voters, u64 * learners
        u64  data length, data

Files are written atomically (temp file, fsync, rename, fsync dir) so a crash
never leaves a half-written `.snap` under a valid name; a file that still fails
its checks (disk damage) is renamed to `.broken` and skipped by `load`.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterable
from typing import Protocol

from etcdpy.raft.types import ConfState, Snapshot, SnapshotMetadata

from .errors import SnapCorruptError

_MAGIC = b"ETCDPYSN"
_VERSION = 1
_PREFIX = struct.Struct("<8sII")
_META = struct.Struct("<QQII")
_U64 = struct.Struct("<Q")
_NAME_RE = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
_SUFFIX = ".snap"
_TMP_SUFFIX = ".snap.tmp"
_BROKEN_SUFFIX = ".broken"


class IndexTerm(Protocol):
    """What `load_newest_available` needs from a WAL snapshot marker (etcdpy.wal.WalSnapshot)."""

    @property
    def index(self) -> int: ...

    @property
    def term(self) -> int: ...


def snap_name(term: int, index: int) -> str:
    """`<term>-<index>.snap` in 16 hex digits each, so a name sort is a (term, index) sort."""
    return f"{term:016x}-{index:016x}{_SUFFIX}"


def encode_snapshot(snapshot: Snapshot) -> bytes:
    meta = snapshot.metadata
    voters, learners = meta.conf_state.voters, meta.conf_state.learners
    body = b"".join(
        (
            _META.pack(meta.index, meta.term, len(voters), len(learners)),
            struct.pack(f"<{len(voters)}Q", *voters),
            struct.pack(f"<{len(learners)}Q", *learners),
            _U64.pack(len(snapshot.data)),
            snapshot.data,
        )
    )
    return _PREFIX.pack(_MAGIC, _VERSION, zlib.crc32(body)) + body


def decode_snapshot(buf: bytes, path: str) -> Snapshot:
    """Parse and verify one snapshot file's bytes; SnapCorruptError on any mismatch."""
    if len(buf) < _PREFIX.size + _META.size + _U64.size:
        raise SnapCorruptError("snapshot file too short", path)
    magic, version, crc = _PREFIX.unpack_from(buf, 0)
    if magic != _MAGIC:
        raise SnapCorruptError("bad snapshot magic", path)
    if version != _VERSION:
        raise SnapCorruptError(f"unsupported snapshot format version {version}", path)
    if zlib.crc32(memoryview(buf)[_PREFIX.size :]) != crc:
        raise SnapCorruptError("snapshot CRC mismatch", path)
    off = _PREFIX.size
    index, term, nv, nl = _META.unpack_from(buf, off)
    off += _META.size
    if off + 8 * (nv + nl) + _U64.size > len(buf):
        raise SnapCorruptError("snapshot member lists run past end of file", path)
    voters = list(struct.unpack_from(f"<{nv}Q", buf, off))
    off += 8 * nv
    learners = list(struct.unpack_from(f"<{nl}Q", buf, off))
    off += 8 * nl
    (size,) = _U64.unpack_from(buf, off)
    off += _U64.size
    if off + size != len(buf):
        raise SnapCorruptError("snapshot data length does not match file size", path)
    meta = SnapshotMetadata(conf_state=ConfState(voters=voters, learners=learners), index=index, term=term)
    return Snapshot(data=buf[off:], metadata=meta)


class Snapshotter:
    """Saves and loads raft snapshot files in one directory.

    Single writer; `purge` may run concurrently with `save_snap` (it only deletes
    old `.snap` files, never temp files).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = os.path.abspath(dirpath)
        os.makedirs(self.dirpath, exist_ok=True)
        self._remove_temp_files()

    def save_snap(self, snapshot: Snapshot) -> None:
        """Durably write `snapshot` as `<term>-<index>.snap`; an empty snapshot is ignored."""
        if snapshot.is_empty():
            return
        meta = snapshot.metadata
        name = snap_name(meta.term, meta.index)
        final = os.path.join(self.dirpath, name)
        tmp = final + ".tmp"
        data = encode_snapshot(snapshot)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(self.dirpath)

    def load(self) -> Snapshot | None:
        """The newest snapshot that passes its checks, or None when there is none."""
        return self._load_first(self.snap_names())

    def load_newest_available(self, wal_snaps: Iterable[IndexTerm]) -> Snapshot | None:
        """The newest valid snapshot that also has a WAL marker (etcd's LoadNewestAvailable).

        A snapshot file without a marker may be newer than the last durable WAL
        state (the file is written first); replaying the WAL from it would fail, so
        only snapshots the WAL knows about are candidates.
        """
        wanted = {(s.term, s.index) for s in wal_snaps}
        names = [n for n in self.snap_names() if _parse_name(n) in wanted]
        return self._load_first(names)

    def purge(self, keep: int = 5) -> list[str]:
        """Delete all but the `keep` newest snapshot files; return the removed names."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        names = self.snap_names()
        removed = names[keep:]
        for name in removed:
            _unlink_quietly(os.path.join(self.dirpath, name))
        if removed:
            _fsync_dir(self.dirpath)
        return removed

    def snap_names(self) -> list[str]:
        """Names of the `.snap` files, newest (highest term, then index) first."""
        try:
            names = os.listdir(self.dirpath)
        except FileNotFoundError:
            return []
        return sorted((n for n in names if _NAME_RE.match(n)), reverse=True)

    def _load_first(self, names: list[str]) -> Snapshot | None:
        for name in names:
            snap = self._load_file(name)
            if snap is not None:
                return snap
        return None

    def _load_file(self, name: str) -> Snapshot | None:
        """Read one file; a corrupt one is renamed to `.broken` so it is not tried again."""
        path = os.path.join(self.dirpath, name)
        try:
            with open(path, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            return None  # purged concurrently
        try:
            snap = decode_snapshot(buf, path)
            if _parse_name(name) != (snap.metadata.term, snap.metadata.index):
                raise SnapCorruptError("file name does not match snapshot term/index", path)
        except SnapCorruptError:
            os.replace(path, path + _BROKEN_SUFFIX)
            return None
        return snap

    def _remove_temp_files(self) -> None:
        for name in os.listdir(self.dirpath):
            if name.endswith(_TMP_SUFFIX):
                _unlink_quietly(os.path.join(self.dirpath, name))


def _parse_name(name: str) -> tuple[int, int] | None:
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return int(m.group(1), 16), int(m.group(2), 16)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
