"""MemoryStorage, the raft log (stable + unstable), Progress and Inflights (after etcd-io/raft log/storage/tracker tests)."""

from __future__ import annotations

import pytest

from etcdpy.raft import ErrCompacted, ErrSnapOutOfDate, ErrUnavailable, MemoryStorage
from etcdpy.raft.log import RaftInvariantError, RaftLog, Unstable
from etcdpy.raft.tracker import Inflights, Progress, ProgressState, ProgressTracker, VoteResult
from etcdpy.raft.types import ConfState, Entry, Snapshot, SnapshotMetadata, entry_size


def ms_with(ents):
    st = MemoryStorage()
    st.ents = [Entry(e.term, e.index) for e in ents]
    return st


BASE = [Entry(3, 3), Entry(4, 4), Entry(5, 5)]


# -- MemoryStorage ---------------------------------------------------------------------------


@pytest.mark.parametrize("i,wterm,werr", [(2, None, ErrCompacted), (3, 3, None), (4, 4, None), (5, 5, None), (6, None, ErrUnavailable)])
def test_storage_term(i, wterm, werr):
    st = ms_with(BASE)
    if werr:
        with pytest.raises(werr):
            st.term(i)
    else:
        assert st.term(i) == wterm


@pytest.mark.parametrize(
    "lo,hi,max_size,werr,windexes",
    [
        (2, 6, None, ErrCompacted, None),
        (3, 4, None, ErrCompacted, None),
        (4, 5, None, None, [4]),
        (4, 6, None, None, [4, 5]),
        (4, 7, None, None, [4, 5, 6]),
        (4, 7, 0, None, [4]),  # at least one entry even if over the limit
        (4, 7, 2 * entry_size(Entry()), None, [4, 5]),
        (4, 7, 3 * entry_size(Entry()), None, [4, 5, 6]),
    ],
)
def test_storage_entries(lo, hi, max_size, werr, windexes):
    st = ms_with([Entry(3, 3), Entry(4, 4), Entry(5, 5), Entry(6, 6)])
    if werr:
        with pytest.raises(werr):
            st.entries(lo, hi, max_size)
    else:
        assert [e.index for e in st.entries(lo, hi, max_size)] == windexes


def test_storage_first_last_index():
    st = ms_with(BASE)
    assert st.first_index() == 4 and st.last_index() == 5
    st.append([Entry(5, 6)])
    assert st.last_index() == 6
    st.compact(4)
    assert st.first_index() == 5


@pytest.mark.parametrize("i,werr,windex,wlen", [(2, ErrCompacted, 3, 3), (3, ErrCompacted, 3, 3), (4, None, 4, 2), (5, None, 5, 1)])
def test_storage_compact(i, werr, windex, wlen):
    st = ms_with(BASE)
    if werr:
        with pytest.raises(werr):
            st.compact(i)
    else:
        st.compact(i)
    assert st.ents[0].index == windex and len(st.ents) == wlen


def test_storage_create_snapshot():
    st = ms_with(BASE)
    cs = ConfState(voters=[1, 2, 3])
    s = st.create_snapshot(4, cs, b"data")
    assert (s.metadata.index, s.metadata.term, s.data, s.metadata.conf_state) == (4, 4, b"data", cs)
    with pytest.raises(ErrSnapOutOfDate):
        st.create_snapshot(3, cs, b"data")


@pytest.mark.parametrize(
    "ents,windexes_terms",
    [
        ([Entry(3, 3), Entry(4, 4), Entry(5, 5)], [(3, 3), (4, 4), (5, 5)]),
        ([Entry(3, 3), Entry(6, 4), Entry(6, 5)], [(3, 3), (4, 6), (5, 6)]),
        ([Entry(3, 3), Entry(4, 4), Entry(5, 5), Entry(5, 6)], [(3, 3), (4, 4), (5, 5), (6, 5)]),
        # Entries before the first index are skipped.
        ([Entry(3, 2), Entry(3, 3), Entry(5, 4)], [(3, 3), (4, 5)]),
        # Truncate and append.
        ([Entry(5, 4)], [(3, 3), (4, 5)]),
        ([Entry(5, 6)], [(3, 3), (4, 4), (5, 5), (6, 5)]),
    ],
)
def test_storage_append(ents, windexes_terms):
    st = ms_with(BASE)
    st.append(ents)
    assert [(e.index, e.term) for e in st.ents] == windexes_terms


def test_storage_append_gap_rejected():
    st = ms_with(BASE)
    with pytest.raises(ValueError):
        st.append([Entry(6, 7)])


def test_storage_apply_snapshot():
    st = MemoryStorage()
    s = Snapshot(metadata=SnapshotMetadata(ConfState([1, 2, 3]), 4, 4))
    st.apply_snapshot(s)
    assert st.first_index() == 5 and st.last_index() == 4
    with pytest.raises(ErrSnapOutOfDate):
        st.apply_snapshot(Snapshot(metadata=SnapshotMetadata(ConfState([1, 2, 3]), 3, 3)))
    hs, cs = st.initial_state()
    assert cs.voters == [1, 2, 3]


# -- Unstable / RaftLog --------------------------------------------------------------------------


def test_unstable_stable_to_ignores_replaced_entries():
    u = Unstable(5)
    u.truncate_and_append([Entry(1, 5), Entry(1, 6)])
    u.truncate_and_append([Entry(2, 6)])
    u.stable_to(6, 1)  # the entry persisted (term 1) was replaced meanwhile
    assert [(e.index, e.term) for e in u.entries] == [(5, 1), (6, 2)]
    u.stable_to(6, 2)
    assert u.entries == [] and u.offset == 7


@pytest.mark.parametrize(
    "ents,wconflict",
    [
        ([], 0),
        ([Entry(1, 1), Entry(2, 2), Entry(3, 3)], 0),
        ([Entry(2, 2), Entry(3, 3)], 0),
        ([Entry(1, 1), Entry(2, 2), Entry(3, 3), Entry(4, 4), Entry(4, 5)], 4),
        ([Entry(3, 3), Entry(4, 4), Entry(4, 5)], 4),
        ([Entry(4, 1), Entry(4, 2)], 1),
        ([Entry(4, 2), Entry(4, 3), Entry(4, 4), Entry(4, 5)], 2),
        ([Entry(4, 3), Entry(4, 4), Entry(4, 5)], 3),
    ],
)
def test_find_conflict(ents, wconflict):
    log = RaftLog(MemoryStorage())
    log.append([Entry(1, 1), Entry(2, 2), Entry(3, 3)])
    assert log.find_conflict(ents) == wconflict


@pytest.mark.parametrize(
    "terms,index,term,want",
    [
        ([2, 2, 5, 5, 5], 5, 6, (5, 5)),
        ([2, 2, 5, 5, 5], 5, 5, (5, 5)),
        ([2, 2, 5, 5, 5], 5, 4, (2, 2)),
        ([2, 2, 5, 5, 5], 5, 1, (0, 0)),
        ([2, 2, 5, 5, 5], 3, 2, (2, 2)),
    ],
)
def test_find_conflict_by_term(terms, index, term, want):
    log = RaftLog(MemoryStorage())
    log.append([Entry(t, i + 1) for i, t in enumerate(terms)])
    assert log.find_conflict_by_term(index, term) == want


def test_find_conflict_by_term_compacted_returns_unknown_term():
    st = ms_with([Entry(2, 10), Entry(3, 11), Entry(4, 12)])
    log = RaftLog(st)
    # Below the dummy entry the term is unknown: answer with term 0.
    assert log.find_conflict_by_term(12, 1) == (9, 0)
    st.compact(11)
    assert log.find_conflict_by_term(12, 1) == (10, 0)
    assert log.find_conflict_by_term(12, 3) == (11, 3)


@pytest.mark.parametrize(
    "index,log_term,committed,ents,wlasti,wappend,wcommit,wpanic",
    [
        (2, 3, 3, [], 0, False, 1, False),  # term mismatch
        (4, 3, 3, [], 0, False, 1, False),  # beyond our log
        (3, 3, 3, [], 3, True, 3, False),
        (3, 3, 4, [], 3, True, 3, False),  # commit up to last new entry only
        (3, 3, 2, [], 3, True, 2, False),
        (3, 3, 0, [], 3, True, 1, False),  # commit never decreases
        (3, 3, 3, [Entry(4, 4)], 4, True, 3, False),
        (3, 3, 4, [Entry(4, 4), Entry(4, 5)], 5, True, 4, False),
        (2, 2, 3, [Entry(4, 3)], 3, True, 3, False),  # conflict at 3
        (1, 1, 3, [Entry(4, 2)], 2, True, 2, False),  # conflict at 2
        (0, 0, 3, [Entry(4, 1)], 0, False, 1, True),  # conflict with a committed entry
    ],
)
def test_log_maybe_append(index, log_term, committed, ents, wlasti, wappend, wcommit, wpanic):
    log = RaftLog(MemoryStorage())
    log.append([Entry(1, 1), Entry(2, 2), Entry(3, 3)])
    log.committed = 1
    if wpanic:
        with pytest.raises(RaftInvariantError):
            log.maybe_append(index, log_term, committed, ents)
        return
    lasti, ok = log.maybe_append(index, log_term, committed, ents)
    assert (lasti, ok, log.committed) == (wlasti, wappend, wcommit)


def test_log_slice_spans_storage_and_unstable():
    st = MemoryStorage()
    st.append([Entry(1, i) for i in range(1, 6)])
    log = RaftLog(st)
    log.append([Entry(2, i) for i in range(6, 9)])
    assert [e.index for e in log.slice(3, 8)] == [3, 4, 5, 6, 7]
    assert [e.index for e in log.slice(3, 8, max_size=2 * entry_size(Entry()))] == [3, 4]
    assert [e.index for e in log.slice(6, 9)] == [6, 7, 8]
    st.compact(3)
    with pytest.raises(ErrCompacted):
        log.slice(2, 5)


def test_log_next_ents_and_applied():
    st = MemoryStorage()
    log = RaftLog(st)
    log.append([Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    assert not log.has_next_ents()
    log.commit_to(2)
    assert [e.index for e in log.next_ents()] == [1, 2]
    log.applied_to(2)
    assert log.next_ents() == [] and not log.has_next_ents()
    with pytest.raises(RaftInvariantError):
        log.applied_to(3)  # beyond committed


def test_log_restore_snapshot():
    log = RaftLog(MemoryStorage())
    log.append([Entry(1, 1)])
    s = Snapshot(metadata=SnapshotMetadata(ConfState([1]), 100, 7))
    log.restore(s)
    assert log.committed == 100 and log.first_index() == 101 and log.last_index() == 100
    assert log.term(100) == 7 and log.has_pending_snapshot()
    with pytest.raises(ErrCompacted):
        log.term(50)


def test_is_up_to_date():
    log = RaftLog(MemoryStorage())
    log.append([Entry(1, 1), Entry(2, 2), Entry(3, 3)])
    assert log.is_up_to_date(3, 3) and log.is_up_to_date(4, 3) and log.is_up_to_date(1, 4)
    assert not log.is_up_to_date(2, 3) and not log.is_up_to_date(10, 2)


# -- Inflights / Progress / tracker --------------------------------------------------------------


def test_inflights_add_free():
    inf = Inflights(10)
    for i in range(10):
        inf.add(i)
    assert inf.full()
    with pytest.raises(OverflowError):
        inf.add(10)
    inf.free_le(4)
    assert inf.count() == 5 and not inf.full()
    inf.free_le(3)  # stale ack frees nothing
    assert inf.count() == 5
    inf.free_first_one()
    assert inf.count() == 4
    inf.free_le(100)
    assert inf.count() == 0


def test_progress_become_probe_after_snapshot():
    p = Progress(1, 5, 8)
    p.become_snapshot(10)
    p.become_probe()
    assert p.state == ProgressState.PROBE and p.next == 11
    p = Progress(1, 5, 8)
    p.become_replicate()
    assert p.next == 2


@pytest.mark.parametrize(
    "state,match,next_,rejected,hint,wok,wnext",
    [
        (ProgressState.REPLICATE, 5, 10, 5, 5, False, 10),  # stale: rejected <= match
        (ProgressState.REPLICATE, 5, 10, 4, 4, False, 10),
        (ProgressState.REPLICATE, 5, 10, 9, 9, True, 6),  # back to match+1
        (ProgressState.PROBE, 0, 0, 0, 0, False, 0),  # next-1 != rejected
        (ProgressState.PROBE, 0, 10, 5, 5, False, 10),
        (ProgressState.PROBE, 0, 10, 9, 9, True, 9),
        (ProgressState.PROBE, 0, 2, 1, 1, True, 1),
        (ProgressState.PROBE, 0, 1, 0, 0, True, 1),
        (ProgressState.PROBE, 0, 10, 9, 2, True, 3),  # use the hint
        (ProgressState.PROBE, 0, 10, 9, 0, True, 1),
        (ProgressState.PROBE, 3, 10, 9, 0, True, 4),  # never below match+1
    ],
)
def test_progress_maybe_decr_to(state, match, next_, rejected, hint, wok, wnext):
    p = Progress(match, next_, 8)
    p.state = state
    assert p.maybe_decr_to(rejected, hint) == wok
    assert p.next == wnext


def test_progress_is_paused():
    p = Progress(0, 1, 2)
    assert not p.is_paused()
    p.probe_sent = True
    assert p.is_paused()
    p.become_replicate()
    assert not p.is_paused()
    p.inflights.add(1)
    p.inflights.add(2)
    assert p.is_paused()
    p.become_snapshot(5)
    assert p.is_paused()


def test_progress_maybe_update_resumes_probe():
    p = Progress(3, 5, 8)
    p.probe_sent = True
    assert not p.maybe_update(2)
    assert p.probe_sent
    assert p.maybe_update(4)
    assert not p.probe_sent and p.match == 4 and p.next == 5
    assert p.maybe_update(7) and p.next == 8


@pytest.mark.parametrize(
    "matches,want",
    [([5], 5), ([5, 3], 3), ([5, 3, 1], 3), ([1, 5, 3, 4], 3), ([1, 2, 3, 4, 5], 3), ([0, 0, 9], 0)],
)
def test_tracker_committed(matches, want):
    t = ProgressTracker(8)
    for i, m in enumerate(matches):
        t.voters.add(i + 1)
        t.progress[i + 1] = Progress(m, m + 1, 8)
    assert t.committed() == want


def test_tracker_votes():
    t = ProgressTracker(8)
    for i in (1, 2, 3, 4, 5):
        t.voters.add(i)
        t.progress[i] = Progress(0, 1, 8)
    t.learners.add(6)
    t.progress[6] = Progress(0, 1, 8, True)
    t.record_vote(1, True)
    t.record_vote(6, True)
    assert t.tally_votes() == (1, 0, VoteResult.PENDING)
    t.record_vote(2, False)
    t.record_vote(2, True)  # first vote sticks
    t.record_vote(3, False)
    assert t.tally_votes()[2] == VoteResult.PENDING
    t.record_vote(4, False)
    assert t.tally_votes()[2] == VoteResult.LOST
