"""Snapshots, ReadIndex, learners, membership changes and leader transfer (after etcd-io/raft tests)."""

from __future__ import annotations

import pytest

from etcdpy.raft import ProposalDropped
from etcdpy.raft.read_only import ReadOnlyOption
from etcdpy.raft.tracker import ProgressState
from etcdpy.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Snapshot,
    SnapshotMetadata,
    StateType,
    marshal_conf_change,
)
from raft_harness import (
    MT,
    BlackHole,
    RaftNet,
    msg,
    new_test_raft,
    next_ents,
    read_messages,
    storage_with,
)


def snap(index, term, voters=(1, 2), learners=()):
    return Snapshot(metadata=SnapshotMetadata(ConfState(list(voters), list(learners)), index, term))


def persist_all(net: RaftNet) -> None:
    """Persist and apply every node's log (so storage can be compacted)."""
    for i, p in net.peers.items():
        if not isinstance(p, BlackHole):
            next_ents(p, net.storage[i])


def compact_leader(net: RaftNet, lead: int) -> int:
    r = net.raft(lead)
    st = net.storage[lead]
    next_ents(r, st)
    idx = r.raft_log.applied
    st.create_snapshot(idx, r.conf_state(), b"snapdata")
    st.compact(idx)
    return idx


# -- snapshots ----------------------------------------------------------------------


def test_restore():
    r = new_test_raft(1, peers=[1, 2])
    s = snap(11, 11, voters=(1, 2, 3))
    assert r.restore(s)
    assert r.raft_log.last_index() == 11 and r.raft_log.term(11) == 11
    assert r.prs.voter_ids() == [1, 2, 3]
    assert not r.restore(s)
    # The node must not campaign while the snapshot is not yet persisted.
    for _ in range(r.randomized_election_timeout):
        r.tick()
    assert r.state == StateType.FOLLOWER


def test_restore_with_learner():
    r = new_test_raft(3, peers=[1, 2], learners=[3])
    s = snap(11, 11, voters=(1, 2), learners=(3,))
    assert r.restore(s)
    assert r.prs.voter_ids() == [1, 2] and r.prs.learner_ids() == [3]
    assert r.is_learner


def test_restore_ignores_snapshot_not_including_us():
    r = new_test_raft(1, peers=[1, 2])
    assert not r.restore(snap(11, 11, voters=(2, 3)))


def test_restore_ignore_snapshot():
    st = storage_with([1, 2])
    st.append([Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    r = new_test_raft(1, storage=st)
    r.raft_log.commit_to(1)
    assert not r.restore(snap(1, 1))
    assert r.raft_log.committed == 1
    # Matching entry we already have: just fast-forward commit.
    assert not r.restore(snap(2, 1))
    assert r.raft_log.committed == 2


def test_provide_snap():
    st = storage_with([1])
    r = new_test_raft(1, storage=st)
    assert r.restore(snap(11, 11, voters=(1, 2)))
    st.apply_snapshot(r.raft_log.unstable.snapshot)
    r.raft_log.stable_snap_to(11)
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    # Node 2 rejects the probe at the first index: it needs entries that are compacted.
    pr = r.prs.progress[2]
    pr.recent_active = True
    pr.next = r.raft_log.first_index()
    r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=pr.next - 1, reject=True))
    msgs = read_messages(r)
    assert [m.type for m in msgs] == [MT.SNAP]
    assert r.prs.progress[2].state == ProgressState.SNAPSHOT


def test_ignore_providing_snap_to_inactive_peer():
    st = storage_with([1])
    r = new_test_raft(1, storage=st)
    assert r.restore(snap(11, 11, voters=(1, 2)))
    st.apply_snapshot(r.raft_log.unstable.snapshot)
    r.raft_log.stable_snap_to(11)
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    r.prs.progress[2].next = r.raft_log.first_index() - 1
    r.prs.progress[2].recent_active = False
    r.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"x")]))
    assert read_messages(r) == []


def test_restore_from_snap_msg():
    r = new_test_raft(2, peers=[1, 2])
    r.step(msg(MT.SNAP, frm=1, to=2, term=2, snapshot=snap(11, 11)))
    assert r.lead == 1
    assert r.raft_log.committed == 11
    msgs = read_messages(r)
    assert [(m.type, m.index) for m in msgs] == [(MT.APP_RESP, 11)]


def test_slow_node_restore():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.isolate(3)
    for _ in range(100):
        net.propose(1)
    persist_all(net)
    idx = compact_leader(net, 1)
    net.recover()
    # Heartbeats until the leader learns 3 is active, then it sends a snapshot.
    for _ in range(10):
        net.send(msg(MT.BEAT, frm=1, to=1))
        if net.raft(3).raft_log.committed >= idx:
            break
    r3 = net.raft(3)
    assert r3.raft_log.committed >= idx
    assert r3.raft_log.has_pending_snapshot()
    # The follower persists the snapshot; the leader's later entries then flow normally.
    st3 = net.storage[3]
    st3.apply_snapshot(r3.raft_log.unstable.snapshot)
    r3.raft_log.stable_snap_to(idx)
    net.send(msg(MT.SNAP_STATUS, frm=3, to=1))
    net.propose(1)
    assert r3.raft_log.committed == net.raft(1).raft_log.committed


def _leader_with_compacted_log():
    st = storage_with([1, 2])
    r = new_test_raft(1, storage=st)
    assert r.restore(snap(11, 11, voters=(1, 2)))
    st.apply_snapshot(r.raft_log.unstable.snapshot)
    r.raft_log.stable_snap_to(11)
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    return r


def test_sending_snapshot_set_pending_snapshot():
    r = _leader_with_compacted_log()
    pr = r.prs.progress[2]
    pr.recent_active = True
    pr.next = r.raft_log.first_index()
    r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=pr.next - 1, reject=True))
    assert pr.pending_snapshot == 11


def test_pending_snapshot_pause_replication():
    r = _leader_with_compacted_log()
    r.prs.progress[2].become_snapshot(11)
    r.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"somedata")]))
    assert read_messages(r) == []


def test_snapshot_failure():
    r = _leader_with_compacted_log()
    pr = r.prs.progress[2]
    pr.next = 1
    pr.become_snapshot(11)
    r.step(msg(MT.SNAP_STATUS, frm=2, to=1, reject=True))
    assert pr.pending_snapshot == 0 and pr.next == 1 and pr.probe_sent
    assert pr.state == ProgressState.PROBE


def test_snapshot_succeed():
    r = _leader_with_compacted_log()
    pr = r.prs.progress[2]
    pr.next = 1
    pr.become_snapshot(11)
    r.step(msg(MT.SNAP_STATUS, frm=2, to=1, reject=False))
    assert pr.pending_snapshot == 0 and pr.next == 12 and pr.probe_sent
    assert pr.state == ProgressState.PROBE


def test_snapshot_abort():
    r = _leader_with_compacted_log()
    pr = r.prs.progress[2]
    pr.next = 1
    pr.become_snapshot(11)
    # An ack at or past the snapshot index ends the snapshot state.
    r.step(msg(MT.APP_RESP, frm=2, to=1, term=r.term, index=11))
    assert pr.pending_snapshot == 0
    assert pr.state == ProgressState.REPLICATE
    assert pr.next == 13  # the new leader's empty entry (12) was sent right away


# -- ReadIndex ------------------------------------------------------------------------


def test_read_only_option_safe():
    net = RaftNet(None, None, None)
    a, b, c = net.raft(1), net.raft(2), net.raft(3)
    b.randomized_election_timeout = b.election_timeout + 1
    for _ in range(b.election_timeout):
        b.tick()
    net.campaign(1)
    assert a.state == StateType.LEADER
    cases = [(a, 10, 11, b"ctx1"), (b, 10, 21, b"ctx2"), (c, 10, 31, b"ctx3"), (a, 10, 41, b"ctx4")]
    for r, proposals, wri, ctx in cases:
        for _ in range(proposals):
            net.propose(1)
        net.send(msg(MT.READ_INDEX, frm=r.id, to=r.id, context=ctx))
        assert len(r.read_states) == 1
        rs = r.read_states[0]
        assert rs.index == wri and rs.request_ctx == ctx
        r.read_states = []


def test_read_only_option_lease():
    net = RaftNet(None, None, None, check_quorum=True, read_only_option=ReadOnlyOption.LEASE_BASED)
    net.campaign(1)
    for id_ in (1, 2, 3):
        net.propose(1)
        net.send(msg(MT.READ_INDEX, frm=id_, to=id_, context=b"c%d" % id_))
        r = net.raft(id_)
        assert [(s.index, s.request_ctx) for s in r.read_states] == [(net.raft(1).raft_log.committed, b"c%d" % id_)]


def test_read_only_for_new_leader():
    """A new leader answers ReadIndex only after committing an entry of its own term."""
    peers = []
    for id_, committed, applied, compact in [(1, 1, 1, 0), (2, 2, 2, 2), (3, 2, 2, 2)]:
        st = storage_with([1, 2, 3])
        st.append([Entry(1, 1), Entry(1, 2)])
        st.set_hard_state(type(st.hard_state)(term=1, commit=committed))
        if compact:
            st.compact(compact)
        r = new_test_raft(id_, storage=st, applied=applied)
        peers.append(r)
    net = RaftNet(*peers)
    # Drop MsgApp so the new leader can't commit its empty entry yet.
    net.ignore(MT.APP)
    net.campaign(1)
    a = net.raft(1)
    assert a.state == StateType.LEADER
    net.send(msg(MT.READ_INDEX, frm=1, to=1, context=b"ctx"))
    assert a.read_states == []
    net.recover()
    for _ in range(a.heartbeat_timeout):
        a.tick()
    net.propose(1)
    assert a.raft_log.committed == 4
    assert [(s.index, s.request_ctx) for s in a.read_states] == [(4, b"ctx")]
    # A second request is answered right away after one heartbeat round.
    net.send(msg(MT.READ_INDEX, frm=1, to=1, context=b"ctx2"))
    assert [(s.index, s.request_ctx) for s in a.read_states][-1] == (4, b"ctx2")


def test_read_index_without_leader_dropped():
    r = new_test_raft(1, peers=[1, 2, 3])
    r.step(msg(MT.READ_INDEX, frm=1, context=b"x"))
    assert r.read_states == [] and read_messages(r) == []


def test_read_index_needs_quorum_acks():
    net = RaftNet(None, None, None, None, None)
    net.campaign(1)
    net.isolate(1)
    net.drop(1, 2, 0)
    net.drop(2, 1, 0)
    net.send(msg(MT.READ_INDEX, frm=1, to=1, context=b"x"))
    assert net.raft(1).read_states == []  # only 2 of 5 acked
    net.recover()
    net.send(msg(MT.BEAT, frm=1, to=1))  # heartbeats carry the latest pending ctx
    assert [s.request_ctx for s in net.raft(1).read_states] == [b"x"]


def test_read_only_with_learner():
    net = RaftNet(None, None, None)
    # Turn 3 into a learner everywhere before electing.
    for i in (1, 2, 3):
        r = net.raft(i)
        r.apply_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER_NODE, node_id=3))
    net.campaign(1)
    net.propose(1)
    net.send(msg(MT.READ_INDEX, frm=3, to=3, context=b"lr"))
    r3 = net.raft(3)
    assert [(s.index, s.request_ctx) for s in r3.read_states] == [(net.raft(1).raft_log.committed, b"lr")]


# -- learners --------------------------------------------------------------------------


def two_with_learner():
    n1 = new_test_raft(1, peers=[1], learners=[2])
    n2 = new_test_raft(2, peers=[1], learners=[2])
    return n1, n2


def test_learner_election_timeout():
    n1, n2 = two_with_learner()
    n1.become_follower(1, NONE)
    n2.become_follower(1, NONE)
    for _ in range(2 * n2.election_timeout):
        n2.tick()
    assert n2.state == StateType.FOLLOWER


def test_learner_log_replication():
    n1, n2 = two_with_learner()
    net = RaftNet(n1, n2)
    # RaftNet re-derived learners from n1/n2's prs.
    assert n1.prs.learner_ids() == [2] and n2.is_learner
    n1.become_follower(1, NONE)
    n2.become_follower(1, NONE)
    for _ in range(n1.randomized_election_timeout):
        n1.tick()
    net.send(*read_messages(n1))
    net.send(msg(MT.BEAT, frm=1, to=1))
    assert n1.state == StateType.LEADER and n2.is_learner
    net.propose(1)
    assert n1.raft_log.committed == n2.raft_log.committed == 2
    assert n1.prs.progress[2].match == n2.raft_log.last_index()


def test_learner_promotion():
    n1, n2 = two_with_learner()
    net = RaftNet(n1, n2)
    net.campaign(1)
    assert n1.state == StateType.LEADER
    # A learner is never elected, even when asked.
    net.send(msg(MT.BEAT, frm=1, to=1))
    for _ in range(3 * n2.election_timeout):
        n2.tick()
    assert n2.state == StateType.FOLLOWER
    n1.apply_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=2))
    n2.apply_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=2))
    assert not n2.is_learner
    net.campaign(2)
    assert n2.state == StateType.LEADER and n1.state == StateType.FOLLOWER


def test_learner_cannot_vote():
    n2 = new_test_raft(2, peers=[1], learners=[2])
    n2.become_follower(1, NONE)
    n2.step(msg(MT.VOTE, frm=1, to=2, term=2, log_term=11, index=11))
    # etcd lets a learner answer (it may be a voter in a config it hasn't applied);
    # what matters is that the candidate never counts it.
    r1 = new_test_raft(1, peers=[1, 2, 3], learners=[4])
    r1.step(msg(MT.HUP, frm=1, to=1))
    r1.step(msg(MT.VOTE_RESP, frm=4, to=1, term=r1.term))
    assert r1.state == StateType.CANDIDATE
    r1.step(msg(MT.VOTE_RESP, frm=2, to=1, term=r1.term))
    assert r1.state == StateType.LEADER


def test_learners_do_not_count_for_commit_or_quorum():
    r = new_test_raft(1, peers=[1, 2], learners=[3], check_quorum=True)
    r.become_candidate()
    r.become_leader()
    read_messages(r)
    r.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"x")]))
    r.step(msg(MT.APP_RESP, frm=3, term=r.term, index=2))
    assert r.raft_log.committed == 0
    r.step(msg(MT.APP_RESP, frm=2, term=r.term, index=2))
    assert r.raft_log.committed == 2
    # Only a learner is active: CheckQuorum deposes the leader (by the second check).
    for _ in range(2 * r.election_timeout):
        r.step(msg(MT.HEARTBEAT_RESP, frm=3, term=r.term))
        r.tick()
    assert r.state == StateType.FOLLOWER


# -- configuration changes ----------------------------------------------------------------


def cc_entry(t=ConfChangeType.ADD_NODE, node=2):
    return Entry(type=EntryType.CONF_CHANGE, data=marshal_conf_change(ConfChange(type=t, node_id=node)))


def test_step_config():
    r = new_test_raft(1, peers=[1, 2])
    r.become_candidate()
    r.become_leader()
    index = r.raft_log.last_index()
    r.step(msg(MT.PROP, frm=1, entries=[cc_entry()]))
    assert r.raft_log.last_index() == index + 1
    assert r.pending_conf_index == index + 1


def test_step_ignore_config():
    """Only one conf change may be pending; a second is refused."""
    r = new_test_raft(1, peers=[1, 2])
    r.become_candidate()
    r.become_leader()
    r.step(msg(MT.PROP, frm=1, entries=[cc_entry()]))
    index = r.raft_log.last_index()
    pending = r.pending_conf_index
    with pytest.raises(ProposalDropped):
        r.step(msg(MT.PROP, frm=1, entries=[cc_entry()]))
    assert r.raft_log.last_index() == index and r.pending_conf_index == pending
    # Once applied, a new one is accepted.
    r.prs.progress[2].match = index
    r.maybe_commit()
    r.raft_log.applied_to(index)
    r.step(msg(MT.PROP, frm=1, entries=[cc_entry(node=3)]))
    assert r.raft_log.last_index() == index + 1


@pytest.mark.parametrize("add_entry,wpending", [(False, 0), (True, 1)])
def test_new_leader_pending_config(add_entry, wpending):
    r = new_test_raft(1, peers=[1, 2])
    if add_entry:
        r.append_entry([Entry()])
    r.become_candidate()
    r.become_leader()
    assert r.pending_conf_index == wpending


def test_add_node():
    r = new_test_raft(1, peers=[1])
    r.apply_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=2))
    assert r.prs.voter_ids() == [1, 2]


def test_add_node_check_quorum():
    r = new_test_raft(1, peers=[1], check_quorum=True)
    r.become_candidate()
    r.become_leader()
    for _ in range(r.election_timeout - 1):
        r.tick()
    r.apply_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=2))
    # The new node is considered active at first: no step-down on the next check.
    r.tick()
    assert r.state == StateType.LEADER
    # A full election timeout without hearing from 2: quorum (2 of 2) lost.
    for _ in range(r.election_timeout):
        r.tick()
    assert r.state == StateType.FOLLOWER


def test_add_learner_and_promote():
    r = new_test_raft(1, peers=[1])
    r.apply_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER_NODE, node_id=2))
    assert r.prs.voter_ids() == [1] and r.prs.learner_ids() == [2]
    assert r.prs.progress[2].is_learner
    r.apply_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=2))
    assert r.prs.voter_ids() == [1, 2] and r.prs.learner_ids() == []
    assert not r.prs.progress[2].is_learner


def test_remove_node():
    r = new_test_raft(1, peers=[1, 2])
    r.apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=2))
    assert r.prs.voter_ids() == [1]
    # Removing the last voter is refused.
    r.apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=1))
    assert r.prs.voter_ids() == [1]


def test_remove_learner():
    r = new_test_raft(1, peers=[1], learners=[2])
    r.apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=2))
    assert r.prs.voter_ids() == [1] and r.prs.learner_ids() == []


@pytest.mark.parametrize("peers,wp", [([1], True), ([1, 2, 3], True), ([], False), ([2, 3], False)])
def test_promotable(peers, wp):
    r = new_test_raft(1, peers=peers)
    assert r.promotable() == wp


def test_commit_after_remove_node():
    """Removing a slow voter shrinks the quorum, which can commit pending entries."""
    st = storage_with([1, 2])
    r = new_test_raft(1, storage=st)
    r.become_candidate()
    r.become_leader()
    r.step(msg(MT.PROP, frm=1, entries=[cc_entry(ConfChangeType.REMOVE_NODE, 2)]))
    assert next_ents(r, st) == []
    cc_index = r.raft_log.last_index()
    r.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"hello")]))
    r.step(msg(MT.APP_RESP, frm=2, term=r.term, index=cc_index))
    ents = next_ents(r, st)
    assert [e.type for e in ents] == [EntryType.NORMAL, EntryType.CONF_CHANGE]
    r.apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=2))
    ents = next_ents(r, st)
    assert [e.data for e in ents] == [b"hello"]


def test_removed_leader_steps_down_and_hands_over():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.propose(1)
    for i in (2, 3, 1):
        net.raft(i).apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=1))
    net.send(*read_messages(net.raft(1)))
    # The leader stepped down and sent MsgTimeoutNow to a caught-up voter, which won at once.
    assert net.raft(1).state == StateType.FOLLOWER
    assert {net.raft(2).state, net.raft(3).state} == {StateType.LEADER, StateType.FOLLOWER}
    assert not net.raft(1).promotable()


def test_removed_follower_cannot_campaign():
    r = new_test_raft(3, peers=[1, 2, 3])
    r.apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=3))
    for _ in range(3 * r.election_timeout):
        r.tick()
    assert r.state == StateType.FOLLOWER and read_messages(r) == []


def test_campaign_blocked_by_unapplied_conf_change():
    st = storage_with([1, 2])
    st.append([Entry(1, 1, EntryType.CONF_CHANGE, marshal_conf_change(ConfChange(node_id=3)))])
    st.set_hard_state(type(st.hard_state)(term=1, commit=1))
    r = new_test_raft(1, storage=st)
    r.step(msg(MT.HUP, frm=1, to=1))
    assert r.state == StateType.FOLLOWER
    r.raft_log.applied_to(1)
    r.step(msg(MT.HUP, frm=1, to=1))
    assert r.state == StateType.CANDIDATE


# -- leader transfer -------------------------------------------------------------------------


def check_leader_transfer_state(r, state, lead):
    assert r.state == state and r.lead == lead and r.lead_transferee == NONE


def test_leader_transfer_to_up_to_date_node():
    net = RaftNet(None, None, None)
    net.campaign(1)
    lead = net.raft(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=2, to=1))
    check_leader_transfer_state(lead, StateType.FOLLOWER, 2)
    net.propose(1)  # forwarded to the new leader
    net.send(msg(MT.TRANSFER_LEADER, frm=1, to=2))
    check_leader_transfer_state(lead, StateType.LEADER, 1)


def test_leader_transfer_to_up_to_date_node_from_follower():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=2, to=2))
    check_leader_transfer_state(net.raft(1), StateType.FOLLOWER, 2)
    net.propose(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=1, to=1))
    check_leader_transfer_state(net.raft(1), StateType.LEADER, 1)


def test_leader_transfer_with_check_quorum():
    """TimeoutNow's campaign bypasses the followers' leader lease."""
    net = RaftNet(None, None, None, check_quorum=True)
    for i in (1, 2, 3):
        r = net.raft(i)
        r.randomized_election_timeout = r.election_timeout + i
    b = net.raft(2)
    for _ in range(b.election_timeout):
        b.tick()
    net.campaign(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=2, to=1))
    check_leader_transfer_state(net.raft(1), StateType.FOLLOWER, 2)


def test_leader_transfer_to_slow_follower():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.isolate(3)
    net.propose(1)
    net.recover()
    lead = net.raft(1)
    assert lead.prs.progress[3].match == 1
    # The leader first catches 3 up, then sends MsgTimeoutNow.
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    check_leader_transfer_state(lead, StateType.FOLLOWER, 3)


def test_leader_transfer_after_snapshot():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.isolate(3)
    net.propose(1)
    persist_all(net)
    compact_leader(net, 1)
    net.recover()
    lead = net.raft(1)
    assert lead.prs.progress[3].match == 1
    lead.prs.progress[3].recent_active = True

    def on_snap_resp(m):
        if m.type == MT.APP_RESP and m.frm == 3 and not m.reject:
            # 3 has the snapshot; persist it and report success like a server would.
            r3 = net.raft(3)
            if r3.raft_log.has_pending_snapshot():
                s = r3.raft_log.unstable.snapshot
                net.storage[3].apply_snapshot(s)
                r3.raft_log.stable_snap_to(s.metadata.index)
        return True

    net.msg_hook = on_snap_resp
    # The leader sends a snapshot first; 3's acknowledgement of it moves the
    # progress to replicate, and the MsgTimeoutNow follows.
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    check_leader_transfer_state(lead, StateType.FOLLOWER, 3)
    assert net.raft(3).state == StateType.LEADER


def test_leader_transfer_to_self():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=1, to=1))
    check_leader_transfer_state(net.raft(1), StateType.LEADER, 1)


def test_leader_transfer_to_non_existing_node():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=4, to=1))
    check_leader_transfer_state(net.raft(1), StateType.LEADER, 1)


def test_leader_transfer_timeout():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.isolate(3)
    lead = net.raft(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    assert lead.lead_transferee == 3
    for _ in range(lead.heartbeat_timeout):
        lead.tick()
    assert lead.lead_transferee == 3
    for _ in range(lead.election_timeout - lead.heartbeat_timeout):
        lead.tick()
    check_leader_transfer_state(lead, StateType.LEADER, 1)


def test_leader_transfer_ignore_proposal():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.isolate(3)
    lead = net.raft(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    assert lead.lead_transferee == 3
    with pytest.raises(ProposalDropped):
        lead.step(msg(MT.PROP, frm=1, to=1, entries=[Entry()]))
    assert lead.prs.progress[1].match == 1


def test_leader_transfer_receive_higher_term_vote():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.isolate(3)
    lead = net.raft(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    assert lead.lead_transferee == 3
    net.send(msg(MT.HUP, frm=2, to=2, index=1, term=2))
    check_leader_transfer_state(lead, StateType.FOLLOWER, 2)


def test_leader_transfer_remove_node():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.ignore(MT.TIMEOUT_NOW)
    lead = net.raft(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    assert lead.lead_transferee == 3
    lead.apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=3))
    check_leader_transfer_state(lead, StateType.LEADER, 1)


def test_leader_transfer_back():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.isolate(3)
    lead = net.raft(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    assert lead.lead_transferee == 3
    net.send(msg(MT.TRANSFER_LEADER, frm=1, to=1))
    check_leader_transfer_state(lead, StateType.LEADER, 1)


def test_leader_transfer_second_transfer_to_another_node():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.isolate(3)
    lead = net.raft(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    assert lead.lead_transferee == 3
    net.send(msg(MT.TRANSFER_LEADER, frm=2, to=1))
    check_leader_transfer_state(lead, StateType.FOLLOWER, 2)


def test_leader_transfer_second_transfer_to_same_node():
    net = RaftNet(None, None, None)
    net.campaign(1)
    net.isolate(3)
    lead = net.raft(1)
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    for _ in range(lead.heartbeat_timeout):
        lead.tick()
    # A repeated request must not extend the deadline.
    net.send(msg(MT.TRANSFER_LEADER, frm=3, to=1))
    for _ in range(lead.election_timeout - lead.heartbeat_timeout):
        lead.tick()
    check_leader_transfer_state(lead, StateType.LEADER, 1)


def test_leader_transfer_to_learner_ignored():
    r = new_test_raft(1, peers=[1], learners=[2])
    r.become_candidate()
    r.become_leader()
    r.step(msg(MT.TRANSFER_LEADER, frm=2, to=1))
    assert r.lead_transferee == NONE


def test_transfer_non_member():
    r = new_test_raft(1, peers=[2, 3, 4])
    r.step(msg(MT.TIMEOUT_NOW, frm=2, to=1, term=1))
    r.step(msg(MT.VOTE_RESP, frm=2, to=1, term=1))
    r.step(msg(MT.VOTE_RESP, frm=3, to=1, term=1))
    assert r.state == StateType.FOLLOWER


def test_removed_leader_catches_up_transferee_before_stepping_down():
    net = RaftNet(None, None, None)
    net.campaign(1)
    lead = net.raft(1)
    for i in (2, 3):
        net.raft(i).apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=1))
    # An entry the followers have not received yet.
    lead.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"late")]))
    read_messages(lead)
    lead.apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=1))
    # Still leading while it catches the transferee up; proposals are refused.
    assert lead.state == StateType.LEADER and lead.lead_transferee in (2, 3)
    with pytest.raises(ProposalDropped):
        lead.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"x")]))
    transferee = lead.lead_transferee
    net.send(*read_messages(lead))
    assert lead.state == StateType.FOLLOWER
    assert net.raft(transferee).state == StateType.LEADER


def test_removed_leader_steps_down_when_handoff_times_out():
    net = RaftNet(None, None, None)
    net.campaign(1)
    lead = net.raft(1)
    lead.step(msg(MT.PROP, frm=1, entries=[Entry(data=b"late")]))
    read_messages(lead)
    lead.apply_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=1))
    assert lead.state == StateType.LEADER
    read_messages(lead)  # everything is lost
    for _ in range(lead.election_timeout):
        lead.tick()
    assert lead.state == StateType.FOLLOWER
