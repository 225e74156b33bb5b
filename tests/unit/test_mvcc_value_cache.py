"""The store's value cache: bounded by bytes, oldest out first, and never a stale value.

A revision's stored value never changes while a store's contents last, so the only ways a
cached value could be wrong are the contents being replaced (a snapshot restore, from a file
or from a leader while running) or a txn that never committed; each is tried here on a real
store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from etcdpy.mvcc.kvstore import KVStore
from etcdpy.mvcc.value_cache import ENTRY_OVERHEAD_BYTES, ValueCache


def put(s: KVStore, key: bytes, value: bytes) -> int:
    t = s.write()
    t.put(key, value)
    return t.end(s.consistent_index + 1, 1)


def value_of(s: KVStore, key: bytes) -> bytes | None:
    kvs = s.range(key, None).kvs
    return kvs[0].value if kvs else None


def test_cache_keeps_at_most_its_budget_and_drops_the_oldest_first() -> None:
    entry = 10 + 100 + ENTRY_OVERHEAD_BYTES
    c = ValueCache(max_bytes=3 * entry)
    for i in range(5):
        c.add(b"k%09d" % i, bytes([i]) * 100)
    assert len(c) == 3 and c.bytes_held == 3 * entry
    assert c.get(b"k000000000") is None and c.get(b"k000000001") is None
    assert c.get(b"k000000004") == bytes([4]) * 100
    c.add(b"k000000004", b"other")  # a revision's value never changes: a second add is ignored
    assert c.get(b"k000000004") == bytes([4]) * 100
    c.add(b"huge", b"x" * (4 * entry))  # larger than the whole budget: not kept, nothing evicted
    assert c.get(b"huge") is None and len(c) == 3
    c.clear()
    assert len(c) == 0 and c.bytes_held == 0 and c.get(b"k000000004") is None


def test_reads_fill_the_cache_and_writes_enter_it_on_commit_only(tmp_path: Path) -> None:
    s = KVStore(str(tmp_path / "db"))
    try:
        put(s, b"a", b"1")
        assert len(s._cache) == 1
        t = s.write()
        t.put(b"b", b"2")
        t.abort()
        assert len(s._cache) == 1 and value_of(s, b"b") is None
        s._cache.clear()
        assert value_of(s, b"a") == b"1"  # a miss reads RocksDB and keeps the value
        assert len(s._cache) == 1
    finally:
        s.close()


@pytest.mark.parametrize("running", [False, True], ids=["from-file", "while-running"])
def test_restore_replaces_cached_values_at_the_same_revisions(tmp_path: Path, running: bool) -> None:
    """Two stores with the same revisions and different values: after a restore, the new ones are read.

    Both ways a store's contents are replaced: from a file at start-up (`restore_from`) and
    from a leader's snapshot while running (`restore_from_async`, the directory swap).
    """
    a, b = KVStore(str(tmp_path / "a")), KVStore(str(tmp_path / "b"))
    try:
        for s, value in ((a, b"from-a"), (b, b"from-b")):
            for i in range(20):
                put(s, b"key%02d" % i, value + b"%02d" % i)
        assert value_of(a, b"key07") == b"from-a07"  # cached in a now
        snap = str(tmp_path / "b.snap")
        b.snapshot_to(snap)
        if running:
            asyncio.run(a.restore_from_async(snap))
        else:
            a.restore_from(snap)
        assert [value_of(a, b"key%02d" % i) for i in range(20)] == [b"from-b%02d" % i for i in range(20)]
    finally:
        a.close()
        b.close()
