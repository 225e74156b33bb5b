"""A bounded in-memory copy of recently written or read stored KeyValues, by revision key.

Why: a point read of one key spends more time getting its value out of RocksDB (through
rocksdict's binding: a memtable seek, a copy, the Python object) than in the index lookup,
the request decoding and the response encoding together. etcd does not pay this: bbolt is
memory-mapped. The values worth keeping are the ones just written or read, so writes enter
on commit and reads on a miss.

Why it cannot serve a stale value: an entry is keyed by its revision, and the value stored at
a revision never changes while a store's contents last. Compaction deletes revisions, but the
index no longer points at them, so they are never asked for again and age out. Contents
replaced as a whole (a snapshot restore) clear the cache.

Eviction is oldest-inserted-first, by bytes: cheaper per hit than LRU bookkeeping, and a hot
key that ages out comes back on its next miss.
"""

from __future__ import annotations

from collections import deque

DEFAULT_CACHE_BYTES = 64 << 20
"""Memory the cache may hold (keys, values and an estimate of the per-entry overhead)."""
ENTRY_OVERHEAD_BYTES = 120
"""An estimate of what a dict slot, a deque slot and two bytes objects cost beyond their data."""


class ValueCache:
    """Revision key -> serialized KeyValue, at most `max_bytes`.

    Meant for the loop thread; a call from a worker thread cannot corrupt it (each dict and
    deque operation is atomic under the GIL, and eviction tolerates a key queued twice).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._values: dict[bytes, bytes] = {}
        self._order: deque[bytes] = deque()
        self._bytes = 0
        self.get = self._values.get
        """The value stored at a revision key, or None if not cached (the dict's own get: no call layer)."""

    def __len__(self) -> int:
        return len(self._values)

    @property
    def bytes_held(self) -> int:
        """What the entries are counted as (see ENTRY_OVERHEAD_BYTES)."""
        return self._bytes

    def add(self, key: bytes, value: bytes) -> None:
        """Keep `value` for `key`, evicting the oldest entries beyond the budget."""
        values = self._values
        if key in values:
            return
        size = len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        values[key] = value
        self._order.append(key)
        self._bytes += size
        if self._bytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        """Drop oldest entries until the budget holds again."""
        values, order = self._values, self._order
        while self._bytes > self.max_bytes and order:
            key = order.popleft()
            value = values.pop(key, None)
            if value is not None:
                self._bytes -= len(key) + len(value) + ENTRY_OVERHEAD_BYTES

    def clear(self) -> None:
        """Forget everything: the store's contents were replaced."""
        self._values.clear()
        self._order.clear()
        self._bytes = 0


__all__ = ["DEFAULT_CACHE_BYTES", "ValueCache"]
