"""KVStore.defer_writes: one RocksDB write for a slice of applied write txns.

The apply task stages a slice's txns in one batch and flushes before it yields. What must
hold: later txns of the slice read what earlier ones staged; nothing reaches RocksDB until
the flush, and then all of it with the last entry's consistent index (so a crash replays
exactly the entries not written); whoever reaches the backend directly sees everything.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdpy.mvcc.backend import BUCKET_META, META_CONSISTENT_INDEX
from etcdpy.mvcc.kvstore import KVStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KVStore]:
    s = KVStore(str(tmp_path / "db"))
    yield s
    s.close()


def put(s: KVStore, key: bytes, value: bytes, index: int) -> int:
    t = s.write()
    t.put(key, value)
    return t.end(index, 1)


def raw_consistent_index(s: KVStore) -> bytes | None:
    """What RocksDB itself holds, bypassing the store's flush barrier."""
    return s._raw_backend.get(BUCKET_META, META_CONSISTENT_INDEX)


def test_staged_txns_are_read_by_later_txns_and_written_once(store: KVStore) -> None:
    put(store, b"a", b"0", 1)
    commits = store.backend_commits
    store.defer_writes()
    put(store, b"a", b"1", 2)
    put(store, b"b", b"2", 3)
    t = store.write()  # a later txn of the slice reads values only staged so far
    got = t.range(b"a", b"c")
    assert [(kv.key, kv.value, kv.version) for kv in got.kvs] == [(b"a", b"1", 2), (b"b", b"2", 1)]
    t.put(b"b", b"3")
    t.end(4, 1)
    assert store.backend_commits == commits  # nothing written yet
    assert raw_consistent_index(store) == (1).to_bytes(8, "big")
    store.flush_deferred()
    assert store.backend_commits == commits + 1
    assert raw_consistent_index(store) == (4).to_bytes(8, "big")
    assert [kv.value for kv in store.range(b"a", b"c").kvs] == [b"1", b"3"]
    store.end_deferred()
    put(store, b"c", b"4", 5)  # back to one write per txn
    assert store.backend_commits == commits + 2


def test_aborted_txn_stages_nothing(store: KVStore) -> None:
    store.defer_writes()
    put(store, b"a", b"1", 1)
    t = store.write()
    t.put(b"a", b"aborted")
    t.abort()
    store.end_deferred()
    assert store.range(b"a", None).kvs[0].value == b"1"
    assert store.consistent_index == 1
    assert store.hash_kv()[1] == 2


def test_backend_access_is_a_flush_barrier(store: KVStore) -> None:
    """Leases, auth and maintenance reach RocksDB through `backend`: they must see every applied entry."""
    store.defer_writes()
    put(store, b"a", b"1", 7)
    assert raw_consistent_index(store) is None
    assert store.backend.get(BUCKET_META, META_CONSISTENT_INDEX) == (7).to_bytes(8, "big")
    assert store.events(2)[0].kv.value == b"1"  # history reads flush too (the store's own direct reads)
    store.end_deferred()


def test_crash_before_flush_loses_the_whole_slice_and_its_index(tmp_path: Path) -> None:
    """A real crash mid-slice: RocksDB keeps the last flushed state and its consistent index,
    which is what makes the raft WAL replay the slice's entries, and nothing of the slice."""
    path = str(tmp_path / "db")
    code = textwrap.dedent(
        f"""
        import os
        from etcdpy.mvcc.kvstore import KVStore
        s = KVStore({path!r})
        s.defer_writes()
        for i in range(10):
            t = s.write(); t.put(b"k%d" % i, b"v"); t.end(i + 1, 1)
        s.flush_deferred()
        for i in range(10, 20):
            t = s.write(); t.put(b"k%d" % i, b"v"); t.put(b"k0", b"changed"); t.end(i + 1, 1)
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    s = KVStore(path)
    try:
        assert (s.current_rev, s.consistent_index) == (11, 10)
        assert s.range(b"k10", None).count == 0
        assert s.range(b"k0", None).kvs[0].value == b"v"
    finally:
        s.close()


def test_a_worker_thread_reaching_the_backend_leaves_the_slices_batch_alone(store: KVStore) -> None:
    """A worker (a snapshot's RocksDB flush, a defrag) runs beside an apply slice: reaching the
    backend from there must not write the batch the slice is still staging into. It did once
    (a member died with "this batch is already consumed" when a snapshot came mid-load)."""
    import threading

    put(store, b"a", b"0", 1)
    store.defer_writes()
    put(store, b"a", b"1", 2)
    staged = store._deferred
    commits = store.backend_commits
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(store.backend))
    worker.start()
    worker.join()
    assert seen == [store._raw_backend]
    assert store._deferred is staged and store.backend_commits == commits  # nothing written from there
    put(store, b"b", b"2", 3)  # the slice goes on staging into the same batch
    assert store.backend is store._raw_backend  # on the applying thread the barrier flushes
    assert store.backend_commits == commits + 1
    assert raw_consistent_index(store) == (3).to_bytes(8, "big")
    store.end_deferred()
