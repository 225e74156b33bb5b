"""KVStore: etcd's MVCC semantics for puts, deletes, history, ranges, txns, compaction, hashes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdpy.errors import ErrCompacted, ErrFutureRev
from etcdpy.mvcc import kvstore as kvstore_mod
from etcdpy.mvcc.backend import BUCKET_KEY, BUCKET_LEASE, BUCKET_META, META_FINISHED_COMPACT
from etcdpy.mvcc.kvstore import KVStore
from etcdpy.mvcc.revision import Revision, bytes_to_rev, is_tombstone
from etcdpy.pb.kv_pb2 import Event, KeyValue


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KVStore]:
    s = KVStore(str(tmp_path / "db"))
    yield s
    s.close()


def put(s: KVStore, key: bytes, value: bytes, lease: int = 0) -> int:
    t = s.write()
    t.put(key, value, lease)
    return t.end(s.consistent_index + 1, 1)


def delete(s: KVStore, key: bytes, end: bytes | None = None) -> int:
    t = s.write()
    t.delete_range(key, end)
    return t.end(s.consistent_index + 1, 1)


def kv(key: bytes, value: bytes, create: int, mod: int, version: int, lease: int = 0) -> KeyValue:
    return KeyValue(key=key, value=value, create_revision=create, mod_revision=mod, version=version, lease=lease)


def keys_of(s: KVStore, key: bytes = b"\x00", end: bytes | None = b"\x00", rev: int = 0) -> list[bytes]:
    return [x.key for x in s.range(key, end, rev).kvs]


def disk_revisions(s: KVStore) -> list[tuple[Revision, bool]]:
    return [(bytes_to_rev(k), is_tombstone(k)) for k, _ in s.backend.iterate(BUCKET_KEY)]


def test_empty_store_starts_at_revision_1(store: KVStore) -> None:
    assert (store.current_rev, store.compact_rev, store.consistent_index, store.consistent_term) == (1, -1, 0, 0)
    r = store.range(b"\x00", b"\x00")
    assert (r.kvs, r.count, r.rev) == ([], 0, 1)


def test_put_update_delete_recreate(store: KVStore) -> None:
    assert put(store, b"foo", b"v1", lease=7) == 2
    assert store.range(b"foo", None).kvs == [kv(b"foo", b"v1", 2, 2, 1, 7)]
    assert put(store, b"foo", b"v2") == 3
    assert store.range(b"foo", None).kvs == [kv(b"foo", b"v2", 2, 3, 2)]
    assert delete(store, b"foo") == 4
    r = store.range(b"foo", None)
    assert (r.kvs, r.count, r.rev) == ([], 0, 4)
    assert put(store, b"foo", b"v3") == 5
    assert store.range(b"foo", None).kvs == [kv(b"foo", b"v3", 5, 5, 1)]


def test_history_reads(store: KVStore) -> None:
    put(store, b"a", b"1")  # 2
    put(store, b"b", b"1")  # 3
    put(store, b"a", b"2")  # 4
    delete(store, b"b")  # 5
    put(store, b"b", b"2")  # 6
    assert store.range(b"a", None, rev=1).kvs == []
    assert store.range(b"a", None, rev=2).kvs == [kv(b"a", b"1", 2, 2, 1)]
    assert store.range(b"a", None, rev=3).kvs == [kv(b"a", b"1", 2, 2, 1)]
    assert store.range(b"a", None, rev=4).kvs == [kv(b"a", b"2", 2, 4, 2)]
    assert keys_of(store, rev=4) == [b"a", b"b"]
    assert keys_of(store, rev=5) == [b"a"]
    assert store.range(b"b", None, rev=6).kvs == [kv(b"b", b"2", 6, 6, 1)]
    assert store.range(b"a", None, rev=3).rev == 6  # the header revision is the current one
    with pytest.raises(ErrFutureRev):
        store.range(b"a", None, rev=7)


def test_range_end_semantics_limit_and_count(store: KVStore) -> None:
    t = store.write()
    for k in (b"a", b"ab", b"abc", b"b", b"c\xff", b"d"):
        t.put(k, k.upper())
    t.end(1, 1)
    assert keys_of(store, b"ab", None) == [b"ab"]
    assert keys_of(store, b"ab", b"") == [b"ab"]
    assert keys_of(store, b"zz", None) == []
    assert keys_of(store, b"ab", b"\x00") == [b"ab", b"abc", b"b", b"c\xff", b"d"]
    assert keys_of(store, b"a", b"b") == [b"a", b"ab", b"abc"]  # prefix "a"
    assert keys_of(store, b"c", b"d") == [b"c\xff"]
    assert keys_of(store, b"\x00", b"\x00") == [b"a", b"ab", b"abc", b"b", b"c\xff", b"d"]
    assert keys_of(store, b"b", b"a") == []
    r = store.range(b"a", b"\x00", limit=2)
    assert ([x.key for x in r.kvs], r.count) == ([b"a", b"ab"], 6)
    r = store.range(b"a", b"b", count_only=True)
    assert (r.kvs, r.count) == ([], 3)


def test_txn_shares_revision_and_sees_own_writes(store: KVStore) -> None:
    put(store, b"x", b"old")  # 2
    t = store.write()
    assert t.rev == 3
    assert t.range(b"x", None).rev == 2  # nothing changed yet: the txn reads at its begin revision
    t.put(b"a", b"1")
    t.put(b"a", b"2")
    r = t.range(b"\x00", b"\x00")
    assert r.rev == 3
    assert r.kvs == [kv(b"a", b"2", 3, 3, 2), kv(b"x", b"old", 2, 2, 1)]
    n, prev = t.delete_range(b"x", None)
    assert (n, prev) == (1, [kv(b"x", b"old", 2, 2, 1)])
    assert t.range(b"\x00", b"\x00", count_only=True).count == 1
    assert t.range(b"\x00", b"\x00", rev=2).kvs == [kv(b"x", b"old", 2, 2, 1)]  # history still visible
    with pytest.raises(ErrFutureRev):
        t.range(b"a", None, rev=4)
    assert store.range(b"a", None).kvs == []  # nothing visible outside before end()
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in t.changes] == [
        (Event.PUT, b"a", 3),
        (Event.PUT, b"a", 3),
        (Event.DELETE, b"x", 3),
    ]
    assert t.changes[2].kv == KeyValue(key=b"x", mod_revision=3)  # DELETE carries key + mod_revision only
    assert t.end(10, 2) == 3
    assert keys_of(store) == [b"a"]
    assert [r for r, _ in disk_revisions(store)] == [Revision(2), Revision(3, 0), Revision(3, 1), Revision(3, 2)]
    assert disk_revisions(store)[-1][1]  # the delete is a tombstone


def test_txn_range_limit_with_own_writes(store: KVStore) -> None:
    t = store.write()
    for k in (b"b", b"d"):
        t.put(k, b"1")
    t.end(1, 1)
    t = store.write()
    t.put(b"a", b"1")
    t.put(b"c", b"1")
    t.delete_range(b"d", None)
    r = t.range(b"\x00", b"\x00", limit=2)
    assert ([x.key for x in r.kvs], r.count) == ([b"a", b"b"], 3)
    n, prev = t.delete_range(b"a", b"c")  # deletes a (own write) and b (committed)
    assert (n, [p.key for p in prev]) == (2, [b"a", b"b"])
    t.end(2, 1)
    assert keys_of(store) == [b"c"]


def test_txn_without_change_does_not_bump_revision(store: KVStore, tmp_path: Path) -> None:
    put(store, b"a", b"1")
    t = store.write()
    t.range(b"a", None)
    assert t.end(41, 3) == 2
    t = store.write()
    assert t.delete_range(b"nothing", b"\x00") == (0, [])
    assert t.end(42, 3) == 2
    assert store.current_rev == 2 and (store.consistent_index, store.consistent_term) == (42, 3)
    store.close()
    s2 = KVStore(str(tmp_path / "db"))
    assert (s2.current_rev, s2.consistent_index, s2.consistent_term) == (2, 42, 3)
    s2.close()


def test_abort_and_single_writer(store: KVStore) -> None:
    t = store.write()
    with pytest.raises(RuntimeError):
        store.write()
    t.put(b"a", b"1")
    t.abort()
    with pytest.raises(RuntimeError):
        t.put(b"b", b"1")
    assert store.current_rev == 1 and keys_of(store) == []
    with pytest.raises(ZeroDivisionError):
        with store.write() as t2:
            t2.put(b"a", b"1")
            raise ZeroDivisionError
    assert keys_of(store) == [] and store.write() is not None


def test_txn_batch_commits_other_buckets_atomically(store: KVStore) -> None:
    t = store.write()
    t.batch.put(BUCKET_LEASE, b"\x00" * 8, b"lease")
    t.end(1, 1)
    assert store.backend.get(BUCKET_LEASE, b"\x00" * 8) == b"lease"
    t = store.write()
    t.batch.put(BUCKET_LEASE, b"\x01" * 8, b"lease")
    t.abort()
    assert store.backend.get(BUCKET_LEASE, b"\x01" * 8) is None


def test_compaction(store: KVStore) -> None:
    put(store, b"a", b"1")  # 2
    put(store, b"a", b"2")  # 3
    put(store, b"b", b"1")  # 4
    delete(store, b"b")  # 5
    put(store, b"c", b"1")  # 6
    delete(store, b"c")  # 7
    put(store, b"a", b"3")  # 8
    with pytest.raises(ErrFutureRev):
        store.compact(9)
    store.compact(6)
    assert store.compact_rev == 6
    with pytest.raises(ErrCompacted):
        store.compact(6)
    with pytest.raises(ErrCompacted):
        store.compact(3)
    with pytest.raises(ErrCompacted):
        store.range(b"a", None, rev=5)
    assert store.range(b"\x00", b"\x00", rev=6).kvs == [kv(b"a", b"2", 2, 3, 2), kv(b"c", b"1", 6, 6, 1)]
    assert store.range(b"a", None).kvs == [kv(b"a", b"3", 2, 8, 3)]
    # b died before 6: gone from the index and from disk, tombstone included.
    assert store.index.key_index(b"b") is None
    assert disk_revisions(store) == [(Revision(3), False), (Revision(6), False), (Revision(7), True), (Revision(8), False)]
    assert bytes_to_rev(store.backend.get(BUCKET_META, META_FINISHED_COMPACT) or b"").main == 6
    store.compact(8)
    assert disk_revisions(store) == [(Revision(8), False)]
    assert store.index.key_index(b"c") is None
    assert store.range(b"\x00", b"\x00", rev=8).kvs == [kv(b"a", b"3", 2, 8, 3)]


def test_compaction_keeps_tombstone_at_compact_revision(store: KVStore) -> None:
    put(store, b"a", b"1")  # 2
    delete(store, b"a")  # 3
    store.compact(3)
    assert disk_revisions(store) == [(Revision(3), True)]
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in store.events(3)] == [(Event.DELETE, b"a", 3)]
    put(store, b"z", b"1")  # 4
    store.compact(4)
    assert disk_revisions(store) == [(Revision(4), False)]


def test_compaction_in_batches_and_resume_after_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvstore_mod, "COMPACTION_BATCH_LIMIT", 7)
    path = str(tmp_path / "db")
    s = KVStore(path)
    for i in range(50):
        put(s, b"k%d" % (i % 5), b"v%d" % i)
    job = s.schedule_compaction(40)
    assert s.compact_rev == 40
    with pytest.raises(ErrCompacted):
        s.range(b"k0", None, rev=39)
    assert not job.step()  # one batch only
    s.close()  # "crash": scheduled but not finished
    s = KVStore(path)
    assert s.compact_rev == 40
    assert bytes_to_rev(s.backend.get(BUCKET_META, META_FINISHED_COMPACT) or b"").main == 40
    assert len(disk_revisions(s)) == 5 + (51 - 40)
    full = s.range(b"\x00", b"\x00", rev=40).kvs
    assert [(x.key, x.version) for x in full] == [(b"k0", 8), (b"k1", 8), (b"k2", 8), (b"k3", 8), (b"k4", 7)]
    job = s.schedule_compaction(45)  # incremental: only what the last one kept and (40, 45]
    job.run()
    assert job.done
    assert len(disk_revisions(s)) == 5 + (51 - 45)
    s.close()


def test_reopen_gives_identical_state(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    s = KVStore(path)
    for i in range(30):
        t = s.write()
        t.put(b"k%d" % (i % 7), b"v%d" % i, lease=i % 3)
        if i % 4 == 0:
            t.delete_range(b"k%d" % ((i + 3) % 7), None)
        t.end(100 + i, 2)
    s.compact(12)
    before = {r: s.range(b"\x00", b"\x00", rev=r) for r in range(12, s.current_rev + 1)}
    state = (s.current_rev, s.compact_rev, s.consistent_index, s.consistent_term, s.hash_kv(), s.hash())
    s.close()
    s = KVStore(path)
    assert (s.current_rev, s.compact_rev, s.consistent_index, s.consistent_term, s.hash_kv(), s.hash()) == state
    assert {r: s.range(b"\x00", b"\x00", rev=r) for r in range(12, s.current_rev + 1)} == before
    put(s, b"k1", b"after")
    assert s.range(b"k1", None).kvs[0].version == before[s.current_rev - 1].kvs[1].version + 1
    s.close()


def test_uncommitted_txn_is_lost_on_crash(tmp_path: Path) -> None:
    """A real process crash (os._exit, no close/flush): RocksDB's WAL keeps every ended txn."""
    path = str(tmp_path / "db")
    code = textwrap.dedent(
        f"""
        import os
        from etcdpy.mvcc.kvstore import KVStore
        s = KVStore({path!r})
        for i in range(20):
            t = s.write(); t.put(b"k%d" % i, b"v"); t.end(i + 1, 1)
        t = s.write(); t.put(b"uncommitted", b"v"); t.put(b"k0", b"changed")
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    s = KVStore(path)
    assert (s.current_rev, s.consistent_index) == (21, 20)
    assert s.range(b"uncommitted", None).count == 0
    assert s.range(b"k0", None).kvs[0].value == b"v"
    s.close()


def test_events_history(store: KVStore) -> None:
    put(store, b"a", b"1")  # 2
    t = store.write()
    t.put(b"b", b"1")
    t.put(b"c", b"1")
    t.end(9, 1)  # 3
    delete(store, b"a")  # 4
    evs = store.events(2)
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in evs] == [
        (Event.PUT, b"a", 2),
        (Event.PUT, b"b", 3),
        (Event.PUT, b"c", 3),
        (Event.DELETE, b"a", 4),
    ]
    assert evs[0].kv == kv(b"a", b"1", 2, 2, 1)
    assert len(store.events(2, limit=2)) == 3  # never splits revision 3
    assert len(store.events(3, end_rev=4)) == 2
    store.compact(3)
    with pytest.raises(ErrCompacted):
        store.events(2)


def history(s: KVStore) -> None:
    for i in range(40):
        t = s.write()
        t.put(b"k%d" % (i % 6), b"v%d" % i)
        if i % 5 == 0:
            t.delete_range(b"k%d" % ((i + 2) % 6), None)
        t.end(i + 1, 1)


def test_hash_kv_agrees_across_members(tmp_path: Path) -> None:
    a, b, c = (KVStore(str(tmp_path / n)) for n in "abc")
    for s in (a, b, c):
        history(s)
    assert a.hash_kv() == b.hash_kv() == c.hash_kv()
    assert a.hash_kv(20) == b.hash_kv(20)
    assert a.hash_kv(20)[0] != a.hash_kv(21)[0]
    # Physical compaction progress must not matter: a finished, b only scheduled.
    a.compact(25)
    b.schedule_compaction(25)
    assert a.hash_kv() == b.hash_kv()
    assert a.hash_kv()[1:] == (a.current_rev, 25)
    with pytest.raises(ErrCompacted):
        a.hash_kv(24)
    with pytest.raises(ErrFutureRev):
        a.hash_kv(a.current_rev + 1)
    put(c, b"other", b"x")
    assert c.hash_kv()[0] != a.hash_kv()[0]
    for s in (a, b, c):
        s.close()


def test_hash_ignores_consistent_index(tmp_path: Path) -> None:
    a, b = KVStore(str(tmp_path / "a")), KVStore(str(tmp_path / "b"))
    for s, ci in ((a, 5), (b, 500)):
        t = s.write()
        t.put(b"k", b"v")
        t.end(ci, ci)
    assert a.hash() == b.hash()
    put(b, b"k2", b"v")
    assert a.hash() != b.hash()
    a.close()
    b.close()


def test_snapshot_restore_roundtrip(tmp_path: Path) -> None:
    a = KVStore(str(tmp_path / "a"))
    history(a)
    a.compact(10)
    snap = str(tmp_path / "snap.db")
    a.snapshot_to(snap)
    b = KVStore(str(tmp_path / "b"))
    put(b, b"junk", b"x")
    b.restore_from(snap)
    assert (b.current_rev, b.compact_rev, b.consistent_index) == (a.current_rev, a.compact_rev, a.consistent_index)
    assert b.hash_kv() == a.hash_kv() and b.hash() == a.hash()
    assert b.range(b"junk", None).count == 0
    a.close()
    b.close()
