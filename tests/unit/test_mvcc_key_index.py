"""KeyIndex generations and the TreeIndex, following etcd's key_index_test cases."""

from __future__ import annotations

import pytest

from etcdpy.mvcc.key_index import Generation, KeyIndex, RevisionNotFound, TreeIndex
from etcdpy.mvcc.revision import Revision as R


def etcd_example() -> KeyIndex:
    """etcd's doc example: put(2) put(4) del(6) put(8) put(10) del(12) put(14.0) put(14.1) put(16)."""
    ki = KeyIndex(b"foo")
    ki.put(R(2))
    ki.put(R(4))
    ki.tombstone(R(6))
    ki.put(R(8))
    ki.put(R(10))
    ki.tombstone(R(12))
    ki.put(R(14, 0))
    ki.put(R(14, 1))
    ki.put(R(16))
    return ki


def test_generations_shape() -> None:
    ki = etcd_example()
    assert [g.revs for g in ki.generations] == [
        [R(2), R(4), R(6)],
        [R(8), R(10), R(12)],
        [R(14, 0), R(14, 1), R(16)],
    ]
    assert [g.created for g in ki.generations] == [R(2), R(8), R(14, 0)]
    assert [g.ver for g in ki.generations] == [3, 3, 3]
    assert ki.modified == R(16)


@pytest.mark.parametrize(
    "at,want",
    [
        (1, None),
        (2, (R(2), R(2), 1)),
        (3, (R(2), R(2), 1)),
        (4, (R(4), R(2), 2)),
        (5, (R(4), R(2), 2)),
        (6, None),  # deleted at 6
        (7, None),
        (8, (R(8), R(8), 1)),
        (11, (R(10), R(8), 2)),
        (12, None),
        (13, None),
        (14, (R(14, 1), R(14, 0), 2)),
        (15, (R(14, 1), R(14, 0), 2)),
        (16, (R(16), R(14, 0), 3)),
        (100, (R(16), R(14, 0), 3)),
    ],
)
def test_get_at_revision(at: int, want: tuple[R, R, int] | None) -> None:
    assert etcd_example().get(at) == want


def test_tombstone_on_deleted_key_fails() -> None:
    ki = KeyIndex(b"k")
    ki.put(R(2))
    ki.tombstone(R(3))
    with pytest.raises(RevisionNotFound):
        ki.tombstone(R(4))
    assert ki.get(10) is None and not ki.is_live()


def test_put_must_increase() -> None:
    ki = KeyIndex(b"k")
    ki.put(R(5))
    with pytest.raises(ValueError):
        ki.put(R(5))


def test_recreate_counts_version_from_one() -> None:
    ki = KeyIndex(b"k")
    ki.put(R(2))
    ki.put(R(3))
    ki.tombstone(R(4))
    ki.put(R(5))
    assert ki.get(5) == (R(5), R(5), 1)
    assert ki.get(3) == (R(3), R(2), 2)


def test_since() -> None:
    ki = etcd_example()
    assert ki.since(1) == [R(2), R(4), R(6), R(8), R(10), R(12), R(14, 1), R(16)]
    assert ki.since(12) == [R(12), R(14, 1), R(16)]
    assert ki.since(17) == []


@pytest.mark.parametrize(
    "at,gens,keep",
    [
        # compact removes revisions below the newest one <= at; a tombstone < at
        # drops its generation; a tombstone == at is kept (etcd v3.6).
        (1, [[R(2), R(4), R(6)], [R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)]], set()),
        (2, [[R(2), R(4), R(6)], [R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)]], {R(2)}),
        (5, [[R(4), R(6)], [R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)]], {R(4)}),
        (6, [[R(6)], [R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)]], {R(6)}),
        (7, [[R(8), R(10), R(12)], [R(14, 0), R(14, 1), R(16)]], set()),
        (11, [[R(10), R(12)], [R(14, 0), R(14, 1), R(16)]], {R(10)}),
        (13, [[R(14, 0), R(14, 1), R(16)]], set()),
        (14, [[R(14, 1), R(16)]], {R(14, 1)}),
        (16, [[R(16)]], {R(16)}),
        (17, [[R(16)]], {R(16)}),
    ],
)
def test_compact(at: int, gens: list[list[R]], keep: set[R]) -> None:
    ki = etcd_example()
    kept: set[R] = set()
    ki.keep(at, kept)
    available: set[R] = set()
    ki.compact(at, available)
    assert [g.revs for g in ki.generations] == gens
    assert available == keep
    # keep() is compact()'s answer minus a tombstone at exactly `at`.
    assert kept == {r for r in keep if r != R(6)}
    # versions survive compaction of older revisions
    if at >= 16:
        assert ki.get(16) == (R(16), R(14, 0), 3)


def test_compact_after_final_delete_empties_key() -> None:
    ki = KeyIndex(b"k")
    ki.put(R(2))
    ki.tombstone(R(3))
    available: set[R] = set()
    ki.compact(3, available)
    assert available == {R(3)} and not ki.is_empty()
    ki.compact(4, available)
    assert ki.is_empty()


def test_compact_delete_and_reput_in_one_txn() -> None:
    # Not reachable through etcd's API, but the index must not lose the re-put.
    ki = KeyIndex(b"k")
    ki.put(R(2))
    ki.tombstone(R(3, 0))
    ki.put(R(3, 1))
    available: set[R] = set()
    ki.compact(3, available)
    assert available == {R(3, 1)}
    assert ki.get(3) == (R(3, 1), R(3, 1), 1)


def test_restore_seeds_generation_from_stored_kv() -> None:
    ki = KeyIndex(b"k")
    ki.restore(R(2), R(7), 4)
    ki.put(R(9))
    assert ki.get(9) == (R(9), R(2), 5)
    assert ki.generations == [Generation(5, R(2), [R(7), R(9)])]


def tree_with(*ops: tuple[str, bytes, int]) -> TreeIndex:
    t = TreeIndex()
    for op, key, main in ops:
        (t.put if op == "put" else t.tombstone)(key, R(main, 0))
    return t


def test_tree_range_semantics() -> None:
    t = tree_with(("put", b"a", 2), ("put", b"b", 3), ("put", b"c", 4), ("put", b"d", 5), ("del", b"b", 6))
    assert t.range(b"a", None, 10) == ([b"a"], [R(2)])
    assert t.range(b"a", b"", 10) == ([b"a"], [R(2)])
    assert t.range(b"b", None, 10) == ([], [])
    assert t.range(b"b", None, 5) == ([b"b"], [R(3)])
    assert t.range(b"a", b"c", 10) == ([b"a"], [R(2)])
    assert t.range(b"a", b"\x00", 10) == ([b"a", b"c", b"d"], [R(2), R(4), R(5)])
    assert t.range(b"\x00", b"\x00", 4) == ([b"a", b"b", b"c"], [R(2), R(3), R(4)])
    assert t.range(b"c", b"a", 10) == ([], [])
    assert t.range(b"a", b"\x00", 10, limit=2) == ([b"a", b"c"], [R(2), R(4)])
    assert t.revisions(b"a", b"\x00", 10, limit=1) == ([R(2)], 3)
    assert t.count_revisions(b"a", b"\x00", 5) == 4
    assert t.get(b"d", 4) is None and t.get(b"d", 5) == (R(5), R(5), 1)
    with pytest.raises(RevisionNotFound):
        t.tombstone(b"zz", R(9))


def test_tree_compact_drops_dead_keys() -> None:
    t = tree_with(("put", b"a", 2), ("put", b"b", 3), ("del", b"a", 4), ("put", b"b", 5))
    assert t.keep(4) == {R(3)}
    assert t.compact(4) == {R(3), R(4)}
    assert len(t) == 2  # a keeps its tombstone at exactly the compact revision
    assert t.compact(5) == {R(5)}
    assert len(t) == 1 and t.key_index(b"a") is None


def test_latest_fast_path_matches_full_walk() -> None:
    import random

    rnd = random.Random(7)
    t = TreeIndex()
    rev = 1
    for _ in range(400):
        rev += 1
        k = b"k%02d" % rnd.randrange(40)
        ki = t.key_index(k)
        if ki is not None and ki.is_live() and rnd.random() < 0.3:
            t.tombstone(k, R(rev))
        else:
            t.put(k, R(rev))
    for key, end in [(b"k05", b"k20"), (b"\x00", b"\x00"), (b"k10", b"\x00"), (b"k3", b"k2"), (b"k07", None)]:
        walk = [(ki.key, ki.get(rev)[0]) for ki in t.iter_range(key, end) if ki.get(rev) is not None]
        for limit in (0, 1, 5):
            want = walk[:limit] if limit else walk
            assert t.range(key, end, rev, limit) == ([k for k, _ in want], [r for _, r in want])
            assert t.revisions(key, end, rev + 10, limit) == ([r for _, r in want], len(walk))
        assert t.count_revisions(key, end, rev) == len(walk)
    assert t.live_count == sum(1 for ki in t.iter_range(b"\x00", b"\x00") if ki.is_live())


@pytest.mark.parametrize("log_max", [3, 50, 100_000])
def test_past_revision_counts_match_full_walk(monkeypatch: pytest.MonkeyPatch, log_max: int) -> None:
    import random

    from etcdpy.mvcc import key_index

    monkeypatch.setattr(key_index, "CHANGE_LOG_MAX", log_max)
    rnd = random.Random(log_max)
    t = TreeIndex()
    rev = 1
    for _ in range(300):
        rev += 1
        k = b"k%02d" % rnd.randrange(30)
        ki = t.key_index(k)
        if ki is not None and ki.is_live() and rnd.random() < 0.3:
            t.tombstone(k, R(rev))
        else:
            t.put(k, R(rev))
    t.compact(rev - 60)
    for at in range(rev - 60, rev + 1):
        for key, end in [(b"k05", b"k20"), (b"\x00", b"\x00"), (b"k10", b"\x00"), (b"k3", b"k2")]:
            walk = [ki.get(at)[0] for ki in t.iter_range(key, end) if ki.get(at) is not None]
            assert t.count_revisions(key, end, at) == len(walk)
            assert t.revisions(key, end, at, 4) == (walk[:4], len(walk))
