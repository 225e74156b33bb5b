"""Whole-store work does not hold the event loop (issue 10), at the store and server level.

How "does not hold the loop" is tested without timing: a ticker task counts how often
it ran while the operation was awaited. Work done synchronously on the loop lets it
run zero times; work on a worker thread (the GIL is handed over every few ms) or in
batches with pauses lets it run. A store of some ten thousand revisions makes every
operation last well beyond one GIL switch interval.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from etcdpy.mvcc import Backend, KVStore
from etcdpy.pb import rpc_pb2
from etcdpy.server.apply import Applier

T = TypeVar("T")
KEYS = 4000
VERSIONS = 4


def _fill(store: KVStore, keys: int = KEYS, versions: int = VERSIONS) -> None:
    ci = store.consistent_index
    for v in range(versions):
        for first in range(0, keys, 500):
            t = store.write()
            for i in range(first, min(first + 500, keys)):
                t.put(b"k%06d" % i, b"value-%d-%d" % (v, i))
            ci += 1
            t.end(ci, 1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KVStore]:
    s = KVStore(str(tmp_path / "db"))
    _fill(s)
    yield s
    s.close()


async def _ticks_during(op: Awaitable[T]) -> tuple[T, int]:
    """Await `op` while a ticker task counts its turns; returns (result, turns)."""
    turns = 0
    done = False

    async def ticker() -> None:
        nonlocal turns
        while not done:
            await asyncio.sleep(0)
            turns += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = turns
    try:
        result = await op
    finally:
        done = True
        await task
    return result, turns - start


def test_hash_kv_scans_on_a_worker_thread_over_a_pinned_view(store: KVStore) -> None:
    async def run() -> None:
        expected = store.hash_kv(0)
        plan = store.hash_kv_plan(0)
        t = store.write()  # a write after the plan must not change what it hashes
        t.put(b"k000001", b"later")
        t.end(store.consistent_index + 1, 1)
        assert await store.backend.run_in_worker(plan) == expected
        result, turns = await _ticks_during(store.hash_kv_async(0))
        assert result == store.hash_kv(0) != expected
        assert turns > 0, "HashKV held the event loop for its whole scan"

    asyncio.run(run())


def test_hash_runs_on_a_worker_thread(store: KVStore) -> None:
    async def run() -> None:
        result, turns = await _ticks_during(store.hash_async())
        assert result == store.hash()
        assert turns > 0, "Hash held the event loop for its whole scan"

    asyncio.run(run())


def test_unpaginated_range_loads_on_a_worker_thread(store: KVStore) -> None:
    applier = Applier(store)
    req = rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00")

    async def run() -> None:
        expected = applier.range(req)
        resp, turns = await _ticks_during(applier.range_async(req, store.backend.run_in_worker))
        assert resp == expected and len(resp.kvs) == KEYS
        assert turns > 0, "an unpaginated Range held the event loop while loading every value"
        small = applier.range(rpc_pb2.RangeRequest(key=b"k000001"))
        assert await applier.range_async(rpc_pb2.RangeRequest(key=b"k000001"), store.backend.run_in_worker) == small

    asyncio.run(run())


def test_planned_range_survives_a_compaction_meanwhile(store: KVStore) -> None:
    """Values are read through a view pinned at plan time: a compaction cannot pull them away."""
    load, count, rev, small = store.range_plan(b"\x00", b"\x00", rev=store.current_rev - 1)
    assert not small and count == KEYS
    _fill(store, versions=1)
    store.compact(store.current_rev)  # drops every revision the plan points to
    kvs = load()
    assert len(kvs) == KEYS and all(kv.mod_revision <= rev for kv in kvs)


def test_compaction_is_batched(store: KVStore) -> None:
    """Scheduling compacts the index only; each step scans at most 1000 revisions (etcd's batch)."""
    total = KEYS * VERSIONS
    job = store.schedule_compaction(store.current_rev)
    assert store.next_compaction() is job and not job.done
    steps = 1
    while not job.step():
        steps += 1
    assert steps >= total // 1000
    assert store.next_compaction() is None
    assert sum(1 for _ in store.backend.iterate("key")) == KEYS


def test_close_waits_for_worker_thread_users(store: KVStore) -> None:
    """Closing (or swapping) the backend during a defrag waits for it instead of breaking it."""
    started = threading.Event()
    release = threading.Event()

    def slow_defrag() -> None:
        started.set()
        release.wait(10)
        store.defrag()

    async def run() -> None:
        defrag = asyncio.create_task(store.backend.run_in_worker(slow_defrag))
        while not started.is_set():
            await asyncio.sleep(0.001)
        closing = asyncio.create_task(_close(store))
        await asyncio.sleep(0.05)
        assert not closing.done(), "the backend was closed under a running defrag"
        release.set()
        await defrag
        await closing
        with pytest.raises(RuntimeError, match="closed"):
            store.backend.db  # noqa: B018 - the property raises once closed

    asyncio.run(run())


async def _close(store: KVStore) -> None:
    async with store.backend.exclusive():
        store.close()


def test_cancelled_worker_use_still_holds_the_backend(store: KVStore) -> None:
    """A caller that gives up (client cancel) does not end the thread: close must still wait."""
    release = threading.Event()

    async def run() -> None:
        task = asyncio.create_task(store.backend.run_in_worker(lambda: release.wait(10)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store.backend.worker_users == 1
        closing = asyncio.create_task(_close(store))
        await asyncio.sleep(0.05)
        assert not closing.done()
        release.set()
        await closing
        assert store.backend.worker_users == 0

    asyncio.run(run())


def test_snapshot_restore_builds_off_the_loop(tmp_path: Path, store: KVStore) -> None:
    """Installing a snapshot: the file load and the index rebuild run on a worker thread."""
    snap = str(tmp_path / "snap.db")
    store.snapshot_to(snap)
    expected = store.hash_kv(0)
    target = KVStore(str(tmp_path / "other"))

    async def run() -> None:
        (leased, replaced), turns = await _ticks_during(target.restore_from_async(snap, collect_leased=True))
        assert leased == [] and replaced is not None
        Backend.remove_replaced(replaced)
        assert turns > 0, "the snapshot install held the event loop"
        assert target.hash_kv(0) == expected and target.current_rev == store.current_rev
        assert target.consistent_index == store.consistent_index
        assert not (tmp_path / "other.old").exists() and not (tmp_path / "other.restoring").exists()

    try:
        asyncio.run(run())
    finally:
        target.close()


def test_heap_freezer_freezes_after_enough_applied_entries() -> None:
    """Long-lived objects leave the full collections' walk: at start, then every N applied entries."""
    import gc

    from etcdpy.server.heap import HeapFreezer

    kept = [[i] for i in range(1000)]  # long-lived, GC-tracked objects
    h = HeapFreezer(every=100)
    h.applied(60)
    assert h.freezes == 0
    h.applied(60)
    assert h.freezes == 1 and gc.get_freeze_count() >= len(kept)
    h.applied(99)
    assert h.freezes == 1
    gc.unfreeze()


def test_swap_waits_for_a_scan_over_a_pinned_view(tmp_path: Path, store: KVStore) -> None:
    """A snapshot install asked for during a HashKV waits until its scan ends (no closed-DB reads)."""
    snap = str(tmp_path / "snap.db")
    store.snapshot_to(snap)
    order: list[str] = []

    async def hashing() -> None:
        await store.hash_kv_async(0)
        order.append("hash")

    async def restoring() -> None:
        _, replaced = await store.restore_from_async(snap)
        Backend.remove_replaced(replaced)
        order.append("restore")

    async def run() -> None:
        h = asyncio.create_task(hashing())
        await asyncio.sleep(0)  # the hash holds the backend from its plan on
        await asyncio.gather(h, restoring())
        assert order == ["hash", "restore"]
        assert store.backend.worker_users == 0

    asyncio.run(run())
