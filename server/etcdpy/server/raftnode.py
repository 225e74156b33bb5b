"""raftNode.start: the loop that drives the pure Raft core and joins it to storage and transport.

One asyncio task owns the `RawNode`. Each pass takes one `Ready` and handles
it in the order Raft requires:

1. a leader hands its messages to the transport first (it may send while it
   persists; a follower must not acknowledge what it has not persisted);
2. a snapshot is saved (snap file, then WAL marker) before anything uses it;
   such a Ready first waits for every WAL write still in flight;
3. HardState and entries are queued for the WAL writer, and the pass goes on
   without waiting for them (etcd-io/raft's asynchronous storage writes): the
   writer runs on its own thread and, each time an fdatasync returns, writes
   everything queued meanwhile with one more fdatasync (group commit). The rest
   of the pass (sends, the apply hand-off, `advance`) runs while the disk
   works; the next Ready waits while MAX_WRITES_IN_FLIGHT writes are out, so
   what arrives during a write still goes out as one batch;
4. the committed entries (and an incoming snapshot) are handed to the apply
   task through a FIFO queue (etcd's `applyc` + FIFO scheduler), each share
   gated on the WAL write that makes its entries durable here when they are not
   yet: nothing is applied, and so no client answered, before its entry is on
   disk. The raft loop does not wait for the apply either, so ticks, steps,
   sends and persistence go on while MVCC applies, installs a snapshot or
   compacts. Only a follower with a committed conf change waits for the apply
   task to catch up before it sends (etcd does the same: votes of removed
   members must not count);
5. a follower sends its messages once everything written before them is
   durable: they wait for the last WAL write in flight, in order;
6. `advance`. Entries are marked stable when queued; nothing reads stability
   but the Ready itself, and every use of durability (apply, a follower's
   acknowledgement) waits for the write as above.

The queue is bounded in entries by etcd's maxGapBetweenApplyAndCommitIndex
(5000): past that the raft loop waits for the apply task (a leader refuses new
proposals long before, with ErrTooManyRequests).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from itertools import islice
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from etcdpy.raft import RawNode
from etcdpy.raft.errors import ProposalDropped
from etcdpy.raft.storage import MemoryStorage
from etcdpy.raft.types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
)
from etcdpy.server.walwriter import WalWriter
from etcdpy.snap import Snapshotter
from etcdpy.wal import WAL, WalSnapshot


class ReadyHandler(Protocol):
    """What the server does with the parts of a Ready that concern it."""

    def on_soft_state(self, ss: SoftState) -> None: ...

    def on_read_states(self, states: list[ReadState]) -> None: ...

    def on_committed_index(self, index: int) -> None: ...

    def apply_snapshot(self, snap: Snapshot) -> Awaitable[None]: ...

    def apply_entries(self, entries: list[Entry]) -> Awaitable[None]: ...


APPLY_QUEUE_MAX_ENTRIES = 5000
"""etcd's maxGapBetweenApplyAndCommitIndex: entries handed to the apply task and not applied yet."""

# WAL writes queued and not yet returned before the raft loop waits for the oldest. With no
# bound a busy member turns every loop pass into its own small Ready: more, smaller appends
# and acknowledgements between members, and more CPU per request (3 members, put: 322 -> 412
# µs per request in one A/B). One write in flight keeps the loop's batching (what arrives
# during a write goes into the next Ready) while the rest of a pass runs during the write.
MAX_WRITES_IN_FLIGHT = 1


@dataclass
class ToApply:
    """One Ready's share for the apply task (etcd's toApply): a snapshot and/or committed entries."""

    entries: list[Entry]
    snapshot: Snapshot | None = None
    applied: asyncio.Future[None] | None = field(default=None)
    # The WAL write that makes these entries durable here, when it was still in flight.
    durable: asyncio.Future[None] | None = field(default=None)


@dataclass
class _Write:
    """A WAL write in flight: the first entry index it holds (None for a hard state only)."""

    first_index: int | None
    done: asyncio.Future[None]


class Transport(Protocol):
    def send(self, messages: list[Message]) -> None: ...


class NullTransport:
    """The transport of a member that has no peers: nothing to send."""

    def send(self, messages: list[Message]) -> None:
        return None


class RaftNode:
    def __init__(
        self,
        node: RawNode,
        storage: MemoryStorage,
        wal: WAL,
        snapshotter: Snapshotter,
        transport: Transport,
        *,
        tick_seconds: float,
        logger: logging.Logger,
        max_writes_in_flight: int = MAX_WRITES_IN_FLIGHT,
    ) -> None:
        self.node = node
        self.storage = storage
        self.wal = wal
        self.snapshotter = snapshotter
        self.transport = transport
        self.tick_seconds = tick_seconds
        self.log = logger
        self.is_leader = False
        self._wake = asyncio.Event()
        self._stopped = False
        # One thread: the WAL has one writer, and the fsyncs must stay in order.
        self._writer = WalWriter(wal)
        # WAL writes queued and not yet durable, oldest first (they complete in this order).
        self._inflight: deque[_Write] = deque()
        self.max_writes_in_flight = max_writes_in_flight
        self._failed: BaseException | None = None
        self._applyq: deque[ToApply] = deque()
        self._apply_wake = asyncio.Event()
        self._apply_space = asyncio.Event()
        self._apply_space.set()
        self._pending_entries = 0
        # Proposals made since the raft loop's last pass, stepped as one MsgProp (`_flush_proposals`).
        self._proposals: list[bytes] = []
        self._on_drop: list[Callable[[], None]] = []

    @property
    def on_persist(self) -> Callable[[float], None] | None:
        """Called with the seconds of each WAL save + fdatasync (metrics)."""
        return self._writer.on_save

    @on_persist.setter
    def on_persist(self, fn: Callable[[float], None] | None) -> None:
        self._writer.on_save = fn

    @property
    def fsync_count(self) -> int:
        return self._writer.saves

    @property
    def fsync_seconds_total(self) -> float:
        return self._writer.save_seconds

    # -- inputs (all on the loop thread) -------------------------------------------------

    def propose(self, data: bytes, on_drop: Callable[[], None] | None = None) -> None:
        """Propose one entry.

        With `on_drop`, while a leader is known and no leadership transfer runs, the entry
        waits for the raft loop's next pass and is stepped there in one MsgProp with every
        other proposal made meanwhile: one log append and one MsgApp per follower (or one
        forwarded MsgProp) per batch instead of per request, at no added latency (nothing
        proposed is sent or persisted before that pass anyway). If the batch is then
        refused, `on_drop` is called for each of its entries. Otherwise (or without
        `on_drop`) the entry is stepped now and ProposalDropped raised at once.
        """
        raft = self.node.raft
        if on_drop is None or raft.lead == NONE or raft.lead_transferee != NONE:
            self.node.propose(data)
        else:
            self._proposals.append(data)
            self._on_drop.append(on_drop)
        self._wake.set()

    def _flush_proposals(self) -> None:
        """Step the buffered proposals as one MsgProp; on refusal tell each proposer."""
        if not self._proposals:
            return
        datas, drops = self._proposals, self._on_drop
        self._proposals, self._on_drop = [], []
        try:
            self.node.propose_batch(datas)
        except ProposalDropped:
            for on_drop in drops:
                on_drop()

    def propose_conf_change(self, cc: ConfChange) -> None:
        self.node.propose_conf_change(cc)
        self._wake.set()

    def read_index(self, ctx: bytes) -> None:
        self.node.read_index(ctx)
        self._wake.set()

    def step(self, m: Message) -> None:
        self.node.step(m)
        self._wake.set()

    def campaign(self) -> None:
        self.node.campaign()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # -- the loops ------------------------------------------------------------------------

    async def run_ticker(self) -> None:
        """Drive Raft's logical clock; Raft itself never reads a clock."""
        next_at = time.monotonic()
        while not self._stopped:
            next_at += self.tick_seconds
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if self._stopped:
                return
            self.node.tick()
            self._wake.set()

    async def run(self, handler: ReadyHandler) -> None:
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            if self._failed is not None:
                raise self._failed
            self._flush_proposals()
            while not self._stopped and self.node.has_ready():
                if len(self._inflight) >= self.max_writes_in_flight:
                    await self._inflight[0].done  # a failed write raises here: the server stops
                    self._drop_done_writes()  # its callback may not have run yet (a done future does not yield)
                else:
                    await self._handle_ready(handler)
                self._flush_proposals()

    async def run_apply(self, handler: ReadyHandler) -> None:
        """The apply task: take what the raft loop handed over, in order, and apply it.

        Ends once the raft loop has stopped and everything it handed over is applied.
        """
        while True:
            while not self._applyq:
                if self._stopped:
                    return
                self._apply_wake.clear()
                await self._apply_wake.wait()
            ap = self._applyq[0]
            if ap.durable is not None:
                await ap.durable  # a failed write raises here: the server stops, nothing undurable applied
            shares = self._durable_shares()
            try:
                if ap.snapshot is not None:
                    await handler.apply_snapshot(ap.snapshot)
                entries = ap.entries if shares == 1 else [e for a in islice(self._applyq, shares) for e in a.entries]
                if entries:
                    await handler.apply_entries(entries)
            finally:
                for _ in range(shares):
                    done = self._applyq.popleft()
                    self._pending_entries -= len(done.entries)
                    if done.applied is not None and not done.applied.done():
                        done.applied.set_result(None)
                if self._pending_entries <= APPLY_QUEUE_MAX_ENTRIES:
                    self._apply_space.set()

    def _durable_shares(self) -> int:
        """How many queued shares, from the first, can be applied as one batch now.

        The first is durable (its write was awaited); the ones after it join while they
        carry no snapshot and their write is done too, so a burst of small Readys costs
        one backend batch rather than one each.
        """
        n = 1
        for ap in islice(self._applyq, 1, None):
            if ap.snapshot is not None or (ap.durable is not None and not ap.durable.done()):
                break
            n += 1
        return n

    @property
    def apply_backlog(self) -> int:
        """Committed entries handed to the apply task and not applied yet."""
        return self._pending_entries

    async def _hand_to_apply(self, entries: list[Entry], snap: Snapshot | None, wait: bool) -> None:
        """Queue one Ready's committed entries/snapshot for the apply task; `wait` until applied."""
        while self._pending_entries > APPLY_QUEUE_MAX_ENTRIES and not self._stopped:
            self._apply_space.clear()
            await self._apply_space.wait()
        durable = self._write_holding(entries[-1].index) if entries else None
        ap = ToApply(entries, snap, asyncio.get_running_loop().create_future() if wait else None, durable)
        self._applyq.append(ap)
        self._pending_entries += len(entries)
        self._apply_wake.set()
        if ap.applied is not None:
            await ap.applied

    def _write_holding(self, index: int) -> asyncio.Future[None] | None:
        """The newest WAL write in flight holding an entry at or below `index`, if any.

        Writes complete in order, so once it is done every entry up to `index` is durable
        here (a later write may replace uncommitted entries, never committed ones).
        """
        for w in reversed(self._inflight):
            if w.first_index is not None and w.first_index <= index:
                return w.done
        return None

    def _queue_write(self, hs: HardState | None, entries: list[Entry]) -> None:
        """Hand a Ready's hard state and entries to the WAL writer without waiting."""
        w = _Write(entries[0].index if entries else None, self._writer.save(hs, entries))
        self._inflight.append(w)
        w.done.add_done_callback(self._write_done)

    def _write_done(self, fut: asyncio.Future[None]) -> None:
        """Drop finished writes from the front; a failed one stops the raft loop (etcd panics)."""
        self._drop_done_writes()
        if not fut.cancelled() and fut.exception() is not None and self._failed is None:
            self._failed = fut.exception()
            self._wake.set()

    def _drop_done_writes(self) -> None:
        """Forget the writes at the front that have returned (they complete in queue order)."""
        while self._inflight and self._inflight[0].done.done():
            self._inflight.popleft()

    def _send_when_durable(self, messages: list[Message]) -> None:
        """A follower's messages, sent once every write queued before them is durable, in order."""
        if not self._inflight:
            self.transport.send(messages)
            return

        def send(fut: asyncio.Future[None]) -> None:
            if not self._stopped and not fut.cancelled() and fut.exception() is None:
                self.transport.send(messages)

        self._inflight[-1].done.add_done_callback(send)

    async def _all_durable(self) -> None:
        """Wait for every WAL write in flight (before a snapshot, which must follow them)."""
        if self._inflight:
            await self._inflight[-1].done

    async def _handle_ready(self, handler: ReadyHandler) -> None:
        rd = self.node.ready()
        if rd.soft_state is not None:
            self.is_leader = rd.soft_state.raft_state == StateType.LEADER
            handler.on_soft_state(rd.soft_state)
        if rd.read_states:
            handler.on_read_states(rd.read_states)
        if self.is_leader and rd.messages:
            self.transport.send(rd.messages)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            await self._all_durable()
            await self._persist_snapshot(rd.snapshot)
        if rd.entries or (rd.hard_state is not None and not rd.hard_state.is_empty()):
            self._queue_write(rd.hard_state, rd.entries)
        snap = rd.snapshot if rd.snapshot is not None and not rd.snapshot.is_empty() else None
        if snap is not None:
            self.storage.apply_snapshot(snap)
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.hard_state is not None and not rd.hard_state.is_empty():
            self.storage.set_hard_state(rd.hard_state)
            handler.on_committed_index(rd.hard_state.commit)
        if snap is not None or rd.committed_entries:
            conf_change = any(e.type == EntryType.CONF_CHANGE for e in rd.committed_entries)
            await self._hand_to_apply(rd.committed_entries, snap, wait=conf_change and not self.is_leader)
        if not self.is_leader and rd.messages:
            self._send_when_durable(rd.messages)
        self.node.advance(rd)

    async def _persist_snapshot(self, snap: Snapshot) -> None:
        """The snap file, then its WAL marker, in order with the WAL writes queued before."""
        await self._writer.call(lambda: self.snapshotter.save_snap(snap))
        marker = WalSnapshot(index=snap.metadata.index, term=snap.metadata.term)
        await self._writer.call(lambda: self.wal.save_snapshot(marker))

    async def create_snapshot(
        self, index: int, conf_state: ConfState, data: bytes, keep_entries: int, flush_backend: object
    ) -> None:
        """Snapshot at the applied `index`, then drop log entries a slow follower no longer needs.

        The MVCC store already holds everything up to `index`; `flush_backend` makes it durable
        before WAL segments are released, since those segments are the only other copy.
        """
        snap = self.storage.create_snapshot(index, conf_state, data)
        await self._persist_snapshot(snap)
        if callable(flush_backend):
            await self._writer.call(flush_backend)
        compact_to = index - keep_entries
        if compact_to > self.storage.first_index():
            self.storage.compact(compact_to)
        await self._writer.call(lambda: self.wal.release_to(snap.metadata.index))
        await self._writer.call(self.snapshotter.purge)
        self.log.info("saved snapshot", extra={"fields": {"snapshot-index": index, "compact-index": compact_to}})

    def stop(self) -> None:
        self._stopped = True
        drops, self._proposals, self._on_drop = self._on_drop, [], []
        for on_drop in drops:
            on_drop()
        self._wake.set()
        self._apply_wake.set()
        self._apply_space.set()

    def close(self) -> None:
        self._writer.close()
        self.wal.close()
