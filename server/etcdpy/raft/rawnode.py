"""RawNode: the thread-unsafe, synchronous interface the server drives (etcd-io/raft rawnode.go).

The server loop:

    rd = node.ready()
    persist rd.hard_state, rd.entries (one fsync when rd.must_sync) and rd.snapshot;
        then storage.append(rd.entries) / storage.set_hard_state / storage.apply_snapshot
    send rd.messages  -- see "Which messages may be sent before persisting" below
    apply rd.snapshot, then rd.committed_entries (call apply_conf_change for conf entries)
    node.advance(rd)

Which messages may be sent before persisting: a *leader* may send everything in
rd.messages before its own fsync completes (MsgApp/MsgHeartbeat/MsgSnap/
MsgTimeoutNow/MsgReadIndexResp): its own log is counted towards commit only
because Raft tolerates the leader writing in parallel with followers (thesis
§10.2.1), and committed entries in the *same* Ready must still be applied only
after the entries of that Ready are persisted. A follower or candidate must
persist first, because its MsgAppResp acknowledges entries as durable and its
MsgVoteResp records a vote that must survive a crash. The simple rule that is
always safe: persist, then send, then apply.

`ready()` must be followed by `advance()` before the next `ready()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ErrStepLocalMsg, ProposalDropped
from .raft import Config, Raft
from .tracker import Progress
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
    ReadState,
    Snapshot,
    SoftState,
    StateType,
    entry_size,
    marshal_conf_change,
)

MT = MessageType

_LOCAL_MSGS = frozenset({MT.HUP, MT.BEAT, MT.UNREACHABLE, MT.SNAP_STATUS, MT.CHECK_QUORUM})
_RESPONSE_MSGS = frozenset({MT.APP_RESP, MT.VOTE_RESP, MT.HEARTBEAT_RESP, MT.UNREACHABLE, MT.PRE_VOTE_RESP})


@dataclass(slots=True)
class Peer:
    id: int
    context: bytes = b""


@dataclass
class Ready:
    """Everything the server must persist, send and apply, in one batch."""

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    read_states: list[ReadState] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    must_sync: bool = False


@dataclass
class Status:
    id: int
    hard_state: HardState
    soft_state: SoftState
    applied: int
    progress: dict[int, Progress]
    lead_transferee: int
    conf_state: ConfState


def coalesce_messages(msgs: list[Message], max_size: int) -> list[Message]:
    """Merge runs of messages to the same peer that a receiver would process identically.

    Every proposal makes the leader send one MsgApp per follower, and every
    MsgApp makes the follower answer; with many proposals per Ready that is
    O(proposals) messages for the transport to encode and ship. Here, within
    one Ready and for one destination with no other message in between:

    * contiguous MsgApps of the same term become one MsgApp (up to `max_size`
      bytes of entries); the latest commit index wins;
    * successive accepting MsgAppResps of the same term collapse to the one
      with the highest index (an ack means "I have everything up to index").

    Delivering the merged message has the same effect as delivering the run.
    """
    if len(msgs) < 2:
        return msgs
    out: list[Message] = []
    last_for: dict[int, int] = {}  # destination -> position in out of its latest message
    sizes: dict[int, int] = {}  # position in out -> bytes of entries (for MsgApp)
    for m in msgs:
        pos = last_for.get(m.to)
        if pos is not None:
            prev = out[pos]
            if m.type == MT.APP and prev.type == MT.APP and prev.term == m.term:
                n_prev = len(prev.entries)
                last_idx = prev.index + n_prev
                last_term = prev.entries[-1].term if n_prev else prev.log_term
                if m.index == last_idx and m.log_term == last_term:
                    add = sum(entry_size(e) for e in m.entries)
                    size = sizes.get(pos, 0)
                    if not m.entries or not n_prev or size + add <= max_size:
                        merged = Message(
                            MT.APP,
                            to=m.to,
                            frm=m.frm,
                            term=m.term,
                            log_term=prev.log_term,
                            index=prev.index,
                            entries=prev.entries + m.entries if n_prev else m.entries,
                            commit=max(prev.commit, m.commit),
                        )
                        out[pos] = merged
                        sizes[pos] = size + add
                        continue
            elif (
                m.type == MT.APP_RESP
                and prev.type == MT.APP_RESP
                and not m.reject
                and not prev.reject
                and prev.term == m.term
                and m.index >= prev.index
            ):
                out[pos] = m
                continue
        last_for[m.to] = len(out)
        if m.type == MT.APP:
            sizes[len(out)] = sum(entry_size(e) for e in m.entries)
        out.append(m)
    return out


def _must_sync(st: HardState, prev: HardState, n_entries: int) -> bool:
    # Term and vote must be durable before we answer anyone; commit may be lost
    # (it is recomputed), so a commit-only change needs no fsync.
    return n_entries != 0 or st.vote != prev.vote or st.term != prev.term


class RawNode:
    """Synchronous driver around Raft; not thread-safe (the server's raft loop owns it)."""

    def __init__(self, config: Config) -> None:
        self.raft = Raft(config)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = self.raft.hard_state()
        self.coalesce = True
        """Merge same-peer MsgApp/MsgAppResp runs in each Ready (see coalesce_messages)."""

    # -- inputs --------------------------------------------------------------
    def bootstrap(self, peers: list[Peer]) -> None:
        """Start a fresh cluster: one committed AddNode entry per peer at term 1 (etcd's approach)."""
        if not peers:
            raise ValueError("must provide at least one peer to bootstrap")
        r = self.raft
        if r.raft_log.storage.last_index() != 0:
            raise ValueError("can't bootstrap a nonempty Storage")
        # The hard state must appear in the first Ready even though it is the
        # same as the initial one would be after become_follower(1).
        self._prev_hard = HardState()
        r.become_follower(1, NONE)
        ents = []
        for i, p in enumerate(peers):
            cc = ConfChange(type=ConfChangeType.ADD_NODE, node_id=p.id, context=p.context)
            ents.append(Entry(term=1, index=i + 1, type=EntryType.CONF_CHANGE, data=marshal_conf_change(cc)))
        r.raft_log.append(ents)
        # Committed right away: every member bootstraps with the same entries, so
        # they are identical everywhere. The server applies them as usual.
        r.raft_log.committed = len(ents)
        for p in peers:
            r.apply_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=p.id))

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (with pre-vote if configured)."""
        self.raft.step(Message(MT.HUP, frm=self.raft.id))

    def propose(self, data: bytes) -> None:
        """Propose one entry; raises ProposalDropped if it cannot be accepted right now."""
        self.raft.step(Message(MT.PROP, frm=self.raft.id, entries=[Entry(data=data)]))

    def propose_batch(self, datas: list[bytes]) -> None:
        """Propose many entries in one MsgProp (one MsgApp per follower): all or none are accepted."""
        if not datas:
            return
        self.raft.step(Message(MT.PROP, frm=self.raft.id, entries=[Entry(data=d) for d in datas]))

    def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a single-step membership change; ProposalDropped if one is already pending."""
        ent = Entry(type=EntryType.CONF_CHANGE, data=marshal_conf_change(cc))
        self.raft.step(Message(MT.PROP, frm=self.raft.id, entries=[ent]))

    def step(self, m: Message) -> None:
        """Feed a message received from the network.

        Local message types raise ErrStepLocalMsg. Responses from unknown peers
        and forwarded proposals the leader cannot accept are dropped silently
        (the proposing node's caller times out), as etcd does in practice.
        """
        if m.type in _LOCAL_MSGS:
            raise ErrStepLocalMsg(f"cannot step raft local message {m.type.name}")
        if m.type in _RESPONSE_MSGS and m.frm not in self.raft.prs.progress and self.raft.state == StateType.LEADER:
            return
        try:
            self.raft.step(m)
        except ProposalDropped:
            if m.type != MT.PROP:
                raise

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(cc)

    def read_index(self, ctx: bytes) -> None:
        """Request a read index; the answer arrives as a ReadState with request_ctx == ctx.

        Dropped silently when there is no leader; callers retry on timeout.
        """
        self.raft.step(Message(MT.READ_INDEX, frm=self.raft.id, context=ctx))

    def transfer_leader(self, transferee: int) -> None:
        self.raft.step(Message(MT.TRANSFER_LEADER, frm=transferee))

    def report_unreachable(self, id_: int) -> None:
        self.raft.step(Message(MT.UNREACHABLE, frm=id_))

    def report_snapshot(self, id_: int, failed: bool) -> None:
        self.raft.step(Message(MT.SNAP_STATUS, frm=id_, reject=failed))

    # -- outputs -------------------------------------------------------------
    def has_ready(self) -> bool:
        r = self.raft
        if r.msgs or r.read_states:
            return True
        if r.lead != self._prev_soft.lead or r.state != self._prev_soft.raft_state:
            return True
        log = r.raft_log
        if log.unstable.entries or log.has_pending_snapshot() or log.has_next_ents():
            return True
        hs = self._prev_hard
        return r.term != hs.term or r.vote != hs.vote or log.committed != hs.commit

    def ready(self) -> Ready:
        r = self.raft
        log = r.raft_log
        msgs = coalesce_messages(r.msgs, r.max_msg_size) if self.coalesce else r.msgs
        rd = Ready(entries=log.unstable_entries(), committed_entries=log.next_ents(), messages=msgs)
        soft = r.soft_state()
        if soft != self._prev_soft:
            rd.soft_state = soft
            self._prev_soft = soft
        hs = r.hard_state()
        if hs != self._prev_hard and not hs.is_empty():
            rd.hard_state = hs
        if log.has_pending_snapshot():
            rd.snapshot = log.unstable.snapshot
        if r.read_states:
            rd.read_states = r.read_states
            r.read_states = []
        rd.must_sync = _must_sync(hs, self._prev_hard, len(rd.entries))
        r.msgs = []
        return rd

    def advance(self, rd: Ready) -> None:
        """Tell raft the Ready was persisted and applied."""
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        self.raft.advance(rd.committed_entries, rd.entries, rd.snapshot)

    def status(self) -> Status:
        r = self.raft
        progress: dict[int, Progress] = {}
        if r.state == StateType.LEADER:
            progress = {i: p.clone() for i, p in r.prs.progress.items()}
        return Status(
            id=r.id,
            hard_state=r.hard_state(),
            soft_state=r.soft_state(),
            applied=r.raft_log.applied,
            progress=progress,
            lead_transferee=r.lead_transferee,
            conf_state=r.conf_state(),
        )

