"""The Raft state machine (etcd-io/raft's raft.go), single-step membership.

Everything here is synchronous and deterministic: inputs are ticks, local
requests and network messages; outputs are appended to `msgs`, `read_states`
and the log, which RawNode turns into a Ready. Randomness (the election
timeout) comes only from `Config.rand`.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from collections.abc import Callable

from .errors import ErrCompacted, ErrSnapshotTemporarilyUnavailable, ErrUnavailable, ProposalDropped
from .log import RaftInvariantError, RaftLog
from .read_only import ReadOnly, ReadOnlyOption
from .storage import Storage
from .tracker import Progress, ProgressState, ProgressTracker, VoteResult
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SoftState,
    ReadState,
    StateType,
    unmarshal_conf_change,
)

MT = MessageType

CAMPAIGN_TRANSFER = b"CampaignTransfer"
"""Vote context marking an election forced by leader transfer (bypasses the leader lease)."""


class CampaignType(enum.Enum):
    PRE_ELECTION = "CampaignPreElection"
    ELECTION = "CampaignElection"
    TRANSFER = "CampaignTransfer"


@dataclass
class Config:
    """Parameters of one raft node; see etcd-io/raft Config for the meaning of each."""

    id: int
    storage: Storage
    election_tick: int = 10
    heartbeat_tick: int = 1
    applied: int = 0
    max_size_per_msg: int = 1024 * 1024
    max_committed_size_per_ready: int = 64 * 1024 * 1024
    max_uncommitted_entries_size: int = 0  # 0 = unlimited
    max_inflight_msgs: int = 512
    check_quorum: bool = True
    pre_vote: bool = True
    read_only_option: ReadOnlyOption = ReadOnlyOption.SAFE
    disable_proposal_forwarding: bool = False
    rand: random.Random = field(default_factory=lambda: random.Random(0))

    def validate(self) -> None:
        if self.id == NONE:
            raise ValueError("cannot use none as id")
        if self.heartbeat_tick <= 0:
            raise ValueError("heartbeat tick must be greater than 0")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election tick must be greater than heartbeat tick")
        if self.max_inflight_msgs <= 0:
            raise ValueError("max inflight messages must be greater than 0")
        if self.read_only_option == ReadOnlyOption.LEASE_BASED and not self.check_quorum:
            raise ValueError("CheckQuorum must be enabled when ReadOnlyOption is LEASE_BASED")


def vote_resp_type(t: MessageType) -> MessageType:
    if t == MT.VOTE:
        return MT.VOTE_RESP
    if t == MT.PRE_VOTE:
        return MT.PRE_VOTE_RESP
    raise ValueError(f"not a vote message: {t!r}")


def num_of_pending_conf(ents: list[Entry]) -> int:
    return sum(1 for e in ents if e.type == EntryType.CONF_CHANGE)


def payload_size(ents: list[Entry]) -> int:
    return sum(len(e.data) for e in ents)


class Raft:
    """One node's Raft state. Drive it through RawNode; fields are read by tests."""

    def __init__(self, c: Config) -> None:
        c.validate()
        self.id = c.id
        self.raft_log = RaftLog(c.storage, c.max_committed_size_per_ready)
        hs, cs = c.storage.initial_state()
        self.max_msg_size = c.max_size_per_msg
        self.max_uncommitted_size = c.max_uncommitted_entries_size
        self.prs = ProgressTracker(c.max_inflight_msgs)
        self.term = 0
        self.vote = NONE
        self.state = StateType.FOLLOWER
        self.is_learner = False
        self.lead = NONE
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly(c.read_only_option)
        self.pending_read_index_messages: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.heartbeat_timeout = c.heartbeat_tick
        self.election_timeout = c.election_tick
        self.randomized_election_timeout = c.election_tick
        self.disable_proposal_forwarding = c.disable_proposal_forwarding
        self.rand = c.rand
        self._tick: Callable[[], None] = self.tick_election
        self._step: Callable[[Message], None] = self._step_follower

        self._restore_conf_state(cs)
        if not hs.is_empty():
            self.load_state(hs)
        if c.applied > 0:
            self.raft_log.applied_to(c.applied)
            self._replay_applied_conf_changes(c.storage, c.applied)
        self.become_follower(self.term, NONE)

    def _replay_applied_conf_changes(self, storage: Storage, applied: int) -> None:
        """Rebuild membership from conf-change entries in (snapshot, applied].

        The ConfState in storage only reflects the last snapshot; with
        `applied` set past it those conf changes are never re-delivered, so we
        re-apply them here (etcd leaves this to the application).
        """
        first = storage.first_index()
        if applied < first:
            return
        for e in storage.entries(first, applied + 1):
            if e.type == EntryType.CONF_CHANGE:
                self.apply_conf_change(unmarshal_conf_change(e.data))

    # ------------------------------------------------------------------
    # state accessors
    # ------------------------------------------------------------------
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.raft_log.committed)

    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def load_state(self, hs: HardState) -> None:
        if hs.commit < self.raft_log.committed or hs.commit > self.raft_log.last_index():
            raise RaftInvariantError(
                f"{self.id} state.commit {hs.commit} is out of range "
                f"[{self.raft_log.committed}, {self.raft_log.last_index()}]"
            )
        self.raft_log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    def conf_state(self) -> ConfState:
        return ConfState(voters=self.prs.voter_ids(), learners=self.prs.learner_ids())

    def promotable(self) -> bool:
        """Can this node campaign? Only voters, and not while a snapshot is being installed."""
        pr = self.prs.progress.get(self.id)
        return pr is not None and not pr.is_learner and not self.raft_log.has_pending_snapshot()

    def past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def reset_randomized_election_timeout(self) -> None:
        self.randomized_election_timeout = self.election_timeout + self.rand.randrange(self.election_timeout)

    # ------------------------------------------------------------------
    # sending
    # ------------------------------------------------------------------
    def send(self, m: Message) -> None:
        if m.frm == NONE:
            m.frm = self.id
        t = m.type
        if t in (MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP):
            pass  # the term was set by the caller (it may differ from ours for pre-votes)
        elif t != MT.PROP and t != MT.READ_INDEX:
            # Proposals and forwarded read requests are term-less: they are just
            # forwarded to the leader, which handles them in whatever term it is.
            m.term = self.term
        self.msgs.append(m)

    def send_append(self, to: int) -> None:
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send entries from pr.next (or a snapshot if they are compacted) to `to`."""
        pr = self.prs.progress[to]
        if pr.is_paused():
            return False
        log = self.raft_log
        try:
            prev_term = log.term(pr.next - 1)
            ents = log.entries(pr.next, self.max_msg_size)
        except (ErrCompacted, ErrUnavailable):
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        m = Message(MT.APP, to=to, index=pr.next - 1, log_term=prev_term, entries=ents, commit=log.committed)
        if ents:
            if pr.state == ProgressState.REPLICATE:
                last = ents[-1].index
                pr.optimistic_update(last)
                pr.inflights.add(last)
            elif pr.state == ProgressState.PROBE:
                pr.probe_sent = True
        self.send(m)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # don't ship a snapshot to a peer that may be down
        try:
            snap = self.raft_log.snapshot()
        except ErrSnapshotTemporarilyUnavailable:
            return False
        if snap.is_empty():
            raise RaftInvariantError("need non-empty snapshot")
        pr.become_snapshot(snap.metadata.index)
        self.send(Message(MT.SNAP, to=to, snapshot=snap))
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        # A follower may not have all the leader's entries: never tell it to
        # commit past what it is known to have.
        commit = min(self.prs.progress[to].match, self.raft_log.committed)
        self.send(Message(MT.HEARTBEAT, to=to, commit=commit, context=ctx))

    def bcast_append(self) -> None:
        for id_ in self.prs.progress:
            if id_ != self.id:
                self.maybe_send_append(id_, True)

    def bcast_heartbeat(self) -> None:
        self.bcast_heartbeat_with_ctx(self.read_only.last_pending_request_ctx())

    def bcast_heartbeat_with_ctx(self, ctx: bytes) -> None:
        for id_ in self.prs.progress:
            if id_ != self.id:
                self.send_heartbeat(id_, ctx)

    # ------------------------------------------------------------------
    # log and commit
    # ------------------------------------------------------------------
    def maybe_commit(self) -> bool:
        return self.raft_log.maybe_commit(self.prs.committed(), self.term)

    def append_entry(self, es: list[Entry]) -> bool:
        """Leader: stamp term/index on fresh copies of `es` and append them; False if over the size cap."""
        li = self.raft_log.last_index()
        term = self.term
        ents = [Entry(term, li + 1 + i, e.type, e.data) for i, e in enumerate(es)]
        if not self.increase_uncommitted_size(ents):
            return False
        li = self.raft_log.append(ents)
        self.prs.progress[self.id].maybe_update(li)
        self.maybe_commit()
        return True

    def increase_uncommitted_size(self, ents: list[Entry]) -> bool:
        """Flow control: refuse proposals while too many bytes are uncommitted (empty entries always pass)."""
        if self.max_uncommitted_size <= 0:
            return True
        s = payload_size(ents)
        if self.uncommitted_size > 0 and s > 0 and self.uncommitted_size + s > self.max_uncommitted_size:
            return False
        self.uncommitted_size += s
        return True

    def reduce_uncommitted_size(self, ents: list[Entry]) -> None:
        if self.uncommitted_size == 0:
            return
        s = payload_size(ents)
        self.uncommitted_size = max(0, self.uncommitted_size - s)

    def committed_entry_in_current_term(self) -> bool:
        return self.raft_log.zero_term_on_err(self.raft_log.committed) == self.term

    # ------------------------------------------------------------------
    # role transitions
    # ------------------------------------------------------------------
    def reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.prs.reset_votes()
        last = self.raft_log.last_index()
        mi = self.prs.max_inflight
        for id_, pr in list(self.prs.progress.items()):
            npr = Progress(0, last + 1, mi, pr.is_learner)
            if id_ == self.id:
                npr.match = last
            self.prs.progress[id_] = npr
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        # Read requests of a previous term are dropped; their callers retry.
        self.read_only = ReadOnly(self.read_only.option)
        self.pending_read_index_messages = []

    def become_follower(self, term: int, lead: int) -> None:
        self._step = self._step_follower
        self.reset(term)
        self._tick = self.tick_election
        self.lead = lead
        self.state = StateType.FOLLOWER

    def become_candidate(self) -> None:
        if self.state == StateType.LEADER:
            raise RaftInvariantError("invalid transition [leader -> candidate]")
        self._step = self._step_candidate
        self.reset(self.term + 1)
        self._tick = self.tick_election
        self.vote = self.id
        self.state = StateType.CANDIDATE

    def become_pre_candidate(self) -> None:
        """Pre-candidate: ask for votes without bumping the term, so a partitioned node can't disrupt."""
        if self.state == StateType.LEADER:
            raise RaftInvariantError("invalid transition [leader -> pre-candidate]")
        self._step = self._step_candidate
        self.prs.reset_votes()
        self._tick = self.tick_election
        self.lead = NONE
        self.state = StateType.PRE_CANDIDATE

    def become_leader(self) -> None:
        if self.state == StateType.FOLLOWER:
            raise RaftInvariantError("invalid transition [follower -> leader]")
        self._step = self._step_leader
        self.reset(self.term)
        self._tick = self.tick_heartbeat
        self.lead = self.id
        self.state = StateType.LEADER
        pr = self.prs.progress[self.id]
        pr.become_replicate()
        pr.recent_active = True
        # Conservatively treat any conf change in the uncommitted tail as pending.
        self.pending_conf_index = self.raft_log.last_index()
        # An empty entry of our own term: committing it commits everything before (§5.4.2).
        if not self.append_entry([Entry()]):
            raise RaftInvariantError("empty entry was dropped")

    # ------------------------------------------------------------------
    # ticks
    # ------------------------------------------------------------------
    def tick(self) -> None:
        self._tick()

    def tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, frm=self.id))
            # A transfer that has not finished within an election timeout is abandoned.
            if self.state == StateType.LEADER and self.lead_transferee != NONE:
                self.abort_leader_transfer()
                if self.removed_from_config():
                    self.become_follower(self.term, NONE)
        if self.state != StateType.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, frm=self.id))

    # ------------------------------------------------------------------
    # elections
    # ------------------------------------------------------------------
    def hup(self, t: CampaignType) -> None:
        if self.state == StateType.LEADER:
            return
        if not self.promotable():
            return
        log = self.raft_log
        if log.committed > log.applied:
            try:
                ents = log.slice(log.applied + 1, log.committed + 1)
            except ErrCompacted:
                ents = []
            if num_of_pending_conf(ents) != 0:
                # A conf change is committed but not applied: campaigning now could
                # use a stale configuration.
                return
        self.campaign(t)

    def campaign(self, t: CampaignType) -> None:
        if not self.promotable():
            return
        if t == CampaignType.PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = MT.PRE_VOTE
            term = self.term + 1  # the term we would use; not adopted until the pre-vote wins
        else:
            self.become_candidate()
            vote_msg = MT.VOTE
            term = self.term
        if self.poll(self.id, vote_resp_type(vote_msg), True) == VoteResult.WON:
            # Single voter: won outright.
            if t == CampaignType.PRE_ELECTION:
                self.campaign(CampaignType.ELECTION)
            else:
                self.become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if t == CampaignType.TRANSFER else b""
        last_index = self.raft_log.last_index()
        last_term = self.raft_log.last_term()
        for id_ in self.prs.voter_ids():
            if id_ == self.id:
                continue
            self.send(Message(vote_msg, to=id_, term=term, log_term=last_term, index=last_index, context=ctx))

    def poll(self, id_: int, t: MessageType, granted: bool) -> VoteResult:
        self.prs.record_vote(id_, granted)
        return self.prs.tally_votes()[2]

    # ------------------------------------------------------------------
    # step
    # ------------------------------------------------------------------
    def step(self, m: Message) -> None:
        """Entry point for every message, local or remote. Handles terms, then dispatches by role."""
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = self.check_quorum and self.lead != NONE and self.election_elapsed < self.election_timeout
                if not force and in_lease:
                    # Leader lease: we heard from a live leader within the election
                    # timeout, so ignore this (likely partitioned) candidate.
                    return
            if m.type == MT.PRE_VOTE:
                pass  # never change our term in response to a pre-vote
            elif m.type == MT.PRE_VOTE_RESP and not m.reject:
                pass  # the term in a granted pre-vote response is the one we will campaign at
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader: tell it about our term so it steps down (with
                # CheckQuorum/PreVote we won't bump terms to disrupt it ourselves).
                self.send(Message(MT.APP_RESP, to=m.frm))
            elif m.type == MT.PRE_VOTE:
                self.send(Message(MT.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        t = m.type
        if t == MT.HUP:
            self.hup(CampaignType.PRE_ELECTION if self.pre_vote else CampaignType.ELECTION)
        elif t == MT.VOTE or t == MT.PRE_VOTE:
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (t == MT.PRE_VOTE and m.term > self.term)
            )
            if can_vote and self.raft_log.is_up_to_date(m.index, m.log_term):
                self.send(Message(vote_resp_type(t), to=m.frm, term=m.term))
                if t == MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self.send(Message(vote_resp_type(t), to=m.frm, term=self.term, reject=True))
        else:
            self._step(m)

    # -- leader -------------------------------------------------------------
    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MT.BEAT:
            self.bcast_heartbeat()
            return
        if t == MT.CHECK_QUORUM:
            self._check_quorum()
            return
        if t == MT.PROP:
            self._leader_propose(m)
            return
        if t == MT.READ_INDEX:
            self._leader_read_index(m)
            return

        pr = self.prs.progress.get(m.frm)
        if pr is None:
            return
        if t == MT.APP_RESP:
            self._handle_app_resp(m, pr)
        elif t == MT.HEARTBEAT_RESP:
            self._handle_heartbeat_resp(m, pr)
        elif t == MT.SNAP_STATUS:
            if pr.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for a MsgAppResp/heartbeat response before probing again.
            pr.probe_sent = True
        elif t == MT.UNREACHABLE:
            # Sending failed: the pipeline is likely broken, so probe before pipelining again.
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
        elif t == MT.TRANSFER_LEADER:
            self._handle_transfer_leader(m, pr)

    def _check_quorum(self) -> None:
        pr = self.prs.progress.get(self.id)
        if pr is not None:
            pr.recent_active = True
        if not self.prs.quorum_active():
            self.become_follower(self.term, NONE)
        for id_, p in self.prs.progress.items():
            if id_ != self.id:
                p.recent_active = False

    def _leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise RaftInvariantError("stepped empty MsgProp")
        if self.id not in self.prs.progress:
            # Removed from the configuration: we cannot commit anything.
            raise ProposalDropped("leader was removed from the configuration")
        if self.lead_transferee != NONE:
            raise ProposalDropped("leadership transfer in progress")
        pending_idx = 0
        for i, e in enumerate(m.entries):
            if e.type == EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.raft_log.applied or pending_idx:
                    raise ProposalDropped("a configuration change is already pending")
                pending_idx = self.raft_log.last_index() + i + 1
        if not self.append_entry(m.entries):
            raise ProposalDropped("too many uncommitted bytes (max_uncommitted_entries_size)")
        if pending_idx:
            self.pending_conf_index = pending_idx
        self.bcast_append()

    def _leader_read_index(self, m: Message) -> None:
        if self.prs.is_singleton():
            self._respond_read_index(m, self.raft_log.committed)
            return
        if not self.committed_entry_in_current_term():
            # Our commit index may lag the cluster's until our first entry commits (§6.4).
            self.pending_read_index_messages.append(m)
            return
        self._send_read_index_response(m)

    def _send_read_index_response(self, m: Message) -> None:
        if self.read_only.option == ReadOnlyOption.SAFE:
            self.read_only.add_request(self.raft_log.committed, m)
            self.read_only.recv_ack(self.id, m.context)
            self.bcast_heartbeat_with_ctx(m.context)
        else:
            self._respond_read_index(m, self.raft_log.committed)

    def _respond_read_index(self, req: Message, index: int) -> None:
        if req.frm == NONE or req.frm == self.id:
            self.read_states.append(ReadState(index, req.context))
        else:
            self.send(Message(MT.READ_INDEX_RESP, to=req.frm, index=index, context=req.context))

    def _release_pending_read_index_messages(self) -> None:
        if not self.pending_read_index_messages or not self.committed_entry_in_current_term():
            return
        msgs = self.pending_read_index_messages
        self.pending_read_index_messages = []
        for m in msgs:
            self._send_read_index_response(m)

    def _handle_app_resp(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                # Skip every entry of ours whose term is above the follower's hint term.
                next_probe, _ = self.raft_log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self.send_append(m.frm)
            return
        old_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT:
            if pr.match >= pr.pending_snapshot or pr.match + 1 >= self.raft_log.first_index():
                pr.become_probe()
                pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self.maybe_commit():
            self._release_pending_read_index_messages()
            self.bcast_append()
        elif old_paused:
            self.send_append(m.frm)
        # Keep the pipeline full while there is something to send.
        while self.maybe_send_append(m.frm, False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.raft_log.last_index():
            self.send_timeout_now(m.frm)

    def _handle_heartbeat_resp(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if pr.match < self.raft_log.last_index():
            self.send_append(m.frm)
        if self.read_only.option != ReadOnlyOption.SAFE or not m.context:
            return
        acks = self.read_only.recv_ack(m.frm, m.context)
        if acks is None:
            return
        if sum(1 for v in self.prs.voters if v in acks) < self.prs.quorum():
            return
        for rs in self.read_only.advance(m.context):
            self._respond_read_index(rs.req, rs.index)

    def _handle_transfer_leader(self, m: Message, pr: Progress) -> None:
        if pr.is_learner:
            return
        transferee = m.frm
        last = self.lead_transferee
        if last != NONE:
            if last == transferee:
                return  # already transferring to it
            self.abort_leader_transfer()
        if transferee == self.id:
            return  # already leader
        # The transfer must finish within one election timeout.
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if pr.match == self.raft_log.last_index():
            self.send_timeout_now(transferee)
        else:
            self.send_append(transferee)

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    # -- candidate ----------------------------------------------------------
    def _step_candidate(self, m: Message) -> None:
        t = m.type
        my_resp = MT.PRE_VOTE_RESP if self.state == StateType.PRE_CANDIDATE else MT.VOTE_RESP
        if t == MT.PROP:
            raise ProposalDropped("no leader")
        if t == MT.APP:
            self.become_follower(m.term, m.frm)
            self.handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self.handle_heartbeat(m)
        elif t == MT.SNAP:
            self.become_follower(m.term, m.frm)
            self.handle_snapshot(m)
        elif t == my_resp:
            res = self.poll(m.frm, t, not m.reject)
            if res == VoteResult.WON:
                if self.state == StateType.PRE_CANDIDATE:
                    self.campaign(CampaignType.ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res == VoteResult.LOST:
                # Pre-vote lost: stay in our term as a follower; vote lost likewise.
                self.become_follower(self.term, NONE)
        # MsgTimeoutNow to a candidate is ignored.

    # -- follower -----------------------------------------------------------
    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MT.PROP:
            if self.lead == NONE:
                raise ProposalDropped("no leader")
            if self.disable_proposal_forwarding:
                raise ProposalDropped("proposal forwarding is disabled")
            self.send(Message(MT.PROP, to=self.lead, frm=m.frm, entries=m.entries))
        elif t == MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_append_entries(m)
        elif t == MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_heartbeat(m)
        elif t == MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self.handle_snapshot(m)
        elif t == MT.TRANSFER_LEADER:
            if self.lead == NONE:
                return
            self.send(Message(MT.TRANSFER_LEADER, to=self.lead, frm=m.frm))
        elif t == MT.TIMEOUT_NOW:
            # Leader transfer: campaign immediately, skipping pre-vote, bypassing leases.
            self.hup(CampaignType.TRANSFER)
        elif t == MT.READ_INDEX:
            if self.lead == NONE:
                return  # dropped; the caller times out and retries
            self.send(Message(MT.READ_INDEX, to=self.lead, frm=m.frm, context=m.context))
        elif t == MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def handle_append_entries(self, m: Message) -> None:
        log = self.raft_log
        if m.index < log.committed:
            self.send(Message(MT.APP_RESP, to=m.frm, index=log.committed))
            return
        mlast, ok = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if ok:
            self.send(Message(MT.APP_RESP, to=m.frm, index=mlast))
            return
        # Reject with a hint: the largest index <= m.index whose term is <= m.log_term,
        # so the leader can skip a whole divergent term in one round trip.
        hint_index = min(m.index, log.last_index())
        hint_index, hint_term = log.find_conflict_by_term(hint_index, m.log_term)
        self.send(
            Message(MT.APP_RESP, to=m.frm, index=m.index, reject=True, reject_hint=hint_index, log_term=hint_term)
        )

    def handle_heartbeat(self, m: Message) -> None:
        self.raft_log.commit_to(m.commit)
        self.send(Message(MT.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is not None and self.restore(snap):
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.raft_log.last_index()))
        else:
            self.send(Message(MT.APP_RESP, to=m.frm, index=self.raft_log.committed))

    def restore(self, s: Snapshot) -> bool:
        """Install a leader's snapshot; False if it is stale or we already have its last entry."""
        meta = s.metadata
        if meta.index <= self.raft_log.committed:
            return False
        if self.state != StateType.FOLLOWER:
            # Defensive (etcd does the same): only followers install snapshots.
            self.become_follower(self.term + 1, NONE)
            return False
        cs = meta.conf_state
        if self.id not in cs.voters and self.id not in cs.learners:
            # A snapshot from a config we are not part of; most likely a bug upstream.
            return False
        if self.raft_log.match_term(meta.index, meta.term):
            # We already have the entry: just fast-forward the commit index.
            self.raft_log.commit_to(meta.index)
            return False
        self.raft_log.restore(s)
        self._restore_conf_state(cs)
        pr = self.prs.progress[self.id]
        pr.maybe_update(pr.next - 1)
        return True

    def _restore_conf_state(self, cs: ConfState) -> None:
        """Rebuild the progress tracker from a ConfState (startup and snapshot install)."""
        self.prs = ProgressTracker(self.prs.max_inflight)
        nxt = self.raft_log.last_index() + 1
        mi = self.prs.max_inflight
        for v in cs.voters:
            self.prs.voters.add(v)
            self.prs.progress[v] = Progress(0, nxt, mi, False)
        for lrn in cs.learners:
            if lrn in self.prs.voters:
                raise RaftInvariantError(f"node {lrn} is both voter and learner")
            self.prs.learners.add(lrn)
            self.prs.progress[lrn] = Progress(0, nxt, mi, True)
        self.is_learner = self.id in self.prs.learners

    # ------------------------------------------------------------------
    # configuration changes (single-step)
    # ------------------------------------------------------------------
    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed single-step change to the tracker and react as leader."""
        if cc.node_id != NONE:
            if cc.type == ConfChangeType.ADD_NODE:
                self._add_node(cc.node_id, False)
            elif cc.type == ConfChangeType.ADD_LEARNER_NODE:
                self._add_node(cc.node_id, True)
            elif cc.type == ConfChangeType.REMOVE_NODE:
                self._remove_node(cc.node_id)
        return self._after_conf_change()

    def _add_node(self, id_: int, learner: bool) -> None:
        prs = self.prs
        pr = prs.progress.get(id_)
        if pr is None:
            pr = Progress(0, self.raft_log.last_index() + 1, prs.max_inflight, learner)
            # A new node counts as active so CheckQuorum doesn't depose us before it talks.
            pr.recent_active = True
            prs.progress[id_] = pr
            (prs.learners if learner else prs.voters).add(id_)
        elif learner and not pr.is_learner:
            if len(prs.voters) == 1:
                return  # refuse to demote the last voter
            prs.voters.discard(id_)
            prs.learners.add(id_)
            pr.is_learner = True
        elif not learner and pr.is_learner:
            prs.learners.discard(id_)
            prs.voters.add(id_)
            pr.is_learner = False
        if id_ == self.id:
            self.is_learner = learner and id_ in prs.learners

    def _remove_node(self, id_: int) -> None:
        prs = self.prs
        if id_ in prs.voters and len(prs.voters) == 1:
            return  # refuse to remove the last voter (etcd errors "removed all voters")
        prs.progress.pop(id_, None)
        prs.voters.discard(id_)
        prs.learners.discard(id_)
        prs.votes.pop(id_, None)

    def _after_conf_change(self) -> ConfState:
        cs = self.conf_state()
        self.is_learner = self.id in self.prs.learners
        if self.state != StateType.LEADER:
            return cs
        if self.removed_from_config():
            # Removed (or demoted) leader: hand over to the most up-to-date voter.
            if self.lead_transferee == NONE or self.lead_transferee not in self.prs.voters:
                self._handoff_after_removal()
            return cs
        if not cs.voters:
            return cs
        if self.maybe_commit():
            # Removing a voter can shrink the quorum and commit entries.
            self.bcast_append()
        else:
            for id_ in self.prs.progress:
                if id_ != self.id:
                    self.maybe_send_append(id_, False)
        if self.lead_transferee != NONE and self.lead_transferee not in self.prs.voters:
            self.abort_leader_transfer()
        return cs

    def _handoff_after_removal(self) -> None:
        """A leader that applied its own removal hands leadership to the most caught-up voter.

        It stops taking proposals (they fail: it is not in the configuration),
        transfers leadership like MsgTransferLeader does (catch the transferee
        up, then MsgTimeoutNow), and steps down once MsgTimeoutNow is sent or
        the transfer times out. Without this the cluster would wait a full
        election timeout (plus CheckQuorum leases) for a new leader.
        """
        # Tell the remaining members the commit index, which covers the change.
        for id_ in self.prs.progress:
            if id_ != self.id:
                self.send_heartbeat(id_, b"")
        best, best_match = NONE, -1
        for v in sorted(self.prs.voters):
            m = self.prs.progress[v].match
            if m > best_match:
                best, best_match = v, m
        if best == NONE:
            self.become_follower(self.term, NONE)
            return
        self.lead_transferee = best
        self.election_elapsed = 0
        if best_match == self.raft_log.last_index():
            self.send_timeout_now(best)
        else:
            self.send_append(best)

    def removed_from_config(self) -> bool:
        return self.id not in self.prs.progress or self.is_learner

    def send_timeout_now(self, to: int) -> None:
        self.send(Message(MT.TIMEOUT_NOW, to=to))
        if self.state == StateType.LEADER and self.removed_from_config():
            # The transferee campaigns at once; a removed leader has nothing left to do.
            self.become_follower(self.term, NONE)

    # ------------------------------------------------------------------
    # called by RawNode.advance
    # ------------------------------------------------------------------
    def advance(self, committed: list[Entry], entries: list[Entry], snapshot: Snapshot | None) -> None:
        self.reduce_uncommitted_size(committed)
        if committed:
            self.raft_log.applied_to(committed[-1].index)
        elif snapshot is not None and snapshot.metadata.index > 0:
            self.raft_log.applied_to(snapshot.metadata.index)
        if entries:
            e = entries[-1]
            self.raft_log.stable_to(e.index, e.term)
        if snapshot is not None and snapshot.metadata.index > 0:
            self.raft_log.stable_snap_to(snapshot.metadata.index)
