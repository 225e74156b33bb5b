"""WatchableStore: synced/unsynced/victim transitions, the range index, txn atomicity,
compaction cancel, and that a slow consumer loses nothing (store level, no gRPC)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from etcdpy.mvcc.kvstore import KVStore
from etcdpy.pb.kv_pb2 import Event
from etcdpy.watch import INVALID_WATCH_ID, WatchableStore, WatchResponse, WatchStream, filter_types
from etcdpy.watch.interval import IntervalIndex
from etcdpy.watch.watcher import ErrEmptyWatcherRange, ErrWatcherDuplicateID, ErrWatcherNotExist, Watcher
from etcdpy.watch.watcher_group import WatcherGroup

PUT, DELETE = Event.PUT, Event.DELETE


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KVStore]:
    s = KVStore(str(tmp_path / "db"))
    yield s
    s.close()


@pytest.fixture
def store(kv: KVStore) -> WatchableStore:
    return WatchableStore(kv, max_events_per_sync=1000)


def put(kv: KVStore, key: bytes, value: bytes = b"v") -> int:
    t = kv.write()
    t.put(key, value)
    return t.end(kv.consistent_index + 1, 1)


def delete(kv: KVStore, key: bytes, end: bytes | None = None) -> int:
    t = kv.write()
    t.delete_range(key, end)
    return t.end(kv.consistent_index + 1, 1)


def txn(kv: KVStore, *keys: bytes) -> int:
    t = kv.write()
    for k in keys:
        t.put(k, b"t")
    return t.end(kv.consistent_index + 1, 1)


def drain(ws: WatchStream) -> list[WatchResponse]:
    return [r for r in ws.ch.take() if isinstance(r, WatchResponse)]


def evs(resps: list[WatchResponse], wid: int | None = None) -> list[tuple[int, bytes, int]]:
    """(type, key, mod_revision) of every event in `resps` (of one watcher if `wid`)."""
    return [
        (e.type, e.kv.key, e.kv.mod_revision) for r in resps if wid is None or r.watch_id == wid for e in r.events
    ]


def where(store: WatchableStore, w: Watcher) -> str:
    if w in store.synced:
        return "synced"
    if w in store.unsynced:
        return "unsynced"
    if w in store.victims:
        return "victim"
    return "compacted" if w.compacted else "gone"


def sync_all(store: WatchableStore, rounds: int = 1000) -> None:
    for _ in range(rounds):
        if not store.unsynced.watchers:
            return
        store.sync_watchers()
    raise AssertionError("watchers never synced")


# -- the interval index --------------------------------------------------------------


def test_interval_index_stab_matches_brute_force() -> None:
    rng = random.Random(7)
    idx: IntervalIndex[int] = IntervalIndex(seed=1)
    live: dict[tuple[bytes, bytes | None], int] = {}
    keys = [bytes([a, b]) for a in range(97, 103) for b in range(97, 103)]
    for step in range(3000):
        if live and rng.random() < 0.4:
            iv = rng.choice(list(live))
            assert idx.delete(*iv)
            del live[iv]
        else:
            b = rng.choice(keys)
            e = None if rng.random() < 0.15 else rng.choice([k for k in keys if k > b] or [None])
            if (b, e) in live:
                continue
            idx.insert(b, e, step)
            live[(b, e)] = step
        p = rng.choice(keys + [b"a", b"zz", b"b"])
        want = sorted(v for (b0, e0), v in live.items() if b0 <= p and (e0 is None or p < e0))
        assert sorted(idx.stab(p)) == want
        assert idx.intersects(p) == bool(want)
    assert len(idx) == len(live)
    assert not idx.delete(b"nope", b"nope2")


def test_interval_index_rejects_bad_and_duplicate_intervals() -> None:
    idx: IntervalIndex[int] = IntervalIndex()
    with pytest.raises(ValueError):
        idx.insert(b"b", b"a", 1)
    idx.insert(b"a", b"b", 1)
    with pytest.raises(KeyError):
        idx.insert(b"a", b"b", 2)
    assert idx.get(b"a", b"b") == 1 and idx.get(b"a", None) is None


def test_watcher_group_indexes_keys_and_ranges(store: WatchableStore) -> None:
    ch = store.new_watch_stream().ch
    g = WatcherGroup()
    single = Watcher(b"k", None, 1, 1, ch, frozenset())
    rng = Watcher(b"a", b"m", 1, 2, ch, frozenset())
    rng2 = Watcher(b"a", b"m", 1, 3, ch, frozenset())  # same interval: shares one index node
    fromkey = Watcher(b"j", b"", 1, 4, ch, frozenset())
    for w in (single, rng, rng2, fromkey):
        g.add(w)
    assert len(g.ranges) == 2
    assert set(g.watchers_of(b"k")) == {single, rng, rng2, fromkey}
    assert set(g.watchers_of(b"b")) == {rng, rng2}
    assert set(g.watchers_of(b"zzz")) == {fromkey}
    assert set(g.watchers_of(b"m")) == {fromkey}  # range end is exclusive
    assert not g.contains_key(b"0") and g.contains_key(b"b")
    assert g.delete(rng) and not g.delete(rng)
    assert len(g.ranges) == 2 and set(g.watchers_of(b"b")) == {rng2}
    assert g.delete(rng2) and len(g.ranges) == 1 and list(g.watchers_of(b"b")) == []
    with pytest.raises(RuntimeError):
        g.add(single)


# -- synced watchers and notify ---------------------------------------------------------


def test_synced_watcher_gets_each_write_once(kv: KVStore, store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    wid = ws.watch(0, b"foo", None, 0)
    w = ws.watchers[wid]
    assert where(store, w) == "synced" and w.min_rev == kv.current_rev + 1
    r1 = put(kv, b"foo", b"1")
    put(kv, b"other")
    r2 = delete(kv, b"foo")
    got = drain(ws)
    assert [(r.watch_id, r.revision) for r in got] == [(wid, r1), (wid, r2)]
    assert evs(got) == [(PUT, b"foo", r1), (DELETE, b"foo", r2)]
    assert got[0].events[0].kv.value == b"1"


def test_txn_events_arrive_together_with_one_revision(kv: KVStore, store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    ws.watch(0, b"t/", b"t0", 0)
    rev = txn(kv, b"t/a", b"t/b", b"x", b"t/c")
    (resp,) = drain(ws)
    assert resp.revision == rev
    assert evs([resp]) == [(PUT, b"t/a", rev), (PUT, b"t/b", rev), (PUT, b"t/c", rev)]
    assert resp.shared is not None and len(resp.shared.events) == 4  # the whole txn, shared by all watchers


def test_delete_range_notifies_every_deleted_key(kv: KVStore, store: WatchableStore) -> None:
    for k in (b"r/1", b"r/2", b"r/3"):
        put(kv, k)
    ws = store.new_watch_stream()
    ws.watch(0, b"r/", b"r0", 0)
    rev = delete(kv, b"r/", b"r0")
    assert evs(drain(ws)) == [(DELETE, b"r/1", rev), (DELETE, b"r/2", rev), (DELETE, b"r/3", rev)]


def test_watch_ids_and_errors(store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    assert ws.watch(0, b"a", None, 0) == 0
    assert ws.watch(2, b"a", None, 0) == 2
    assert ws.watch(0, b"a", None, 0) == 1
    assert ws.watch(0, b"a", None, 0) == 3  # skips the client-chosen 2
    with pytest.raises(ErrWatcherDuplicateID):
        ws.watch(2, b"b", None, 0)
    with pytest.raises(ErrEmptyWatcherRange):
        ws.watch(0, b"b", b"a", 0)
    with pytest.raises(ErrEmptyWatcherRange):
        ws.watch(0, b"b", b"b", 0)
    ws.cancel(2)
    with pytest.raises(ErrWatcherNotExist):
        ws.cancel(2)
    assert ws.watch(2, b"b", None, 0) == 2  # a cancelled id can be reused


def test_filters_drop_event_types(kv: KVStore, store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    noput = ws.watch(0, b"f", None, 0, filter_types(no_put=True, no_delete=False))
    nodel = ws.watch(0, b"f", None, 0, filter_types(no_put=False, no_delete=True))
    rp = put(kv, b"f")
    rd = delete(kv, b"f")
    got = drain(ws)
    assert evs(got, noput) == [(DELETE, b"f", rd)]
    assert evs(got, nodel) == [(PUT, b"f", rp)]
    assert len(got) == 2  # a fully filtered response is not sent at all


def test_future_start_revision_waits_for_it(kv: KVStore, store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    wid = ws.watch(0, b"k", None, kv.current_rev + 3)
    assert where(store, ws.watchers[wid]) == "synced"
    put(kv, b"k")
    put(kv, b"k")
    r3 = put(kv, b"k")
    assert evs(drain(ws)) == [(PUT, b"k", r3)]


# -- unsynced watchers ----------------------------------------------------------------


def test_unsynced_watcher_replays_history_then_becomes_synced(kv: KVStore, store: WatchableStore) -> None:
    r1 = put(kv, b"h", b"1")
    put(kv, b"x")
    r2 = put(kv, b"h", b"2")
    ws = store.new_watch_stream()
    wid = ws.watch(0, b"h", None, r1)
    w = ws.watchers[wid]
    assert where(store, w) == "unsynced"
    assert drain(ws) == []
    remaining, moved = store.sync_watchers()
    assert (remaining, moved) == (0, True) and where(store, w) == "synced"
    (resp,) = drain(ws)
    assert resp.revision == kv.current_rev  # history responses carry the current revision (etcd)
    assert evs([resp]) == [(PUT, b"h", r1), (PUT, b"h", r2)]
    r3 = put(kv, b"h", b"3")
    assert evs(drain(ws)) == [(PUT, b"h", r3)]


def test_history_is_read_in_bounded_batches_without_splitting_txns(kv: KVStore) -> None:
    store = WatchableStore(kv, max_events_per_sync=3)
    start = kv.current_rev + 1
    revs = []
    for i in range(10):
        revs.append(txn(kv, b"b/%d/x" % i, b"b/%d/y" % i) if i % 3 == 0 else put(kv, b"b/%d" % i))
    ws = store.new_watch_stream()
    wid = ws.watch(0, b"b/", b"b0", start)
    w = ws.watchers[wid]
    rounds = 0
    responses = []
    while where(store, w) == "unsynced":
        store.sync_watchers()
        rounds += 1
        responses += drain(ws)
    assert rounds >= 4 and where(store, w) == "synced"
    for r in responses:  # no txn is ever split between two responses
        assert all(e.kv.mod_revision != r.events[-1].kv.mod_revision for e in _after(responses, r))
    got = evs(responses)
    assert [e[2] for e in got] == sorted(e[2] for e in got)
    assert sorted({e[2] for e in got}) == revs
    assert len(got) == 14


def _after(responses: list[WatchResponse], r: WatchResponse) -> list[Event]:
    i = responses.index(r)
    return [e for later in responses[i + 1 :] for e in later.events]


def test_many_unsynced_watchers_are_served_in_turn(kv: KVStore) -> None:
    store = WatchableStore(kv, max_watchers_per_sync=4)
    start = kv.current_rev + 1
    for i in range(5):
        put(kv, b"m/%d" % i)
    ws = store.new_watch_stream()
    ws.ch.capacity = 1000
    ids = [ws.watch(0, b"m/%d" % (i % 5), None, start) for i in range(20)]
    sync_all(store)
    got = drain(ws)
    assert sorted(r.watch_id for r in got) == sorted(ids)
    assert all(where(store, ws.watchers[i]) == "synced" for i in ids)


# -- compaction -----------------------------------------------------------------------


def test_watcher_below_compaction_is_cancelled_with_compact_revision(kv: KVStore, store: WatchableStore) -> None:
    r1 = put(kv, b"c", b"1")
    put(kv, b"c", b"2")
    r3 = put(kv, b"c", b"3")
    kv.compact(r3)
    ws = store.new_watch_stream()
    old = ws.watch(0, b"c", None, r1)
    at = ws.watch(0, b"c", None, r3)
    store.sync_watchers()
    got = drain(ws)
    cancel = [r for r in got if r.watch_id == old]
    assert [(r.compact_revision, r.events) for r in cancel] == [(r3, ())]
    assert where(store, ws.watchers[old]) == "compacted"
    assert evs(got, at) == [(PUT, b"c", r3)]
    # A compacted watcher keeps its id until cancelled, and does not hold back progress.
    assert ws.request_progress_all()
    ws.cancel(old)
    assert old not in ws.watchers


def test_compaction_notice_waits_for_room_in_a_full_channel(kv: KVStore) -> None:
    store = WatchableStore(kv, responses_per_watcher=0, channel_capacity=1)
    r1 = put(kv, b"c")
    r2 = put(kv, b"c")
    kv.compact(r2)
    ws = store.new_watch_stream()
    ws.ch.force("blocker")
    wid = ws.watch(0, b"c", None, r1)
    store.sync_watchers()
    assert where(store, ws.watchers[wid]) == "unsynced"
    ws.ch.take()
    store.sync_watchers()
    (resp,) = drain(ws)
    assert resp.compact_revision == r2 and ws.watchers[wid].compacted


# -- victims --------------------------------------------------------------------------


def test_full_channel_parks_watcher_as_victim_and_loses_nothing(kv: KVStore) -> None:
    store = WatchableStore(kv, responses_per_watcher=0, channel_capacity=1)
    ws = store.new_watch_stream()
    other = store.new_watch_stream()
    wid = ws.watch(0, b"v", None, 0)
    oid = other.watch(0, b"v", None, 0)
    w = ws.watchers[wid]
    r1 = put(kv, b"v", b"1")  # fills ws's channel
    r2 = put(kv, b"v", b"2")  # no room: w becomes a victim holding r2
    assert where(store, w) == "victim"
    r3 = put(kv, b"v", b"3")  # a victim gets nothing new
    assert store.move_victims() == 0  # still full
    assert evs(other.ch.take()) == [(PUT, b"v", r1)]  # other streams are unaffected...
    assert evs(other.ch.take()) == []  # ...apart from their own capacity (they are victims too now)
    assert evs(drain(ws)) == [(PUT, b"v", r1)]
    assert store.move_victims() == 2
    assert where(store, w) == "unsynced"  # delivered r2, but r3 happened meanwhile
    assert evs(drain(ws)) == [(PUT, b"v", r2)]
    sync_all(store)
    assert evs(drain(ws)) == [(PUT, b"v", r3)]
    assert where(store, w) == "synced"
    assert oid in other.watchers


def test_channel_room_grows_with_the_watchers_of_a_stream(kv: KVStore) -> None:
    store = WatchableStore(kv, channel_capacity=8, responses_per_watcher=2)
    ws = store.new_watch_stream()
    for _ in range(50):
        ws.watch(0, b"p/", b"p0", 0)
    assert ws.ch.capacity == 100
    put(kv, b"p/1")
    put(kv, b"p/2")  # two writes to fifty watchers fit; a third would not
    assert not store.victims and len(ws.ch) == 100
    put(kv, b"p/3")
    assert len(store.victims) == 50


def test_victims_are_retried_per_channel_in_parking_order(kv: KVStore) -> None:
    """A drained channel takes its own victims back, oldest first, as far as it has room;
    victims of a channel that is still full stay parked (and are not looked at one by one)."""
    store = WatchableStore(kv, responses_per_watcher=0, channel_capacity=2)
    a, b = store.new_watch_stream(), store.new_watch_stream()
    wa = [a.watchers[a.watch(0, b"k", None, 0)] for _ in range(5)]
    wb = [b.watchers[b.watch(0, b"k", None, 0)] for _ in range(5)]
    rev = put(kv, b"k")  # two watchers of each stream fit, three of each are parked
    assert [where(store, w) for w in wa] == ["synced"] * 2 + ["victim"] * 3
    assert [where(store, w) for w in wb] == ["synced"] * 2 + ["victim"] * 3
    assert store.move_victims() == 0  # both channels still full
    assert len(drain(a)) == 2  # only a makes room
    assert store.move_victims() == 2  # a's two oldest victims, none of b's
    assert [where(store, w) for w in wa] == ["synced"] * 4 + ["victim"]
    assert [where(store, w) for w in wb] == ["synced"] * 2 + ["victim"] * 3
    assert [r.watch_id for r in drain(a)] == [wa[2].id, wa[3].id]
    assert store.move_victims() == 1
    assert evs(drain(a), wa[4].id) == [(PUT, b"k", rev)]
    store.cancel_watcher(wb[2])  # a cancelled victim is forgotten by both indexes
    drain(b)
    assert store.move_victims() == 2 and not store.victims
    assert [r.watch_id for r in drain(b)] == [wb[3].id, wb[4].id]


def test_victim_returns_to_synced_when_nothing_happened_meanwhile(kv: KVStore) -> None:
    store = WatchableStore(kv, responses_per_watcher=0, channel_capacity=1)
    ws = store.new_watch_stream()
    w = ws.watchers[ws.watch(0, b"v", None, 0)]
    put(kv, b"v")
    r2 = put(kv, b"v")
    assert where(store, w) == "victim"
    ws.ch.take()
    assert store.move_victims() == 1 and where(store, w) == "synced"
    assert evs(drain(ws)) == [(PUT, b"v", r2)]


def test_unsynced_watcher_with_full_channel_becomes_victim(kv: KVStore) -> None:
    store = WatchableStore(kv, responses_per_watcher=0, channel_capacity=1)
    r1 = put(kv, b"u")
    ws = store.new_watch_stream()
    ws.ch.force("blocker")
    w = ws.watchers[ws.watch(0, b"u", None, r1)]
    store.sync_watchers()
    assert where(store, w) == "victim"
    ws.ch.take()
    store.move_victims()
    assert where(store, w) == "synced" and evs(drain(ws)) == [(PUT, b"u", r1)]


@pytest.mark.parametrize("state", ["synced", "unsynced", "victim"])
def test_cancel_removes_watcher_from_any_state(kv: KVStore, state: str) -> None:
    store = WatchableStore(kv, responses_per_watcher=0, channel_capacity=1)
    r1 = put(kv, b"k")
    ws = store.new_watch_stream()
    wid = ws.watch(0, b"k", None, r1 if state == "unsynced" else 0)
    w = ws.watchers[wid]
    if state == "victim":
        put(kv, b"k")
        put(kv, b"k")
    assert where(store, w) == state
    ws.cancel(wid)
    assert where(store, w) == "gone"
    ws.ch.take()
    put(kv, b"k")
    store.move_victims()
    sync_all(store)
    assert drain(ws) == []


def test_closed_stream_cancels_all_its_watchers(kv: KVStore, store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    a = ws.watchers[ws.watch(0, b"a", None, 0)]
    b = ws.watchers[ws.watch(0, b"b", b"c", 0)]
    ws.close()
    assert where(store, a) == where(store, b) == "gone"
    put(kv, b"a")  # nothing to deliver, nothing breaks
    assert len(ws.ch) == 0


# -- progress -------------------------------------------------------------------------


def test_progress_only_when_every_watcher_is_synced(kv: KVStore, store: WatchableStore) -> None:
    r1 = put(kv, b"p")
    put(kv, b"p")
    ws = store.new_watch_stream()
    ws.watch(0, b"p", None, 0)
    behind = ws.watch(0, b"p", None, r1)
    assert not ws.request_progress_all()  # `behind` still has r1, r2 to get
    sync_all(store)
    assert ws.request_progress_all()
    got = ws.ch.take()
    assert got[-1].watch_id == INVALID_WATCH_ID and got[-1].revision == kv.current_rev and not got[-1].events
    # Everything the progress revision covers was queued ahead of it.
    assert evs(got[:-1], behind)[-1][2] == kv.current_rev


def test_single_watcher_progress(kv: KVStore, store: WatchableStore) -> None:
    put(kv, b"q")
    ws = store.new_watch_stream()
    wid = ws.watch(0, b"q", None, 0)
    unsynced = ws.watch(0, b"q", None, 1)
    ws.request_progress(wid)
    ws.request_progress(unsynced)  # not synced: nothing
    ws.request_progress(999)  # unknown: nothing
    (resp,) = ws.ch.take()
    assert (resp.watch_id, resp.revision, resp.events) == (wid, kv.current_rev, ())


def test_restore_makes_synced_watchers_replay(kv: KVStore, store: WatchableStore) -> None:
    ws = store.new_watch_stream()
    w = ws.watchers[ws.watch(0, b"s", None, 0)]
    r = put(kv, b"s")
    drain(ws)
    store.restore()
    assert where(store, w) == "unsynced"
    sync_all(store)
    assert where(store, w) == "synced" and drain(ws) == []
    assert w.min_rev == r + 1


# -- the loops, under a slow consumer ------------------------------------------------------


def test_slow_consumers_lose_nothing_and_never_block_writes(kv: KVStore) -> None:
    """Random writes and txns while tiny channels are drained slowly and irregularly: every
    watcher must get exactly its events, in order, txns whole, and writes never wait."""

    async def run() -> None:
        store = WatchableStore(kv, responses_per_watcher=0, channel_capacity=2, sync_interval=0.005, victim_interval=0.002)
        store.start()
        rng = random.Random(42)
        keys = [b"k/%d" % i for i in range(8)]
        history_start = put(kv, b"k/0")
        for k in keys:
            put(kv, k)
        streams = [store.new_watch_stream() for _ in range(3)]
        specs: list[tuple[WatchStream, int, bytes, bytes | None, int]] = []
        for i, ws in enumerate(streams):
            for key, end in ((b"k/", b"k0"), (b"k/3", None), (b"k/2", b"k/5")):
                # Stream 0 replays history (unsynced first); the others start now (synced).
                begin = history_start if i == 0 else kv.current_rev + 1
                specs.append((ws, ws.watch(0, key, end, begin), key, end, begin))
        received: dict[tuple[int, int], list[tuple[int, bytes, int]]] = {}
        stop = asyncio.Event()

        async def consume(idx: int, ws: WatchStream) -> None:
            while not (stop.is_set() and not len(ws.ch)):
                for r in ws.ch.take(rng.randint(1, 2)):
                    if isinstance(r, WatchResponse):
                        received.setdefault((idx, r.watch_id), []).extend(
                            (e.type, e.kv.key, e.kv.mod_revision) for e in r.events
                        )
                await asyncio.sleep(rng.random() * 0.004)

        consumers = [asyncio.create_task(consume(i, ws)) for i, ws in enumerate(streams)]
        slowest_write = 0.0
        seen_victims = seen_unsynced_after_start = 0
        for _ in range(300):
            t0 = time.monotonic()
            choice = rng.random()
            if choice < 0.5:
                put(kv, rng.choice(keys))
            elif choice < 0.7:
                delete(kv, rng.choice(keys))
            else:
                txn(kv, *rng.sample(keys, 3))
            slowest_write = max(slowest_write, time.monotonic() - t0)
            seen_victims += bool(store.victims)
            seen_unsynced_after_start += any(w.victim is False for w in store.unsynced)
            if rng.random() < 0.3:
                await asyncio.sleep(0)
        deadline = time.monotonic() + 20
        while store.victims or store.unsynced.watchers or any(len(ws.ch) for ws in streams):
            assert time.monotonic() < deadline, "watchers never caught up"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*consumers)
        await store.stop()
        history = kv.events(history_start, 0)
        for ws, wid, key, end, begin in specs:
            w_idx = streams.index(ws)
            probe = Watcher(key, end, begin, wid, ws.ch, frozenset())
            want = [
                (e.type, e.kv.key, e.kv.mod_revision)
                for e in history
                if probe.contains(e.kv.key) and e.kv.mod_revision >= begin
            ]
            assert want
            assert received.get((w_idx, wid), []) == want, (w_idx, key, end)
        assert slowest_write < 0.5
        assert seen_victims > 10 and seen_unsynced_after_start > 0  # every path was exercised

    asyncio.run(run())


# -- the API layer's stream logic (etcdpy.api.watch), without gRPC -------------------------

from etcdpy.api import watch as api_watch  # noqa: E402
from etcdpy.config import ServerConfig  # noqa: E402
from etcdpy.pb import rpc_pb2  # noqa: E402


class _FakeProgress:
    applied_term = 3


class _FakeServer:
    """The few EtcdServer members the Watch service uses."""

    def __init__(self, store: WatchableStore, lead: int = 1, election_ms: int = 1000) -> None:
        self.watchable = store
        self.lead = lead
        self.progress = _FakeProgress()
        self.cfg = ServerConfig(election_ms=election_ms, watch_progress_notify_interval=600.0)

    def fill_header(self, header: rpc_pb2.ResponseHeader, with_revision: bool = True) -> None:
        header.cluster_id, header.member_id, header.raft_term = 11, 22, self.progress.applied_term
        if with_revision and header.revision == 0:
            header.revision = self.watchable.rev()


def _api_stream(store: WatchableStore, max_bytes: int = 1 << 21, **kw: int) -> api_watch.ServerWatchStream:
    service = api_watch.WatchService(_FakeServer(store, **kw), max_bytes)  # type: ignore[arg-type]
    return api_watch.ServerWatchStream(service, store.new_watch_stream())


def _create(sws: api_watch.ServerWatchStream, **kw: object) -> None:
    sws.handle(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(**kw)))  # type: ignore[arg-type]


def _wire(sws: api_watch.ServerWatchStream) -> list[rpc_pb2.WatchResponse]:
    """Everything queued on the stream, encoded as the send loop would, parsed back."""
    out = []
    for item in sws.ws.ch.take():
        datas = sws._encode(item) if isinstance(item, WatchResponse) else [item.SerializeToString()]
        out += [rpc_pb2.WatchResponse.FromString(d) for d in datas]
    return out


def test_split_fragments_packs_events_under_the_limit() -> None:
    entries = [b"e" * n for n in (40, 40, 40, 100, 10)]
    assert api_watch.split_fragments(b"P", b"PF", entries[:1], 50) == [b"P" + entries[0]]  # one event: never split
    assert api_watch.split_fragments(b"P", b"PF", entries[:2], 1000) == [b"P" + entries[0] + entries[1]]
    parts = api_watch.split_fragments(b"P", b"PF", entries, 90)
    assert parts == [b"PF" + b"e" * 80, b"PF" + b"e" * 40, b"PF" + b"e" * 100, b"P" + b"e" * 10]


def test_encoded_responses_parse_back_with_prev_kv_and_fragments(kv: KVStore, store: WatchableStore) -> None:
    r1 = put(kv, b"e/a", b"1" * 100)
    sws = _api_stream(store, max_bytes=150)
    _create(sws, key=b"e/", range_end=b"e0", prev_kv=True, fragment=True)
    _create(sws, key=b"e/a", watch_id=9)
    rev = txn(kv, b"e/a", b"e/b", b"e/c")
    created, created9, *rest = _wire(sws)
    assert (created.created, created.watch_id, created.header.revision, created.header.raft_term) == (True, 0, r1, 3)
    assert (created9.watch_id, created9.header.cluster_id) == (9, 11)
    frags = [r for r in rest if r.watch_id == 0]
    assert [r.fragment for r in frags] == [True] * (len(frags) - 1) + [False] and len(frags) >= 2
    assert all(r.ByteSize() < 150 for r in frags if len(r.events) > 1)
    events = [e for r in frags for e in r.events]
    assert [(e.kv.key, e.kv.mod_revision) for e in events] == [(b"e/a", rev), (b"e/b", rev), (b"e/c", rev)]
    assert events[0].prev_kv.value == b"1" * 100 and not events[1].HasField("prev_kv")
    (r9,) = [r for r in rest if r.watch_id == 9]
    assert (r9.header.revision, len(r9.events), r9.events[0].HasField("prev_kv")) == (rev, 1, False)


def test_one_encoding_and_one_prev_read_per_event_for_all_watchers(kv: KVStore, store: WatchableStore) -> None:
    put(kv, b"s", b"old")
    streams = [_api_stream(store) for _ in range(3)]
    for sws in streams:
        for _ in range(5):
            _create(sws, key=b"s", prev_kv=True)
    reads = 0
    real = api_watch.ServerWatchStream._read_prev

    def counting(self: api_watch.ServerWatchStream, ev: Event) -> object:
        nonlocal reads
        reads += 1
        return real(self, ev)

    api_watch.ServerWatchStream._read_prev = counting  # type: ignore[method-assign]
    try:
        put(kv, b"s", b"new")
        got = [r for sws in streams for r in _wire(sws) if r.events]
    finally:
        api_watch.ServerWatchStream._read_prev = real  # type: ignore[method-assign]
    assert len(got) == 15 and reads == 1
    assert {r.events[0].prev_kv.value for r in got} == {b"old"}


def test_stream_requests_map_to_etcd_responses(kv: KVStore, store: WatchableStore) -> None:
    sws = _api_stream(store)
    _create(sws, key=b"a", watch_id=4)
    _create(sws, key=b"b", watch_id=4)
    _create(sws, key=b"z", range_end=b"a")
    _create(sws, key=b"", range_end=b"\x00")  # everything
    _create(sws, key=b"a", start_revision=-1)
    sws.handle(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=4)))
    sws.handle(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=77)))
    got = _wire(sws)
    assert [(r.watch_id, r.created, r.canceled, r.cancel_reason) for r in got] == [
        (4, True, False, ""),
        (-1, True, True, "mvcc: duplicate watch ID provided on the WatchStream"),
        (-1, True, True, "mvcc: watcher range is empty"),
        (0, True, False, ""),
        (-1, True, True, "etcdserver: mvcc: required revision has been compacted"),
        (4, False, True, ""),
    ]
    w = sws.ws.watchers[0]
    assert (w.key, w.end) == (b"\x00", b"")


def test_progress_request_is_deferred_until_all_watchers_are_synced(kv: KVStore, store: WatchableStore) -> None:
    async def run() -> None:
        r1 = put(kv, b"d")
        put(kv, b"d")
        sws = _api_stream(store)
        _create(sws, key=b"d", start_revision=r1)
        sws.handle(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
        assert sws.deferred_progress
        written: list[rpc_pb2.WatchResponse] = []

        async def write(data: bytes) -> None:
            written.append(rpc_pb2.WatchResponse.FromString(data))

        sender = asyncio.create_task(sws.send_loop(write))
        await asyncio.sleep(0)
        store.sync_watchers()
        deadline = time.monotonic() + 5
        while not written or written[-1].watch_id != -1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        sender.cancel()
        assert [len(r.events) for r in written] == [0, 2, 0]  # created, history, then progress
        assert written[-1].header.revision == kv.current_rev and not sws.deferred_progress

    asyncio.run(run())


def test_streams_requiring_a_leader_end_after_three_election_timeouts_without_one(store: WatchableStore) -> None:
    async def run() -> None:
        sws = _api_stream(store, lead=0, election_ms=20)
        t0 = time.monotonic()
        sws.service._track_leader(sws)
        async with asyncio.timeout(5):
            await sws.no_leader.wait()
        assert time.monotonic() - t0 >= 0.06

        with_leader = _api_stream(store, lead=1, election_ms=20)
        with_leader.service._track_leader(with_leader)
        await asyncio.sleep(0.15)
        assert not with_leader.no_leader.is_set()
        with_leader.service._leader_streams.clear()

    asyncio.run(run())


def test_progress_interval_has_jitter_and_a_floor(store: WatchableStore) -> None:
    sws = _api_stream(store)
    vals = {sws.service.progress_interval() for _ in range(20)}
    assert all(600.0 <= v <= 660.0 for v in vals) and len(vals) > 1
    sws.server.cfg.watch_progress_notify_interval = 0.001
    assert 0.1 <= sws.service.progress_interval() <= 0.11


def test_control_responses_stay_within_the_channel_bound(store: WatchableStore) -> None:
    """A client sending creates without reading is paused (etcd's bounded ctrlStream), not buffered."""
    sws = _api_stream(store)
    cap = sws.ws.ch.capacity

    async def requests() -> AsyncIterator[rpc_pb2.WatchRequest]:
        for i in range(3 * cap):
            # refused creates: each is answered (created+canceled) but adds no watcher, so no room
            yield rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"z%d" % i, range_end=b"a"))

    async def run() -> None:
        recv = asyncio.create_task(sws.recv_loop(requests()))
        await asyncio.sleep(0.05)
        assert not recv.done() and len(sws.ws.ch) <= cap, f"{len(sws.ws.ch)} queued, bound {cap}"
        got = 0
        while got < 3 * cap:
            got += len(sws.ws.ch.take())
            await asyncio.sleep(0)
            assert len(sws.ws.ch) <= cap
        await recv

    asyncio.run(run())
