"""The storage backend: one RocksDB (via `rocksdict`) holding etcd's buckets.

etcd keeps its state in bbolt buckets (`key`, `meta`, `lease`, `auth`, ...).
We keep them in a single RocksDB column family, each bucket being a key prefix:

    RocksDB key = <bucket name, ASCII> + b"\\x00" + <key inside the bucket>

One column family (instead of one per bucket) keeps things simple: a write
batch spanning buckets is one atomic RocksDB write, and closing the DB releases
everything (rocksdict keeps a DB open while any column family handle lives).
Bucket names must not contain NUL.

Snapshots (`open_snapshot`) are RocksDB checkpoints in a sibling directory
`<path>.checkpoint-<pid>-<n>` (hard links, so cheap), read back read-only and
serialized in the format below; they are removed when the stream is closed, and
stale ones of other processes when a Backend opens.

Writes are never synced: the Raft WAL is the durability log, and RocksDB's own
WAL (left on) makes every completed write survive a process crash. A synced
write would also hold the GIL for the whole fsync.

Snapshot file format (version 1), written by `snapshot_to` / `SnapshotStream`
and read by `restore_from`; all integers big-endian:

    header      b"ETCDPYDB" + u32 version (=1) + u32 flags (=0)           16 bytes
    records     u32 key length + u32 value length + key + value, for every
                RocksDB entry in key order (keys are the raw prefixed keys)
    terminator  u32 0xFFFFFFFF + u32 0
    trailer     sha256 of every byte above (32 bytes)

Anything after the trailer must be either nothing or exactly 32 bytes equal to
the sha256 of everything before them (what `etcdctl snapshot save` appends from
the Maintenance.Snapshot stream); other trailing data is rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import shutil
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import BinaryIO, ParamSpec, TypeVar

from rocksdict import (
    AccessType,
    BottommostLevelCompaction,
    Checkpoint,
    CompactOptions,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

# etcd's bucket names (server/storage/schema/bucket.go).
BUCKET_KEY = "key"
BUCKET_META = "meta"
BUCKET_LEASE = "lease"
BUCKET_ALARM = "alarm"
BUCKET_CLUSTER = "cluster"
BUCKET_MEMBERS = "members"
BUCKET_MEMBERS_REMOVED = "members_removed"
BUCKET_AUTH = "auth"
BUCKET_AUTH_USERS = "authUsers"
BUCKET_AUTH_ROLES = "authRoles"

# etcd's meta bucket keys.
META_CONSISTENT_INDEX = b"consistent_index"
META_CONSISTENT_TERM = b"term"
META_SCHEDULED_COMPACT = b"scheduledCompactRev"
META_FINISHED_COMPACT = b"finishedCompactRev"

SNAPSHOT_MAGIC = b"ETCDPYDB"
SNAPSHOT_VERSION = 1
_HEADER = struct.Struct(">8sII")
_REC = struct.Struct(">II")
_END_MARK = 0xFFFFFFFF
_SHA_LEN = 32
_RESTORE_BATCH_BYTES = 256 << 10  # one RocksDB write holds the GIL: keep each short
_CHECKPOINT_INFIX = ".checkpoint-"

P = ParamSpec("P")
R = TypeVar("R")


class SnapshotError(Exception):
    """A snapshot file is malformed or fails its checksum."""


def bucket_prefix(bucket: str) -> bytes:
    """The RocksDB key prefix of a bucket."""
    b = bucket.encode()
    if b"\x00" in b:
        raise ValueError("bucket names must not contain NUL")
    return b + b"\x00"


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with `prefix` (prefix ends in NUL)."""
    return prefix[:-1] + b"\x01"


def _db_options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_keep_log_file_num(2)
    opts.set_max_log_file_size(8 << 20)
    return opts


def default_hash_ignore(bucket: str, key: bytes) -> bool:
    """etcd's DefaultIgnores: the consistent index/term change outside user control."""
    return bucket == BUCKET_META and key in (META_CONSISTENT_INDEX, META_CONSISTENT_TERM)


def _dir_bytes(path: str) -> int:
    """Bytes of the regular files under `path`; files removed meanwhile (compaction) count 0."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _dir_bytes(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return total


def _remove_stale_checkpoints(path: str) -> None:
    """Checkpoints left by a crashed process would pin old SST files forever."""
    parent, base = os.path.split(os.path.abspath(path))
    for name in os.listdir(parent):
        rest = name[len(base + _CHECKPOINT_INFIX) :]
        if name.startswith(base + _CHECKPOINT_INFIX) and not rest.startswith(f"{os.getpid()}-"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


class Batch:
    """Writes spanning buckets, applied atomically by `Backend.write` or folded into a larger batch.

    The writes are kept as a list of (raw key, value or None for a delete) rather than
    in a RocksDB WriteBatch, so that the MVCC store can fold a whole apply slice's
    batches into one RocksDB write (`KVStore.defer_writes`) and serve reads of what
    is staged there before it reaches RocksDB.
    """

    __slots__ = ("ops", "written")

    def __init__(self) -> None:
        self.ops: list[tuple[bytes, bytes | None]] = []
        self.written = False

    def put(self, bucket: str, key: bytes, value: bytes) -> None:
        self.ops.append((bucket_prefix(bucket) + key, value))

    def delete(self, bucket: str, key: bytes) -> None:
        self.ops.append((bucket_prefix(bucket) + key, None))

    def put_raw(self, raw_key: bytes, value: bytes) -> None:
        """Put an already-prefixed key (the MVCC hot path precomputes prefixes)."""
        self.ops.append((raw_key, value))

    def delete_raw(self, raw_key: bytes) -> None:
        self.ops.append((raw_key, None))

    def is_empty(self) -> bool:
        return not self.ops

    def copy_into(self, wb: WriteBatch) -> None:
        """Stage every write, in order, in a RocksDB write batch."""
        put, delete = wb.put, wb.delete
        for k, v in self.ops:
            if v is None:
                delete(k)
            else:
                put(k, v)

    @property
    def write_batch(self) -> WriteBatch:
        """A RocksDB write batch holding these writes."""
        wb = WriteBatch(raw_mode=True)
        self.copy_into(wb)
        return wb


class Backend:
    """Bucketed key-value storage on one RocksDB directory."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._path = path
        self._db: Rdict | None = None
        self._checkpoint_seq = 0
        # The lifecycle owner's state (loop thread only): worker-thread users in flight, and
        # whether a close/swap holds the backend exclusively (new users wait until it ends).
        self._users = 0
        self._idle: asyncio.Event | None = None
        self._exclusive: asyncio.Lock | None = None
        self.reopen()
        _remove_stale_checkpoints(path)

    def reopen(self) -> None:
        """(Re)open the RocksDB directory in place, e.g. after a snapshot replaced its files.

        The Backend object stays the same, so every holder of it (lessor, auth, alarms) sees the
        new contents without being told.
        """
        if self._db is not None:
            return
        db = Rdict(self._path, _db_options())
        wo = WriteOptions()
        wo.sync = False  # never fsync here: see the module docstring
        wo.disable_wal = False
        db.set_write_options(wo)
        self._db = db

    @property
    def path(self) -> str:
        return self._path

    # -- lifecycle: worker-thread users versus close/swap ------------------------------------

    def _lifecycle(self) -> tuple[asyncio.Event, asyncio.Lock]:
        if self._idle is None or self._exclusive is None:
            self._idle = asyncio.Event()
            self._idle.set()
            self._exclusive = asyncio.Lock()
        return self._idle, self._exclusive

    def open_for_loop_reads(self) -> bool:
        """Whether a read that runs entirely on the loop, with no await, may use the DB now.

        True unless a close/swap holds the backend (the DB may be closed under it then);
        such a read needs no `hold`: nothing can close the DB before it returns.
        """
        return self._db is not None and not (self._exclusive is not None and self._exclusive.locked())

    @property
    def worker_users(self) -> int:
        """Worker-thread calls in flight (for tests and logs)."""
        return self._users

    async def run_in_worker(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking `fn` on a worker thread while the DB is guaranteed to stay open.

        Why: rocksdict refuses (``RuntimeError: Already borrowed``) or crashes when the DB is
        closed while another thread is inside it, and a snapshot install swaps the whole DB.
        Every worker-thread use goes through here (or `hold` + `in_thread`), and
        `exclusive()` (close, swap) first waits for all of them. Pass callables that look
        the DB up when they run (`lambda: backend.db.flush(True)`), not bound methods of it.
        """
        async with self.hold():
            return await self.in_thread(fn, *args, **kwargs)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Keep the DB open for a block on the loop (e.g. from pinning a view to the end of its scan).

        Waits while a close/swap holds the backend. Inside, use `in_thread`, not
        `run_in_worker`: a swap waiting for this hold to end would otherwise wait for us.
        """
        idle, exclusive = self._lifecycle()
        while exclusive.locked():
            async with exclusive:
                pass
        self._users += 1
        idle.clear()
        try:
            yield
        finally:
            self._release_user(None)

    async def in_thread(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn` on a worker thread, counted as a user until the thread ends (only inside `hold`).

        A cancelled caller does not end the use early: the thread keeps running, so the use
        ends when the thread does.
        """
        idle, _ = self._lifecycle()
        self._users += 1
        idle.clear()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, lambda: fn(*args, **kwargs))
        fut.add_done_callback(self._release_user)
        return await asyncio.shield(fut)

    def _release_user(self, _fut: object) -> None:
        self._users -= 1
        if self._users == 0 and self._idle is not None:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the backend alone: wait for every worker-thread user, keep new ones waiting.

        The one place that may close, restore or replace the DB files (snapshot install,
        stop). Runs on the loop thread; nothing in between can start a worker use.
        """
        idle, exclusive = self._lifecycle()
        async with exclusive:
            await idle.wait()
            yield

    @property
    def db(self) -> Rdict:
        """The raw Rdict (raw mode, prefixed keys): for hot paths that batch their own keys."""
        if self._db is None:
            raise RuntimeError("backend is closed")
        return self._db

    def close(self) -> None:
        """Flush memtables and release the DB so it can be reopened (also in this process)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- point operations -----------------------------------------------------

    def get(self, bucket: str, key: bytes) -> bytes | None:
        return self.db.get(bucket_prefix(bucket) + key)

    def get_many(self, bucket: str, keys: list[bytes]) -> list[bytes | None]:
        """Multi-get in one call (one GIL round trip for many values)."""
        if not keys:
            return []
        p = bucket_prefix(bucket)
        return self.db.get([p + k for k in keys])

    def put(self, bucket: str, key: bytes, value: bytes) -> None:
        """A single unsynced write; use a Batch when several writes must be atomic."""
        self.db.put(bucket_prefix(bucket) + key, value)

    def delete(self, bucket: str, key: bytes) -> None:
        self.db.delete(bucket_prefix(bucket) + key)

    def batch(self) -> Batch:
        return Batch()

    def write(self, batch: Batch) -> None:
        """Apply a batch atomically (a Batch can be written only once: twice is a bug)."""
        if batch.written:
            raise RuntimeError("backend: write batch already consumed")
        self.db.write(batch.write_batch)
        batch.written = True

    # -- iteration ------------------------------------------------------------

    def iterate(
        self, bucket: str, start: bytes = b"", end: bytes | None = None, reverse: bool = False, pin: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs of a bucket with start <= key < end (end None = bucket end).

        Bounds are passed to RocksDB so deleted entries beyond the range are not scanned.
        With `pin` (forward only) the RocksDB iterator is created now, so the pairs are those
        of this moment however late they are consumed (a consistent snapshot for a worker
        thread); otherwise it is created at the first `next()`.
        """
        p = bucket_prefix(bucket)
        lo = p + start
        hi = p + end if end is not None else _prefix_end(p)
        if pin and not reverse:
            return self._iterate_pinned(lo, hi, len(p))
        return self._iterate_raw(lo, hi, len(p), reverse)

    def _iterate_pinned(self, lo: bytes, hi: bytes, strip: int) -> Iterator[tuple[bytes, bytes]]:
        ro = ReadOptions()
        ro.set_iterate_lower_bound(lo)
        ro.set_iterate_upper_bound(hi)
        # The RocksDB iterator (and the view it reads) starts here; it is positioned only by the
        # first `next()`, on the consuming thread: after a big compaction the first seek may
        # skip hundreds of thousands of deletion markers while holding the GIL.
        it = self.db.iter(ro)

        def gen() -> Iterator[tuple[bytes, bytes]]:
            it.seek(lo)
            while it.valid():
                k = it.key()
                if k >= hi:
                    return
                yield k[strip:], it.value()
                it.next()

        return gen()

    def _iterate_raw(self, lo: bytes, hi: bytes, strip: int, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        # The bounds also go to RocksDB (so it can skip deleted entries), but the
        # rocksdict version we use ignores the lower bound when iterating backwards,
        # so both ends are checked here as well.
        if hi <= lo:
            return
        ro = ReadOptions()
        ro.set_iterate_lower_bound(lo)
        ro.set_iterate_upper_bound(hi)
        if not reverse:
            for k, v in self.db.items(from_key=lo, read_opt=ro):
                if k >= hi:
                    return
                yield k[strip:], v
            return
        it = self.db.iter(ro)
        it.seek_to_last()
        while it.valid():
            k = it.key()
            if k < lo:
                return
            if k < hi:
                yield k[strip:], it.value()
            it.prev()

    def last(self, bucket: str) -> tuple[bytes, bytes] | None:
        """The greatest (key, value) of a bucket, or None if it is empty."""
        for kv in self.iterate(bucket, reverse=True):
            return kv
        return None

    # -- sizes and maintenance ------------------------------------------------

    def size(self) -> int:
        """Total bytes of the RocksDB directory on disk (SSTs, WAL, manifest, logs).

        The quota asks for this up to ten times a second under load, so it is one scandir
        per directory with the sizes from its entries, not a walk with a stat per path.
        """
        return _dir_bytes(self._path)

    def size_in_use(self) -> int:
        """Estimate of live data: RocksDB's live-data estimate plus memtable bytes."""
        db = self.db
        live = db.property_int_value("rocksdb.estimate-live-data-size") or 0
        mem = db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        return int(live) + int(mem)

    def defrag(self) -> None:
        """Flush and fully compact, dropping deleted entries (etcd's Defragment)."""
        db = self.db
        db.flush(True)
        co = CompactOptions()
        co.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        db.compact_range(None, None, co)

    def hash(self, ignore: Callable[[str, bytes], bool] = default_hash_ignore) -> int:
        """crc32 (zlib/IEEE) over every non-ignored raw RocksDB key and value, in key order.

        Raw keys include the bucket prefix, so bucket membership is hashed too.
        """
        return self.hash_plan(ignore)()

    def hash_plan(self, ignore: Callable[[str, bytes], bool] = default_hash_ignore) -> Callable[[], int]:
        """`hash` over the DB as of now, computed by the returned call (on a worker thread)."""
        it = self.db.iter(ReadOptions())  # pins the view now; positioned on the worker thread

        def items() -> Iterator[tuple[bytes, bytes]]:
            it.seek_to_first()
            while it.valid():
                yield it.key(), it.value()
                it.next()

        def scan() -> int:
            h = 0
            for raw, v in items():
                bucket, _, key = raw.partition(b"\x00")
                if ignore(bucket.decode(), key):
                    continue
                h = zlib.crc32(raw, h)
                h = zlib.crc32(v, h)
            return h

        return scan

    # -- snapshots ------------------------------------------------------------

    def open_snapshot(self) -> SnapshotStream:
        """Freeze the current state now; the returned stream may be read on another thread.

        Implemented as a RocksDB checkpoint (hard links to the SST files plus the WAL)
        in a sibling directory, because rocksdict's Snapshot iterators do not read at
        the snapshot. `SnapshotStream.close()` removes the checkpoint.
        """
        self._checkpoint_seq += 1
        cp = f"{self._path}{_CHECKPOINT_INFIX}{os.getpid()}-{self._checkpoint_seq}"
        if os.path.exists(cp):
            shutil.rmtree(cp)
        Checkpoint(self.db).create_checkpoint(cp)
        return SnapshotStream(cp)

    def snapshot_to(self, dest: str | BinaryIO) -> int:
        """Write a snapshot file (format in the module docstring); returns bytes written."""
        stream = self.open_snapshot()
        try:
            if isinstance(dest, str):
                tmp = dest + ".tmp"
                with open(tmp, "wb") as f:
                    n = stream.write_to(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, dest)
                return n
            return stream.write_to(dest)
        finally:
            stream.close()

    @staticmethod
    def restore_from(src: str | BinaryIO, path: str) -> None:
        """Build the RocksDB at `path` from a snapshot file, replacing what is there.

        The DB at `path` must not be open. The data is loaded into `<path>.restoring`
        and checked in full before it replaces `path`, so a bad file changes nothing.
        """
        Backend.remove_replaced(Backend.commit_restore(Backend.stage_restore(src, path), path))

    @staticmethod
    def stage_restore(src: str | BinaryIO, path: str) -> str:
        """First half of `restore_from`: build and check `<path>.restoring`; `path` is untouched.

        Blocking and slow (the whole file): meant for a worker thread while `path` serves on.
        """
        tmp = path + ".restoring"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        if isinstance(src, str):
            with open(src, "rb") as f:
                _load_snapshot(f, tmp)
        else:
            _load_snapshot(src, tmp)
        return tmp

    @staticmethod
    def commit_restore(staged: str, path: str) -> str | None:
        """Second half: put the staged directory in place of `path` (closed); quick renames only.

        Returns the replaced directory, renamed aside, for the caller to delete (slow for a big
        store, so `restore_from` deletes it at once and the snapshot install on a worker thread).
        """
        old = path + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        moved = None
        if os.path.exists(path):
            os.rename(path, old)
            moved = old
        os.rename(staged, path)
        return moved

    @staticmethod
    def remove_replaced(moved: str | None) -> None:
        if moved is not None and os.path.exists(moved):
            shutil.rmtree(moved, ignore_errors=True)


class SnapshotStream:
    """A frozen copy (checkpoint) of the DB, serialized in the snapshot file format."""

    def __init__(self, checkpoint_dir: str) -> None:
        self._dir: str | None = checkpoint_dir

    @property
    def path(self) -> str:
        """The checkpoint directory (another process may read it until `close`)."""
        if self._dir is None:
            raise RuntimeError("snapshot stream is closed")
        return self._dir

    def chunks(self, chunk_size: int = 32 * 1024) -> Iterator[bytes]:
        """The file's bytes in chunks of about `chunk_size` (for Maintenance.Snapshot)."""
        yield from _serialize(self.items(), chunk_size)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every raw (bucket-prefixed key, value) of the frozen copy, in key order."""
        if self._dir is None:
            raise RuntimeError("snapshot stream is closed")
        db = Rdict(self._dir, Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            yield from db.items()
        finally:
            db.close()
            del db

    def write_to(self, f: BinaryIO) -> int:
        n = 0
        for chunk in self.chunks(1 << 20):
            f.write(chunk)
            n += len(chunk)
        return n

    def close(self) -> None:
        """Delete the checkpoint (it pins SST files that compaction would otherwise free)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> SnapshotStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serialize(items: Iterable[tuple[bytes, bytes]], chunk_size: int) -> Iterator[bytes]:
    h = hashlib.sha256()
    buf = io.BytesIO()
    buf.write(_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0))
    for k, v in items:
        buf.write(_REC.pack(len(k), len(v)))
        buf.write(k)
        buf.write(v)
        if buf.tell() >= chunk_size:
            data = buf.getvalue()
            h.update(data)
            yield data
            buf = io.BytesIO()
    buf.write(_REC.pack(_END_MARK, 0))
    data = buf.getvalue()
    h.update(data)
    yield data + h.digest()


class _HashingReader:
    """Reads exactly, hashing everything read."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha = hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise SnapshotError("snapshot file is truncated")
        self.sha.update(data)
        return data


def _read_records(r: _HashingReader) -> Iterable[tuple[bytes, bytes]]:
    magic, version, _flags = _HEADER.unpack(r.read(_HEADER.size))
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError("not an etcdpy snapshot file")
    if version != SNAPSHOT_VERSION:
        raise SnapshotError(f"unsupported snapshot version {version}")
    while True:
        klen, vlen = _REC.unpack(r.read(_REC.size))
        if klen == _END_MARK:
            return
        yield r.read(klen), r.read(vlen)


def _check_trailer(f: BinaryIO, r: _HashingReader) -> None:
    """Verify our sha256 trailer and allow etcdctl's appended sha256 of the whole file."""
    outer = r.sha.copy()
    got = f.read(_SHA_LEN)
    if got != r.sha.digest():
        raise SnapshotError("snapshot checksum mismatch")
    outer.update(got)
    extra = f.read(_SHA_LEN + 1)
    if extra and extra != outer.digest():
        raise SnapshotError("unexpected data after the snapshot trailer")


def _load_snapshot(f: BinaryIO, path: str) -> None:
    r = _HashingReader(f)
    db = Rdict(path, _db_options())
    try:
        wb = WriteBatch(raw_mode=True)
        pending = 0
        for k, v in _read_records(r):
            wb.put(k, v)
            pending += len(k) + len(v)
            if pending >= _RESTORE_BATCH_BYTES:
                db.write(wb)
                wb = WriteBatch(raw_mode=True)
                pending = 0
        _check_trailer(f, r)
        if pending:
            db.write(wb)
        db.flush(True)
    except BaseException:
        db.close()
        del db
        Rdict.destroy(path, _db_options())
        raise
    db.close()
