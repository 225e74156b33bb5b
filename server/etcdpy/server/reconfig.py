"""Membership changes proposed through the log: MemberAdd, MemberRemove, MemberUpdate, MemberPromote.

Each change is one single-step ConfChange entry. Before proposing, the member
refuses changes that would leave the cluster without an active quorum (etcd's
strict reconfiguration check); after it commits, every member validates it
against the membership it has applied (`RaftCluster.validate_conf_change`), so
all members accept or refuse it alike, and the proposer learns the outcome
through the wait registry.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from etcdpy import errors
from etcdpy.raft.errors import ProposalDropped
from etcdpy.raft.types import NONE, ConfChange, ConfChangeType
from etcdpy.server.membership import Member, compute_member_id

if TYPE_CHECKING:
    from etcdpy.server.etcdserver import EtcdServer

HEALTH_INTERVAL = 5.0
"""A peer counts as active for reconfiguration once connected this long (etcd's HealthInterval)."""

LEARNER_READY_PERCENT = 0.9
"""A learner may be promoted once its log reaches 90% of the leader's."""


def check_peer_urls(urls: list[str]) -> list[str]:
    """etcd's types.NewURLs: scheme http/https, a host:port, no path."""
    if not urls:
        raise errors.ErrMemberBadURLs()
    for u in urls:
        p = urlsplit(u)
        if p.scheme not in ("http", "https") or not p.hostname or p.port is None or p.path not in ("", "/"):
            raise errors.ErrMemberBadURLs()
    return sorted(urls)


async def add_member(s: EtcdServer, peer_urls: list[str], is_learner: bool) -> tuple[Member, list[Member]]:
    urls = check_peer_urls(list(peer_urls))
    m = Member(
        id=compute_member_id(urls, s.cfg.initial_cluster_token, int(time.time())),
        peer_urls=urls,
        is_learner=is_learner,
    )
    if not is_learner and not s.cluster.is_ready_to_add_voting_member():
        raise errors.ErrMemberNotEnoughStarted()
    if not _connected_to_all(s):
        raise errors.ErrUnhealthy()
    kind = ConfChangeType.ADD_LEARNER_NODE if is_learner else ConfChangeType.ADD_NODE
    members = await configure(s, ConfChange(type=kind, node_id=m.id, context=m.to_json()))
    return m, members


async def remove_member(s: EtcdServer, member_id: int) -> list[Member]:
    _may_remove_member(s, member_id)
    return await configure(s, ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=member_id))


async def update_member(s: EtcdServer, member_id: int, peer_urls: list[str]) -> list[Member]:
    urls = check_peer_urls(list(peer_urls))
    m = Member(id=member_id, peer_urls=urls)
    return await configure(s, ConfChange(type=ConfChangeType.UPDATE_NODE, node_id=member_id, context=m.to_json()))


async def promote_member(s: EtcdServer, member_id: int) -> list[Member]:
    """Only the leader knows how far the learner's log has come, so followers forward it."""
    if not s.is_leader():
        return await s.forward_promote_to_leader(member_id)
    _learner_ready(s, member_id)
    if not s.cluster.is_ready_to_promote_member():
        raise errors.ErrMemberNotEnoughStarted()
    ctx = Member(id=member_id).to_json(promote=True)
    return await configure(s, ConfChange(type=ConfChangeType.ADD_NODE, node_id=member_id, context=ctx))


def _learner_ready(s: EtcdServer, member_id: int) -> None:
    assert s.raft is not None
    st = s.raft.node.status()
    if not st.progress:
        raise errors.ErrNotLeader()
    pr = st.progress.get(member_id)
    if pr is None:
        raise errors.ErrMemberNotFound()
    m = s.cluster.get(member_id)
    if m is not None and not m.is_learner:
        raise errors.ErrMemberNotLearner()
    leader_match = st.progress[st.id].match
    if leader_match and pr.match / leader_match < LEARNER_READY_PERCENT:
        raise errors.ErrLearnerNotReady()


def _may_remove_member(s: EtcdServer, member_id: int) -> None:
    m = s.cluster.get(member_id)
    if m is not None and m.is_learner:
        return  # a learner is not part of any quorum
    if not s.cluster.is_ready_to_remove_voting_member(member_id):
        raise errors.ErrMemberNotEnoughStarted()
    if member_id != s.member_id and s.transport_active_since(member_id) is None:
        return  # a member that is down is not part of the active quorum either
    voters = s.cluster.voting_members()
    active = _num_connected(s, voters)
    if active - 1 < 1 + (len(voters) - 1) // 2:
        raise errors.ErrUnhealthy()


def _num_connected(s: EtcdServer, members: list[Member]) -> int:
    cutoff = time.monotonic() - HEALTH_INTERVAL
    n = 0
    for m in members:
        if m.id == s.member_id:
            n += 1
            continue
        since = s.transport_active_since(m.id)
        if since is not None and since <= cutoff:
            n += 1
    return n


def _connected_to_all(s: EtcdServer) -> bool:
    voters = s.cluster.voting_members()
    return _num_connected(s, voters) == len(voters)


async def configure(s: EtcdServer, cc: ConfChange) -> list[Member]:
    """Propose `cc` and wait until it is applied; return the membership after it."""
    if s.raft is None or s.stopped:
        raise errors.ErrStopped()
    cc.id = s.next_request_id()
    fut = s.wait.register(cc.id)
    start = time.monotonic()
    try:
        s.raft.propose_conf_change(cc)
    except ProposalDropped:
        s.wait.trigger(cc.id, None)
        raise errors.ErrNoLeader() if s.lead == NONE else errors.ErrTimeout() from None
    try:
        async with asyncio.timeout(s.cfg.request_timeout):
            result = await fut
    except TimeoutError:
        s.wait.trigger(cc.id, None)
        raise s.timeout_error(start) from None
    except asyncio.CancelledError:  # the client went away: its registration must not stay behind
        s.wait.trigger(cc.id, None)
        raise
    if result is None:
        raise errors.ErrStopped()
    if result.err is not None:
        raise result.err
    return sorted(s.cluster.members.values(), key=lambda m: m.id)
