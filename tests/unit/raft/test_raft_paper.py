"""Tests that follow the Raft paper section by section (after etcd-io/raft raft_paper_test.go)."""

from __future__ import annotations

import pytest

from etcdpy.raft.types import NONE, Entry, StateType
from raft_harness import (
    MT,
    BlackHole,
    RaftNet,
    ents_with_terms,
    msg,
    new_test_raft,
    next_ents,
    read_messages,
    set_hard,
    storage_with,
)


# §5.1: a server that sees a higher term adopts it and becomes follower.
@pytest.mark.parametrize("state", [StateType.FOLLOWER, StateType.CANDIDATE, StateType.LEADER])
def test_update_term_from_message(state):
    r = new_test_raft(1, peers=[1, 2, 3])
    if state == StateType.FOLLOWER:
        r.become_follower(1, 2)
    elif state == StateType.CANDIDATE:
        r.become_candidate()
    else:
        r.become_candidate()
        r.become_leader()
    r.step(msg(MT.APP, term=2))
    assert r.term == 2
    assert r.state == StateType.FOLLOWER


# §5.1: a request with a stale term is ignored.
def test_reject_stale_term_message():
    r = new_test_raft(1, peers=[1, 2, 3])
    set_hard(r, term=2)
    seen = []
    r._step = seen.append  # type: ignore[method-assign]
    r.step(msg(MT.APP, term=1))
    assert seen == []


# §5.2: servers start as followers.
def test_start_as_follower():
    r = new_test_raft(1, peers=[1, 2, 3])
    assert r.state == StateType.FOLLOWER


# §5.2: a leader sends heartbeats every heartbeat tick.
def test_leader_bcast_beat():
    hi = 1
    r = new_test_raft(1, election=10, heartbeat=hi, peers=[1, 2, 3])
    r.become_candidate()
    r.become_leader()
    for i in range(10):
        r.append_entry([Entry(index=i + 1)])
    for _ in range(hi):
        r.tick()
    msgs = sorted(read_messages(r), key=lambda m: m.to)
    assert [(m.type, m.to, m.term) for m in msgs] == [(MT.HEARTBEAT, 2, 1), (MT.HEARTBEAT, 3, 1)]


# §5.2: on election timeout a follower/candidate starts an election with a new term.
@pytest.mark.parametrize("state", [StateType.FOLLOWER, StateType.CANDIDATE])
def test_nonleader_start_election(state):
    et = 10
    r = new_test_raft(1, election=et, peers=[1, 2, 3])
    if state == StateType.FOLLOWER:
        r.become_follower(1, 2)
    else:
        r.become_candidate()
    for _ in range(2 * et):
        r.tick()
    assert r.term == 2
    assert r.state == StateType.CANDIDATE
    assert r.prs.votes.get(1) is True
    msgs = sorted(read_messages(r), key=lambda m: m.to)
    assert [(m.type, m.to, m.term) for m in msgs] == [(MT.VOTE, 2, 2), (MT.VOTE, 3, 2)]


# §5.2: a candidate wins with a majority, loses with a majority of rejections, else waits.
@pytest.mark.parametrize(
    "size,votes,state",
    [
        (1, {}, StateType.LEADER),
        (3, {2: True, 3: True}, StateType.LEADER),
        (3, {2: True}, StateType.LEADER),
        (5, {2: True, 3: True, 4: True, 5: True}, StateType.LEADER),
        (5, {2: True, 3: True, 4: True}, StateType.LEADER),
        (5, {2: True, 3: True}, StateType.LEADER),
        (3, {}, StateType.CANDIDATE),
        (5, {2: True}, StateType.CANDIDATE),
        (5, {2: False, 3: False}, StateType.CANDIDATE),
        (3, {2: False, 3: False}, StateType.FOLLOWER),
        (5, {2: False, 3: False, 4: False}, StateType.FOLLOWER),
        (5, {2: True, 3: False, 4: False, 5: False}, StateType.FOLLOWER),
    ],
)
def test_leader_election_in_one_round_rpc(size, votes, state):
    r = new_test_raft(1, peers=list(range(1, size + 1)))
    r.step(msg(MT.HUP, frm=1, to=1))
    for id_, granted in votes.items():
        r.step(msg(MT.VOTE_RESP, frm=id_, to=1, term=r.term, reject=not granted))
    assert r.state == state
    assert r.term == 1


# §5.2: each server votes for at most one candidate per term, first come first served.
@pytest.mark.parametrize(
    "vote,nvote,wreject",
    [(NONE, 2, False), (NONE, 3, False), (2, 2, False), (3, 3, False), (2, 3, True), (3, 2, True)],
)
def test_follower_vote(vote, nvote, wreject):
    r = new_test_raft(1, peers=[1, 2, 3])
    set_hard(r, term=1, vote=vote)
    r.step(msg(MT.VOTE, frm=nvote, to=1, term=1))
    msgs = read_messages(r)
    assert [(m.frm, m.to, m.term, m.type, m.reject) for m in msgs] == [(1, nvote, 1, MT.VOTE_RESP, wreject)]


# §5.2: a candidate that hears from a leader of at least its term falls back to follower.
@pytest.mark.parametrize("term", [1, 2])
def test_candidate_fallback(term):
    r = new_test_raft(1, peers=[1, 2, 3])
    r.step(msg(MT.HUP, frm=1, to=1))
    assert r.state == StateType.CANDIDATE
    r.step(msg(MT.APP, frm=2, to=1, term=term))
    assert r.state == StateType.FOLLOWER
    assert r.term == term


# §5.2: election timeouts are randomized in [et, 2et).
@pytest.mark.parametrize("state", [StateType.FOLLOWER, StateType.CANDIDATE])
def test_election_timeout_randomized(state):
    et = 10
    r = new_test_raft(1, election=et, peers=[1, 2, 3])
    seen = set()
    for round_ in range(50 * et):
        if state == StateType.FOLLOWER:
            r.become_follower(r.term + 1, 2)
        else:
            r.become_candidate()
        ticks = 0
        while not read_messages(r):
            r.tick()
            ticks += 1
        seen.add(ticks)
    assert seen == set(range(et, 2 * et))


# §5.2: randomized timeouts make split votes rare: usually only one node times out first.
@pytest.mark.parametrize("state", [StateType.FOLLOWER, StateType.CANDIDATE])
def test_election_timeout_nonconflict(state):
    et, size, rounds = 10, 5, 1000
    rs = [new_test_raft(i, election=et, peers=list(range(1, size + 1))) for i in range(1, size + 1)]
    conflicts = 0
    for _ in range(rounds):
        for r in rs:
            if state == StateType.FOLLOWER:
                r.become_follower(r.term + 1, NONE)
            else:
                r.become_candidate()
        timeouts = 0
        while timeouts == 0:
            for r in rs:
                r.tick()
                if read_messages(r):
                    timeouts += 1
        if timeouts > 1:
            conflicts += 1
    assert conflicts / rounds <= 0.3


def _commit_noop_entry(r, st):
    """Drive a fresh leader's empty entry to commit, then persist/apply it."""
    assert r.state == StateType.LEADER
    r.bcast_append()
    for m in read_messages(r):
        assert m.type == MT.APP and len(m.entries) == 1 and m.entries[0].data == b""
        r.step(msg(MT.APP_RESP, frm=m.to, to=1, term=m.term, index=m.index + len(m.entries)))
    read_messages(r)
    next_ents(r, st)


# §5.3: the leader appends a proposal and sends AppendEntries to every follower.
def test_leader_start_replication():
    st = storage_with([1, 2, 3])
    r = new_test_raft(1, storage=st)
    r.become_candidate()
    r.become_leader()
    _commit_noop_entry(r, st)
    li = r.raft_log.last_index()
    r.step(msg(MT.PROP, frm=1, to=1, entries=[Entry(data=b"some data")]))
    assert r.raft_log.last_index() == li + 1
    assert r.raft_log.committed == li
    msgs = sorted(read_messages(r), key=lambda m: m.to)
    want_ents = [(1, li + 1, b"some data")]
    assert [(m.to, m.type, m.index, m.log_term, m.commit) for m in msgs] == [
        (2, MT.APP, li, 1, li),
        (3, MT.APP, li, 1, li),
    ]
    for m in msgs:
        assert [(e.term, e.index, e.data) for e in m.entries] == want_ents
    assert [(e.index, e.data) for e in r.raft_log.unstable_entries()] == [(li + 1, b"some data")]


# §5.3: an entry is committed once a majority stores it; the leader tells followers the commit index.
def test_leader_commit_entry():
    st = storage_with([1, 2, 3])
    r = new_test_raft(1, storage=st)
    r.become_candidate()
    r.become_leader()
    _commit_noop_entry(r, st)
    li = r.raft_log.last_index()
    r.step(msg(MT.PROP, frm=1, to=1, entries=[Entry(data=b"some data")]))
    for m in read_messages(r):
        r.step(msg(MT.APP_RESP, frm=m.to, to=1, term=m.term, index=m.index + len(m.entries)))
    assert r.raft_log.committed == li + 1
    assert [(e.index, e.data) for e in next_ents(r, st)] == [(li + 1, b"some data")]
    msgs = sorted(read_messages(r), key=lambda m: m.to)
    assert [(m.to, m.type, m.commit) for m in msgs] == [(2, MT.APP, li + 1), (3, MT.APP, li + 1)]


# §5.3: commit needs a majority of acknowledgements.
@pytest.mark.parametrize(
    "size,acceptors,wack",
    [
        (1, set(), True),
        (3, set(), False),
        (3, {2}, True),
        (3, {2, 3}, True),
        (5, set(), False),
        (5, {2}, False),
        (5, {2, 3}, True),
        (5, {2, 3, 4}, True),
        (5, {2, 3, 4, 5}, True),
    ],
)
def test_leader_acknowledge_commit(size, acceptors, wack):
    st = storage_with(list(range(1, size + 1)))
    r = new_test_raft(1, storage=st)
    r.become_candidate()
    r.become_leader()
    _commit_noop_entry(r, st)
    li = r.raft_log.last_index()
    r.step(msg(MT.PROP, frm=1, to=1, entries=[Entry(data=b"some data")]))
    for m in read_messages(r):
        if m.to in acceptors:
            r.step(msg(MT.APP_RESP, frm=m.to, to=1, term=m.term, index=m.index + len(m.entries)))
    assert (r.raft_log.committed > li) == wack


# §5.3: committing an entry also commits all preceding entries, including older leaders'.
@pytest.mark.parametrize("prev", [[], [2], [1, 2], [1]])
def test_leader_commit_preceding_entries(prev):
    st = storage_with([1, 2, 3])
    st.append(ents_with_terms(*prev))
    r = new_test_raft(1, storage=st)
    set_hard(r, term=2)
    r.become_candidate()
    r.become_leader()
    r.step(msg(MT.PROP, frm=1, to=1, entries=[Entry(data=b"some data")]))
    for m in read_messages(r):
        r.step(msg(MT.APP_RESP, frm=m.to, to=1, term=m.term, index=m.index + len(m.entries)))
    li = len(prev)
    got = [(e.term, e.index, e.data) for e in next_ents(r, st)]
    want = [(t, i + 1, b"") for i, t in enumerate(prev)] + [(3, li + 1, b""), (3, li + 2, b"some data")]
    assert got == want


# §5.3: a follower applies entries once it learns they are committed.
@pytest.mark.parametrize(
    "ents,commit",
    [
        ([Entry(1, 1, data=b"a")], 1),
        ([Entry(1, 1, data=b"a"), Entry(1, 2, data=b"b")], 1),
        ([Entry(1, 1, data=b"a"), Entry(1, 2, data=b"b")], 2),
        ([Entry(1, 1, data=b"a"), Entry(1, 2, data=b"b")], 2),
    ],
)
def test_follower_commit_entry(ents, commit):
    st = storage_with([1, 2, 3])
    r = new_test_raft(1, storage=st)
    r.become_follower(1, 2)
    r.step(msg(MT.APP, frm=2, to=1, term=1, entries=list(ents), commit=commit))
    assert r.raft_log.committed == commit
    assert [e.data for e in next_ents(r, st)] == [e.data for e in ents[:commit]]


# §5.3: a follower rejects AppendEntries whose previous entry it doesn't have.
@pytest.mark.parametrize(
    "term,index,windex,wreject,wreject_hint,wlog_term",
    [
        (0, 0, 1, False, 0, 0),  # match with committed entries
        (1, 1, 1, False, 0, 0),
        (1, 1, 1, False, 0, 0),
        (2, 2, 2, False, 0, 0),  # match with uncommitted entries
        (1, 2, 2, True, 1, 1),  # unmatch: term of index 2 is 2; hint skips back to term 1
        (3, 3, 3, True, 2, 2),  # unmatch: beyond our log
    ],
)
def test_follower_check_msg_app(term, index, windex, wreject, wreject_hint, wlog_term):
    st = storage_with([1, 2, 3])
    st.append([Entry(1, 1), Entry(2, 2)])
    r = new_test_raft(1, storage=st)
    set_hard(r, term=0, commit=1)
    r.become_follower(2, 2)
    r.step(msg(MT.APP, frm=2, to=1, term=2, log_term=term, index=index))
    msgs = read_messages(r)
    assert [(m.type, m.index, m.reject, m.reject_hint, m.log_term) for m in msgs] == [
        (MT.APP_RESP, windex, wreject, wreject_hint, wlog_term)
    ]


# §5.3: conflicting entries are replaced; new ones appended.
@pytest.mark.parametrize(
    "index,term,ents,wents,wunstable",
    [
        (2, 2, [Entry(3, 3)], [(1, 1), (2, 2), (3, 3)], [(3, 3)]),
        (1, 1, [Entry(3, 2), Entry(4, 3)], [(1, 1), (3, 2), (4, 3)], [(3, 2), (4, 3)]),
        (0, 0, [Entry(1, 1)], [(1, 1), (2, 2)], []),
        (0, 0, [Entry(3, 1)], [(3, 1)], [(3, 1)]),
    ],
)
def test_follower_append_entries(index, term, ents, wents, wunstable):
    st = storage_with([1, 2, 3])
    st.append([Entry(1, 1), Entry(2, 2)])
    r = new_test_raft(1, storage=st)
    r.become_follower(2, 2)
    r.step(msg(MT.APP, frm=2, to=1, term=2, log_term=term, index=index, entries=ents))
    assert [(e.term, e.index) for e in r.raft_log.all_entries()] == wents
    assert [(e.term, e.index) for e in r.raft_log.unstable_entries()] == wunstable


# §5.3 figure 7: the leader brings any follower log into agreement with its own.
LEADER_LOG = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]


@pytest.mark.parametrize(
    "follower_log",
    [
        [1, 1, 1, 4, 4, 5, 5, 6, 6],
        [1, 1, 1, 4],
        [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        [1, 1, 1, 4, 4, 4, 4],
        [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ],
)
def test_leader_sync_follower_log(follower_log):
    lst = storage_with([1, 2, 3])
    lst.append(ents_with_terms(*LEADER_LOG))
    lead = new_test_raft(1, storage=lst)
    set_hard(lead, term=8, commit=len(LEADER_LOG))
    fst = storage_with([1, 2, 3])
    fst.append(ents_with_terms(*follower_log))
    follower = new_test_raft(2, storage=fst)
    set_hard(follower, term=7)
    # Node 3 is down; its vote is injected so the leader wins with it and node 2.
    net = RaftNet(lead, follower, BlackHole())
    net.campaign(1)
    net.send(msg(MT.VOTE_RESP, frm=3, to=1, term=lead.term))
    net.propose(1, b"")
    lead, follower = net.raft(1), net.raft(2)
    assert [(e.term, e.index) for e in follower.raft_log.all_entries()] == [
        (e.term, e.index) for e in lead.raft_log.all_entries()
    ]


# §5.4.1: a candidate's vote requests carry its last log index and term.
@pytest.mark.parametrize("ents,wterm", [([Entry(1, 1)], 2), ([Entry(1, 1), Entry(2, 2)], 3)])
def test_vote_request(ents, wterm):
    r = new_test_raft(1, peers=[1, 2, 3])
    r.step(msg(MT.APP, frm=2, to=1, term=wterm - 1, log_term=0, index=0, entries=ents))
    read_messages(r)
    for _ in range(1, r.election_timeout * 2):
        r.tick_election()
    msgs = sorted(read_messages(r), key=lambda m: m.to)
    assert len(msgs) == 2
    for i, m in enumerate(msgs):
        assert (m.type, m.to, m.term, m.index, m.log_term) == (MT.VOTE, i + 2, wterm, ents[-1].index, ents[-1].term)


# §5.4.1: a voter denies its vote if its own log is more up to date.
@pytest.mark.parametrize(
    "ents,log_term,index,wreject",
    [
        ([Entry(1, 1)], 1, 1, False),
        ([Entry(1, 1)], 1, 2, False),
        ([Entry(1, 1), Entry(1, 2)], 1, 1, True),
        ([Entry(1, 1)], 2, 1, False),
        ([Entry(1, 1)], 2, 2, False),
        ([Entry(1, 1), Entry(1, 2)], 2, 1, False),
        ([Entry(2, 1)], 1, 1, True),
        ([Entry(2, 1)], 1, 2, True),
        ([Entry(2, 1), Entry(1, 2)], 1, 1, True),
    ],
)
def test_voter(ents, log_term, index, wreject):
    st = storage_with([1, 2])
    st.append(ents)
    r = new_test_raft(1, storage=st)
    r.step(msg(MT.VOTE, frm=2, to=1, term=3, log_term=log_term, index=index))
    msgs = read_messages(r)
    assert len(msgs) == 1
    assert msgs[0].type == MT.VOTE_RESP and msgs[0].reject == wreject


# §5.4.2: a leader only commits entries of its own term by counting replicas.
@pytest.mark.parametrize("index,wcommit", [(1, 0), (2, 0), (3, 3)])
def test_leader_only_commits_log_from_current_term(index, wcommit):
    st = storage_with([1, 2])
    st.append([Entry(1, 1), Entry(2, 2)])
    r = new_test_raft(1, storage=st)
    set_hard(r, term=2)
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    r.step(msg(MT.PROP, frm=1, to=1, entries=[Entry()]))  # entry 4 of term 3
    r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=index))
    assert r.raft_log.committed == wcommit
