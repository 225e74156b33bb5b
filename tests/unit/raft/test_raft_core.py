"""Algorithm tests after etcd-io/raft raft_test.go: elections, replication, commit rules, CheckQuorum, PreVote."""

from __future__ import annotations

import pytest

from etcdpy.raft import ProposalDropped
from etcdpy.raft.tracker import ProgressState
from etcdpy.raft.types import NONE, Entry, StateType
from raft_harness import (
    MT,
    BlackHole,
    RaftNet,
    ents_with_terms,
    msg,
    new_test_raft,
    next_ents,
    raft_with_log_terms,
    read_messages,
    set_hard,
    storage_with,
)


def log_view(r):
    return [(e.term, e.index, e.data) for e in r.raft_log.all_entries()]


def tick_until_election(r):
    for _ in range(r.randomized_election_timeout):
        r.tick()


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize(
    "peers,wstate,wterm",
    [
        ([None, None, None], StateType.LEADER, 1),
        ([None, None, BlackHole()], StateType.LEADER, 1),
        ([None, BlackHole(), BlackHole()], StateType.CANDIDATE, 1),
        ([None, BlackHole(), BlackHole(), None], StateType.CANDIDATE, 1),
        ([None, BlackHole(), BlackHole(), None, None], StateType.LEADER, 1),
    ],
)
def test_leader_election(pre_vote, peers, wstate, wterm):
    net = RaftNet(*peers, pre_vote=pre_vote)
    net.campaign(1)
    r = net.raft(1)
    if pre_vote and wstate == StateType.CANDIDATE:
        # With pre-vote the node never gets past the pre-candidate stage (and keeps its term).
        assert r.state == StateType.PRE_CANDIDATE and r.term == 0
    else:
        assert r.state == wstate and r.term == wterm


def test_leader_election_with_log_disagreement():
    # Three logs: a node with an older log can't win; the most up-to-date can.
    net = RaftNet(
        raft_with_log_terms(1, [1], [1, 2, 3]),
        raft_with_log_terms(2, [1, 1], [1, 2, 3]),
        raft_with_log_terms(3, [1, 1, 2], [1, 2, 3]),
    )
    net.campaign(1)
    assert net.raft(1).state == StateType.FOLLOWER
    net.campaign(3)
    assert net.raft(3).state == StateType.LEADER


@pytest.mark.parametrize("pre_vote", [False, True])
def test_leader_cycle(pre_vote):
    net = RaftNet(None, None, None, pre_vote=pre_vote)
    for campaigner in (1, 2, 3):
        net.campaign(campaigner)
        for i in (1, 2, 3):
            r = net.raft(i)
            assert (r.state == StateType.LEADER) == (i == campaigner)


def test_leader_election_overwrite_newer_logs():
    """A node can win with an older-term log than a peer's and overwrite that peer's newer entries (§5.4.1)."""
    peers5 = [1, 2, 3, 4, 5]

    def voted(id_, vote, term):
        r = new_test_raft(id_, peers=peers5)
        set_hard(r, term=term, vote=vote)
        return r

    net = RaftNet(
        raft_with_log_terms(1, [1], peers5),  # won the first election
        raft_with_log_terms(2, [1], peers5),  # got node 1's entry
        raft_with_log_terms(3, [2], peers5),  # won the second election alone
        voted(4, 3, 2),  # voted for 3 in term 2, got no entries
        voted(5, 3, 2),
    )
    net.campaign(1)
    r1 = net.raft(1)
    # Term 2: 3, 4 and 5 refuse (3 has a newer log, 4 and 5 already voted).
    assert r1.state == StateType.FOLLOWER and r1.term == 2
    net.campaign(1)
    assert r1.state == StateType.LEADER and r1.term == 3
    for i in peers5:
        assert [(e.term, e.index) for e in net.raft(i).raft_log.all_entries()] == [(1, 1), (3, 2)]


@pytest.mark.parametrize("vt", [MT.VOTE, MT.PRE_VOTE])
@pytest.mark.parametrize("st", [StateType.FOLLOWER, StateType.CANDIDATE, StateType.PRE_CANDIDATE, StateType.LEADER])
def test_vote_from_any_state(vt, st):
    r = new_test_raft(1, peers=[1, 2, 3])
    r.term = 1
    if st == StateType.FOLLOWER:
        r.become_follower(r.term, 3)
    elif st == StateType.PRE_CANDIDATE:
        r.become_pre_candidate()
    elif st == StateType.CANDIDATE:
        r.become_candidate()
    else:
        r.become_candidate()
        r.become_leader()
    read_messages(r)
    orig_term = r.term
    new_term = r.term + 1
    r.step(msg(vt, frm=2, to=1, term=new_term, log_term=new_term, index=42))
    msgs = read_messages(r)
    assert len(msgs) == 1
    resp = msgs[0]
    assert resp.type == (MT.VOTE_RESP if vt == MT.VOTE else MT.PRE_VOTE_RESP)
    assert not resp.reject
    if vt == MT.VOTE:
        assert r.state == StateType.FOLLOWER and r.term == new_term and r.vote == 2
    else:
        assert r.state == st and r.term == orig_term
        assert r.vote in (NONE, 1)


def test_log_replication():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.propose(1, b"somedata")
    net.campaign(2)
    net.propose(1, b"somedata2")  # forwarded by follower 1 to leader 2
    for i in (1, 2, 3):
        r = net.raft(i)
        assert r.raft_log.committed == 4
        datas = [e.data for e in next_ents(r, net.storage[i]) if e.data]
        assert datas == [b"somedata", b"somedata2"]


def test_single_node_commit():
    net = RaftNet(None)
    net.campaign(1)
    net.propose(1)
    net.propose(1)
    assert net.raft(1).raft_log.committed == 3


def test_cannot_commit_without_new_term_entry():
    """Entries from previous terms are not committed by counting replicas (Figure 8)."""
    net = RaftNet(None, None, None, None, None)
    net.campaign(1)
    net.cut(1, 3)
    net.cut(1, 4)
    net.cut(1, 5)
    net.propose(1)
    net.propose(1)
    assert net.raft(1).raft_log.committed == 1
    net.recover()
    net.ignore(MT.APP)  # the new leader can't replicate its empty entry
    net.campaign(2)
    r2 = net.raft(2)
    assert r2.raft_log.committed == 1
    net.recover()
    net.send(msg(MT.BEAT, frm=2, to=2))  # trigger replication
    net.propose(2)
    assert r2.raft_log.committed == 5


def test_commit_without_new_term_entry():
    net = RaftNet(None, None, None, None, None)
    net.campaign(1)
    net.cut(1, 3)
    net.cut(1, 4)
    net.cut(1, 5)
    net.propose(1)
    net.propose(1)
    assert net.raft(1).raft_log.committed == 1
    net.recover()
    # Electing 2 appends an empty entry of term 2; committing it commits the rest.
    net.campaign(2)
    assert net.raft(1).raft_log.committed == 4


@pytest.mark.parametrize("pre_vote", [False, True])
def test_dueling_candidates(pre_vote):
    net = RaftNet(None, None, None, pre_vote=pre_vote)
    net.cut(1, 3)
    net.campaign(1)
    net.campaign(3)
    assert net.raft(1).state == StateType.LEADER
    # With pre-vote, 2's rejection carries term 1 > 0 and sends 3 back to follower.
    assert net.raft(3).state == (StateType.FOLLOWER if pre_vote else StateType.CANDIDATE)
    net.recover()
    # 3 campaigns again: it has a shorter log, so it loses; without pre-vote it
    # disrupts the term, with pre-vote it does not.
    net.campaign(3)
    r1, r3 = net.raft(1), net.raft(3)
    if pre_vote:
        assert r1.state == StateType.LEADER and r1.term == 1
        assert r3.state == StateType.FOLLOWER and r3.term == 1
    else:
        assert r1.state == StateType.FOLLOWER and r1.term == 2
        assert r3.state == StateType.FOLLOWER and r3.term == 2


def test_candidate_concede():
    net = RaftNet(None, None, None)
    net.isolate(1)
    net.campaign(1)
    net.campaign(3)
    net.recover()
    net.send(msg(MT.BEAT, frm=3, to=3))
    net.propose(3, b"force follower")
    net.send(msg(MT.BEAT, frm=3, to=3))
    r1 = net.raft(1)
    assert r1.state == StateType.FOLLOWER and r1.term == 1
    for i in (1, 2, 3):
        assert log_view(net.raft(i)) == [(1, 1, b""), (1, 2, b"force follower")]


@pytest.mark.parametrize("pre_vote", [False, True])
def test_single_node_candidate(pre_vote):
    net = RaftNet(None, pre_vote=pre_vote)
    net.campaign(1)
    assert net.raft(1).state == StateType.LEADER


def test_old_messages():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.campaign(2)
    net.campaign(1)
    # A stale MsgApp from term 2 must be ignored by node 1 (now leader of term 3).
    net.send(msg(MT.APP, frm=2, to=1, term=2, entries=[Entry(2, 3)]))
    net.propose(1)
    r1 = net.raft(1)
    assert log_view(r1) == [(1, 1, b""), (2, 2, b""), (3, 3, b""), (3, 4, b"somedata")]
    assert r1.raft_log.committed == 4


@pytest.mark.parametrize(
    "peers,success",
    [
        ([None, None, None], True),
        ([None, None, BlackHole()], True),
        ([None, BlackHole(), BlackHole()], False),
        ([None, BlackHole(), BlackHole(), None], False),
        ([None, BlackHole(), BlackHole(), None, None], True),
    ],
)
def test_proposal(peers, success):
    net = RaftNet(*peers)
    net.campaign(1)
    net.propose(1)
    r1 = net.raft(1)
    if success:
        assert r1.raft_log.committed == 2
        assert log_view(r1) == [(1, 1, b""), (1, 2, b"somedata")]
    else:
        assert r1.raft_log.committed == 0
    assert r1.term == 1


@pytest.mark.parametrize("peers", [[None, None, None], [None, None, BlackHole()]])
def test_proposal_by_proxy(peers):
    net = RaftNet(*peers)
    net.campaign(1)
    net.propose(2)  # proposed on a follower, forwarded to the leader
    for i in net.peers:
        p = net.peers[i]
        if isinstance(p, BlackHole):
            continue
        assert log_view(p) == [(1, 1, b""), (1, 2, b"somedata")]
    assert net.raft(1).raft_log.committed == 2


@pytest.mark.parametrize(
    "matches,logs,sm_term,w",
    [
        ([1], [1], 1, 1),
        ([1], [1], 2, 0),
        ([2], [1, 2], 2, 2),
        ([1], [2], 2, 1),
        ([2, 1, 1], [1, 2], 1, 1),
        ([2, 1, 1], [1, 1], 2, 0),
        ([2, 1, 2], [1, 2], 2, 2),
        ([2, 1, 2], [1, 1], 2, 0),
        ([2, 1, 1, 1], [1, 2], 1, 1),
        ([2, 1, 1, 1], [1, 1], 2, 0),
        ([2, 1, 1, 2], [1, 2], 1, 1),
        ([2, 1, 1, 2], [1, 1], 2, 0),
        ([2, 1, 2, 2], [1, 2], 2, 2),
        ([2, 1, 2, 2], [1, 1], 2, 0),
    ],
)
def test_commit(matches, logs, sm_term, w):
    st = storage_with([1])
    st.append(ents_with_terms(*logs))
    st.set_hard_state(type(st.hard_state)(term=sm_term))
    r = new_test_raft(1, storage=st)
    for j, m in enumerate(matches):
        id_ = j + 1
        if id_ > 1:
            r.apply_conf_change(__import__("etcdpy.raft").raft.ConfChange(node_id=id_))
        r.prs.progress[id_].match = m
        r.prs.progress[id_].next = m + 1
    r.maybe_commit()
    assert r.raft_log.committed == w


@pytest.mark.parametrize("elapse,wprob", [(5, 0.0), (10, 0.1), (13, 0.4), (15, 0.6), (18, 0.9), (20, 1.0)])
def test_past_election_timeout(elapse, wprob):
    r = new_test_raft(1, peers=[1])
    r.election_elapsed = elapse
    c = 0
    for _ in range(10000):
        r.reset_randomized_election_timeout()
        if r.past_election_timeout():
            c += 1
    assert abs(c / 10000 - wprob) < 0.05


def test_step_ignore_old_term_msg():
    r = new_test_raft(1, peers=[1])
    called = []
    r._step = called.append  # type: ignore[method-assign]
    r.term = 2
    r.step(msg(MT.APP, term=1))
    assert called == []


@pytest.mark.parametrize(
    "m,windex,wcommit,wreject",
    [
        # Reject: the previous entry doesn't match.
        (dict(term=3, log_term=3, index=2, commit=3), 2, 0, True),
        (dict(term=2, log_term=3, index=3, commit=3), 2, 0, True),
        # Accept.
        (dict(term=2, log_term=1, index=1, commit=1), 2, 1, False),
        (dict(term=2, log_term=0, index=0, commit=1, entries=[Entry(2, 1)]), 1, 1, False),
        (dict(term=2, log_term=2, index=2, commit=3, entries=[Entry(2, 3), Entry(2, 4)]), 4, 3, False),
        (dict(term=2, log_term=2, index=2, commit=4, entries=[Entry(2, 3)]), 3, 3, False),
        (dict(term=2, log_term=1, index=1, commit=4, entries=[Entry(2, 2)]), 2, 2, False),
        # Commit up to our last new entry only.
        (dict(term=1, log_term=1, index=1, commit=3), 2, 1, False),
        (dict(term=1, log_term=1, index=1, commit=3, entries=[Entry(2, 2)]), 2, 2, False),
        (dict(term=2, log_term=2, index=2, commit=3), 2, 2, False),
        (dict(term=2, log_term=2, index=2, commit=4), 2, 2, False),
    ],
)
def test_handle_msg_app(m, windex, wcommit, wreject):
    st = storage_with([1])
    st.append([Entry(1, 1), Entry(2, 2)])
    r = new_test_raft(1, storage=st)
    r.become_follower(2, NONE)
    r.handle_append_entries(msg(MT.APP, **m))
    assert r.raft_log.last_index() == windex
    assert r.raft_log.committed == wcommit
    msgs = read_messages(r)
    assert len(msgs) == 1 and msgs[0].reject == wreject


@pytest.mark.parametrize("commit,wcommit", [(3, 3), (1, 2)])
def test_handle_heartbeat(commit, wcommit):
    st = storage_with([1, 2])
    st.append([Entry(1, 1), Entry(2, 2), Entry(3, 3)])
    r = new_test_raft(1, storage=st)
    r.become_follower(2, 2)
    r.raft_log.commit_to(2)
    r.handle_heartbeat(msg(MT.HEARTBEAT, frm=2, to=1, term=2, commit=commit))
    assert r.raft_log.committed == wcommit
    msgs = read_messages(r)
    assert len(msgs) == 1 and msgs[0].type == MT.HEARTBEAT_RESP


def test_handle_heartbeat_resp():
    st = storage_with([1, 2])
    st.append([Entry(1, 1), Entry(2, 2), Entry(3, 3)])
    r = new_test_raft(1, storage=st)
    set_hard(r, term=3)
    r.become_candidate()
    r.become_leader()
    r.raft_log.commit_to(r.raft_log.last_index())
    # A heartbeat response from a lagging follower triggers a MsgApp.
    r.step(msg(MT.HEARTBEAT_RESP, frm=2, term=r.term))
    msgs = read_messages(r)
    assert len(msgs) == 1 and msgs[0].type == MT.APP
    # Probe state: another heartbeat response releases the probe, so another MsgApp.
    r.step(msg(MT.HEARTBEAT_RESP, frm=2, term=r.term))
    msgs = read_messages(r)
    assert len(msgs) == 1 and msgs[0].type == MT.APP
    # Once acknowledged, heartbeat responses trigger nothing.
    r.step(msg(MT.APP_RESP, frm=2, term=r.term, index=msgs[0].index + len(msgs[0].entries)))
    read_messages(r)
    r.step(msg(MT.HEARTBEAT_RESP, frm=2, term=r.term))
    assert read_messages(r) == []


def test_msg_app_resp_wait_reset():
    r = new_test_raft(1, peers=[1, 2, 3])
    r.become_candidate()
    r.become_leader()
    r.bcast_append()
    read_messages(r)
    r.step(msg(MT.APP_RESP, frm=2, index=1, term=r.term))
    assert r.raft_log.committed == 1
    read_messages(r)
    r.step(msg(MT.PROP, frm=1, entries=[Entry()]))
    # Node 2 is in replicate, node 3 is probing and paused: only 2 gets the entry.
    msgs = read_messages(r)
    assert [(m.type, m.to, [e.index for e in m.entries]) for m in msgs] == [(MT.APP, 2, [2])]
    # Node 3 acks index 1: it moves to replicate and gets entry 2.
    r.step(msg(MT.APP_RESP, frm=3, index=1, term=r.term))
    msgs = read_messages(r)
    assert [(m.type, m.to, [e.index for e in m.entries]) for m in msgs] == [(MT.APP, 3, [2])]


@pytest.mark.parametrize("vt", [MT.VOTE, MT.PRE_VOTE])
@pytest.mark.parametrize(
    "state,index,log_term,vote_for,wreject",
    [
        (StateType.FOLLOWER, 0, 0, NONE, True),
        (StateType.FOLLOWER, 0, 1, NONE, True),
        (StateType.FOLLOWER, 0, 2, NONE, True),
        (StateType.FOLLOWER, 0, 3, NONE, False),
        (StateType.FOLLOWER, 1, 0, NONE, True),
        (StateType.FOLLOWER, 1, 1, NONE, True),
        (StateType.FOLLOWER, 1, 2, NONE, True),
        (StateType.FOLLOWER, 1, 3, NONE, False),
        (StateType.FOLLOWER, 2, 0, NONE, True),
        (StateType.FOLLOWER, 2, 1, NONE, True),
        (StateType.FOLLOWER, 2, 2, NONE, False),
        (StateType.FOLLOWER, 2, 3, NONE, False),
        (StateType.FOLLOWER, 3, 0, NONE, True),
        (StateType.FOLLOWER, 3, 1, NONE, True),
        (StateType.FOLLOWER, 3, 2, NONE, False),
        (StateType.FOLLOWER, 3, 3, NONE, False),
        (StateType.FOLLOWER, 3, 2, 2, False),
        (StateType.FOLLOWER, 3, 2, 1, True),
        (StateType.LEADER, 3, 3, 1, True),
        (StateType.PRE_CANDIDATE, 3, 3, 1, True),
        (StateType.CANDIDATE, 3, 3, 1, True),
    ],
)
def test_recv_msg_vote(vt, state, index, log_term, vote_for, wreject):
    st = storage_with([1, 2])
    st.append([Entry(2, 1), Entry(2, 2)])
    r = new_test_raft(1, storage=st)
    r.state = state
    r._step = {
        StateType.FOLLOWER: r._step_follower,
        StateType.CANDIDATE: r._step_candidate,
        StateType.PRE_CANDIDATE: r._step_candidate,
        StateType.LEADER: r._step_leader,
    }[state]
    r.vote = vote_for
    r.step(msg(vt, frm=2, index=index, log_term=log_term))
    msgs = read_messages(r)
    assert len(msgs) == 1
    assert msgs[0].type == (MT.VOTE_RESP if vt == MT.VOTE else MT.PRE_VOTE_RESP)
    assert msgs[0].reject == wreject


@pytest.mark.parametrize("state", [StateType.FOLLOWER, StateType.CANDIDATE, StateType.PRE_CANDIDATE, StateType.LEADER])
@pytest.mark.parametrize("t", [MT.VOTE, MT.APP])
def test_all_server_stepdown(state, t):
    r = new_test_raft(1, peers=[1, 2, 3])
    if state == StateType.FOLLOWER:
        r.become_follower(1, NONE)
    elif state == StateType.PRE_CANDIDATE:
        r.become_pre_candidate()
    elif state == StateType.CANDIDATE:
        r.become_candidate()
    else:
        r.become_candidate()
        r.become_leader()
    tterm = 3
    r.step(msg(t, frm=2, term=tterm, log_term=tterm))
    assert r.state == StateType.FOLLOWER
    assert r.term == tterm
    assert r.lead == (2 if t == MT.APP else NONE)


def test_stale_leader_steps_down_on_higher_term_reply():
    net = RaftNet(None, None, None, check_quorum=True)
    net.campaign(1)
    assert net.raft(1).state == StateType.LEADER
    net.isolate(3)
    net.send(msg(MT.BEAT, frm=1, to=1))
    r3 = net.raft(3)
    # 3 times out and becomes candidate of term 2.
    for _ in range(2 * r3.election_timeout):
        r3.tick()
    read_messages(r3)
    assert r3.state == StateType.CANDIDATE and r3.term == 2
    net.recover()
    # 3 answers the stale heartbeat (term 1) with its term 2 (CheckQuorum on), deposing the leader.
    net.send(msg(MT.BEAT, frm=1, to=1))
    assert net.raft(1).term == 2


# -- CheckQuorum ------------------------------------------------------------------


def test_leader_stepdown_when_quorum_active():
    r = new_test_raft(1, election=5, peers=[1, 2, 3], check_quorum=True)
    r.become_candidate()
    r.become_leader()
    for _ in range(r.election_timeout + 1):
        r.step(msg(MT.HEARTBEAT_RESP, frm=2, term=r.term))
        r.tick()
    assert r.state == StateType.LEADER


def test_leader_stepdown_when_quorum_lost():
    r = new_test_raft(1, election=5, peers=[1, 2, 3], check_quorum=True)
    r.become_candidate()
    r.become_leader()
    for _ in range(r.election_timeout + 1):
        r.tick()
    assert r.state == StateType.FOLLOWER


def test_leader_superseding_with_check_quorum():
    net = RaftNet(None, None, None, check_quorum=True)
    a, b, c = net.raft(1), net.raft(2), net.raft(3)
    b.randomized_election_timeout = b.election_timeout + 1
    for _ in range(b.election_timeout):
        b.tick()
    net.campaign(1)
    assert a.state == StateType.LEADER and c.state == StateType.FOLLOWER
    net.campaign(3)
    # 3 is refused: node 2 still has a live leader (lease) and hasn't timed out.
    assert c.state == StateType.CANDIDATE
    for _ in range(b.election_timeout):
        b.tick()
    net.campaign(3)
    assert c.state == StateType.LEADER


def test_leader_election_with_check_quorum():
    net = RaftNet(None, None, None, check_quorum=True)
    a, b, c = net.raft(1), net.raft(2), net.raft(3)
    a.randomized_election_timeout = a.election_timeout + 1
    b.randomized_election_timeout = b.election_timeout + 2
    # Nobody has a leader, so check-quorum leases do not block the first election.
    net.campaign(1)
    assert a.state == StateType.LEADER and c.state == StateType.FOLLOWER
    a.randomized_election_timeout = a.election_timeout + 1
    b.randomized_election_timeout = b.election_timeout + 2
    for _ in range(a.election_timeout):
        a.tick()
    for _ in range(b.election_timeout):
        b.tick()
    net.campaign(3)
    assert a.state == StateType.FOLLOWER and c.state == StateType.LEADER


def test_free_stuck_candidate_with_check_quorum():
    """A partitioned candidate with a higher term rejoins: the leader learns its term and steps down."""
    net = RaftNet(None, None, None, check_quorum=True)
    a, b, c = net.raft(1), net.raft(2), net.raft(3)
    b.randomized_election_timeout = b.election_timeout + 1
    for _ in range(b.election_timeout):
        b.tick()
    net.campaign(1)
    net.isolate(1)
    net.campaign(3)
    assert b.state == StateType.FOLLOWER and c.state == StateType.CANDIDATE and c.term == b.term + 1
    net.campaign(3)
    assert c.term == b.term + 2
    net.recover()
    net.send(msg(MT.HEARTBEAT, frm=1, to=3, term=a.term))
    # The stale heartbeat makes 3 answer with its term; the leader steps down.
    assert a.state == StateType.FOLLOWER and a.term == c.term
    net.campaign(3)
    assert c.state == StateType.LEADER


def test_non_promotable_voter_with_check_quorum():
    a = new_test_raft(1, peers=[1, 2], check_quorum=True)
    b = new_test_raft(2, peers=[1], check_quorum=True)
    net = RaftNet(a, b)
    # RaftNet re-configures both with voters {1, 2}; make 2 non-promotable again.
    b.prs.progress.pop(2)
    b.prs.voters.discard(2)
    assert not b.promotable()
    for _ in range(b.election_timeout):
        b.tick()
    net.campaign(1)
    assert a.state == StateType.LEADER and b.state == StateType.FOLLOWER and b.lead == 1


def test_disruptive_follower_with_pre_vote():
    """PreVote keeps a rejoining, timed-out follower from disrupting a stable leader."""
    net = RaftNet(None, None, None, check_quorum=True, pre_vote=True)
    n1, n3 = net.raft(1), net.raft(3)
    net.campaign(1)
    net.propose(1)
    net.isolate(3)
    for _ in range(3 * n3.election_timeout):
        n3.tick()
    read_messages(n3)
    assert n3.state == StateType.PRE_CANDIDATE and n3.term == n1.term
    net.recover()
    for _ in range(3):
        net.send(msg(MT.BEAT, frm=1, to=1))
    assert n1.state == StateType.LEADER and n1.term == 1


def test_disruptive_follower_without_pre_vote():
    net = RaftNet(None, None, None, check_quorum=True)
    n1, n3 = net.raft(1), net.raft(3)
    net.campaign(1)
    net.isolate(3)
    for _ in range(3 * n3.election_timeout):
        n3.tick()
    read_messages(n3)
    assert n3.state == StateType.CANDIDATE and n3.term > n1.term
    net.recover()
    # The leader's heartbeat hits 3's higher term; the MsgAppResp reply forces the leader down.
    net.send(msg(MT.BEAT, frm=1, to=1))
    assert n1.state == StateType.FOLLOWER


def test_pre_vote_with_split_vote():
    net = RaftNet(None, None, None, pre_vote=True)
    net.campaign(1)
    net.isolate(1)
    # 2 and 3 both start elections at once: split vote, then one wins.
    net.send(msg(MT.HUP, frm=2, to=2), msg(MT.HUP, frm=3, to=3))
    n2, n3 = net.raft(2), net.raft(3)
    assert n2.term == 2 and n3.term == 2
    assert n2.state == StateType.CANDIDATE or n3.state == StateType.CANDIDATE
    net.campaign(2)
    assert n2.state == StateType.LEADER and n3.state == StateType.FOLLOWER
    assert n2.term == 3


def test_pre_vote_does_not_bump_term_when_rejected():
    net = RaftNet(None, None, None, pre_vote=True)
    net.campaign(1)
    n3 = net.raft(3)
    net.isolate(3)
    net.propose(1)
    for _ in range(5):
        net.campaign(3)
    assert n3.term == 1
    net.recover()
    net.campaign(3)  # log is behind: pre-vote fails, no term bump
    assert n3.term == 1 and net.raft(1).state == StateType.LEADER


def test_node_with_smaller_term_can_complete_election():
    """A node left behind with a lower term can still win once it has the longest log (etcd #8501 shape)."""
    net = RaftNet(None, None, None, pre_vote=True)
    net.cut(1, 3)
    net.cut(2, 3)
    net.campaign(1)
    assert net.raft(1).state == StateType.LEADER
    net.campaign(3)
    assert net.raft(3).state == StateType.PRE_CANDIDATE
    net.campaign(2)
    assert net.raft(2).state == StateType.LEADER
    # 2 is leader of term 2; 1 stays at term 2 as follower. Cut 2 off; 1 and 3 elect.
    net.recover()
    net.cut(2, 1)
    net.cut(2, 3)
    net.campaign(1)
    assert net.raft(1).state == StateType.LEADER or net.raft(3).state == StateType.LEADER


# -- replication flow control ---------------------------------------------------------


def test_send_append_for_progress_probe():
    r = new_test_raft(1, peers=[1, 2])
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    pr = r.prs.progress[2]
    assert pr.state == ProgressState.PROBE
    for i in range(3):
        if i == 0:
            # The first proposal sends one MsgApp and pauses the probe.
            r.append_entry([Entry(data=b"somedata")])
            r.send_append(2)
            msgs = read_messages(r)
            assert len(msgs) == 1 and msgs[0].index == 0
        assert pr.probe_sent
        for _ in range(10):
            r.append_entry([Entry(data=b"somedata")])
            r.send_append(2)
            assert read_messages(r) == []
        # A heartbeat is sent; the response releases the probe.
        for _ in range(r.heartbeat_timeout):
            r.step(msg(MT.BEAT, frm=1, to=1))
        assert pr.probe_sent
        msgs = read_messages(r)
        assert len(msgs) == 1 and msgs[0].type == MT.HEARTBEAT
    r.step(msg(MT.HEARTBEAT_RESP, frm=2, term=r.term))
    msgs = read_messages(r)
    assert len(msgs) == 1 and msgs[0].type == MT.APP and msgs[0].index == 0


def test_send_append_for_progress_replicate():
    r = new_test_raft(1, peers=[1, 2])
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    pr = r.prs.progress[2]
    pr.become_replicate()
    for _ in range(10):
        r.append_entry([Entry(data=b"somedata")])
        r.send_append(2)
        assert len(read_messages(r)) == 1


def test_send_append_for_progress_snapshot():
    r = new_test_raft(1, peers=[1, 2])
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    r.prs.progress[2].become_snapshot(10)
    for _ in range(10):
        r.append_entry([Entry(data=b"somedata")])
        r.send_append(2)
        assert read_messages(r) == []


def test_recv_msg_unreachable():
    st = storage_with([1, 2])
    st.append([Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    r = new_test_raft(1, storage=st)
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    pr = r.prs.progress[2]
    pr.match = 3
    pr.become_replicate()
    pr.optimistic_update(5)
    r.step(msg(MT.UNREACHABLE, frm=2, to=1))
    assert pr.state == ProgressState.PROBE and pr.next == pr.match + 1


def test_inflight_window_limits_msg_app():
    r = new_test_raft(1, peers=[1, 2], max_inflight_msgs=3)
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    pr = r.prs.progress[2]
    pr.become_replicate()
    sent = 0
    for _ in range(10):
        r.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"x")]))
        sent += len(read_messages(r))
    assert sent == 3
    assert pr.is_paused()
    # Acknowledging frees the window; the leader sends everything left in one batch.
    r.step(msg(MT.APP_RESP, frm=2, term=r.term, index=3))
    msgs = read_messages(r)
    assert msgs and msgs[0].type == MT.APP
    assert msgs[-1].entries[-1].index == r.raft_log.last_index()


def test_max_size_per_msg_batches():
    r = new_test_raft(1, peers=[1, 2], max_size_per_msg=1000)
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    for _ in range(100):
        r.append_entry([Entry(data=b"x" * 100)])
    r.prs.progress[2].become_replicate()
    r.prs.progress[2].next = 1
    r.send_append(2)
    msgs = read_messages(r)
    assert len(msgs) == 1
    n = len(msgs[0].entries)
    assert 1 <= n <= 1000 // 100


def test_leader_append_response_fast_backoff():
    """A follower's reject hint lets the leader skip a whole divergent term at once."""
    leader_terms = [1, 1, 2, 2, 2, 2, 2, 5, 5, 5]
    follower_terms = [1, 1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]
    lst = storage_with([1, 2])
    lst.append(ents_with_terms(*leader_terms))
    leader = new_test_raft(1, storage=lst)
    set_hard(leader, term=5)
    leader.become_candidate()
    leader.become_leader()
    read_messages(leader)
    fst = storage_with([1, 2])
    fst.append(ents_with_terms(*follower_terms))
    follower = new_test_raft(2, storage=fst)
    set_hard(follower, term=5)
    follower.become_follower(leader.term, 1)
    rounds = 0
    leader.send_append(2)
    while True:
        msgs = [m for m in read_messages(leader) if m.to == 2 and m.type == MT.APP]
        if not msgs:
            break
        rounds += 1
        for m in msgs:
            follower.step(m)
        for resp in read_messages(follower):
            leader.step(resp)
        assert rounds < 6
    assert [(e.term, e.index) for e in follower.raft_log.all_entries()] == [
        (e.term, e.index) for e in leader.raft_log.all_entries()
    ]
    assert rounds <= 4


def test_uncommitted_entry_limit():
    max_size = 1024
    r = new_test_raft(1, peers=[1, 2, 3], max_uncommitted_entries_size=max_size)
    r.become_candidate()
    r.become_leader()
    assert r.uncommitted_size == 0
    for pr in r.prs.progress.values():
        pr.become_replicate()
    data = b"x" * 100
    n = 0
    with pytest.raises(ProposalDropped):
        while True:
            r.step(msg(MT.PROP, frm=1, entries=[Entry(data=data)]))
            n += 1
    assert n == max_size // 100 + (1 if max_size % 100 else 0) or n == max_size // 100
    # Committing (via advance with the committed entries) frees the budget.
    ents = r.raft_log.slice(r.raft_log.first_index(), r.raft_log.last_index() + 1)
    r.reduce_uncommitted_size(ents)
    assert r.uncommitted_size == 0
    r.step(msg(MT.PROP, frm=1, entries=[Entry(data=data)]))
    # A single proposal larger than the limit is accepted when nothing is uncommitted.
    r.reduce_uncommitted_size([Entry(data=data)])
    r.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"y" * 5000)]))
    # An empty entry (new leader) is always accepted.
    assert r.increase_uncommitted_size([Entry()])


def test_campaign_while_leader():
    for pre_vote in (False, True):
        r = new_test_raft(1, peers=[1], pre_vote=pre_vote)
        r.step(msg(MT.HUP, frm=1, to=1))
        assert r.state == StateType.LEADER
        term = r.term
        r.step(msg(MT.HUP, frm=1, to=1))
        assert r.state == StateType.LEADER and r.term == term


def test_follower_forwards_proposal_or_drops():
    r = new_test_raft(1, peers=[1, 2, 3])
    with pytest.raises(ProposalDropped):
        r.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"x")]))
    r.become_follower(1, 2)
    r.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"x")]))
    msgs = read_messages(r)
    assert [(m.type, m.to) for m in msgs] == [(MT.PROP, 2)]
    r2 = new_test_raft(1, peers=[1, 2, 3], disable_proposal_forwarding=True)
    r2.become_follower(1, 2)
    with pytest.raises(ProposalDropped):
        r2.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"x")]))


def test_duplicate_msg_prop_does_not_corrupt_log():
    """A MsgProp delivered twice (network duplication) must append two fresh entries."""
    net = RaftNet(None, None, None)
    net.campaign(1)
    m = msg(MT.PROP, frm=2, to=1, entries=[Entry(data=b"d")])
    net.send(m)
    net.send(m)
    logs = [(e.term, e.index, e.data) for e in net.raft(1).raft_log.all_entries()]
    assert logs == [(1, 1, b""), (1, 2, b"d"), (1, 3, b"d")]
