"""The in-memory key index (etcd's `key_index.go` + `index.go`).

RocksDB's key bucket is ordered by revision, so finding "key K as of revision R"
or "all keys in [a, b) at R" needs a second structure ordered by key. Like etcd,
each key has a `KeyIndex` holding its *generations*: a generation is one life of
the key from its creating put to the delete (tombstone) that ends it. The index
holds only revisions; values live in RocksDB and are fetched by revision.

Example (etcd's): put(1.0); put(2.0); tombstone(3.0); put(4.0); tombstone(5.0)
gives generations {1.0, 2.0, 3.0(t)}, {4.0, 5.0(t)}, {} (an empty last
generation means "currently deleted").

Compaction follows current etcd (v3.6): `compact(at)` keeps, per generation that
is still visible at or after `at`, the newest revision <= at and everything
newer; a generation whose tombstone is < at disappears; a tombstone exactly at
`at` is kept (so a watcher starting at the compact revision still sees that
delete); a key left with only its empty generation is dropped from the tree.
`keep(at)` answers "which revisions would compaction keep" without mutating,
and (like etcd) leaves out a tombstone at `at`, so hashes do not depend on it.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator

from sortedcontainers import SortedDict, SortedList

from etcdpy.mvcc.revision import Revision

_MAX_SUB = (1 << 63) - 1
# How many recent (revision, key) changes TreeIndex remembers for counting at
# recent past revisions (paged lists at a fixed revision) without a full walk.
CHANGE_LOG_MAX = 100_000
INDEX_STEP_KEYS = 2000
"""Keys visited per slice of an incremental index compaction or keep (a few ms each)."""


class RevisionNotFound(Exception):
    """Internal: the key has no revision at the requested point (etcd's ErrRevisionNotFound)."""


class Generation:
    """One life of a key: created by `created`, modified at `revs`, `ver` puts so far.

    `ver` counts every put (and the closing tombstone) of the generation, also the
    ones compaction removed from `revs`, which is why the version of revs[n] is
    `ver - (len(revs) - n - 1)`.
    """

    __slots__ = ("ver", "created", "revs")

    def __init__(self, ver: int = 0, created: Revision | None = None, revs: list[Revision] | None = None) -> None:
        self.ver = ver
        self.created = created if created is not None else Revision(0, 0)
        self.revs: list[Revision] = revs if revs is not None else []

    def is_empty(self) -> bool:
        return not self.revs

    def find_revision_index(self, at_rev: int) -> int:
        """Index of the last revision with main <= at_rev, or -1."""
        return bisect.bisect_right(self.revs, (at_rev, _MAX_SUB)) - 1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Generation):
            return NotImplemented
        return self.ver == other.ver and self.created == other.created and self.revs == other.revs

    def __repr__(self) -> str:
        return f"Generation(ver={self.ver}, created={tuple(self.created)}, revs={[tuple(r) for r in self.revs]})"


class KeyIndex:
    """All retained revisions of one key, split into generations."""

    __slots__ = ("key", "modified", "generations")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.modified = Revision(0, 0)
        self.generations: list[Generation] = [Generation()]

    # -- mutation -------------------------------------------------------------

    def put(self, rev: Revision) -> None:
        """Record a put at `rev`; starts the key's life if it is deleted/new."""
        if rev <= self.modified:
            raise ValueError(f"put with revision {tuple(rev)} not above modified {tuple(self.modified)}")
        g = self.generations[-1]
        if not g.revs:
            g.created = rev
        g.revs.append(rev)
        g.ver += 1
        self.modified = rev

    def restore(self, created: Revision, modified: Revision, ver: int) -> None:
        """Start an index rebuilt from disk, where older revisions may be compacted away.

        The stored KeyValue tells the creation revision and version, which the
        surviving revisions alone cannot.
        """
        self.modified = modified
        self.generations = [Generation(ver, created, [modified])]

    def restore_tombstone(self, rev: Revision) -> None:
        """Rebuild a key whose only surviving revision is a tombstone (kept at the compact rev)."""
        self.restore(Revision(0, 0), rev, 1)
        self.generations.append(Generation())

    def tombstone(self, rev: Revision) -> None:
        """Record a delete at `rev`: closes the current generation and opens an empty one."""
        if self.generations[-1].is_empty():
            raise RevisionNotFound(self.key)
        self.put(rev)
        self.generations.append(Generation())

    # -- queries --------------------------------------------------------------

    def is_empty(self) -> bool:
        return len(self.generations) == 1 and not self.generations[0].revs

    def is_live(self) -> bool:
        """True when the key currently exists (its last generation is open)."""
        return bool(self.generations[-1].revs)

    def get(self, at_rev: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of the key as of `at_rev`, or None if absent then."""
        last = self.generations[-1]
        if self.modified.main <= at_rev:
            # Fast path for reads at the latest revision: no search needed.
            if not last.revs:
                return None
            return last.revs[-1], last.created, last.ver
        g = self._find_generation(at_rev)
        if g is None:
            return None
        n = g.find_revision_index(at_rev)
        if n < 0:
            return None
        return g.revs[n], g.created, g.ver - (len(g.revs) - n - 1)

    def _find_generation(self, rev: int) -> Generation | None:
        """The generation alive at `rev`, or None if `rev` falls in a gap (deleted)."""
        last = len(self.generations) - 1
        for i in range(last, -1, -1):
            g = self.generations[i]
            if not g.revs:
                continue
            if i != last and g.revs[-1].main <= rev:
                return None  # the tombstone closing this generation is at or before rev
            if g.revs[0].main <= rev:
                return g
        return None

    def since(self, rev: int) -> list[Revision]:
        """Revisions with main >= rev, one per main revision (the highest sub)."""
        out: list[Revision] = []
        last_main = -1
        for g in self.generations:
            for r in g.revs:
                if r.main < rev:
                    continue
                if r.main == last_main:
                    out[-1] = r
                    continue
                out.append(r)
                last_main = r.main
        return out

    # -- compaction -----------------------------------------------------------

    def _do_compact(self, at_rev: int, available: set[Revision]) -> tuple[int, int]:
        """Find the generation holding the newest revision <= at_rev and add that revision.

        It is the last generation starting at or before at_rev, unless its tombstone is
        below at_rev (the key was deleted then: it moves to the next generation, which
        starts after at_rev). For distinct main revisions this is etcd's forward walk
        ("first generation whose tombstone >= at_rev"); searching backwards also
        handles a delete and re-put of the key inside one txn (same main revision).
        """
        gens = self.generations
        last = len(gens) - 1
        gen_idx = 0
        for i in range(last, -1, -1):
            g = gens[i]
            if g.revs and g.revs[0].main <= at_rev:
                gen_idx = i + 1 if i != last and g.revs[-1].main < at_rev else i
                break
        g = gens[gen_idx]
        rev_idx = g.find_revision_index(at_rev)
        if rev_idx != -1:
            available.add(g.revs[rev_idx])
        return gen_idx, rev_idx

    def compact(self, at_rev: int, available: set[Revision]) -> None:
        """Drop revisions older than the newest one <= at_rev; add the survivor to `available`."""
        gen_idx, rev_idx = self._do_compact(at_rev, available)
        g = self.generations[gen_idx]
        if g.revs and rev_idx != -1:
            del g.revs[:rev_idx]
        del self.generations[:gen_idx]

    def keep(self, at_rev: int, available: set[Revision]) -> None:
        """Add to `available` what compact(at_rev) would keep, minus a tombstone at at_rev."""
        if self.is_empty():
            return
        gen_idx, rev_idx = self._do_compact(at_rev, available)
        g = self.generations[gen_idx]
        if g.revs and rev_idx == len(g.revs) - 1 and gen_idx != len(self.generations) - 1:
            available.discard(g.revs[rev_idx])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyIndex):
            return NotImplemented
        return self.key == other.key and self.modified == other.modified and self.generations == other.generations

    def __repr__(self) -> str:
        return f"KeyIndex({self.key!r}, modified={tuple(self.modified)}, {self.generations})"


class TreeIndex:
    """Keys in byte order (a SortedDict) mapping to their KeyIndex.

    Range semantics for `end`: None or b"" = the single key; b"\\x00" = every key
    >= key; otherwise the half-open interval [key, end).

    Besides the tree it keeps a sorted list of the keys that exist *now*, so reads
    at the latest revision (the common case: kube's paged lists with a total count)
    cost O(log n + limit) instead of a walk over the whole range. For a recent past
    revision (the later pages of a kube list, read at the first page's revision)
    the total is derived from the current count and a log of recent changes.
    """

    def __init__(self) -> None:
        self._tree: SortedDict = SortedDict()
        self._live: SortedList = SortedList()
        self._rev = 0  # highest main revision recorded; reads at or above it use `_live`
        self._log: deque[tuple[int, bytes]] = deque()
        self._log_floor = 0  # every change with main revision > floor is in `_log`

    def _record(self, main: int, key: bytes) -> None:
        log = self._log
        log.append((main, key))
        if main > self._rev:
            self._rev = main
        if len(log) > CHANGE_LOG_MAX:
            dropped, _ = log.popleft()
            if dropped > self._log_floor:
                self._log_floor = dropped

    def _changed_since(self, at_rev: int, cap: int) -> set[bytes] | None:
        """Keys changed after `at_rev`, or None if unknown (log too short) or more than `cap`."""
        if at_rev < self._log_floor:
            return None
        out: set[bytes] = set()
        for main, key in reversed(self._log):
            if main <= at_rev:
                break
            out.add(key)
            if len(out) > cap:
                return None
        return out

    def __len__(self) -> int:
        return len(self._tree)

    @property
    def live_count(self) -> int:
        """Number of keys that currently exist."""
        return len(self._live)

    def key_index(self, key: bytes) -> KeyIndex | None:
        return self._tree.get(key)

    def insert(self, ki: KeyIndex) -> None:
        old = self._tree.get(ki.key)
        if old is not None and old.is_live():
            self._live.remove(ki.key)
        self._tree[ki.key] = ki
        if ki.is_live():
            self._live.add(ki.key)
        self._rev = max(self._rev, ki.modified.main)
        self._log_floor = self._rev  # this change is not in the log: older counts must walk

    def bulk_load(self, kis: dict[bytes, KeyIndex]) -> None:
        """Replace the contents in one sort, much faster than inserting one by one on rebuild."""
        self._tree = SortedDict(kis)
        self._live = SortedList(k for k, ki in kis.items() if ki.is_live())
        self._rev = max((ki.modified.main for ki in kis.values()), default=0)
        self._log.clear()
        self._log_floor = self._rev

    def put(self, key: bytes, rev: Revision) -> None:
        ki = self._tree.get(key)
        if ki is None:
            ki = KeyIndex(key)
            self._tree[key] = ki
        was_live = ki.is_live()
        ki.put(rev)
        if not was_live:
            self._live.add(key)
        self._record(rev.main, key)

    def tombstone(self, key: bytes, rev: Revision) -> None:
        """Delete `key` at `rev`; RevisionNotFound if it is not live."""
        ki = self._tree.get(key)
        if ki is None:
            raise RevisionNotFound(key)
        ki.tombstone(rev)
        self._live.remove(key)
        self._record(rev.main, key)

    def get(self, key: bytes, at_rev: int) -> tuple[Revision, Revision, int] | None:
        """(modified, created, version) of `key` at `at_rev`, or None."""
        ki = self._tree.get(key)
        if ki is None:
            return None
        return ki.get(at_rev)

    def iter_range(self, key: bytes, end: bytes | None) -> Iterator[KeyIndex]:
        """KeyIndex objects in key order for the etcd-style range [key, end)."""
        tree = self._tree
        if not end:
            ki = tree.get(key)
            if ki is not None:
                yield ki
            return
        hi = None if end == b"\x00" else end
        if hi is not None and hi <= key:
            return
        for k in tree.irange(key, hi, inclusive=(True, False)):
            yield tree[k]

    def _live_bounds(self, key: bytes, end: bytes) -> tuple[int, int]:
        """Positions in `_live` of the multi-key range [key, end)."""
        live = self._live
        lo = live.bisect_left(key)
        hi = len(live) if end == b"\x00" else live.bisect_left(end)
        return lo, max(lo, hi)

    def _latest_revs(self, key: bytes, end: bytes, limit: int) -> tuple[list[bytes], list[Revision], int]:
        lo, hi = self._live_bounds(key, end)
        stop = min(hi, lo + limit) if limit else hi
        keys = list(self._live.islice(lo, stop))
        tree = self._tree
        return keys, [tree[k].modified for k in keys], hi - lo

    def range(self, key: bytes, end: bytes | None, at_rev: int, limit: int = 0) -> tuple[list[bytes], list[Revision]]:
        """Keys existing at `at_rev` and their revisions then, at most `limit` (0 = all)."""
        if end and at_rev >= self._rev:
            latest_keys, latest_revs, _ = self._latest_revs(key, end, limit)
            return latest_keys, latest_revs
        keys: list[bytes] = []
        revs: list[Revision] = []
        for ki in self.iter_range(key, end):
            got = ki.get(at_rev)
            if got is None:
                continue
            keys.append(ki.key)
            revs.append(got[0])
            if limit and len(keys) >= limit:
                break
        return keys, revs

    def revisions(self, key: bytes, end: bytes | None, at_rev: int, limit: int = 0) -> tuple[list[Revision], int]:
        """Up to `limit` revisions (0 = all) plus the full count of keys existing at `at_rev`."""
        if end and at_rev >= self._rev:
            _, latest_revs, latest_total = self._latest_revs(key, end, limit)
            return latest_revs, latest_total
        if end and limit:
            past = self._past_count(key, end, at_rev)
            if past is not None:
                return self.range(key, end, at_rev, limit)[1], past
        revs: list[Revision] = []
        total = 0
        for ki in self.iter_range(key, end):
            got = ki.get(at_rev)
            if got is None:
                continue
            if not limit or total < limit:
                revs.append(got[0])
            total += 1
        return revs, total

    def count_revisions(self, key: bytes, end: bytes | None, at_rev: int) -> int:
        """Number of keys in the range that exist at `at_rev`."""
        if end and at_rev >= self._rev:
            lo, hi = self._live_bounds(key, end)
            return hi - lo
        if end:
            past = self._past_count(key, end, at_rev)
            if past is not None:
                return past
        return sum(1 for ki in self.iter_range(key, end) if ki.get(at_rev) is not None)

    def _past_count(self, key: bytes, end: bytes, at_rev: int) -> int | None:
        """Count at a past revision = count now, corrected for keys changed since; None if not cheaper."""
        tree = self._tree
        lo = tree.bisect_left(key)
        hi = len(tree) if end == b"\x00" else tree.bisect_left(end)
        if hi <= lo:
            return 0
        changed = self._changed_since(at_rev, hi - lo)
        if changed is None:
            return None
        lo_live, hi_live = self._live_bounds(key, end)
        count = hi_live - lo_live
        for k in changed:
            if k < key or (end != b"\x00" and k >= end):
                continue
            ki = tree.get(k)
            if ki is None:
                continue
            count += (ki.get(at_rev) is not None) - ki.is_live()
        return count

    def compact(self, rev: int) -> set[Revision]:
        """Compact every key at `rev`; returns the revisions to keep on disk (<= rev)."""
        available: set[Revision] = set()
        emptied: list[bytes] = []
        for key, ki in self._tree.items():
            ki.compact(rev, available)
            if ki.is_empty():
                emptied.append(key)
        for key in emptied:
            del self._tree[key]
        return available

    def keep(self, rev: int) -> set[Revision]:
        """Revisions <= rev that compaction at `rev` would keep (tombstones excluded)."""
        available: set[Revision] = set()
        for ki in self._tree.values():
            ki.keep(rev, available)
        return available

    def compact_steps(self, rev: int, available: set[Revision], batch: int = INDEX_STEP_KEYS) -> Iterator[None]:
        """`compact(rev)` in slices of `batch` keys, adding what stays to `available`; yields between slices.

        Why it may be spread over loop iterations: reads between slices are at revisions
        >= rev (older ones are refused by the store's compact revision) and see the same
        answer from a compacted or an uncompacted key; writes between slices only add
        revisions above rev, which compaction at rev leaves alone.
        """
        keys = list(self._tree)  # SortedDict iteration is a C-level chain; .keys() is not
        tree = self._tree
        for i in range(0, len(keys), batch):
            for key in keys[i : i + batch]:
                ki = tree.get(key)
                if ki is None:
                    continue
                ki.compact(rev, available)
                if ki.is_empty():
                    del tree[key]
            yield

    def keep_steps(self, rev: int, available: set[Revision], batch: int = INDEX_STEP_KEYS) -> Iterator[None]:
        """`keep(rev)` in slices of `batch` keys, yielding between slices.

        The answer is that of the moment it started: later writes add revisions above
        `rev`, and compaction at or below `rev` keeps the newest revision <= rev.
        """
        keys = list(self._tree)  # SortedDict iteration is a C-level chain; .keys() is not
        tree = self._tree
        for i in range(0, len(keys), batch):
            for key in keys[i : i + batch]:
                ki = tree.get(key)
                if ki is not None:
                    ki.keep(rev, available)
            yield

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TreeIndex):
            return NotImplemented
        return dict(self._tree) == dict(other._tree)
