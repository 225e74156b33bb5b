"""RaftNode's proposal batching: what is proposed between two raft-loop passes goes in as one MsgProp.

Why it matters: a leader steps, appends and broadcasts once per batch instead of once per
request, so under load one MsgApp per follower carries many entries. What must hold: every
entry reaches the log in proposal order, nothing waits longer than the next pass, and a
batch the raft core refuses is reported to every one of its proposers (never lost silently).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from etcdpy.raft import Config, Peer, RawNode
from etcdpy.raft.errors import ProposalDropped
from etcdpy.raft.storage import MemoryStorage
from etcdpy.raft.types import Entry, EntryType, Message, ReadState, Snapshot, SoftState, StateType
from etcdpy.server.raftnode import RaftNode
from etcdpy.snap import Snapshotter
from etcdpy.wal import WAL


class Recorder:
    """A ReadyHandler that keeps what it is handed."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self.batches: list[int] = []

    def on_soft_state(self, ss: SoftState) -> None:
        return None

    def on_read_states(self, states: list[ReadState]) -> None:
        return None

    def on_committed_index(self, index: int) -> None:
        return None

    async def apply_snapshot(self, snap: Snapshot) -> None:
        return None

    async def apply_entries(self, entries: list[Entry]) -> None:
        normal = [e.data for e in entries if e.type == EntryType.NORMAL and e.data]
        if normal:
            self.batches.append(len(normal))
        self.applied.extend(normal)


class Sent:
    """A transport that records the messages a member would send."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def send(self, messages: list[Message]) -> None:
        self.messages.extend(messages)


def single_member(tmp_path: Path) -> tuple[RaftNode, Sent]:
    storage = MemoryStorage()
    node = RawNode(Config(id=1, storage=storage))
    node.bootstrap([Peer(id=1)])
    sent = Sent()
    rn = RaftNode(
        node,
        storage,
        WAL.create(str(tmp_path / "wal"), b""),
        Snapshotter(str(tmp_path / "snap")),
        sent,
        tick_seconds=0.01,
        logger=logging.getLogger("test"),
    )
    return rn, sent


@contextlib.asynccontextmanager
async def leader(tmp_path: Path) -> AsyncIterator[tuple[RaftNode, Recorder]]:
    """A running single-member RaftNode (raft and apply loops) that has won its election."""
    rn, _ = single_member(tmp_path)
    rec = Recorder()
    tasks = [asyncio.create_task(rn.run(rec)), asyncio.create_task(rn.run_apply(rec))]
    try:
        await elect(rn)
        yield rn, rec
    finally:
        rn.stop()
        await asyncio.gather(*tasks)
        rn.close()


async def elect(rn: RaftNode) -> None:
    """Let the loop persist and apply the bootstrap entries (raft refuses to campaign before), then win."""
    rn.wake()
    await _wait_for(lambda: not rn.node.has_ready())
    rn.campaign()
    await _wait_for(lambda: rn.is_leader)


async def _wait_for(cond: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


def test_proposals_between_passes_are_one_append_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        async with leader(tmp_path) as (rn, rec):
            await _wait_for(lambda: not rn.node.has_ready())
            fsyncs, last = rn.fsync_count, rn.node.raft.raft_log.last_index()
            drops: list[int] = []
            for i in range(50):  # no await in between: the raft loop cannot run a pass meanwhile
                rn.propose(b"p%02d" % i, lambda i=i: drops.append(i))  # type: ignore[misc]
            assert rn.node.raft.raft_log.last_index() == last  # buffered, not stepped yet
            await _wait_for(lambda: len(rec.applied) == 50)
            assert rec.applied == [b"p%02d" % i for i in range(50)]
            assert rec.batches[-1] == 50  # one Ready carried them all
            assert rn.fsync_count == fsyncs + 1  # one WAL write for the batch
            assert drops == []

    asyncio.run(main())


def test_a_refused_batch_is_reported_to_each_proposer(tmp_path: Path) -> None:
    async def main() -> None:
        async with leader(tmp_path) as (rn, rec):
            drops: list[int] = []
            for i in range(3):
                rn.propose(b"x", lambda i=i: drops.append(i))  # type: ignore[misc]
            # Leadership is lost before the loop's next pass (as when a higher term arrives).
            r = rn.node.raft
            r.become_follower(r.term + 1, 0)
            assert r.state == StateType.FOLLOWER
            await _wait_for(lambda: drops == [0, 1, 2])
            try:  # with no leader known, a proposal is refused at once, as before batching
                rn.propose(b"y", lambda: drops.append(-1))
            except ProposalDropped:
                pass
            else:
                raise AssertionError("a proposal without a leader must be refused")
            assert drops == [0, 1, 2]

    asyncio.run(main())


def test_stop_reports_buffered_proposals(tmp_path: Path) -> None:
    async def main() -> None:
        async with leader(tmp_path) as (rn, _rec):
            drops: list[int] = []
            rn.propose(b"late", lambda: drops.append(1))
            rn.stop()
            assert drops == [1]

    asyncio.run(main())
