"""MemoryStorage: the in-memory log store the raft core reads from.

Semantics follow etcd-io/raft's MemoryStorage: the server appends entries and
the hard state here *after* persisting them to the WAL, so raft can read back
stable entries; log compaction drops a prefix and keeps the term of the last
compacted entry in a dummy entry at position 0.
"""

from __future__ import annotations

from typing import Protocol

from .errors import ErrCompacted, ErrSnapOutOfDate, ErrUnavailable
from .types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata, entry_size


class Storage(Protocol):
    """What the raft core needs from a log store (etcd-io/raft's Storage interface)."""

    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]: ...

    def term(self, i: int) -> int: ...

    def last_index(self) -> int: ...

    def first_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...


def size_limited_end(ents: list[Entry], lo: int, hi: int, max_size: int | None) -> int:
    """End position in ents[lo:hi] so the range is within `max_size` bytes (at least one entry).

    Looks only at the entries it keeps, so taking a small batch from the front
    of a long range costs O(batch), not O(range).
    """
    if max_size is None or hi - lo <= 1:
        return hi
    size = entry_size(ents[lo])
    end = lo + 1
    while end < hi:
        size += entry_size(ents[end])
        if size > max_size:
            break
        end += 1
    return end


def limit_size(ents: list[Entry], max_size: int | None) -> list[Entry]:
    """Return the longest prefix of `ents` within `max_size` bytes (always at least one entry)."""
    if max_size is None or len(ents) <= 1:
        return ents
    size = entry_size(ents[0])
    limit = 1
    n = len(ents)
    while limit < n:
        size += entry_size(ents[limit])
        if size > max_size:
            break
        limit += 1
    return ents if limit == n else ents[:limit]


class MemoryStorage:
    """A Storage backed by a Python list; ents[0] is a dummy holding the snapshot index/term."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot()
        self.ents: list[Entry] = [Entry()]

    # -- reads -------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        cs = self._snapshot.metadata.conf_state
        return (
            HardState(self.hard_state.term, self.hard_state.vote, self.hard_state.commit),
            ConfState(list(cs.voters), list(cs.learners)),
        )

    def set_hard_state(self, hs: HardState) -> None:
        self.hard_state = HardState(hs.term, hs.vote, hs.commit)

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in [lo, hi), at most `max_size` bytes (but at least one)."""
        offset = self.ents[0].index
        if lo <= offset:
            raise ErrCompacted(f"index {lo} is compacted (first index {offset + 1})")
        if hi > self._last_index() + 1:
            raise ValueError(f"entries' hi({hi}) is out of bound lastindex({self._last_index()})")
        if len(self.ents) == 1:  # only the dummy entry
            raise ErrUnavailable("no entries")
        lo_pos = lo - offset
        return self.ents[lo_pos : size_limited_end(self.ents, lo_pos, hi - offset, max_size)]

    def term(self, i: int) -> int:
        offset = self.ents[0].index
        if i < offset:
            raise ErrCompacted(f"index {i} is compacted")
        if i - offset >= len(self.ents):
            raise ErrUnavailable(f"index {i} is unavailable")
        return self.ents[i - offset].term

    def last_index(self) -> int:
        return self._last_index()

    def _last_index(self) -> int:
        return self.ents[0].index + len(self.ents) - 1

    def first_index(self) -> int:
        return self.ents[0].index + 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes ------------------------------------------------------------
    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the whole log with `snap` (a follower installing the leader's snapshot)."""
        if self._snapshot.metadata.index >= snap.metadata.index:
            raise ErrSnapOutOfDate("snapshot is out of date")
        self._snapshot = snap
        self.ents = [Entry(term=snap.metadata.term, index=snap.metadata.index)]

    def create_snapshot(self, i: int, cs: ConfState | None, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine at applied index `i` (log is kept; see compact)."""
        if i <= self._snapshot.metadata.index:
            raise ErrSnapOutOfDate("snapshot is out of date")
        offset = self.ents[0].index
        if i > self._last_index():
            raise ValueError(f"snapshot {i} is out of bound lastindex({self._last_index()})")
        meta = SnapshotMetadata(
            conf_state=cs if cs is not None else self._snapshot.metadata.conf_state,
            index=i,
            term=self.ents[i - offset].term,
        )
        self._snapshot = Snapshot(data=data, metadata=meta)
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Discard entries before `compact_index`; the entry at it becomes the new dummy."""
        offset = self.ents[0].index
        if compact_index <= offset:
            raise ErrCompacted(f"index {compact_index} is already compacted")
        if compact_index > self._last_index():
            raise ValueError(f"compact {compact_index} is out of bound lastindex({self._last_index()})")
        i = compact_index - offset
        head = self.ents[i]
        rest = self.ents[i + 1 :]
        self.ents = [Entry(term=head.term, index=head.index)] + rest

    def append(self, entries: list[Entry]) -> None:
        """Append (persisted) entries; a conflicting suffix is replaced, compacted ones are skipped."""
        if not entries:
            return
        first = self.first_index()
        last = entries[0].index + len(entries) - 1
        if last < first:
            return  # all already compacted
        if first > entries[0].index:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self.ents[0].index
        n = len(self.ents)
        if offset == n:
            self.ents.extend(entries)
        elif offset < n:
            del self.ents[offset:]
            self.ents.extend(entries)
        else:
            raise ValueError(f"missing log entry [last: {self._last_index()}, append at: {entries[0].index}]")
