"""Property test: KVStore against a plain in-memory model of etcd's MVCC.

The model keeps the full key -> (value, create, mod, version, lease) map of every
revision. Random txns (puts and range deletes, several per txn), compactions,
interrupted compactions, reopens and historical reads must agree with it. A twin
store that sees the same txns but is never reopened must report the same hash_kv.
"""

from __future__ import annotations

import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from etcdpy.errors import ErrCompacted, ErrFutureRev
from etcdpy.mvcc.kvstore import KVStore, RangeResult

KEYS = [b"a", b"ab", b"b", b"c", b"d"]
ENDS = [None, b"\x00", b"b", b"c", b"e"]
Entry = tuple[bytes, int, int, int, int]  # value, create, mod, version, lease
State = dict[bytes, Entry]

keys = st.sampled_from(KEYS)
ends = st.sampled_from(ENDS)
put_op = st.tuples(st.just("put"), keys, st.binary(max_size=4), st.integers(0, 2))
del_op = st.tuples(st.just("del"), keys, ends, st.just(0))
ops = st.lists(st.one_of(put_op, del_op), min_size=0, max_size=4)


def in_range(k: bytes, key: bytes, end: bytes | None) -> bool:
    if not end:
        return k == key
    if end == b"\x00":
        return k >= key
    return key <= k < end


def expect(state: State, key: bytes, end: bytes | None, limit: int) -> tuple[list[tuple], int]:
    ks = sorted(k for k in state if in_range(k, key, end))
    rows = [(k, *state[k]) for k in ks]
    return (rows[:limit] if limit else rows), len(rows)


def rows(r: RangeResult) -> tuple[list[tuple], int]:
    return [(x.key, x.value, x.create_revision, x.mod_revision, x.version, x.lease) for x in r.kvs], r.count


class MVCCModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mvcc-prop-")
        self.store = KVStore(self.dir + "/db")
        self.twin = KVStore(self.dir + "/twin")
        self.history: dict[int, State] = {1: {}}
        self.rev = 1
        self.compact_rev = -1
        self.ci = 0

    def teardown(self) -> None:
        self.store.close()
        self.twin.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(txn_ops=ops, probe=st.tuples(keys, ends))
    def txn(self, txn_ops: list[tuple], probe: tuple[bytes, bytes | None]) -> None:
        state = dict(self.history[self.rev])
        new_rev = self.rev + 1
        changed = False
        self.ci += 1
        t, tw = self.store.write(), self.twin.write()
        for op, key, arg, lease in txn_ops:
            if op == "put":
                prev = state.get(key)
                create, ver = (prev[1], prev[3] + 1) if prev else (new_rev, 1)
                state[key] = (arg, create, new_rev, ver, lease)
                t.put(key, arg, lease)
                tw.put(key, arg, lease)
                changed = True
            else:
                gone = sorted(k for k in state if in_range(k, key, arg))
                want = [(k, *state[k]) for k in gone]
                n, prev_kvs = t.delete_range(key, arg)
                tw.delete_range(key, arg)
                got = [(x.key, x.value, x.create_revision, x.mod_revision, x.version, x.lease) for x in prev_kvs]
                assert (n, got) == (len(want), want)
                for k in gone:
                    del state[k]
                changed = changed or bool(gone)
            # read-your-writes inside the txn
            assert rows(t.range(probe[0], probe[1])) == expect(state, probe[0], probe[1], 0)
        assert t.end(self.ci, 1) == tw.end(self.ci, 1) == (new_rev if changed else self.rev)
        if changed:
            self.rev = new_rev
            self.history[new_rev] = state

    def _compact_target(self, delta: int) -> int:
        return max(-1, self.rev - delta)

    @rule(delta=st.integers(-1, 8))
    def compact(self, delta: int) -> None:
        rev = self._compact_target(delta)
        if rev <= self.compact_rev:
            try:
                self.store.compact(rev)
            except ErrCompacted:
                return
            raise AssertionError("expected ErrCompacted")
        if rev > self.rev:
            try:
                self.store.compact(rev)
            except ErrFutureRev:
                return
            raise AssertionError("expected ErrFutureRev")
        self.store.compact(rev)
        self.twin.compact(rev)
        self.compact_rev = rev

    @rule(delta=st.integers(0, 8))
    def interrupted_compaction_then_reopen(self, delta: int) -> None:
        rev = self._compact_target(delta)
        if rev <= self.compact_rev or rev < 1:
            return
        self.store.schedule_compaction(rev)  # the index is compacted, nothing deleted from disk yet
        self.twin.compact(rev)
        self.compact_rev = rev
        self.reopen()

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = KVStore(self.dir + "/db")
        assert (self.store.current_rev, self.store.compact_rev, self.store.consistent_index) == (
            self.rev,
            self.compact_rev,
            self.ci,
        )

    @rule(back=st.integers(-2, 12), key=keys, end=ends, limit=st.integers(0, 3), count_only=st.booleans())
    def read(self, back: int, key: bytes, end: bytes | None, limit: int, count_only: bool) -> None:
        rev = self.rev - back if back != 12 else 0
        try:
            r = self.store.range(key, end, rev=rev, limit=limit, count_only=count_only)
        except ErrFutureRev:
            assert rev > self.rev
            return
        except ErrCompacted:
            assert 0 < rev < self.compact_rev
            return
        assert rev <= self.rev and (rev <= 0 or rev >= self.compact_rev)
        at = rev if rev > 0 else self.rev
        want_rows, want_count = expect(self.history.get(at, {}), key, end, limit)
        assert r.rev == self.rev
        if count_only:
            assert (r.kvs, r.count) == ([], want_count)
        else:
            assert rows(r) == (want_rows, want_count)

    @invariant()
    def latest_matches_model(self) -> None:
        assert self.store.current_rev == self.rev
        assert rows(self.store.range(b"\x00", b"\x00")) == expect(self.history[self.rev], b"\x00", b"\x00", 0)

    @invariant()
    def hashes_agree_with_twin(self) -> None:
        assert self.store.hash_kv() == self.twin.hash_kv()


TestMVCCModel = MVCCModel.TestCase
TestMVCCModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
