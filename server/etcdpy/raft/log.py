"""The raft log: a stable part (Storage, already persisted) plus an unstable tail.

Mirrors etcd-io/raft's raftLog/unstable split. Entries the node has accepted but
the server has not yet persisted live in `Unstable`; once the server persists a
Ready and calls advance, they are dropped from here because the server has also
appended them to MemoryStorage. Entry objects are never mutated after they enter
a log, so slices can share them without copying.
"""

from __future__ import annotations

from .errors import ErrCompacted, ErrUnavailable
from .storage import Storage, limit_size, size_limited_end
from .types import Entry, Snapshot


class RaftInvariantError(AssertionError):
    """A broken internal invariant (etcd panics here); never expected in a correct run."""


class Unstable:
    """Entries and an optional snapshot not yet persisted; entries[i] has index offset + i."""

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        if i < self.offset:
            snap = self.snapshot
            if snap is not None and snap.metadata.index == i:
                return snap.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def stable_to(self, i: int, t: int) -> None:
        """Forget entries up to `i` once persisted, unless they were replaced meanwhile."""
        gt = self.maybe_term(i)
        if gt is None:
            return
        if gt == t and i >= self.offset:
            del self.entries[: i + 1 - self.offset]
            self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, s: Snapshot) -> None:
        self.offset = s.metadata.index + 1
        self.entries = []
        self.snapshot = s

    def truncate_and_append(self, ents: list[Entry]) -> None:
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)  # the common case: O(len(ents))
        elif after <= self.offset:
            # Replace everything unstable; the stable log is truncated by the
            # server when it persists these (MemoryStorage.append truncates).
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        if lo > hi or lo < self.offset or hi > self.offset + len(self.entries):
            raise RaftInvariantError(
                f"unstable.slice[{lo},{hi}) out of bound [{self.offset},{self.offset + len(self.entries)}]"
            )
        lo_pos = lo - self.offset
        return self.entries[lo_pos : size_limited_end(self.entries, lo_pos, hi - self.offset, max_size)]


class RaftLog:
    """The node's view of the log: storage + unstable, with commit and apply cursors."""

    def __init__(self, storage: Storage, max_next_ents_size: int | None = None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        self.max_next_ents_size = max_next_ents_size

    # -- indexes and terms -------------------------------------------------
    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def term(self, i: int) -> int:
        """Term of entry `i`; 0 beyond the last index; ErrCompacted below the dummy entry."""
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        dummy = self.first_index() - 1
        if i < dummy:
            raise ErrCompacted(f"index {i} is compacted")
        if i > self.last_index():
            return 0
        return self.storage.term(i)

    def zero_term_on_err(self, i: int) -> int:
        try:
            return self.term(i)
        except (ErrCompacted, ErrUnavailable):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except (ErrCompacted, ErrUnavailable):
            return False

    def is_up_to_date(self, lasti: int, term: int) -> bool:
        """Is a candidate's log (last index/term) at least as up to date as ours (§5.4.1)?"""
        lt = self.last_term()
        return term > lt or (term == lt and lasti >= self.last_index())

    # -- appending -----------------------------------------------------------
    def maybe_append(self, index: int, log_term: int, committed: int, ents: list[Entry]) -> tuple[int, bool]:
        """Follower side of AppendEntries: append `ents` after (index, log_term) if it matches."""
        if not self.match_term(index, log_term):
            return 0, False
        lastnewi = index + len(ents)
        if ents:
            ci = self.find_conflict(ents)
            if ci != 0:
                if ci <= self.committed:
                    raise RaftInvariantError(f"entry {ci} conflicts with committed entry [committed({self.committed})]")
                self.append(ents[ci - index - 1 :])
        self.commit_to(min(committed, lastnewi))
        return lastnewi, True

    def append(self, ents: list[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise RaftInvariantError(f"after({after}) is out of range [committed({self.committed})]")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: list[Entry]) -> int:
        """Index of the first entry whose term differs from ours (or that we lack); 0 if none."""
        # Fast path: the first new entry is beyond our log, so all are new.
        last = self.last_index()
        for e in ents:
            if e.index > last:
                return e.index
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest index <= `index` whose term is <= `term` (fast log back-off, etcd's hint)."""
        while index > 0:
            try:
                our = self.term(index)
            except (ErrCompacted, ErrUnavailable):
                return index, 0
            if our <= term:
                return index, our
            index -= 1
        return 0, 0

    # -- reading -------------------------------------------------------------
    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries) if self.unstable.entries else []

    def has_next_ents(self) -> bool:
        return self.committed + 1 > max(self.applied + 1, self.first_index())

    def next_ents(self) -> list[Entry]:
        """Committed entries not yet applied, at most max_next_ents_size bytes."""
        off = max(self.applied + 1, self.first_index())
        if self.committed + 1 > off:
            return self.slice(off, self.committed + 1, self.max_next_ents_size)
        return []

    def has_pending_snapshot(self) -> bool:
        s = self.unstable.snapshot
        return s is not None and s.metadata.index != 0

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def entries(self, i: int, max_size: int | None = None) -> list[Entry]:
        if i > self.last_index():
            return []
        return self.slice(i, self.last_index() + 1, max_size)

    def all_entries(self) -> list[Entry]:
        return self.entries(self.first_index())

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries [lo, hi) from storage and/or unstable, size-limited (at least one entry)."""
        self._check_bounds(lo, hi)
        if lo == hi:
            return []
        uoff = self.unstable.offset
        ents: list[Entry] = []
        if lo < uoff:
            shi = min(hi, uoff)
            stored = self.storage.entries(lo, shi, max_size)
            if len(stored) < shi - lo:
                return stored
            ents = stored
        if hi > uoff:
            if not ents:
                return self.unstable.slice(max(lo, uoff), hi, max_size)
            ents = ents + self.unstable.slice(uoff, hi, max_size)
            return limit_size(ents, max_size)
        return ents

    def _check_bounds(self, lo: int, hi: int) -> None:
        if lo > hi:
            raise RaftInvariantError(f"invalid slice {lo} > {hi}")
        fi = self.first_index()
        if lo < fi:
            raise ErrCompacted(f"index {lo} is compacted (first index {fi})")
        if hi > self.last_index() + 1:
            raise RaftInvariantError(f"slice[{lo},{hi}) out of bound [{fi},{self.last_index()}]")

    # -- cursors -------------------------------------------------------------
    def commit_to(self, tocommit: int) -> None:
        if self.committed < tocommit:
            if self.last_index() < tocommit:
                raise RaftInvariantError(
                    f"tocommit({tocommit}) is out of range [lastIndex({self.last_index()})]"
                )
            self.committed = tocommit

    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Advance commit to `max_index` only if that entry is from `term` (§5.4.2)."""
        if max_index > self.committed and self.zero_term_on_err(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if self.committed < i or i < self.applied:
            raise RaftInvariantError(f"applied({i}) is out of range [prevApplied({self.applied}), committed({self.committed})]")
        self.applied = i

    def stable_to(self, i: int, t: int) -> None:
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        self.unstable.stable_snap_to(i)

    def restore(self, s: Snapshot) -> None:
        self.committed = s.metadata.index
        self.unstable.restore(s)
