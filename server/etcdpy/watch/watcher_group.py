"""Watcher groups and per-watcher event batches (etcd's mvcc `watcher_group.go`).

A group finds the watchers of a key in O(1 + log ranges): single-key watchers
through a dict keyed by the key, range watchers through an `IntervalIndex`
that holds one watcher set per distinct interval. Watcher sets are dicts used
as ordered sets, so iteration order (and therefore delivery order across
watchers, and test outcomes) is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from etcdpy.pb.kv_pb2 import Event
from etcdpy.watch.interval import IntervalIndex
from etcdpy.watch.watcher import Watcher

WatcherSet = dict[Watcher, None]


def _interval(w: Watcher) -> tuple[bytes, bytes | None]:
    """The index interval of a range watcher: b"" (from-key) becomes an unbounded end."""
    return w.key, (w.end or None)


class WatcherGroup:
    """A collection of watchers organised by what they watch."""

    def __init__(self) -> None:
        self.key_watchers: dict[bytes, WatcherSet] = {}
        self.ranges: IntervalIndex[WatcherSet] = IntervalIndex()
        self.watchers: WatcherSet = {}

    def __len__(self) -> int:
        return len(self.watchers)

    def __contains__(self, w: object) -> bool:
        return w in self.watchers

    def __iter__(self) -> Iterator[Watcher]:
        return iter(list(self.watchers))

    def add(self, w: Watcher) -> None:
        if w in self.watchers:
            raise RuntimeError(f"watcher added twice: {w!r}")
        self.watchers[w] = None
        if w.end is None:
            self.key_watchers.setdefault(w.key, {})[w] = None
            return
        begin, end = _interval(w)
        ws = self.ranges.get(begin, end)
        if ws is None:
            self.ranges.insert(begin, end, {w: None})
        else:
            ws[w] = None

    def delete(self, w: Watcher) -> bool:
        """Remove `w`; False if it was not in the group."""
        if w not in self.watchers:
            return False
        del self.watchers[w]
        if w.end is None:
            ws = self.key_watchers[w.key]
            del ws[w]
            if not ws:
                del self.key_watchers[w.key]
            return True
        begin, end = _interval(w)
        rs = self.ranges.get(begin, end)
        if rs is None:
            raise RuntimeError(f"range watcher missing from the interval index: {w!r}")
        del rs[w]
        if not rs:
            self.ranges.delete(begin, end)
        return True

    def contains_key(self, key: bytes) -> bool:
        """Whether any watcher in the group watches `key`."""
        return key in self.key_watchers or self.ranges.intersects(key)

    def watchers_of(self, key: bytes) -> Iterable[Watcher]:
        """Every watcher whose key or range contains `key` (no copy in the common cases)."""
        keyed = self.key_watchers.get(key)
        ranged = self.ranges.stab(key) if len(self.ranges) else []
        if not ranged:
            return keyed or ()
        if keyed is None and len(ranged) == 1:
            return ranged[0]
        out: WatcherSet = dict(keyed) if keyed else {}
        for rs in ranged:
            out.update(rs)
        return out

    def choose(self, max_watchers: int, cur_rev: int, compact_rev: int) -> tuple[WatcherGroup, int | None]:
        """Pick up to `max_watchers` watchers to sync and the lowest revision they need.

        Returns the group itself when it is small enough (no copy). Watchers
        whose next revision was compacted are included (the caller cancels them)
        but do not lower the revision; None when no chosen watcher needs history.
        """
        if len(self.watchers) <= max_watchers:
            chosen = self
        else:
            chosen = WatcherGroup()
            for i, w in enumerate(self.watchers):
                if i >= max_watchers:
                    break
                chosen.add(w)
        min_rev: int | None = None
        for w in chosen.watchers:
            if w.min_rev > cur_rev:
                if not w.restore:
                    raise RuntimeError(f"watcher min revision {w.min_rev} exceeds current revision {cur_rev}")
                w.restore = False
            if w.min_rev < compact_rev:
                continue
            if min_rev is None or w.min_rev < min_rev:
                min_rev = w.min_rev
        return chosen, min_rev


def new_watcher_batch(group: WatcherGroup, events: Sequence[Event]) -> dict[Watcher, list[Event]]:
    """Map each watcher of `group` to the events it should get, in revision order.

    An event below a watcher's `min_rev` was already delivered to it (or predates
    its start) and is skipped, so nothing is ever delivered twice.
    """
    batch: dict[Watcher, list[Event]] = {}
    if not group.watchers:
        return batch
    for ev in events:
        kv = ev.kv
        rev = kv.mod_revision
        for w in group.watchers_of(kv.key):
            if rev >= w.min_rev:
                evs = batch.get(w)
                if evs is None:
                    batch[w] = [ev]
                else:
                    evs.append(ev)
    return batch


__all__ = ["WatcherGroup", "WatcherSet", "new_watcher_batch"]
