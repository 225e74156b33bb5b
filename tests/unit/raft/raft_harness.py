"""Deterministic helpers for paper-style raft tests (etcd-io/raft's raft_test.go `network`).

`RaftNet` delivers messages synchronously, in FIFO order, between bare `Raft`
instances; it never persists anything (entries stay in the unstable log),
which is all the algorithm-level tests need. The fault-injecting, persisting
simulation lives in raft_sim.py.
"""

from __future__ import annotations

import random
from dataclasses import replace

from etcdpy.raft import ConfState, MemoryStorage, Message, MessageType, ProposalDropped, Raft
from etcdpy.raft.raft import Config
from etcdpy.raft.read_only import ReadOnlyOption
from etcdpy.raft.types import Entry, HardState, StateType

MT = MessageType
NO_LIMIT = 1 << 62


def storage_with(voters: list[int], learners: list[int] | None = None) -> MemoryStorage:
    """A fresh MemoryStorage whose (empty) snapshot carries the given configuration."""
    st = MemoryStorage()
    st.snapshot().metadata.conf_state = ConfState(voters=list(voters), learners=list(learners or []))
    return st


def new_test_raft(
    id_: int,
    election: int = 10,
    heartbeat: int = 1,
    storage: MemoryStorage | None = None,
    peers: list[int] | None = None,
    learners: list[int] | None = None,
    **kw,
) -> Raft:
    if storage is None:
        storage = storage_with(peers if peers is not None else [id_], learners)
    kw.setdefault("max_size_per_msg", NO_LIMIT)
    kw.setdefault("max_inflight_msgs", 256)
    kw.setdefault("check_quorum", False)
    kw.setdefault("pre_vote", False)
    kw.setdefault("rand", random.Random(id_))
    return Raft(Config(id=id_, storage=storage, election_tick=election, heartbeat_tick=heartbeat, **kw))


def read_messages(r: Raft) -> list[Message]:
    msgs = r.msgs
    r.msgs = []
    return msgs


def next_ents(r: Raft, st: MemoryStorage) -> list[Entry]:
    """Persist the unstable log to `st`, then return and mark applied the committed entries."""
    st.append(r.raft_log.unstable_entries())
    r.raft_log.stable_to(r.raft_log.last_index(), r.raft_log.last_term())
    ents = r.raft_log.next_ents()
    r.raft_log.applied_to(r.raft_log.committed)
    return ents


def set_hard(r: Raft, term: int, vote: int = 0, commit: int = 0) -> None:
    r.load_state(HardState(term, vote, commit))


def msg(t: MessageType, frm: int = 0, to: int = 0, term: int = 0, **kw) -> Message:
    return Message(type=t, frm=frm, to=to, term=term, **kw)


def ents_with_terms(*terms: int) -> list[Entry]:
    return [Entry(term=t, index=i + 1) for i, t in enumerate(terms)]


def raft_with_log_terms(id_: int, terms: list[int], peers: list[int], **kw) -> Raft:
    """A follower whose stable log has the given terms and whose term is terms[-1]."""
    st = storage_with(peers)
    st.append(ents_with_terms(*terms))
    r = new_test_raft(id_, storage=st, peers=peers, **kw)
    r.reset(terms[-1] if terms else 0)
    return r


def step_local(r: Raft, m: Message) -> None:
    try:
        r.step(m)
    except ProposalDropped:
        pass


class BlackHole:
    """A peer that swallows every message (a crashed node)."""

    def __init__(self) -> None:
        self.msgs: list[Message] = []

    def step(self, m: Message) -> None:
        pass


class RaftNet:
    """Synchronous message delivery between Raft instances with simple fault switches."""

    def __init__(self, *peers: Raft | BlackHole | None, seed: int = 0, pre_vote: bool = False, check_quorum: bool = False, **kw) -> None:
        ids = list(range(1, len(peers) + 1))
        self.peers: dict[int, Raft | BlackHole] = {}
        self.storage: dict[int, MemoryStorage] = {}
        for i, p in zip(ids, peers):
            if p is None:
                st = storage_with(ids)
                self.storage[i] = st
                self.peers[i] = new_test_raft(i, storage=st, pre_vote=pre_vote, check_quorum=check_quorum, **kw)
            elif isinstance(p, Raft):
                # Re-id and re-configure a pre-built raft so it joins this network.
                learners = sorted(p.prs.learners) if p.prs.learners else []
                voters = [x for x in ids if x not in learners]
                p.id = i
                p._restore_conf_state(ConfState(voters=voters, learners=learners))
                p.reset(p.term)
                self.peers[i] = p
                self.storage[i] = p.raft_log.storage  # type: ignore[assignment]
            else:
                self.peers[i] = p
        self.rand = random.Random(seed)
        self.dropm: dict[tuple[int, int], float] = {}
        self.ignorem: set[MessageType] = set()
        self.msg_hook = None

    def raft(self, i: int) -> Raft:
        p = self.peers[i]
        assert isinstance(p, Raft)
        return p

    def send(self, *msgs: Message) -> None:
        queue = list(msgs)
        while queue:
            m = queue.pop(0)
            p = self.peers.get(m.to)
            if p is None:
                continue
            step_local(p, replace(m))  # type: ignore[arg-type]
            if isinstance(p, Raft):
                queue.extend(self.filter(read_messages(p)))

    def campaign(self, i: int) -> None:
        self.send(msg(MT.HUP, frm=i, to=i))

    def propose(self, i: int, data: bytes = b"somedata") -> None:
        self.send(msg(MT.PROP, frm=i, to=i, entries=[Entry(data=data)]))

    def drop(self, frm: int, to: int, perc: float) -> None:
        self.dropm[(frm, to)] = perc

    def cut(self, one: int, other: int) -> None:
        self.drop(one, other, 2.0)
        self.drop(other, one, 2.0)

    def isolate(self, i: int) -> None:
        for j in self.peers:
            if j != i:
                self.drop(i, j, 1.0)
                self.drop(j, i, 1.0)

    def ignore(self, t: MessageType) -> None:
        self.ignorem.add(t)

    def recover(self) -> None:
        self.dropm = {}
        self.ignorem = set()

    def filter(self, msgs: list[Message]) -> list[Message]:
        out = []
        for m in msgs:
            if m.type in self.ignorem:
                continue
            if m.type == MT.HUP:
                raise AssertionError("unexpected MsgHup on the wire")
            perc = self.dropm.get((m.frm, m.to), 0.0)
            if perc > 0 and self.rand.random() < perc:
                continue
            if self.msg_hook is not None and not self.msg_hook(m):
                continue
            out.append(m)
        return out

    def leaders(self) -> list[int]:
        return [i for i, p in self.peers.items() if isinstance(p, Raft) and p.state == StateType.LEADER]


__all__ = [
    "MT",
    "NO_LIMIT",
    "BlackHole",
    "RaftNet",
    "ReadOnlyOption",
    "ents_with_terms",
    "msg",
    "new_test_raft",
    "next_ents",
    "raft_with_log_terms",
    "read_messages",
    "set_hard",
    "step_local",
    "storage_with",
]
