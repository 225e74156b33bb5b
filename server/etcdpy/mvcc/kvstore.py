"""The multi-version KV store (etcd's `kvstore.go`, `kvstore_txn.go`, compaction, hash).

Layout in the backend (see backend.py for how buckets map onto RocksDB):

* bucket ``key``: revision bytes (revision.py) -> serialized ``mvccpb.KeyValue``.
  A put stores the full KeyValue; a delete stores, under the tombstone-marked
  revision, a KeyValue holding only the key (exactly what etcd stores).
* bucket ``meta``: ``consistent_index`` and ``term`` (8-byte big-endian), and
  ``scheduledCompactRev`` / ``finishedCompactRev`` (17-byte revision bytes of
  (rev, 0)), the names and encodings etcd uses.

The in-memory `TreeIndex` maps keys to revisions; it is rebuilt on open by one
scan of the key bucket. Every read goes index -> revision -> RocksDB point get
(measured at ~1 us, so no value cache is kept in memory).

Revisions start as in etcd: an empty store is at revision 1, the first write
makes revision 2, and the compact revision is -1 until the first compaction.

Threading: like the rest of etcdpy, the store belongs to the asyncio loop
thread; it takes no locks. Whole-store reads (HashKV, Hash, a big Range) are split:
what needs the in-memory index, and a RocksDB iterator (which reads at the moment it
was created: a consistent snapshot), are taken on the loop; the scan itself runs on a
worker thread through `Backend.run_in_worker`, which keeps the DB open meanwhile.
`SnapshotStream` (from `open_snapshot`) may also be consumed on another thread.
Physical compaction is a queue of `CompactionJob`s whose small steps the server runs
between loop iterations (etcd's batches with pauses).
"""

from __future__ import annotations

import asyncio
import struct
import time
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO

from rocksdict import ReadOptions, WriteBatch

from etcdpy.errors import ErrCompacted, ErrFutureRev
from etcdpy.mvcc.backend import (
    BUCKET_KEY,
    BUCKET_META,
    META_CONSISTENT_INDEX,
    META_CONSISTENT_TERM,
    META_FINISHED_COMPACT,
    META_SCHEDULED_COMPACT,
    Backend,
    Batch,
    SnapshotStream,
    bucket_prefix,
)
from etcdpy.mvcc.key_index import KeyIndex, RevisionNotFound, TreeIndex
from etcdpy.mvcc.revision import Revision, bytes_to_rev, is_tombstone, rev_to_bytes
from etcdpy.mvcc.value_cache import ValueCache
from etcdpy.pb.kv_pb2 import Event, KeyValue

_U64 = struct.Struct(">Q")
_END = object()
_KEY_PREFIX = bucket_prefix(BUCKET_KEY)
_META_PREFIX = bucket_prefix(BUCKET_META)
_CI_KEY = _META_PREFIX + META_CONSISTENT_INDEX
_CT_KEY = _META_PREFIX + META_CONSISTENT_TERM
_PUT = Event.PUT
_DELETE = Event.DELETE

COMPACTION_BATCH_LIMIT = 1000
"""etcd's compactionBatchLimit: revisions scanned per compaction batch (one write each)."""
COMPACTION_SLEEP_SECONDS = 0.010
"""etcd's pause between two compaction batches (10 ms, `compactionSleepInterval`), so that
applies and reads get the store in between."""
LOAD_IN_WORKER_MIN = 1000
"""A Range loading at least this many values loads them on a worker thread."""
HASH_KV_SEED = b"key"


@dataclass
class RangeResult:
    """Range answer: kvs in ascending key order, `count` uncapped by limit, `rev` = store revision."""

    kvs: list[KeyValue]
    count: int
    rev: int


def _in_range(k: bytes, key: bytes, end: bytes | None) -> bool:
    if not end:
        return k == key
    if end == b"\x00":
        return k >= key
    return key <= k < end


class KVStore:
    """etcd's MVCC store: one global revision, history per key, compaction, hashes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._raw_backend = Backend(path)
        # Deferred writes (`defer_writes`): one RocksDB batch for a slice of applied entries.
        self._deferred: WriteBatch | None = None
        self._unflushed: dict[bytes, bytes | None] = {}
        self._deferred_ci: tuple[int, int] | None = None
        self._deferring_thread: int | None = None
        self.backend_commits = 0
        """RocksDB writes of applied entries (one per entry, or one per slice when deferred)."""
        self.on_backend_commit: Callable[[float], None] | None = None
        """Called with the seconds of each such write (etcd_disk_backend_commit_duration_seconds)."""
        # Bumped each time a snapshot replaces the contents, so caches built from them can tell.
        self.restore_generation = 0
        # Called as fn(revision, events) after every committed txn that changed something (watch).
        self._observers: list[Callable[[int, Sequence[Event]], None]] = []
        self._cache = ValueCache()
        """Recently written or read values by revision key (see `etcdpy.mvcc.value_cache`)."""
        self._reset_memory()
        self._restore()

    def _reset_memory(self) -> None:
        self._cache.clear()
        self._index = TreeIndex()
        self._current_rev = 1
        self._compact_rev = -1
        self._consistent_index = 0
        self._consistent_term = 0
        self._txn: TxnWrite | None = None
        # Physical compactions scheduled (index already compacted), oldest first.
        self._compactions: deque[CompactionJob] = deque()
        # What the last *finished* compaction left below its revision, so that the
        # next one only scans revisions above it (etcd's lastKeep optimisation).
        self._last_compact_rev = -1
        self._last_keep: set[Revision] = set()

    # -- state ----------------------------------------------------------------

    @property
    def current_rev(self) -> int:
        return self._current_rev

    @property
    def compact_rev(self) -> int:
        """Revision of the latest compaction, -1 if never compacted (as etcd)."""
        return self._compact_rev

    @property
    def consistent_index(self) -> int:
        return self._consistent_index

    @property
    def consistent_term(self) -> int:
        return self._consistent_term

    @property
    def backend(self) -> Backend:
        """The backend, for other buckets (lease, auth, members) and maintenance.

        Flushes deferred writes first, so whoever reads RocksDB directly sees every
        applied entry (the same barrier guards the store's own direct reads). Only on the
        thread applying (the event loop): a worker thread (a snapshot's RocksDB flush, a
        defrag, a scan) runs beside an apply slice that may be staging into the batch at
        that moment, so flushing from there would race it (a batch written while the apply
        still adds to it). A worker needs no flush either: what it was started for had been
        applied, and flushed, before it was started.
        """
        if self._deferred is not None and threading.get_ident() == self._deferring_thread:
            self.flush_deferred()
        return self._raw_backend

    _backend = backend

    # -- deferred writes: one RocksDB write per apply slice ---------------------

    def defer_writes(self) -> None:
        """Until `end_deferred`, committed write txns are staged in one shared RocksDB batch.

        etcd's backend commits its batch transaction every 100 ms instead of once per
        entry; here the apply task defers while it applies one slice of committed
        entries synchronously and flushes before it yields to the loop, so nothing
        outside the slice can observe the difference. Inside it, later entries read
        the staged values (`_load`); the consistent index/term of the last entry are
        written with the batch, so a crash replays exactly the entries not in it.
        """
        if self._deferred is None:
            self._deferred = WriteBatch(raw_mode=True)
            self._deferring_thread = threading.get_ident()

    def flush_deferred(self) -> None:
        """Write what is staged (one atomic RocksDB write) and go on deferring."""
        wb = self._deferred
        if wb is None:
            return
        ci = self._deferred_ci
        if ci is None and wb.is_empty():
            return
        if ci is not None:
            wb.put(_CI_KEY, _U64.pack(ci[0]))
            wb.put(_CT_KEY, _U64.pack(ci[1]))
        t0 = time.perf_counter()
        self._raw_backend.db.write(wb)
        self._note_commit(time.perf_counter() - t0)
        self._deferred = WriteBatch(raw_mode=True)
        self._deferred_ci = None
        self._unflushed.clear()

    def end_deferred(self) -> None:
        """Flush and stop deferring: each write txn writes RocksDB itself again."""
        self.flush_deferred()
        self._deferred = None
        self._deferring_thread = None

    def _note_commit(self, seconds: float) -> None:
        self.backend_commits += 1
        if self.on_backend_commit is not None:
            self.on_backend_commit(seconds)

    @property
    def index(self) -> TreeIndex:
        return self._index

    def close(self) -> None:
        """Release RocksDB; an open txn is dropped and a pending compaction resumes on reopen."""
        self._txn = None
        self._compactions.clear()
        self.end_deferred()
        self._cache.clear()
        self._raw_backend.close()

    # -- open / rebuild -------------------------------------------------------

    def _restore(self) -> None:
        """Load meta, rebuild the index from the key bucket, finish an interrupted compaction."""
        b = self._backend
        ci = b.get(BUCKET_META, META_CONSISTENT_INDEX)
        ct = b.get(BUCKET_META, META_CONSISTENT_TERM)
        self._consistent_index = _U64.unpack(ci)[0] if ci else 0
        self._consistent_term = _U64.unpack(ct)[0] if ct else 0
        finished = b.get(BUCKET_META, META_FINISHED_COMPACT)
        scheduled = b.get(BUCKET_META, META_SCHEDULED_COMPACT)
        if finished:
            self._compact_rev = bytes_to_rev(finished).main
        last_main = self._rebuild_index()
        self._current_rev = max(1, last_main, self._compact_rev)
        if scheduled:
            sched = bytes_to_rev(scheduled).main
            if sched > self._compact_rev:
                self.compact(sched)

    def _rebuild_index(self) -> int:
        """Replay the key bucket in revision order into a fresh index; returns the last main rev.

        As in etcd, the first surviving revision of a key seeds its generation from the
        stored KeyValue (create_revision, version), because compaction may have removed
        the older revisions that would otherwise tell them.
        """
        kis: dict[bytes, KeyIndex] = {}
        last_main = 0
        parse = KeyValue.FromString
        for k, v in self._backend.iterate(BUCKET_KEY):
            rev = bytes_to_rev(k)
            tomb = is_tombstone(k)
            kv = parse(v)
            ki = kis.get(kv.key)
            if ki is not None:
                if tomb:
                    try:
                        ki.tombstone(rev)
                    except RevisionNotFound:
                        pass  # a leftover tombstone of an interrupted compaction
                else:
                    ki.put(rev)
            else:
                ki = KeyIndex(kv.key)
                if tomb:
                    ki.restore_tombstone(rev)
                else:
                    ki.restore(Revision(kv.create_revision, 0), rev, kv.version)
                kis[kv.key] = ki
            last_main = rev.main
        self._index.bulk_load(kis)
        return last_main

    # -- reads ----------------------------------------------------------------

    def range(
        self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0, count_only: bool = False
    ) -> RangeResult:
        """Keys in [key, end) as of `rev` (<= 0: latest); see TreeIndex for `end` semantics."""
        return self._range(key, end, rev, limit, count_only, self._current_rev)

    def _range(
        self, key: bytes, end: bytes | None, rev: int, limit: int, count_only: bool, cur_rev: int
    ) -> RangeResult:
        if rev > cur_rev:
            raise ErrFutureRev()
        if rev <= 0:
            rev = cur_rev
        if rev < self._compact_rev:
            raise ErrCompacted()
        if count_only:
            return RangeResult([], self._index.count_revisions(key, end, rev), cur_rev)
        revs, total = self._index.revisions(key, end, rev, limit)
        return RangeResult(self._load(revs), total, cur_rev)

    def range_plan(
        self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0, raw: bool = False
    ) -> tuple[Callable[[], list[Any]], int, int, bool]:
        """A Range split for big answers: (load, count, rev, small), `load` safe on a worker thread.

        `small` says the values were loaded already (not worth a thread hop). With `raw`,
        `load` returns the stored KeyValues still serialized (bytes), for an answer that
        passes them on as they are.

        The revisions are looked up in the index now (cheap), and the values are read
        through an iterator created now, so `load()` sees exactly this moment even if a
        compaction deletes those revisions or a snapshot install starts meanwhile (run it
        through `Backend.run_in_worker`).
        """
        cur_rev = self._current_rev
        if rev > cur_rev:
            raise ErrFutureRev()
        if rev <= 0:
            rev = cur_rev
        if rev < self._compact_rev:
            raise ErrCompacted()
        revs, total = self._index.revisions(key, end, rev, limit)
        if len(revs) < LOAD_IN_WORKER_MIN:
            loaded: list[Any] = self._load_raw(revs) if raw else self._load(revs)
            return (lambda: loaded), total, cur_rev, True
        it = self._backend.db.iter(ReadOptions())

        def load() -> list[Any]:
            out = []
            for r in revs:
                k = _KEY_PREFIX + rev_to_bytes(r.main, r.sub)
                it.seek(k)
                if not it.valid() or it.key() != k:
                    raise RuntimeError(f"mvcc: index points to missing revision {tuple(r)}")
                out.append(it.value())
            if raw:
                return out
            parse = KeyValue.FromString
            return [parse(v) for v in out]

        return load, total, cur_rev, False

    def _load(self, revs: list[Revision]) -> list[KeyValue]:
        """Fetch and decode the KeyValues stored at live (non-tombstone) revisions."""
        parse = KeyValue.FromString
        return [parse(v) for v in self._load_raw(revs)]

    def _load_raw(self, revs: list[Revision]) -> list[bytes]:
        """The serialized KeyValues stored at live revisions: from the cache, staged writes or RocksDB."""
        if not revs:
            return []
        cached = self._cache.get
        if len(revs) == 1:
            r = revs[0]
            k = _KEY_PREFIX + rev_to_bytes(r.main, r.sub)
            v = cached(k)
            if v is None:
                v = self._fetch([k])[0]
                if v is None:
                    raise RuntimeError(f"mvcc: index points to missing revision {tuple(r)}")
                self._cache.add(k, v)
            return [v]
        keys = [_KEY_PREFIX + rev_to_bytes(r.main, r.sub) for r in revs]
        vals = [cached(k) for k in keys]
        missing = [i for i, v in enumerate(vals) if v is None]
        if missing:
            fetched = self._fetch([keys[i] for i in missing])
            add = self._cache.add
            for i, v in zip(missing, fetched):
                if v is None:
                    raise RuntimeError(f"mvcc: index points to missing revision {tuple(revs[i])}")
                vals[i] = v
                add(keys[i], v)
        return vals  # type: ignore[return-value]  # no None is left

    def _fetch(self, keys: list[bytes]) -> list[bytes | None]:
        """Stored values of revision keys, including writes staged but not yet flushed to RocksDB."""
        db = self._raw_backend.db
        staged = self._unflushed
        if staged:
            return [staged[k] if k in staged else db.get(k) for k in keys]
        if len(keys) == 1:
            return [db.get(keys[0])]
        got: list[bytes | None] = db.get(keys)
        return got

    def events(self, start_rev: int, end_rev: int = 0, limit: int = 0) -> list[Event]:
        """Stored changes with start_rev <= revision < end_rev (0 = to the end), in order.

        For watchers catching up from history. PUT events carry the full KeyValue;
        DELETE events a KeyValue with the key and mod_revision (as etcd). With a
        `limit`, stops at the first revision boundary after `limit` events, so one
        transaction's events are never split. ErrCompacted if start_rev < compact_rev.
        """
        if start_rev < self._compact_rev:
            raise ErrCompacted()
        lo = rev_to_bytes(max(start_rev, 0), 0)
        hi = rev_to_bytes(end_rev, 0) if end_rev > 0 else None
        out: list[Event] = []
        last_main = -1
        for k, v in self._backend.iterate(BUCKET_KEY, lo, hi):
            r = bytes_to_rev(k)
            if limit and len(out) >= limit and r.main != last_main:
                break
            ev = Event()
            ev.kv.ParseFromString(v)
            if is_tombstone(k):
                ev.type = _DELETE
                ev.kv.mod_revision = r.main
            out.append(ev)
            last_main = r.main
        return out

    # -- writes ---------------------------------------------------------------

    def write(self) -> TxnWrite:
        """Start the (single) write transaction; it must be ended or aborted before the next."""
        if self._txn is not None:
            raise RuntimeError("mvcc: a write txn is already open")
        txn = TxnWrite(self)
        self._txn = txn
        return txn

    def add_observer(self, fn: Callable[[int, Sequence[Event]], None]) -> None:
        """Call `fn(rev, events)` once per committed write txn, with all its events, in order.

        This is the hook the watchable store hangs on: every write (put, delete,
        txn, lease revoke...) goes through TxnWrite.end, so none can be missed.
        Observers run synchronously and must not block or raise.
        """
        self._observers.append(fn)

    def remove_observer(self, fn: Callable[[int, Sequence[Event]], None]) -> None:
        if fn in self._observers:
            self._observers.remove(fn)

    def _txn_done(self, txn: TxnWrite) -> None:
        if self._txn is txn:
            self._txn = None

    # -- compaction -----------------------------------------------------------

    def compact(self, rev: int) -> None:
        """Compact at `rev` and remove the dropped revisions from RocksDB before returning."""
        self.schedule_compaction(rev)
        self.run_compactions()

    def run_compactions(self) -> None:
        """Finish every scheduled physical compaction now (start-up, tests)."""
        while self._compactions:
            self._compactions[0].run()

    def next_compaction(self) -> CompactionJob | None:
        """The oldest physical compaction not finished yet (the server steps it with pauses)."""
        return self._compactions[0] if self._compactions else None

    def schedule_compaction(self, rev: int) -> CompactionJob:
        """Validate, persist the scheduled rev and compact the index now; disk cleanup is the job.

        From return on, reads below `rev` fail with ErrCompacted. Jobs are queued and run
        in order (each one starts where the previous one ended), as `step()`s spread over
        loop iterations (etcd: batches of 1000 with 10 ms pauses); a crash before they
        finish is repaired on the next open (scheduledCompactRev > finishedCompactRev).
        """
        if rev <= self._compact_rev:
            raise ErrCompacted()
        if rev > self._current_rev:
            raise ErrFutureRev()
        self._backend.put(BUCKET_META, META_SCHEDULED_COMPACT, rev_to_bytes(rev, 0))
        self._compact_rev = rev
        job = CompactionJob(self, rev)
        self._compactions.append(job)
        return job

    def _compaction_done(self, job: CompactionJob) -> None:
        if self._compactions and self._compactions[0] is job:
            self._compactions.popleft()
        self._last_compact_rev = job.rev
        self._last_keep = job.keep

    # -- hashes ---------------------------------------------------------------

    def hash_kv(self, rev: int = 0) -> tuple[int, int, int]:
        """(hash, current_rev, compact_rev) over the key bucket up to `rev` (0 = current).

        What is hashed, so every member computes the same value: a zlib (IEEE) crc32
        (etcd uses Castagnoli; there is no C implementation in our dependencies),
        started over b"key" then fed, in key-bucket (= revision) order, the revision
        bytes and the stored value of every entry with main revision <= rev, except
        that entries with revision <= compact_rev are only fed when they are among the
        revisions compaction at `rev` would keep (`TreeIndex.keep(rev)`; no filtering
        if that set is empty), which makes the result independent of how far physical
        compaction has progressed, exactly like etcd's HashByRev.
        """
        return self.hash_kv_plan(rev)()

    def hash_kv_plan(
        self, rev: int = 0, keep: set[Revision] | None = None
    ) -> Callable[[], tuple[int, int, int]]:
        """`hash_kv` split: checks and the index's keep set now, the scan in the returned call.

        The scan reads through an iterator created here, so it hashes the store as of now
        even when run later on a worker thread (`Backend.run_in_worker`) while applies,
        compaction batches and reads go on. `keep` may be passed when the caller computes
        it in slices (`hash_kv_async`), since it does not change after this moment.
        """
        compact, cur = self._compact_rev, self._current_rev
        if 0 < rev < compact:
            raise ErrCompacted()
        if rev > cur:
            raise ErrFutureRev()
        if rev <= 0:
            rev = cur
        if keep is None:
            keep = self._index.keep(rev)
        lower = Revision(compact + 1, 0)
        items = self._backend.iterate(BUCKET_KEY, b"", rev_to_bytes(rev + 1, 0), pin=True)

        def scan() -> tuple[int, int, int]:
            h = zlib.crc32(HASH_KV_SEED)
            crc = zlib.crc32
            for k, v in items:
                if keep:
                    kr = bytes_to_rev(k)
                    if kr < lower and kr not in keep:
                        continue
                h = crc(v, crc(k, h))
            return h, cur, compact

        return scan

    async def hash_kv_async(self, rev: int = 0) -> tuple[int, int, int]:
        """HashKV without holding the loop: keep set in slices between loop turns, scan on a worker thread."""
        async with self._backend.hold():  # the pinned view's DB stays open until the scan ends
            keep: set[Revision] = set()
            at = rev if rev > 0 else self._current_rev
            scan = self.hash_kv_plan(rev, keep)  # checks, pins the view, fixes the revisions
            for _ in self._index.keep_steps(at, keep):
                await asyncio.sleep(0)
            return await self._backend.in_thread(scan)

    def hash(self) -> int:
        """Hash of the whole backend except the consistent index/term (Maintenance.Hash)."""
        return self._backend.hash()

    async def hash_async(self) -> int:
        """Maintenance.Hash on a worker thread, over the backend as of the call."""
        async with self._backend.hold():
            return await self._backend.in_thread(self._backend.hash_plan())

    # -- maintenance ----------------------------------------------------------

    def size(self) -> int:
        return self._backend.size()

    def size_in_use(self) -> int:
        return self._backend.size_in_use()

    def defrag(self) -> None:
        self._backend.defrag()

    def open_snapshot(self) -> SnapshotStream:
        """A frozen, thread-safe stream of the whole backend in the snapshot file format."""
        return self._backend.open_snapshot()

    def snapshot_to(self, dest: str | BinaryIO) -> int:
        return self._backend.snapshot_to(dest)

    async def restore_from_async(
        self, src: str, collect_leased: bool = False
    ) -> tuple[list[tuple[bytes, int]], str | None]:
        """`restore_from` for a running server: nothing slow on the loop.

        On a worker thread: the file is loaded into a staged RocksDB next to ours and a
        complete store (index, revisions, finished compaction) is built from it; meanwhile
        this store keeps serving. Then, holding the backend exclusively (in-flight
        worker-thread users finish first), the directories are swapped and the staged
        memory state adopted: quick. With `collect_leased`, returns (key, lease) of every
        live key with a lease, read from the staged store off the loop (for the lessor), and
        the replaced directory, to be deleted with `Backend.remove_replaced` on a worker
        thread once the caller has caught up with the new contents.
        """
        if self._txn is not None:
            raise RuntimeError("mvcc: cannot restore with a write txn open")

        def stage() -> tuple[KVStore, list[tuple[bytes, int]]]:
            staged_dir = Backend.stage_restore(src, self._path)
            staged = KVStore(staged_dir)
            leased = []
            if collect_leased:
                leased = [(kv.key, kv.lease) for kv in staged.live_kvs() if kv.lease]
            staged.run_compactions()
            staged.close()
            return staged, leased

        staged, leased = await asyncio.to_thread(stage)
        await self._backend.run_in_worker(lambda: self._backend.db.flush(True))  # so that closing has little to write
        async with self._backend.exclusive():
            self.close()
            try:
                moved = Backend.commit_restore(staged._path, self._path)
            finally:
                self._backend.reopen()
            self.restore_generation += 1
            self._adopt(staged)
        return leased, moved

    def _adopt(self, staged: KVStore) -> None:
        """Take over the memory state a staged store built from the same files."""
        self._cache.clear()
        self._index = staged._index
        self._current_rev = staged._current_rev
        self._compact_rev = staged._compact_rev
        self._consistent_index = staged._consistent_index
        self._consistent_term = staged._consistent_term
        self._txn = None
        self._compactions = deque()
        self._last_compact_rev = staged._last_compact_rev
        self._last_keep = staged._last_keep

    def live_kvs(self, page: int = 10000) -> Iterator[KeyValue]:
        """Every live key at the current revision, a page at a time (memory stays bounded)."""
        start = b"\x00"
        while True:
            kvs = self.range(start, b"\x00", limit=page).kvs
            yield from kvs
            if len(kvs) < page:
                return
            start = kvs[-1].key + b"\x00"

    def restore_from(self, src: str | BinaryIO) -> None:
        """Replace the whole store with a snapshot file's contents, then reload from it."""
        if self._txn is not None:
            raise RuntimeError("mvcc: cannot restore with a write txn open")
        self.close()
        try:
            Backend.restore_from(src, self._path)
        finally:
            self._backend.reopen()
            self.restore_generation += 1
            self._reset_memory()
            self._restore()


class CompactionJob:
    """Compacts the index at `rev`, then removes from RocksDB the revisions it dropped.

    Each `step()` is short: first the index is compacted a slice of keys at a time
    (`TreeIndex.compact_steps`), then each step scans at most COMPACTION_BATCH_LIMIT
    revisions and deletes the dropped ones in one write (etcd's batch); the last one also
    records finishedCompactRev. A job starts once the previous one has finished.
    """

    def __init__(self, store: KVStore, rev: int) -> None:
        self._store = store
        self.rev = rev
        self.keep: set[Revision] = set()
        self.done = False
        self._index_steps: Iterator[None] | None = None
        self._index_done = False
        self._started = False
        self._stale: list[Revision] = []
        self._next = b""
        self._end = rev_to_bytes(rev + 1, 0)

    def _start(self) -> None:
        store = self._store
        # Revisions kept by the previous compaction that this one drops.
        self._stale = [r for r in store._last_keep if r not in self.keep]
        self._next = rev_to_bytes(max(store._last_compact_rev, 0), 0)
        self._started = True

    def run(self) -> None:
        while not self.step():
            pass

    def step(self) -> bool:
        """Delete one batch; True once everything is deleted and recorded."""
        if self.done:
            return True
        if not self._index_done:
            if self._index_steps is None:
                self._index_steps = self._store.index.compact_steps(self.rev, self.keep)
            if next(self._index_steps, _END) is not _END:
                return False
            self._index_done = True
        if not self._started:
            self._start()
        b = self._store.backend
        batch = Batch()
        n = self._drop_stale(batch)
        finished = True
        for k, _v in b.iterate(BUCKET_KEY, self._next, self._end):
            if n >= COMPACTION_BATCH_LIMIT:
                self._next = k
                finished = False
                break
            n += 1
            if bytes_to_rev(k) not in self.keep:
                batch.delete_raw(_KEY_PREFIX + k)
        if finished:
            batch.put(BUCKET_META, META_FINISHED_COMPACT, rev_to_bytes(self.rev, 0))
            self._next = self._end
        b.write(batch)
        if finished:
            self.done = True
            self._store._compaction_done(self)
        return finished

    def _drop_stale(self, batch: Batch) -> int:
        n = 0
        while self._stale and n < COMPACTION_BATCH_LIMIT:
            r = self._stale.pop()
            # Whether it was a tombstone is not recorded in the index: delete both keys.
            batch.delete_raw(_KEY_PREFIX + rev_to_bytes(r.main, r.sub))
            batch.delete_raw(_KEY_PREFIX + rev_to_bytes(r.main, r.sub, True))
            n += 1
        return n


class TxnWrite:
    """One write transaction at revision `rev` = current_rev + 1 (etcd's storeTxnWrite).

    Changes are staged: the index and RocksDB see nothing until `end()`, which
    writes all of them plus the consistent index/term in one atomic batch, so a
    crash (or `abort()`) before it leaves no trace. Reads in the txn see its own
    earlier writes, as in etcd. Other buckets' writes that must commit atomically
    with this txn (lease, auth, members) can be added to `batch`.
    """

    def __init__(self, store: KVStore) -> None:
        self._s = store
        self.begin_rev = store.current_rev
        self.rev = self.begin_rev + 1
        self.changes: list[Event] = []
        self.batch = Batch()
        self._ops = self.batch.ops
        self._index_ops: list[tuple[bytes, Revision, bool]] = []
        # Latest state in this txn of every key it touched: the KeyValue, or None if deleted.
        self._pending: dict[bytes, KeyValue | None] = {}
        self._written: list[tuple[bytes, bytes]] = []
        """(revision key, serialized KeyValue) of each put, for the store's value cache at commit."""
        self._closed = False

    def __enter__(self) -> TxnWrite:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._closed:
            self.abort()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("mvcc: txn already ended")

    # -- reads ----------------------------------------------------------------

    def range(
        self, key: bytes, end: bytes | None, rev: int = 0, limit: int = 0, count_only: bool = False
    ) -> RangeResult:
        """Like KVStore.range, at this txn's view: its own changes count once it made one."""
        self._check_open()
        s = self._s
        if not self.changes:
            return s._range(key, end, rev, limit, count_only, self.begin_rev)
        cur = self.rev
        if rev > cur:
            raise ErrFutureRev()
        if 0 < rev < cur:
            return s._range(key, end, rev, limit, count_only, cur)
        touched = [k for k in self._pending if _in_range(k, key, end)]
        if not touched:
            return s._range(key, end, self.begin_rev, limit, count_only, cur)
        return self._merged_range(key, end, limit, count_only, touched)

    def _merged_range(
        self, key: bytes, end: bytes | None, limit: int, count_only: bool, touched: list[bytes]
    ) -> RangeResult:
        keys, revs = self._s.index.range(key, end, self.begin_rev)
        entries: dict[bytes, Revision | KeyValue] = dict(zip(keys, revs))
        for k in touched:
            p = self._pending[k]
            if p is None:
                entries.pop(k, None)
            else:
                entries[k] = p
        ordered = sorted(entries)
        total = len(ordered)
        if count_only:
            return RangeResult([], total, self.rev)
        if limit:
            ordered = ordered[:limit]
        return RangeResult(self._materialize([entries[k] for k in ordered]), total, self.rev)

    def _materialize(self, items: list[Revision | KeyValue]) -> list[KeyValue]:
        """KeyValues for a mix of committed revisions and this txn's own KeyValues, in order."""
        loaded = iter(self._s._load([i for i in items if isinstance(i, Revision)]))
        out = []
        for i in items:
            if isinstance(i, Revision):
                out.append(next(loaded))
            else:
                kv = KeyValue()
                kv.CopyFrom(i)
                out.append(kv)
        return out

    def key_meta(self, key: bytes) -> tuple[int, int, int] | None:
        """(mod_revision, create_revision, version) of `key` in this txn's view, None if absent.

        From the index (or this txn's own writes): no value is read.
        """
        if key in self._pending:
            p = self._pending[key]
            return None if p is None else (p.mod_revision, p.create_revision, p.version)
        got = self._s.index.get(key, self.begin_rev)
        return None if got is None else (got[0].main, got[1].main, got[2])

    # -- writes ---------------------------------------------------------------

    def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        """Put at (rev, next sub); keeps create_revision and bumps version of a live key."""
        if self._closed:
            self._check_open()
        rev = self.rev
        sub = len(self.changes)
        pending = self._pending
        prev: tuple[int, int] | None
        # The key's (create_revision, version) in this txn's view, None if absent.
        if key in pending:
            p = pending[key]
            prev = None if p is None else (p.create_revision, p.version)
        else:
            got = self._s.index.get(key, self.begin_rev)
            prev = None if got is None else (got[1].main, got[2])
        ev = Event()
        kv = ev.kv
        kv.key = key
        kv.mod_revision = rev
        if prev is None:
            kv.create_revision = rev
            kv.version = 1
        else:
            kv.create_revision = prev[0]
            kv.version = prev[1] + 1
        if value:
            kv.value = value
        if lease:
            kv.lease = lease
        entry = (_KEY_PREFIX + rev_to_bytes(rev, sub), kv.SerializeToString())
        self._ops.append(entry)
        self._written.append(entry)
        self._index_ops.append((key, Revision(rev, sub), False))
        self._pending[key] = kv
        self.changes.append(ev)

    def delete_range(self, key: bytes, end: bytes | None) -> tuple[int, list[KeyValue]]:
        """Delete the keys in range that exist in this txn's view; returns them as they were."""
        self._check_open()
        res = self.range(key, end)
        for kv in res.kvs:
            self._delete(kv.key)
        return len(res.kvs), res.kvs

    def _delete(self, key: bytes) -> None:
        rev = self.rev
        sub = len(self.changes)
        self._ops.append((_KEY_PREFIX + rev_to_bytes(rev, sub, True), KeyValue(key=key).SerializeToString()))
        ev = Event(type=_DELETE)
        ev.kv.key = key
        ev.kv.mod_revision = rev
        self._index_ops.append((key, Revision(rev, sub), True))
        self._pending[key] = None
        self.changes.append(ev)

    def end(self, consistent_index: int, consistent_term: int) -> int:
        """Commit atomically with the consistent index/term; returns the store revision after.

        The revision moves only if something changed, but the consistent index is
        stored either way, so a replayed WAL entry is recognised as applied.
        """
        if self._closed:
            self._check_open()
        self._closed = True
        s = self._s
        if s._txn is self:  # `_txn_done`, inline
            s._txn = None
        shared = s._deferred
        if shared is not None:
            self.batch.copy_into(shared)
            s._unflushed.update(self._ops)
            s._deferred_ci = (consistent_index, consistent_term)
        else:
            wb = self.batch.write_batch
            wb.put(_CI_KEY, _U64.pack(consistent_index))
            wb.put(_CT_KEY, _U64.pack(consistent_term))
            t0 = time.perf_counter()
            s._raw_backend.db.write(wb)
            s._note_commit(time.perf_counter() - t0)
        add = s._cache.add
        for k, v in self._written:
            add(k, v)
        index = s.index
        for key, r, tomb in self._index_ops:
            if tomb:
                index.tombstone(key, r)
            else:
                index.put(key, r)
        if self.changes:
            s._current_rev = self.rev
        s._consistent_index = consistent_index
        s._consistent_term = consistent_term
        if self.changes:
            for fn in s._observers:
                fn(self.rev, self.changes)
        return s._current_rev

    def abort(self) -> None:
        """Drop every staged change; the store is as if the txn never started."""
        self._closed = True
        self._s._txn_done(self)
        self._index_ops.clear()
        self._pending.clear()
        self._written.clear()


__all__ = [
    "COMPACTION_BATCH_LIMIT",
    "COMPACTION_SLEEP_SECONDS",
    "CompactionJob",
    "KVStore",
    "RangeResult",
    "TxnWrite",
]

