"""A deterministic, fault-injecting cluster simulation of RawNodes.

One `Network.step()` is one tick of logical time: due messages are delivered
(with seeded loss, duplication, delay/reordering and partitions), every live
node ticks, proposals arrive, and every node runs the server's Ready loop:
persist (MemoryStorage is the "disk"), send, apply, advance. Crashes throw
away the RawNode and its volatile state machine; a restart rebuilds both from
the disk (MemoryStorage + its snapshot), exactly what a server has after a
reboot.

After every step the safety properties of the Raft paper (Figure 3) are
checked: election safety (one leader per term), log matching, leader
completeness and state-machine safety. Liveness is checked by the tests:
once faults heal a proposal must commit.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field, replace

from etcdpy.raft import (
    Config,
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    Peer,
    ProposalDropped,
    RawNode,
    StateType,
    unmarshal_conf_change,
)
from etcdpy.raft.errors import ErrCompacted, ErrUnavailable

MT = MessageType


class SafetyViolation(AssertionError):
    pass


def _chain(prev: bytes, index: int, term: int, data: bytes) -> bytes:
    h = hashlib.blake2b(prev, digest_size=12)
    h.update(index.to_bytes(8, "big"))
    h.update(term.to_bytes(8, "big"))
    h.update(data)
    return h.digest()


GENESIS = b"\x00" * 12


@dataclass
class SimConfig:
    n: int = 3
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_delay: int = 3
    propose_prob: float = 0.4
    batch_max: int = 3
    snapshot_every: int = 40
    keep_entries: int = 5
    max_size_per_msg: int = 2048
    max_inflight: int = 8
    read_prob: float = 0.05


@dataclass
class Faults:
    loss: float = 0.0
    dup: float = 0.0
    reorder: bool = True
    blocked: set[tuple[int, int]] = field(default_factory=set)
    crash_mid_ready: float = 0.0
    """Chance that a node crashes after persisting a Ready but before sending/applying it."""

    def heal(self) -> None:
        self.loss = 0.0
        self.dup = 0.0
        self.blocked = set()
        self.crash_mid_ready = 0.0


class SimNode:
    """One member: its disk (storage), volatile RawNode and state machine."""

    def __init__(self, id_: int, storage: MemoryStorage) -> None:
        self.id = id_
        self.storage = storage
        self.node: RawNode | None = None
        self.sm_index = 0
        self.sm_hash = GENESIS
        self.conf = ConfState()
        self.applied_since_snap = 0
        self.last_commit = 0
        self.synced_commit = 0
        self.removed = False
        self.stop_at = -1

    @property
    def alive(self) -> bool:
        return self.node is not None


class Network:
    """Seeded cluster simulation; see module docstring."""

    def __init__(self, seed: int, cfg: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = cfg or SimConfig()
        self.rand = random.Random(seed)
        self.faults = Faults()
        self.now = 0
        self.queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self.nodes: dict[int, SimNode] = {}
        self.next_id = self.cfg.n + 1
        # Global knowledge for the safety checks.
        self.leader_of_term: dict[int, int] = {}
        self.applied_entry: dict[int, tuple[int, bytes]] = {}
        self.applied_hash: dict[int, bytes] = {}
        self.entry_prev: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.max_applied = 0
        self.prop_counter = 0
        self.proposed: set[bytes] = set()
        self.applied_data: set[bytes] = set()
        self.pending_reads: dict[bytes, tuple[int, int]] = {}
        self.reads_served = 0
        self.elections = 0
        self.conf_changes_applied = 0
        self.snapshots_sent = 0
        self.crashes = 0
        self._was_leader: dict[int, int] = {}
        peers = [Peer(i) for i in range(1, self.cfg.n + 1)]
        for i in range(1, self.cfg.n + 1):
            sn = SimNode(i, MemoryStorage())
            self.nodes[i] = sn
            self._start(sn)
            assert sn.node is not None
            sn.node.bootstrap(peers)

    # ------------------------------------------------------------------
    # node lifecycle
    # ------------------------------------------------------------------
    def _start(self, sn: SimNode) -> None:
        """(Re)start a node from its disk, like a server after reboot."""
        snap = sn.storage.snapshot()
        if snap.metadata.index > 0:
            sn.sm_index = snap.metadata.index
            sn.sm_hash = snap.data
            sn.conf = ConfState(list(snap.metadata.conf_state.voters), list(snap.metadata.conf_state.learners))
        else:
            sn.sm_index, sn.sm_hash, sn.conf = 0, GENESIS, ConfState()
        sn.applied_since_snap = 0
        c = self.cfg
        sn.node = RawNode(
            Config(
                id=sn.id,
                storage=sn.storage,
                election_tick=c.election_tick,
                heartbeat_tick=c.heartbeat_tick,
                applied=sn.sm_index,
                max_size_per_msg=c.max_size_per_msg,
                max_inflight_msgs=c.max_inflight,
                check_quorum=c.check_quorum,
                pre_vote=c.pre_vote,
                rand=random.Random(self.rand.getrandbits(32)),
            )
        )

    def crash(self, id_: int) -> None:
        """Lose the node's volatile state; a commit index that was never fsynced may be lost too."""
        sn = self.nodes[id_]
        if sn.node is not None:
            sn.node = None
            self.crashes += 1
            hs = sn.storage.hard_state
            if hs.commit > sn.synced_commit and self.rand.random() < 0.5:
                # A commit-only HardState is written without fsync (must_sync False),
                # but a snapshot save syncs the WAL, so it is never behind the snapshot.
                commit = max(sn.synced_commit, sn.storage.snapshot().metadata.index)
                sn.storage.set_hard_state(HardState(hs.term, hs.vote, commit))
            sn.last_commit = sn.storage.hard_state.commit

    def restart(self, id_: int) -> None:
        sn = self.nodes[id_]
        if sn.node is None and not sn.removed:
            self._start(sn)

    def add_node(self) -> int:
        """Create an empty member that will join once the leader adds it (etcd's "existing" join)."""
        id_ = self.next_id
        self.next_id += 1
        sn = SimNode(id_, MemoryStorage())
        self.nodes[id_] = sn
        self._start(sn)
        return id_

    # ------------------------------------------------------------------
    # network
    # ------------------------------------------------------------------
    def _enqueue(self, m: Message) -> None:
        f = self.faults
        if f.loss and self.rand.random() < f.loss:
            self._lost(m)
            return
        copies = 2 if f.dup and self.rand.random() < f.dup else 1
        for _ in range(copies):
            delay = 1 + (self.rand.randint(0, self.cfg.max_delay) if f.reorder else 0)
            self._seq += 1
            heapq.heappush(self.queue, (self.now + delay, self._seq if not f.reorder else self.rand.random(), replace(m)))

    def _lost(self, m: Message) -> None:
        sender = self.nodes.get(m.frm)
        if sender is None or sender.node is None:
            return
        if m.type == MT.SNAP:
            sender.node.report_snapshot(m.to, True)
        elif self.rand.random() < 0.2:
            sender.node.report_unreachable(m.to)

    def _deliver_due(self) -> None:
        due = []
        while self.queue and self.queue[0][0] <= self.now:
            due.append(heapq.heappop(self.queue)[2])
        for m in due:
            dst = self.nodes.get(m.to)
            if dst is None or dst.node is None or (m.frm, m.to) in self.faults.blocked:
                self._lost(m)
                continue
            dst.node.step(m)
            if m.type == MT.SNAP:
                self.snapshots_sent += 1
                sender = self.nodes.get(m.frm)
                if sender is not None and sender.node is not None:
                    sender.node.report_snapshot(m.to, False)

    def partition(self, *groups: set[int]) -> None:
        """Block all traffic between different groups."""
        self.faults.blocked = set()
        for g1 in groups:
            for g2 in groups:
                if g1 is g2:
                    continue
                for a in g1:
                    for b in g2:
                        self.faults.blocked.add((a, b))

    # ------------------------------------------------------------------
    # the Ready loop (what the server does)
    # ------------------------------------------------------------------
    def _handle_ready(self, sn: SimNode) -> None:
        node = sn.node
        assert node is not None
        while node.has_ready():
            rd = node.ready()
            st = sn.storage
            # 1. persist
            if rd.snapshot is not None:
                st.apply_snapshot(rd.snapshot)
            if rd.entries:
                self._check_new_entries(sn, rd.entries)
                st.append(rd.entries)
            if rd.hard_state is not None:
                if rd.hard_state.commit < sn.last_commit:
                    self._fail(f"node {sn.id} commit went backwards {sn.last_commit} -> {rd.hard_state.commit}")
                before = st.hard_state
                if not rd.must_sync and (before.term, before.vote) != (rd.hard_state.term, rd.hard_state.vote):
                    self._fail(f"node {sn.id}: term/vote changed in a Ready without must_sync")
                sn.last_commit = rd.hard_state.commit
                st.set_hard_state(rd.hard_state)
            if rd.must_sync or rd.snapshot is not None:
                sn.synced_commit = st.hard_state.commit
            if self.faults.crash_mid_ready and self.rand.random() < self.faults.crash_mid_ready:
                self.crash(sn.id)  # persisted, but nothing sent or applied
                return
            # 2. send
            for m in rd.messages:
                self._enqueue(m)
            # 3. apply
            if rd.snapshot is not None:
                self._apply_snapshot(sn, rd.snapshot)
            for e in rd.committed_entries:
                self._apply(sn, e)
            for rs in rd.read_states:
                self._check_read(sn, rs.request_ctx, rs.index)
            node.advance(rd)
            if sn.node is None:
                return
            self._maybe_snapshot(sn)

    def _apply_snapshot(self, sn: SimNode, snap) -> None:
        idx = snap.metadata.index
        want = self.applied_hash.get(idx)
        if want is not None and want != snap.data:
            self._fail(f"node {sn.id} installed snapshot {idx} with a different state")
        self.applied_hash.setdefault(idx, snap.data)
        sn.sm_index = idx
        sn.sm_hash = snap.data
        cs = snap.metadata.conf_state
        sn.conf = ConfState(list(cs.voters), list(cs.learners))

    def _apply(self, sn: SimNode, e) -> None:
        if e.index != sn.sm_index + 1:
            self._fail(f"node {sn.id} applied {e.index} after {sn.sm_index}")
        h = _chain(sn.sm_hash, e.index, e.term, e.data)
        prev = self.applied_entry.get(e.index)
        if prev is not None and prev != (e.term, e.data):
            self._fail(f"state machine safety: node {sn.id} applied {(e.term, e.data)!r} at {e.index}, others {prev!r}")
        if self.applied_hash.setdefault(e.index, h) != h:
            self._fail(f"state machine safety: node {sn.id} diverged before index {e.index}")
        self.applied_entry[e.index] = (e.term, e.data)
        sn.sm_index, sn.sm_hash = e.index, h
        sn.applied_since_snap += 1
        if e.index > self.max_applied:
            self.max_applied = e.index
        if e.type == EntryType.CONF_CHANGE:
            cc = unmarshal_conf_change(e.data)
            assert sn.node is not None
            sn.conf = sn.node.apply_conf_change(cc)
            self.conf_changes_applied += 1
            if cc.type == ConfChangeType.REMOVE_NODE and cc.node_id == sn.id:
                # etcd stops a member shortly after it applies its own removal
                # (stopWithDelay), so its last messages still go out.
                sn.removed = True
                sn.stop_at = self.now + 2 * self.cfg.election_tick
        elif e.data:
            self.applied_data.add(e.data)

    def _check_read(self, sn: SimNode, ctx: bytes, index: int) -> None:
        """A ReadIndex answer must cover everything committed before the read was issued."""
        req = self.pending_reads.pop(ctx, None)
        if req is None:
            return
        _, applied_when_issued = req
        if index < applied_when_issued:
            self._fail(f"linearizability: read {ctx!r} got index {index} < {applied_when_issued} committed before it")
        self.reads_served += 1

    def _maybe_snapshot(self, sn: SimNode) -> None:
        c = self.cfg
        if not c.snapshot_every or sn.applied_since_snap < c.snapshot_every:
            return
        st = sn.storage
        idx = sn.sm_index
        if idx <= st.snapshot().metadata.index or idx > st.last_index():
            return
        st.create_snapshot(idx, ConfState(list(sn.conf.voters), list(sn.conf.learners)), sn.sm_hash)
        compact_to = idx - self.rand.randint(0, c.keep_entries)
        if compact_to > st.first_index():
            st.compact(compact_to)
        sn.applied_since_snap = 0

    # ------------------------------------------------------------------
    # safety checks
    # ------------------------------------------------------------------
    def _fail(self, why: str) -> None:
        raise SafetyViolation(f"seed={self.seed} step={self.now}: {why}")

    def _check_new_entries(self, sn: SimNode, ents) -> None:
        """Log matching, inductively: equal (index, term) implies equal data and equal previous term."""
        st = sn.storage
        first = ents[0]
        try:
            prev_term = st.term(first.index - 1) if first.index - 1 >= st.first_index() - 1 else -1
        except (ErrCompacted, ErrUnavailable):
            prev_term = -1
        for e in ents:
            key = (e.index, e.term)
            got = self.entry_prev.get(key)
            if got is None:
                if prev_term >= 0:
                    self.entry_prev[key] = (e.data, prev_term)
            elif got[0] != e.data or (prev_term >= 0 and got[1] != prev_term):
                self._fail(f"log matching: node {sn.id} entry {key} = {(e.data, prev_term)!r}, elsewhere {got!r}")
            prev_term = e.term

    def _check_leaders(self) -> None:
        for sn in self.nodes.values():
            if sn.node is None:
                continue
            r = sn.node.raft
            if r.state != StateType.LEADER:
                continue
            holder = self.leader_of_term.setdefault(r.term, sn.id)
            if holder != sn.id:
                self._fail(f"election safety: nodes {holder} and {sn.id} both lead term {r.term}")
            if self._was_leader.get(sn.id) != r.term:
                self._was_leader[sn.id] = r.term
                self.elections += 1
                self._check_leader_completeness(sn)

    def _check_leader_completeness(self, sn: SimNode) -> None:
        """A new leader's log holds every entry applied anywhere (hence committed) so far."""
        assert sn.node is not None
        log = sn.node.raft.raft_log
        if log.last_index() < self.max_applied:
            self._fail(f"leader completeness: leader {sn.id} last index {log.last_index()} < applied {self.max_applied}")
        lo = max(log.first_index(), 1)
        for i in range(lo, self.max_applied + 1):
            want = self.applied_entry.get(i)
            if want is None:
                continue
            if log.zero_term_on_err(i) != want[0]:
                self._fail(f"leader completeness: leader {sn.id} has term {log.zero_term_on_err(i)} at {i}, committed {want[0]}")

    # ------------------------------------------------------------------
    # workload
    # ------------------------------------------------------------------
    def live(self) -> list[SimNode]:
        return [sn for sn in self.nodes.values() if sn.node is not None]

    def leader(self) -> SimNode | None:
        best = None
        for sn in self.live():
            r = sn.node.raft  # type: ignore[union-attr]
            if r.state == StateType.LEADER and (best is None or r.term > best.node.raft.term):  # type: ignore[union-attr]
                best = sn
        return best

    def propose(self, sn: SimNode, n: int = 1) -> list[bytes]:
        datas = []
        for _ in range(n):
            self.prop_counter += 1
            datas.append(b"s%d-p%d" % (self.seed, self.prop_counter))
        try:
            assert sn.node is not None
            if n == 1:
                sn.node.propose(datas[0])
            else:
                sn.node.propose_batch(datas)
        except ProposalDropped:
            return []
        self.proposed.update(datas)
        return datas

    def _random_workload(self) -> None:
        c = self.cfg
        live = self.live()
        if not live:
            return
        if self.rand.random() < c.propose_prob:
            sn = self.rand.choice(live)
            self.propose(sn, self.rand.randint(1, c.batch_max))
        if c.read_prob and self.rand.random() < c.read_prob:
            sn = self.rand.choice(live)
            self.prop_counter += 1
            ctx = b"r%d" % self.prop_counter
            self.pending_reads[ctx] = (sn.id, self.max_applied)
            assert sn.node is not None
            sn.node.read_index(ctx)

    def random_transfer_leader(self) -> None:
        ld = self.leader()
        if ld is None or ld.node is None:
            return
        voters = sorted(v for v in ld.node.raft.prs.voters if v != ld.id)
        if voters:
            ld.node.transfer_leader(self.rand.choice(voters))

    def propose_conf_change(self, cc: ConfChange) -> bool:
        ld = self.leader()
        if ld is None:
            return False
        try:
            ld.node.propose_conf_change(cc)  # type: ignore[union-attr]
        except ProposalDropped:
            return False
        return True

    def random_membership_change(self) -> None:
        """Add a learner, promote it, or remove a voter/learner (keeping 3..5 voters)."""
        ld = self.leader()
        if ld is None or ld.node is None:
            return
        r = ld.node.raft
        voters, learners = sorted(r.prs.voters), sorted(r.prs.learners)
        choices = []
        if not learners and len(voters) + len(learners) < 6:
            choices.append("add_learner")
        if learners and len(voters) < 5:
            choices.append("promote")
        if len(voters) > 3:
            choices.append("remove_voter")
        if learners:
            choices.append("remove_learner")
        if not choices:
            return
        what = self.rand.choice(choices)
        if what == "add_learner":
            new_id = self.next_id
            if self.propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER_NODE, node_id=new_id)):
                self.add_node()
        elif what == "promote":
            lid = learners[0]
            pr = r.prs.progress[lid]
            if pr.match >= r.raft_log.committed:  # etcd promotes only caught-up learners
                self.propose_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=lid))
        elif what == "remove_voter":
            self.propose_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=self.rand.choice(voters)))
        else:
            self.propose_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=learners[0]))

    # ------------------------------------------------------------------
    # driving
    # ------------------------------------------------------------------
    def step(self, workload: bool = True) -> None:
        self.now += 1
        for sn in self.nodes.values():
            if sn.removed and sn.node is not None and self.now >= sn.stop_at:
                sn.node = None
        self._deliver_due()
        for sn in list(self.nodes.values()):
            if sn.node is not None:
                sn.node.tick()
        if workload:
            self._random_workload()
        for sn in list(self.nodes.values()):
            if sn.node is not None:
                self._handle_ready(sn)
        self._check_leaders()

    def run(self, steps: int, workload: bool = True) -> None:
        for _ in range(steps):
            self.step(workload)

    def heal(self) -> None:
        self.faults.heal()
        for sn in self.nodes.values():
            if sn.node is None and not sn.removed:
                self.restart(sn.id)

    def members(self) -> set[int]:
        """Current voters according to the most recent leader (or node 1's view)."""
        ld = self.leader()
        if ld is not None and ld.node is not None:
            return set(ld.node.raft.prs.voters)
        return set()

    def wait_commit(self, max_steps: int) -> int:
        """Propose (retrying) until one proposal is applied; returns the steps it took."""
        target: set[bytes] = set()
        for i in range(max_steps):
            if i % 5 == 0:
                live = [sn for sn in self.live() if not sn.removed]
                if live:
                    target.update(self.propose(self.rand.choice(live)))
            self.step(workload=False)
            if target & self.applied_data:
                return i + 1
        raise AssertionError(
            f"seed={self.seed}: no progress within {max_steps} steps after healing "
            f"(leader={self.leader() and self.leader().id}, now={self.now})"
        )

    def wait_converged(self, max_steps: int) -> None:
        """All live members reach the same applied index (after a final proposal)."""
        for _ in range(max_steps):
            self.step(workload=False)
            live = [sn for sn in self.live() if not sn.removed and sn.conf.voters]
            ld = self.leader()
            if ld is None:
                continue
            members = set(ld.node.raft.prs.progress)  # type: ignore[union-attr]
            idx = {sn.sm_index for sn in live if sn.id in members}
            if len(idx) == 1 and idx == {ld.node.raft.raft_log.committed}:  # type: ignore[union-attr]
                return
        raise AssertionError(f"seed={self.seed}: members did not converge within {max_steps} steps")
