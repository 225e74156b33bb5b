"""RawNode tests for a single-voter cluster (etcd-io/raft rawnode_test.go style)."""

from __future__ import annotations

import random

import pytest

from etcdpy.raft import (
    Config,
    ConfChange,
    ConfChangeType,
    EntryType,
    ErrStepLocalMsg,
    MemoryStorage,
    Message,
    MessageType,
    Peer,
    ProposalDropped,
    RawNode,
    Ready,
    StateType,
    unmarshal_conf_change,
)


def new_node(id_: int = 1, storage: MemoryStorage | None = None, **kw) -> tuple[RawNode, MemoryStorage]:
    st = storage or MemoryStorage()
    cfg = Config(id=id_, storage=st, rand=random.Random(id_), **kw)
    return RawNode(cfg), st


def persist_and_apply(node: RawNode, st: MemoryStorage, applied: list) -> Ready:
    """The server's Ready handling: persist, (send), apply, advance."""
    rd = node.ready()
    if rd.snapshot is not None:
        st.apply_snapshot(rd.snapshot)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    st.append(rd.entries)
    for e in rd.committed_entries:
        if e.type == EntryType.CONF_CHANGE:
            node.apply_conf_change(unmarshal_conf_change(e.data))
        applied.append(e)
    node.advance(rd)
    return rd


def drain(node: RawNode, st: MemoryStorage, applied: list) -> list[Ready]:
    out = []
    while node.has_ready():
        out.append(persist_and_apply(node, st, applied))
    return out


def test_bootstrap_first_ready_has_conf_entries():
    node, st = new_node()
    node.bootstrap([Peer(1, b"ctx")])
    assert node.has_ready()
    rd = node.ready()
    assert [(e.index, e.term, e.type) for e in rd.entries] == [(1, 1, EntryType.CONF_CHANGE)]
    assert rd.committed_entries == rd.entries
    assert rd.hard_state is not None and rd.hard_state.term == 1 and rd.hard_state.commit == 1
    assert rd.must_sync
    cc = unmarshal_conf_change(rd.committed_entries[0].data)
    assert cc.type == ConfChangeType.ADD_NODE and cc.node_id == 1 and cc.context == b"ctx"


def test_bootstrap_nonempty_storage_refused():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    node2, _ = new_node(storage=st)
    with pytest.raises(ValueError):
        node2.bootstrap([Peer(1)])


def test_single_voter_becomes_leader_after_election_timeout():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    ticks = 0
    while node.raft.state != StateType.LEADER:
        node.tick()
        ticks += 1
        assert ticks < 2 * node.raft.election_timeout
    assert ticks >= node.raft.election_timeout
    rds = drain(node, st, applied)
    assert any(rd.soft_state and rd.soft_state.raft_state == StateType.LEADER for rd in rds)
    # The new leader's empty entry commits at once.
    assert applied[-1].term == 2 and applied[-1].data == b""


def test_campaign_makes_single_voter_leader_immediately():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    node.campaign()
    assert node.raft.state == StateType.LEADER
    assert node.status().soft_state.lead == 1


def test_single_voter_propose_commit_apply():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    node.campaign()
    drain(node, st, applied)
    for i in range(10):
        node.propose(b"v%d" % i)
    rd = node.ready()
    assert [e.data for e in rd.entries] == [b"v%d" % i for i in range(10)]
    assert [e.data for e in rd.committed_entries] == [b"v%d" % i for i in range(10)]
    assert rd.hard_state is not None and rd.hard_state.commit == rd.entries[-1].index
    assert rd.messages == []
    st.append(rd.entries)
    st.set_hard_state(rd.hard_state)
    node.advance(rd)
    assert not node.has_ready()
    assert node.status().applied == rd.entries[-1].index
    node.propose_batch([b"a", b"b"])
    rd = node.ready()
    assert [e.data for e in rd.committed_entries] == [b"a", b"b"]


def test_propose_without_leader_dropped():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    with pytest.raises(ProposalDropped):
        node.propose(b"x")


def test_step_local_message_raises():
    node, _ = new_node()
    with pytest.raises(ErrStepLocalMsg):
        node.step(Message(MessageType.HUP))


def test_restart_single_voter_keeps_log_and_term():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    node.campaign()
    node.propose(b"x")
    drain(node, st, applied)
    term = node.raft.term
    node2, _ = new_node(storage=st, applied=applied[-1].index)
    assert node2.raft.term == term
    assert node2.raft.raft_log.committed == applied[-1].index
    assert not node2.ready().committed_entries
    node2.campaign()
    assert node2.raft.state == StateType.LEADER and node2.raft.term == term + 1
    node2.propose(b"y")
    applied2: list = []
    drain(node2, st, applied2)
    assert applied2[-1].data == b"y"


def test_single_voter_read_index_immediate():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    node.campaign()
    drain(node, st, applied)
    node.read_index(b"ctx1")
    rd = node.ready()
    assert len(rd.read_states) == 1
    assert rd.read_states[0].request_ctx == b"ctx1"
    assert rd.read_states[0].index == node.raft.raft_log.committed


def test_conf_change_roundtrip_encoding():
    from etcdpy.raft import marshal_conf_change

    cc = ConfChange(type=ConfChangeType.ADD_LEARNER_NODE, node_id=2**63 + 5, context=b"\x00member", id=77)
    assert unmarshal_conf_change(marshal_conf_change(cc)) == cc


def test_restart_without_applied_redelivers_committed_entries():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    node.campaign()
    node.propose(b"x")
    drain(node, st, applied)
    node2, _ = new_node(storage=st)
    rd = node2.ready()
    assert [e.index for e in rd.committed_entries] == [e.index for e in applied]
    applied2: list = []
    for e in rd.committed_entries:
        if e.type == EntryType.CONF_CHANGE:
            node2.apply_conf_change(unmarshal_conf_change(e.data))
    node2.advance(rd)
    node2.campaign()
    assert node2.raft.state == StateType.LEADER
    node2.propose(b"y")
    drain(node2, st, applied2)
    assert applied2[-1].data == b"y"


def test_single_voter_throughput_smoke():
    """Many proposals per Ready: per-proposal work must stay O(1)."""
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    node.campaign()
    drain(node, st, applied)
    n = 0
    for _ in range(200):
        for _ in range(50):
            node.propose(b"x" * 100)
            n += 1
        drain(node, st, applied)
    assert sum(1 for e in applied if e.type == EntryType.NORMAL and e.data) == n
    assert st.last_index() == applied[-1].index


def test_coalesce_messages_merges_contiguous_msg_app_and_acks():
    from etcdpy.raft.rawnode import coalesce_messages
    from etcdpy.raft.types import Entry

    MT = MessageType
    msgs = [
        Message(MT.APP, to=2, frm=1, term=3, index=5, log_term=3, entries=[Entry(3, 6, data=b"a")], commit=5),
        Message(MT.APP, to=3, frm=1, term=3, index=5, log_term=3, entries=[Entry(3, 6, data=b"a")], commit=5),
        Message(MT.APP, to=2, frm=1, term=3, index=6, log_term=3, entries=[Entry(3, 7, data=b"b")], commit=5),
        Message(MT.APP, to=2, frm=1, term=3, index=7, log_term=3, entries=[], commit=6),
        Message(MT.HEARTBEAT, to=3, frm=1, term=3),
        Message(MT.APP, to=3, frm=1, term=3, index=6, log_term=3, entries=[Entry(3, 7, data=b"b")], commit=5),
        # Not contiguous with the previous MsgApp to 2: kept apart.
        Message(MT.APP, to=2, frm=1, term=3, index=9, log_term=3, entries=[Entry(3, 10)], commit=6),
    ]
    out = coalesce_messages(msgs, 1 << 20)
    summary = [(m.type, m.to, m.index, [e.index for e in m.entries], m.commit) for m in out]
    assert summary == [
        (MT.APP, 2, 5, [6, 7], 6),
        (MT.APP, 3, 5, [6], 5),
        (MT.HEARTBEAT, 3, 0, [], 0),
        (MT.APP, 3, 6, [7], 5),
        (MT.APP, 2, 9, [10], 6),
    ]
    acks = [
        Message(MT.APP_RESP, to=1, frm=2, term=3, index=6),
        Message(MT.APP_RESP, to=1, frm=2, term=3, index=7),
        Message(MT.APP_RESP, to=1, frm=2, term=3, index=8, reject=True),
        Message(MT.APP_RESP, to=1, frm=2, term=3, index=9),
    ]
    out = coalesce_messages(acks, 1 << 20)
    assert [(m.index, m.reject) for m in out] == [(7, False), (8, True), (9, False)]
    # The size limit stops merging.
    big = [
        Message(MT.APP, to=2, term=1, index=i, log_term=1, entries=[Entry(1, i + 1, data=b"x" * 100)])
        for i in range(10)
    ]
    out = coalesce_messages(big, 350)
    assert [len(m.entries) for m in out] == [3, 3, 3, 1]


def test_status_reports_progress_only_on_leader():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    s = node.status()
    assert s.id == 1 and s.progress == {} and s.soft_state.raft_state == StateType.FOLLOWER
    node.campaign()
    drain(node, st, applied)
    s = node.status()
    assert s.soft_state.lead == 1 and s.hard_state.term == 2
    assert s.applied == applied[-1].index
    pr = s.progress[1]
    assert pr.match == st.last_index() and not pr.is_learner
    assert s.lead_transferee == 0 and s.conf_state.voters == [1]
    # The progress returned is a copy.
    pr.match = 0
    assert node.status().progress[1].match == st.last_index()


def test_propose_conf_change_pending_is_refused_until_applied():
    node, st = new_node()
    node.bootstrap([Peer(1)])
    applied: list = []
    drain(node, st, applied)
    node.campaign()
    drain(node, st, applied)
    node.propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER_NODE, node_id=2))
    with pytest.raises(ProposalDropped):
        node.propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER_NODE, node_id=3))
    drain(node, st, applied)  # commits and applies the first change
    assert node.status().conf_state.learners == [2]
    node.propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER_NODE, node_id=3))


def test_ready_hard_state_only_when_changed_and_must_sync():
    node, st = new_node()
    node.bootstrap([Peer(1), Peer(2)])
    applied: list = []
    drain(node, st, applied)
    assert not node.has_ready()
    node.campaign()  # pre-vote: no term change yet, only messages
    rd = node.ready()
    assert rd.hard_state is None and not rd.must_sync
    assert [m.type for m in rd.messages] == [MessageType.PRE_VOTE]
    node.advance(rd)
    node.step(Message(MessageType.PRE_VOTE_RESP, to=1, frm=2, term=2))
    rd = node.ready()
    # Now a real election: term and vote changed and must be synced before sending.
    assert rd.hard_state is not None and rd.hard_state.term == 2 and rd.hard_state.vote == 1
    assert rd.must_sync
