"""raftNode.start: the loop that drives the pure Raft core and joins it to storage and transport.

One asyncio task owns the `RawNode`. Each pass takes one `Ready` and handles
it in the order Raft requires:

1. a leader hands its messages to the transport first (it may send while it
   persists; a follower must not acknowledge what it has not persisted);
2. a snapshot is saved (snap file, then WAL marker) before anything uses it;
3. HardState and entries are written to the WAL with one fdatasync on a worker
   thread, so the event loop keeps accepting proposals meanwhile — everything
   proposed during that fsync is in the next Ready: group commit;
4. a follower sends its messages once its log is durable;
5. the committed entries (and an incoming snapshot) go to the server's apply
   step, which runs on the loop thread after they are durable here;
6. `advance`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from typing import Protocol

from etcdpy.raft import RawNode
from etcdpy.raft.storage import MemoryStorage
from etcdpy.raft.types import ConfChange, ConfState, Entry, Message, ReadState, Snapshot, SoftState, StateType
from etcdpy.snap import Snapshotter
from etcdpy.wal import WAL, WalSnapshot


class ReadyHandler(Protocol):
    """What the server does with the parts of a Ready that concern it."""

    def on_soft_state(self, ss: SoftState) -> None: ...

    def on_read_states(self, states: list[ReadState]) -> None: ...

    def on_committed_index(self, index: int, term: int) -> None: ...

    def apply_snapshot(self, snap: Snapshot) -> None: ...

    def apply_entries(self, entries: list[Entry]) -> None: ...


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
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal")
        self.fsync_seconds_total = 0.0
        self.fsync_count = 0
        self.on_persist: Callable[[float], None] | None = None  # seconds of each WAL save+fsync (metrics)

    # -- inputs (all on the loop thread) -------------------------------------------------

    def propose(self, data: bytes) -> None:
        self.node.propose(data)
        self._wake.set()

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
            while not self._stopped and self.node.has_ready():
                await self._handle_ready(handler)

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
            await self._persist_snapshot(rd.snapshot)
        if rd.entries or (rd.hard_state is not None and not rd.hard_state.is_empty()):
            await self._persist(rd.hard_state, rd.entries)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self.storage.apply_snapshot(rd.snapshot)
            handler.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.hard_state is not None and not rd.hard_state.is_empty():
            self.storage.set_hard_state(rd.hard_state)
            handler.on_committed_index(rd.hard_state.commit, rd.hard_state.term)
        if not self.is_leader and rd.messages:
            self.transport.send(rd.messages)
        if rd.committed_entries:
            handler.apply_entries(rd.committed_entries)
        self.node.advance(rd)

    async def _persist(self, hs: object, entries: list[Entry]) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        await loop.run_in_executor(self._disk, self.wal.save, hs, entries)
        elapsed = time.perf_counter() - start
        self.fsync_seconds_total += elapsed
        self.fsync_count += 1
        if self.on_persist is not None:
            self.on_persist(elapsed)

    async def _persist_snapshot(self, snap: Snapshot) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._disk, self.snapshotter.save_snap, snap)
        marker = WalSnapshot(index=snap.metadata.index, term=snap.metadata.term)
        await loop.run_in_executor(self._disk, self.wal.save_snapshot, marker)

    async def create_snapshot(
        self, index: int, conf_state: ConfState, data: bytes, keep_entries: int, flush_backend: object
    ) -> None:
        """Snapshot at the applied `index`, then drop log entries a slow follower no longer needs.

        The MVCC store already holds everything up to `index`; `flush_backend` makes it durable
        before WAL segments are released, since those segments are the only other copy.
        """
        snap = self.storage.create_snapshot(index, conf_state, data)
        await self._persist_snapshot(snap)
        loop = asyncio.get_running_loop()
        if callable(flush_backend):
            await loop.run_in_executor(self._disk, flush_backend)
        compact_to = index - keep_entries
        if compact_to > self.storage.first_index():
            self.storage.compact(compact_to)
        await loop.run_in_executor(self._disk, self.wal.release_to, snap.metadata.index)
        await loop.run_in_executor(self._disk, self.snapshotter.purge)
        self.log.info("saved snapshot", extra={"fields": {"snapshot-index": index, "compact-index": compact_to}})

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def close(self) -> None:
        self._disk.shutdown(wait=True)
        self.wal.close()
