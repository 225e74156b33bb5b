"""The write-ahead log: durable raft entries, hard state and snapshot markers.

Mirrors etcd's server/storage/wal: a directory of segment files
`<seq>-<first index>.wal`, each starting with a CRC record that carries the
running CRC of the previous segment, then the metadata and the latest hard state
so any suffix of segments can be replayed on its own. The record format lives in
`record.py`.

Concurrency: one writer. Every public method takes an internal lock, so calling
`save` from a worker thread while the event loop thread calls `close` is safe;
the blocking parts (os.write, os.fdatasync) release the GIL.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence

from etcdpy.raft.types import Entry, HardState

from . import files
from . import record as rec
from .errors import (
    SnapshotMismatchError,
    SnapshotNotFoundError,
    WalCorruptError,
    WalEntryGapError,
    WalExistsError,
    WalNotFoundError,
    WalStateError,
)
from .files import (
    Segment,
    fsync_dir,
    list_segments,
    lock_fd,
    open_locked,
    read_fd,
    segment_name,
    write_all,
)
from .record import RecordType, WalSnapshot

SEGMENT_SIZE = 64 * 1024 * 1024
"""A segment is cut once it grows past this many bytes (etcd's SegmentSizeBytes)."""

_CUT_TMP_NAME = "segment.wal.tmp"


class WAL:
    """An open write-ahead log. Build it with `WAL.create` or `WAL.open`, never directly."""

    def __init__(
        self, dirpath: str, segments: list[Segment], segment_size: int, preallocate: bool, start: WalSnapshot | None
    ) -> None:
        self.dirpath = dirpath
        self.segment_size = segment_size
        self.preallocate = preallocate
        self.on_fsync: Callable[[float], None] | None = None
        """Called with the duration in seconds of every fdatasync (metrics hook)."""
        self._segments = segments
        self._start = start
        self._lock = threading.Lock()
        self._metadata = b""
        self._state: tuple[int, int, int] = (0, 0, 0)
        self._enti = 0
        self._crc = 0
        self._offset = 0
        self._writable = False
        self._read_done = False
        self._closed = False
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ create / open

    @staticmethod
    def exists(dirpath: str) -> bool:
        """Whether `dirpath` holds at least one WAL segment."""
        return bool(list_segments(dirpath))

    @classmethod
    def create(
        cls,
        dirpath: str,
        metadata: bytes,
        *,
        segment_size: int = SEGMENT_SIZE,
        preallocate: bool = True,
        initial: tuple[HardState, Sequence[Entry]] | None = None,
    ) -> WAL:
        """Create a new WAL holding `metadata` (and the `initial` entries and hard state, if
        given); the result is ready for appends.

        The first segment is written and fsynced in `<dirpath>.tmp`, which is then
        renamed into place: a crash leaves either no WAL or a complete one, never a
        directory with a half-written first segment. A new member passes its bootstrap
        entries as `initial`, so that its WAL never exists without them: a WAL holding only
        the metadata would restart a member that knows no voters, not even itself, and
        never campaigns.
        """
        if cls.exists(dirpath):
            raise WalExistsError(f"WAL already exists in {dirpath}")
        dirpath = os.path.abspath(dirpath)
        parent = os.path.dirname(dirpath)
        os.makedirs(parent, exist_ok=True)
        tmp = dirpath + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o700)
        name = segment_name(0, 0)
        fd = open_locked(os.path.join(tmp, name), os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            parts: list[bytes] = []
            crc = rec.append_record(parts, RecordType.CRC, rec.encode_crc(0), 0)
            crc = rec.append_record(parts, RecordType.METADATA, bytes(metadata), crc)
            crc = rec.append_record(parts, RecordType.SNAPSHOT, rec.encode_snapshot(WalSnapshot()), crc)
            state, entries = initial if initial is not None else (None, ())
            crc, new_state = _encode_batch(parts, crc, entries, state, (0, 0, 0))
            data = b"".join(parts)
            write_all(fd, data)
            if preallocate:
                files.preallocate(fd, segment_size)
            os.fsync(fd)
            fsync_dir(tmp)
            _rename_dir(tmp, dirpath)
            fsync_dir(parent)
        except BaseException:
            os.close(fd)
            raise
        wal = cls(dirpath, [Segment(0, 0, os.path.join(dirpath, name), fd)], segment_size, preallocate, None)
        wal._metadata = bytes(metadata)
        wal._crc = crc
        wal._offset = len(data)
        if entries:
            wal._enti = entries[-1].index
        if new_state is not None:
            wal._state = new_state
        wal._read_done = True
        wal._writable = True
        return wal

    @classmethod
    def open(
        cls,
        dirpath: str,
        snap: WalSnapshot | None = None,
        *,
        segment_size: int = SEGMENT_SIZE,
        preallocate: bool = True,
    ) -> WAL:
        """Open and lock the segments needed to replay from `snap` (all segments if None).

        Segments older than the last one whose first index is <= snap.index are not
        needed and stay unlocked (release_to deletes them). Call `read_all` next.
        """
        dirpath = os.path.abspath(dirpath)
        segments = list_segments(dirpath)
        if not segments:
            raise WalNotFoundError(f"no WAL segments in {dirpath}")
        first = _select_first(segments, snap)
        _check_contiguous(segments[first:])
        try:
            for seg in segments[first:]:
                seg.fd = open_locked(seg.path)
        except BaseException:
            _close_fds(segments)
            raise
        return cls(dirpath, segments, segment_size, preallocate, snap)

    # ------------------------------------------------------------------ reading

    def read_all(self) -> tuple[bytes, HardState, list[Entry]]:
        """Replay the log: (metadata, last hard state, entries after the snapshot).

        A torn final record (crash during a write that was never acknowledged) is
        cut off and the file truncated; any other damage raises WalCorruptError.
        After it returns the WAL appends at the end of the last segment.
        """
        with self._lock:
            self._check_open()
            if self._read_done:
                raise WalStateError("read_all may be called only once, right after open")
            self._read_done = True
            replay = _Replay(self._start)
            held = [s for s in self._segments if s.fd is not None]
            crc: int | None = None
            scan = None
            for i, seg in enumerate(held):
                assert seg.fd is not None
                buf = read_fd(seg.fd)
                scan = rec.scan_segment(buf, crc, last=i == len(held) - 1, path=seg.path)
                if not scan.records:
                    raise WalCorruptError("segment holds no valid record", seg.path, 0)
                replay.feed(buf, scan.records, seg.path)
                crc = scan.crc
            assert scan is not None and crc is not None
            tail = held[-1]
            assert tail.fd is not None
            if scan.torn:
                self._repair_tail(tail.fd, scan.end)
            if self.preallocate:
                files.preallocate(tail.fd, self.segment_size)
            if self._start is not None and not replay.matched:
                raise SnapshotNotFoundError(
                    f"no snapshot marker index={self._start.index} term={self._start.term} in the WAL"
                )
            if replay.metadata is None:
                raise WalCorruptError("no metadata record found", self.dirpath)
            os.lseek(tail.fd, scan.end, os.SEEK_SET)
            self._metadata = replay.metadata
            self._state = (replay.state.term, replay.state.vote, replay.state.commit)
            self._enti = replay.enti
            self._crc = crc
            self._offset = scan.end
            self._writable = True
            return replay.metadata, replay.state, replay.entries

    def _repair_tail(self, fd: int, end: int) -> None:
        """Drop the torn bytes durably, so later appends never sit before stale garbage."""
        os.ftruncate(fd, end)
        os.fsync(fd)

    # ------------------------------------------------------------------ writing

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Append `entries` then `hard_state` and make them durable with ONE fdatasync.

        An empty or unchanged hard state is not written; a call with nothing to write
        returns without syncing. Group commit is the caller's job: pass everything
        that arrived during the previous fsync in one call.
        """
        with self._lock:
            self._check_writable()
            parts: list[bytes] = []
            crc, new_state = _encode_batch(parts, self._crc, entries, hard_state, self._state)
            if not parts:
                return
            self._append(b"".join(parts), crc)
            if entries:
                self._enti = entries[-1].index
            if new_state is not None:
                self._state = new_state
            self._sync()
            if self._offset >= self.segment_size:
                self._cut()

    def save_snapshot(self, snap: WalSnapshot) -> None:
        """Append a snapshot marker and sync it.

        The server must save the snapshot file (etcdpy.snap) first: a marker without
        a file would make `load_newest_available` pick a snapshot that does not exist.
        """
        with self._lock:
            self._check_writable()
            crc = self._crc
            parts: list[bytes] = []
            crc = rec.append_record(parts, RecordType.SNAPSHOT, rec.encode_snapshot(snap), crc)
            self._append(b"".join(parts), crc)
            # A later segment is named after enti+1; keep it past the marker so that
            # opening at this snapshot still selects the segment holding the marker.
            self._enti = max(self._enti, snap.index)
            self._sync()

    def release_to(self, index: int) -> None:
        """Delete segments that only hold entries below `index`.

        Keeps the newest segment whose first index is below `index` (it may hold
        `index` itself) and everything after it, following etcd's ReleaseLockTo.
        """
        with self._lock:
            self._check_open()
            keep = len(self._segments) - 1
            for i, seg in enumerate(self._segments):
                if seg.index >= index:
                    keep = i - 1
                    break
            if keep <= 0:
                return
            for seg in self._segments[:keep]:
                if seg.fd is not None:
                    os.close(seg.fd)
                    seg.fd = None
                os.unlink(seg.path)
            del self._segments[:keep]
            fsync_dir(self.dirpath)

    def close(self) -> None:
        """Release every lock and file descriptor; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writable = False
            _close_fds(self._segments)

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ introspection

    @property
    def metadata(self) -> bytes:
        return self._metadata

    @property
    def tail_offset(self) -> int:
        """Where the next record goes in the last segment (the end of valid data after `read_all`)."""
        return self._offset

    @property
    def last_index(self) -> int:
        """Index of the last entry (or snapshot marker) written or replayed."""
        return self._enti

    def segment_paths(self) -> list[str]:
        """Paths of the segments this WAL knows about, oldest first (for tests and tools)."""
        with self._lock:
            return [s.path for s in self._segments]

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise WalStateError("WAL is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failure is not None:
            raise WalStateError("WAL failed earlier; restart to recover") from self._failure
        if not self._writable:
            raise WalStateError("call read_all before appending")

    def _tail_fd(self) -> int:
        fd = self._segments[-1].fd
        assert fd is not None
        return fd

    def _append(self, data: bytes, crc: int) -> None:
        try:
            write_all(self._tail_fd(), data)
        except BaseException as exc:
            self._failure = exc
            raise
        self._offset += len(data)
        self._crc = crc

    def _sync(self) -> None:
        """fdatasync the tail; a failure poisons the WAL (the page cache state is unknown)."""
        t0 = time.perf_counter()
        try:
            os.fdatasync(self._tail_fd())
        except BaseException as exc:
            self._failure = exc
            raise
        hook = self.on_fsync
        if hook is not None:
            hook(time.perf_counter() - t0)

    def _cut(self) -> None:
        """Start a new segment: written and synced under a temp name, then renamed.

        The new segment opens with the CRC record (carrying the chain), the metadata
        and the latest hard state, so it can be replayed without its predecessors.
        """
        tail = self._segments[-1]
        try:
            # Give back the unused preallocated space of the finished segment.
            os.ftruncate(self._tail_fd(), self._offset)
        except BaseException as exc:
            self._failure = exc
            raise
        seq, index = tail.seq + 1, self._enti + 1
        new = Segment(seq, index, os.path.join(self.dirpath, segment_name(seq, index)))
        tmp = os.path.join(self.dirpath, _CUT_TMP_NAME)
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except BaseException as exc:
            self._failure = exc
            raise
        try:
            lock_fd(fd, tmp)
            parts: list[bytes] = []
            crc = rec.append_record(parts, RecordType.CRC, rec.encode_crc(self._crc), self._crc)
            crc = rec.append_record(parts, RecordType.METADATA, self._metadata, crc)
            if self._state != (0, 0, 0):
                term, vote, commit = self._state
                state = HardState(term=term, vote=vote, commit=commit)
                crc = rec.append_record(parts, RecordType.STATE, rec.encode_state(state), crc)
            data = b"".join(parts)
            if self.preallocate:
                files.preallocate(fd, self.segment_size)
            write_all(fd, data)
            os.fdatasync(fd)
            os.rename(tmp, new.path)
            fsync_dir(self.dirpath)
        except BaseException as exc:
            os.close(fd)
            self._failure = exc
            raise
        new.fd = fd
        self._segments.append(new)
        self._crc = crc
        self._offset = len(data)


def _encode_batch(
    parts: list[bytes],
    crc: int,
    entries: Sequence[Entry],
    hard_state: HardState | None,
    written: tuple[int, int, int],
) -> tuple[int, tuple[int, int, int] | None]:
    """Append the records of `entries`, then of `hard_state` unless it is empty or equals the
    `written` one, to `parts`; returns the new CRC and the state written (None if none was)."""
    for entry in entries:
        crc = rec.append_entry(parts, entry, crc)
    if hard_state is None or hard_state.is_empty():
        return crc, None
    state = (hard_state.term, hard_state.vote, hard_state.commit)
    if state == written:
        return crc, None
    return rec.append_record(parts, RecordType.STATE, rec.encode_state(hard_state), crc), state


class _Replay:
    """Accumulates the state `read_all` returns while records stream by."""

    def __init__(self, start: WalSnapshot | None) -> None:
        self.start = start
        self.base = start.index if start is not None else None
        self.metadata: bytes | None = None
        self.state = HardState()
        self.entries: list[Entry] = []
        self.enti = start.index if start is not None else 0
        self.matched = False

    def feed(self, buf: bytes, records: list[tuple[int, int, int]], path: str) -> None:
        for rtype, start, end in records:
            if rtype == RecordType.ENTRY:
                self._entry(rec.decode_entry(buf, start, end, path))
            elif rtype == RecordType.STATE:
                self.state = rec.decode_state(buf, start, end, path)
            elif rtype == RecordType.METADATA:
                self._metadata(buf[start:end], path)
            elif rtype == RecordType.SNAPSHOT:
                self._marker(rec.decode_snapshot(buf, start, end, path))

    def _entry(self, e: Entry) -> None:
        self.enti = e.index
        if self.base is not None and e.index <= self.base:
            return
        ents = self.entries
        if not ents:
            if self.base is not None and e.index != self.base + 1:
                raise WalEntryGapError(f"first entry after snapshot {self.base} has index {e.index}")
            ents.append(e)
            return
        last = ents[-1].index
        if e.index == last + 1:
            ents.append(e)
        elif e.index <= last:
            # Raft overwrote a conflicting uncommitted suffix: the later write wins.
            del ents[max(0, e.index - ents[0].index) :]
            ents.append(e)
        else:
            raise WalEntryGapError(f"entry {e.index} follows entry {last}")

    def _metadata(self, data: bytes, path: str) -> None:
        if self.metadata is not None and self.metadata != data:
            raise WalCorruptError("conflicting metadata records", path)
        self.metadata = data

    def _marker(self, snap: WalSnapshot) -> None:
        self.enti = max(self.enti, snap.index)
        if self.start is not None and snap.index == self.start.index:
            if snap.term != self.start.term:
                raise SnapshotMismatchError(
                    f"snapshot marker at index {snap.index} has term {snap.term}, expected {self.start.term}"
                )
            self.matched = True


def valid_snapshot_entries(dirpath: str) -> list[WalSnapshot]:
    """Snapshot markers in the WAL whose index is covered by the last committed hard state.

    Reads without locking (the WAL may be open for writing elsewhere) and tolerates
    a torn tail. A marker above the last durable commit index may belong to a
    snapshot whose hard state never reached disk, so it is left out (as etcd does).
    """
    segments = list_segments(os.path.abspath(dirpath))
    if not segments:
        raise WalNotFoundError(f"no WAL segments in {dirpath}")
    _check_contiguous(segments)
    snaps: list[WalSnapshot] = []
    state = HardState()
    crc: int | None = None
    for i, seg in enumerate(segments):
        fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            buf = read_fd(fd)
        finally:
            os.close(fd)
        scan = rec.scan_segment(buf, crc, last=i == len(segments) - 1, path=seg.path)
        for rtype, start, end in scan.records:
            if rtype == RecordType.SNAPSHOT:
                snaps.append(rec.decode_snapshot(buf, start, end, seg.path))
            elif rtype == RecordType.STATE:
                state = rec.decode_state(buf, start, end, seg.path)
        crc = scan.crc
    return [s for s in snaps if s.index <= state.commit]


def _select_first(segments: list[Segment], snap: WalSnapshot | None) -> int:
    """Position of the last segment whose first index is <= snap.index (0 without snap)."""
    if snap is None:
        return 0
    for i in range(len(segments) - 1, -1, -1):
        if segments[i].index <= snap.index:
            return i
    raise SnapshotNotFoundError(
        f"WAL segments start after snapshot index {snap.index} (first segment index {segments[0].index})"
    )


def _check_contiguous(segments: list[Segment]) -> None:
    for prev, cur in zip(segments, segments[1:]):
        if cur.seq != prev.seq + 1:
            raise WalCorruptError(f"missing WAL segment between seq {prev.seq} and {cur.seq}", cur.path)


def _close_fds(segments: list[Segment]) -> None:
    for seg in segments:
        if seg.fd is not None:
            try:
                os.close(seg.fd)
            finally:
                seg.fd = None


def _rename_dir(src: str, dst: str) -> None:
    """rename(2) replaces an empty `dst`; a non-empty one means someone else's data."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            shutil.rmtree(src, ignore_errors=True)
            raise WalExistsError(f"{dst} exists and is not empty") from exc
        raise


__all__ = ["SEGMENT_SIZE", "WAL", "WalSnapshot", "valid_snapshot_entries"]
