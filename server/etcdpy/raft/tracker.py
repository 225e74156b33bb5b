"""Leader-side bookkeeping of followers: Progress, Inflights and the ProgressTracker.

Single-step membership only (no joint consensus): a configuration is a set of
voters and a set of learners. Quorum is a strict majority of voters.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.IntEnum):
    PROBE = 0
    """Leader does not know the follower's match index; sends one MsgApp per heartbeat."""
    REPLICATE = 1
    """Steady state: optimistic pipelining of MsgApps up to the inflight window."""
    SNAPSHOT = 2
    """A snapshot is on its way; no MsgApps until it is reported applied or failed."""


class Inflights:
    """Last-entry indexes of MsgApps sent but not yet acknowledged (a bounded window)."""

    __slots__ = ("size", "_q")

    def __init__(self, size: int) -> None:
        self.size = size
        self._q: deque[int] = deque()

    def add(self, index: int) -> None:
        if len(self._q) >= self.size:
            raise OverflowError("cannot add into a full inflights")
        self._q.append(index)

    def free_le(self, to: int) -> None:
        """Free every in-flight message whose last index is <= `to` (acknowledged)."""
        q = self._q
        while q and q[0] <= to:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.size

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    """What the leader knows about one follower's log (etcd's tracker.Progress)."""

    __slots__ = ("match", "next", "state", "pending_snapshot", "recent_active", "probe_sent", "inflights", "is_learner")

    def __init__(self, match: int, next_: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = match
        self.next = next_
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        self.recent_active = False
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.name}, "
            f"pending_snapshot={self.pending_snapshot}, recent_active={self.recent_active}, "
            f"inflight={self.inflights.count()}, is_learner={self.is_learner})"
        )

    def clone(self) -> "Progress":
        p = Progress(self.match, self.next, self.inflights.size, self.is_learner)
        p.state = self.state
        p.pending_snapshot = self.pending_snapshot
        p.recent_active = self.recent_active
        p.probe_sent = self.probe_sent
        p.inflights._q = deque(self.inflights._q)
        return p

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        """Fall back to probing; after a snapshot, resume just past it."""
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """Record an acknowledgement up to `n`; returns whether match advanced."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        if self.next < n + 1:
            self.next = n + 1
        return updated

    def optimistic_update(self, n: int) -> None:
        self.next = n + 1

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejected MsgApp for index `rejected`; returns False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # stale rejection
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # stale: not the probe we are waiting for
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether sending another MsgApp to this follower must wait (flow control)."""
        st = self.state
        if st == ProgressState.PROBE:
            return self.probe_sent
        if st == ProgressState.REPLICATE:
            return self.inflights.full()
        return True


class VoteResult(enum.IntEnum):
    PENDING = 0
    LOST = 1
    WON = 2


class ProgressTracker:
    """Voters, learners, their progress, and the votes of the current election."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def committed(self) -> int:
        """Largest index replicated on a majority of voters (0 with no voters)."""
        voters = self.voters
        n = len(voters)
        if n == 0:
            return 0
        prs = self.progress
        if n == 1:
            for v in voters:
                return prs[v].match
        matches = sorted((prs[v].match for v in voters), reverse=True)
        return matches[n // 2]

    def quorum_active(self) -> bool:
        prs = self.progress
        active = sum(1 for v in self.voters if prs[v].recent_active)
        return active >= self.quorum()

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, id_: int, granted: bool) -> None:
        if id_ not in self.votes:
            self.votes[id_] = granted

    def tally_votes(self) -> tuple[int, int, VoteResult]:
        granted = rejected = 0
        for v in self.voters:
            r = self.votes.get(v)
            if r is True:
                granted += 1
            elif r is False:
                rejected += 1
        q = self.quorum()
        missing = len(self.voters) - granted - rejected
        if granted >= q:
            return granted, rejected, VoteResult.WON
        if granted + missing >= q:
            return granted, rejected, VoteResult.PENDING
        return granted, rejected, VoteResult.LOST

    def voter_ids(self) -> list[int]:
        return sorted(self.voters)

    def learner_ids(self) -> list[int]:
        return sorted(self.learners)
