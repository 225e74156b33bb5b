"""The WAL writer thread and the raft loop that feeds it without waiting.

What must hold, and why it matters:
- saves queued while an fdatasync runs are written together by the next one (group commit
  without the event loop in between), and reading the WAL back gives what separate saves
  would have given;
- other disk work queued through the writer runs in queue order with the saves;
- a failed save reaches everyone waiting on it;
- nothing is applied (so no client is answered) before its entry is durable, and a
  follower acknowledges nothing before it is durable: the raft loop no longer waits for
  the disk, so these are now the writer's futures' job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from etcdpy.raft import Config, Peer, RawNode
from etcdpy.raft.storage import MemoryStorage
from etcdpy.raft.types import Entry, EntryType, HardState, Message, MessageType
from etcdpy.server.raftnode import RaftNode
from etcdpy.server.walwriter import WalWriter
from etcdpy.snap import Snapshotter
from etcdpy.wal import WAL

from test_raftnode_batching import Recorder, Sent, _wait_for, elect


class GatedWAL:
    """A real WAL whose saves wait for `release` (so a test can hold an fdatasync open)."""

    def __init__(self, wal: WAL) -> None:
        self.wal = wal
        self.release = threading.Event()
        self.release.set()
        self.saved: list[list[int]] = []  # entry indexes of each WAL.save call
        self.fail: BaseException | None = None

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        self.saved.append([e.index for e in entries])
        assert self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        self.wal.save(hard_state, entries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wal, name)


def _entries(first: int, n: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, EntryType.NORMAL, b"v%d" % i) for i in range(first, first + n)]


def _read_back(path: Path) -> tuple[HardState, list[int]]:
    wal = WAL.open(str(path), None)
    try:
        _meta, hs, ents = wal.read_all()
    finally:
        wal.close()
    return hs, [e.index for e in ents]


def _run_writer(tmp_path: Path, body: Callable[[WalWriter, GatedWAL], Awaitable[None]]) -> GatedWAL:
    """Run `body` against a writer over a gated real WAL, then close both (the WAL is returned)."""
    wal = GatedWAL(WAL.create(str(tmp_path / "wal"), b""))
    writer = WalWriter(wal)  # type: ignore[arg-type]

    async def main() -> None:
        await body(writer, wal)

    try:
        asyncio.run(main())
    finally:
        wal.release.set()
        writer.close()
        wal.close()
    return wal


def test_saves_queued_during_a_sync_share_the_next_one(tmp_path: Path) -> None:
    async def body(writer: WalWriter, wal: GatedWAL) -> None:
        wal.release.clear()
        first = writer.save(HardState(1, 1, 0), _entries(1, 2))
        await _wait_for(lambda: len(wal.saved) == 1)  # the thread is inside the first save
        later = [writer.save(HardState(1, 1, 2 + i), _entries(3 + 2 * i, 2)) for i in range(3)]
        assert not first.done()
        wal.release.set()
        await asyncio.gather(first, *later)
        assert wal.saved == [[1, 2], [3, 4, 5, 6, 7, 8]]
        assert writer.saves == 2

    _run_writer(tmp_path, body)
    hs, indexes = _read_back(tmp_path / "wal")
    assert indexes == list(range(1, 9))
    assert (hs.term, hs.vote, hs.commit) == (1, 1, 4)  # the newest hard state of the merged saves


def test_close_writes_what_is_queued_and_then_refuses_more(tmp_path: Path) -> None:
    """The writer's thread is its own: close() lets it finish the queue, then ends it."""
    ran: list[str] = []

    async def body(writer: WalWriter, wal: GatedWAL) -> None:
        wal.release.clear()
        first = writer.save(HardState(1, 1, 0), _entries(1, 2))
        await _wait_for(lambda: len(wal.saved) == 1)
        later = writer.save(HardState(1, 1, 2), _entries(3, 1))
        call = writer.call(lambda: ran.append("after the saves"))
        threading.Timer(0.2, wal.release.set).start()
        writer.close()  # blocks until the thread has written everything queued and ended
        assert not writer._thread.is_alive()
        assert wal.saved == [[1, 2], [3]] and ran == ["after the saves"]
        await asyncio.gather(first, later, call)
        with pytest.raises(RuntimeError, match="closed"):
            writer.save(None, _entries(4, 1))

    _run_writer(tmp_path, body)
    assert _read_back(tmp_path / "wal")[1] == [1, 2, 3]


def test_a_merged_save_keeps_a_later_truncation(tmp_path: Path) -> None:
    """Entries replaced by a later save (a follower's conflicting log) read back as replaced."""

    async def body(writer: WalWriter, wal: GatedWAL) -> None:
        wal.release.clear()
        first = writer.save(HardState(1, 1, 0), _entries(1, 1))
        await _wait_for(lambda: len(wal.saved) == 1)
        a = writer.save(None, _entries(2, 3))  # 2, 3, 4 in term 1
        b = writer.save(HardState(2, 0, 2), _entries(3, 1, term=2))  # 3 again, in term 2
        wal.release.set()
        await asyncio.gather(first, a, b)
        assert wal.saved[1] == [2, 3, 4, 3]

    _run_writer(tmp_path, body)
    hs, indexes = _read_back(tmp_path / "wal")
    assert indexes == [1, 2, 3]
    assert hs.term == 2


def test_calls_run_in_queue_order_with_saves(tmp_path: Path) -> None:
    order: list[str] = []

    async def body(writer: WalWriter, wal: GatedWAL) -> None:
        wal.release.clear()
        s1 = writer.save(None, _entries(1, 1))
        await _wait_for(lambda: len(wal.saved) == 1)
        c1 = writer.call(lambda: order.append(f"call after {len(wal.saved)} saves") or 7)
        s2 = writer.save(None, _entries(2, 1))
        wal.release.set()
        assert await c1 == 7
        await asyncio.gather(s1, s2)

    wal = _run_writer(tmp_path, body)
    assert order == ["call after 1 saves"]
    assert wal.saved == [[1], [2]]


def test_a_failed_save_reaches_its_waiters(tmp_path: Path) -> None:
    async def body(writer: WalWriter, wal: GatedWAL) -> None:
        wal.fail = OSError(5, "Input/output error")
        with pytest.raises(OSError):
            await writer.save(None, _entries(1, 1))

    _run_writer(tmp_path, body)


def test_nothing_is_written_after_a_failed_save(tmp_path: Path) -> None:
    """A save queued after a failed one fails too and never reaches the WAL."""

    async def body(writer: WalWriter, wal: GatedWAL) -> None:
        wal.fail = OSError(5, "Input/output error")
        with pytest.raises(OSError):
            await writer.save(None, _entries(1, 1))
        wal.fail = None  # the disk "recovers": the writer must still refuse
        with pytest.raises(OSError):
            await writer.save(None, _entries(2, 1))
        assert wal.saved == [[1]]

    _run_writer(tmp_path, body)
    assert _read_back(tmp_path / "wal")[1] == []


def _node(tmp_path: Path, peers: list[int], wal: GatedWAL, **kw: Any) -> tuple[RaftNode, Sent]:
    storage = MemoryStorage()
    node = RawNode(Config(id=1, storage=storage))
    node.bootstrap([Peer(id=p) for p in peers])
    sent = Sent()
    rn = RaftNode(
        node, storage, wal, Snapshotter(str(tmp_path / "snap")), sent,  # type: ignore[arg-type]
        tick_seconds=0.01, logger=logging.getLogger("test"), **kw,
    )
    return rn, sent


def _run_node(rn: RaftNode, wal: GatedWAL, rec: Recorder, body: Callable[[], Awaitable[None]]) -> None:
    """Run the raft and apply loops around `body`, then stop them with the disk released."""

    async def main() -> None:
        tasks = [asyncio.create_task(rn.run(rec)), asyncio.create_task(rn.run_apply(rec))]
        try:
            await body()
        finally:
            wal.release.set()
            rn.stop()
            await asyncio.gather(*tasks)
            rn.close()

    asyncio.run(main())


def test_nothing_is_applied_before_it_is_durable(tmp_path: Path) -> None:
    """With two writes allowed in flight, the second Ready's entries wait for the first write too."""
    wal = GatedWAL(WAL.create(str(tmp_path / "wal"), b""))
    rn, _ = _node(tmp_path, [1], wal, max_writes_in_flight=2)
    rec = Recorder()

    async def body() -> None:
        await elect(rn)
        await _wait_for(lambda: not rn.node.has_ready())
        wal.release.clear()
        rn.propose(b"held", lambda: None)
        await _wait_for(lambda: rn.node.raft.raft_log.committed == rn.node.raft.raft_log.last_index()
                        and not rn.node.has_ready())
        # Committed (a one-member cluster commits on append) and handed over, but its
        # write has not returned: the apply task must still be waiting.
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert b"held" not in rec.applied
        held_at = rn.node.raft.raft_log.last_index()
        rn.propose(b"next", lambda: None)
        # The raft loop is not stuck behind the disk: it takes the next Ready meanwhile.
        await _wait_for(lambda: rn.node.raft.raft_log.committed == held_at + 1 and not rn.node.has_ready())
        assert b"held" not in rec.applied and b"next" not in rec.applied
        wal.release.set()
        await _wait_for(lambda: rec.applied[-2:] == [b"held", b"next"])

    _run_node(rn, wal, rec, body)


def test_a_follower_acknowledges_only_durable_entries(tmp_path: Path) -> None:
    wal = GatedWAL(WAL.create(str(tmp_path / "wal"), b""))
    rn, sent = _node(tmp_path, [1, 2], wal)
    rec = Recorder()

    async def body() -> None:
        rn.wake()
        await _wait_for(lambda: not rn.node.has_ready())  # the bootstrap entries, written
        last = rn.node.raft.raft_log.last_index()
        wal.release.clear()
        app = Message(
            MessageType.APP, to=1, frm=2, term=1, log_term=1, index=last, commit=last,
            entries=[Entry(1, last + 1, EntryType.NORMAL, b"x")],
        )
        rn.step(app)
        await _wait_for(lambda: not rn.node.has_ready())
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not [m for m in sent.messages if m.type == MessageType.APP_RESP]
        wal.release.set()
        await _wait_for(lambda: any(m.type == MessageType.APP_RESP and m.index == last + 1
                                    for m in sent.messages))

    _run_node(rn, wal, rec, body)


def test_proposals_made_during_a_write_share_the_next_ready(tmp_path: Path) -> None:
    """At the default bound (one write in flight) the loop waits for the write before the next
    Ready, so what is proposed meanwhile is appended and written as one batch (the batching
    three members need: without the bound every loop pass sent its own small append)."""
    wal = GatedWAL(WAL.create(str(tmp_path / "wal"), b""))
    rn, _ = _node(tmp_path, [1], wal)
    rec = Recorder()

    async def body() -> None:
        await elect(rn)
        await _wait_for(lambda: not rn.node.has_ready())
        wal.release.clear()
        first_at = rn.node.raft.raft_log.last_index() + 1
        rn.propose(b"first", lambda: None)
        await _wait_for(lambda: wal.saved[-1] == [first_at])  # the thread is inside its save
        saves_before = len(wal.saved)
        for i in range(5):
            rn.propose(b"p%d" % i, lambda: None)
            await asyncio.sleep(0.005)  # several loop passes while the write is held
        assert len(wal.saved) == saves_before, wal.saved  # nothing more reached the disk meanwhile
        # and the loop has not taken their Ready: not one more write queued behind the held one
        assert rn.storage.last_index() == first_at
        wal.release.set()
        await _wait_for(lambda: rec.applied[-6:] == [b"first"] + [b"p%d" % i for i in range(5)])
        assert len(wal.saved[saves_before]) == 5  # the five proposals: one save

    _run_node(rn, wal, rec, body)
