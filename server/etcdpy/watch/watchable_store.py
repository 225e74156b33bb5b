"""The watchable store: etcd's `watchable_store.go` over our MVCC `KVStore`.

Every watcher is in exactly one place:

* **synced**: it has seen everything up to the current revision. `notify`,
  called by the KV store once per committed write txn with all of that txn's
  events, hands it its matching events directly.
* **unsynced**: it still needs history (a start revision in the past, or it
  fell behind). The sync loop reads the store's history in bounded batches
  from the lowest revision any chosen watcher needs, and moves watchers to
  synced once they reach the current revision.
* **victim**: its stream's channel was full when a response was due. The
  response is parked with the watcher and retried by the victim loop; the
  watcher gets nothing else until it is delivered, so order holds and nothing
  is lost, and neither the write path nor other watchers ever wait for it.

A watcher whose next revision has been compacted away gets one response with
`compact_revision` set and leaves every group (etcd cancels it).

Everything runs on the event loop thread (the store is loop-owned), so there
are no locks; each step is bounded (watchers per sync, events per read) so the
loop is never held for long.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from etcdpy.mvcc import KVStore
from etcdpy.pb.kv_pb2 import Event
from etcdpy.watch.watcher import (
    DEFAULT_CHANNEL_CAPACITY,
    DEFAULT_RESPONSES_PER_WATCHER,
    INVALID_WATCH_ID,
    SharedEvents,
    WatchChannel,
    Watcher,
    WatchResponse,
    WatchStream,
)
from etcdpy.watch.watcher_group import WatcherGroup, new_watcher_batch

SYNC_INTERVAL = 0.1
"""Seconds between sync rounds while watchers are unsynced (etcd: 100 ms)."""

VICTIM_RETRY_INTERVAL = 0.01
"""Fallback retry period for victims (etcd: 10 ms); a draining channel wakes the loop sooner."""

MAX_WATCHERS_PER_SYNC = 512
"""Unsynced watchers served per sync round (etcd's maxWatchersPerSync)."""

MAX_EVENTS_PER_SYNC = 1000
"""Events read from history per sync round; a txn's events are never split across rounds."""


class WatchableStore:
    """Watchers over a KVStore, grouped by how far they have caught up (see module docstring)."""

    def __init__(
        self,
        kv: KVStore,
        *,
        sync_interval: float = SYNC_INTERVAL,
        victim_interval: float = VICTIM_RETRY_INTERVAL,
        max_watchers_per_sync: int = MAX_WATCHERS_PER_SYNC,
        max_events_per_sync: int = MAX_EVENTS_PER_SYNC,
        channel_capacity: int = DEFAULT_CHANNEL_CAPACITY,
        responses_per_watcher: int = DEFAULT_RESPONSES_PER_WATCHER,
        logger: logging.Logger | None = None,
    ) -> None:
        self.kv = kv
        self.sync_interval = sync_interval
        self.victim_interval = victim_interval
        self.max_watchers_per_sync = max_watchers_per_sync
        self.max_events_per_sync = max_events_per_sync
        self.channel_capacity = channel_capacity
        self.responses_per_watcher = responses_per_watcher
        self.log = logger or logging.getLogger("etcdpy.watch")
        self.synced = WatcherGroup()
        self.unsynced = WatcherGroup()
        # Parked watcher -> (its undelivered response, its min_rev once delivered).
        self.victims: dict[Watcher, tuple[WatchResponse, int]] = {}
        # The same victims by their stream's channel, in parking order: a channel that made room
        # is retried alone, and a full one is skipped without looking at its watchers.
        self._victims_by_ch: dict[WatchChannel, dict[Watcher, None]] = {}
        self._sync_wake = asyncio.Event()
        self._victim_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        kv.add_observer(self.notify)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the sync and victim loops (needs a running event loop)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="watch-sync"),
            asyncio.create_task(self._victim_loop(), name="watch-victims"),
        ]

    async def stop(self) -> None:
        """Stop the loops and detach from the KV store; watchers get nothing more."""
        self.kv.remove_observer(self.notify)
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def new_watch_stream(self) -> WatchStream:
        return WatchStream(self, self.channel_capacity, self.responses_per_watcher)

    def rev(self) -> int:
        return self.kv.current_rev

    # -- watchers ----------------------------------------------------------------

    def watch(
        self,
        key: bytes,
        end: bytes | None,
        start_rev: int,
        watch_id: int,
        ch: WatchChannel,
        drop_types: frozenset[int] = frozenset(),
    ) -> Watcher:
        """Register a watcher; it is synced unless it must first replay history."""
        cur = self.kv.current_rev
        w = Watcher(key, end, start_rev, watch_id, ch, drop_types)
        if start_rev <= 0 or start_rev > cur:
            w.min_rev = max(cur + 1, start_rev)
            self.synced.add(w)
        else:
            self.unsynced.add(w)
            self._sync_wake.set()  # start replaying now rather than on the next tick
        return w

    def cancel_watcher(self, w: Watcher) -> None:
        """Forget `w` wherever it is (synced, unsynced, parked as a victim, or compacted)."""
        if w.cancelled:
            return
        w.cancelled = True
        if not self.unsynced.delete(w) and not self.synced.delete(w):
            self._unpark(w)

    def restore(self) -> None:
        """After the KV store was replaced by a snapshot: every synced watcher must re-read history."""
        for w in list(self.synced.watchers):
            w.restore = True
            self.unsynced.add(w)
        self.synced = WatcherGroup()
        self._sync_wake.set()

    # -- the write path -------------------------------------------------------------

    def notify(self, rev: int, events: Sequence[Event]) -> None:
        """Deliver one committed txn's events (all at `rev`) to the synced watchers of their keys.

        Called synchronously by the KV store when the txn ends, so a synced
        watcher can never miss a revision. Never waits: a watcher whose channel
        is full is parked as a victim with its response.
        """
        if not self.synced.watchers:
            return
        shared = SharedEvents(events)
        for w, evs in new_watcher_batch(self.synced, events).items():
            resp = WatchResponse(w.id, rev, evs, shared=shared)
            if not w.send(resp):
                self._park(w, resp, rev + 1)
                self.synced.delete(w)
            w.min_rev = rev + 1

    def _park(self, w: Watcher, resp: WatchResponse, next_rev: int) -> None:
        if not self.victims:
            self.log.debug("slow watch consumer: parking watchers as victims", extra={"fields": {"watch-id": w.id}})
        w.victim = True
        w.min_rev = next_rev
        self.victims[w] = (resp, next_rev)
        self._victims_by_ch.setdefault(w.ch, {})[w] = None
        self._victim_wake.set()

    def _unpark(self, w: Watcher) -> None:
        """Drop `w` from the victims (cancelled, or its response delivered)."""
        if self.victims.pop(w, None) is None:
            return
        parked = self._victims_by_ch.get(w.ch)
        if parked is not None:
            parked.pop(w, None)
            if not parked:
                del self._victims_by_ch[w.ch]

    # -- catching up: unsynced watchers ----------------------------------------------

    def sync_watchers(self) -> tuple[int, bool]:
        """One bounded sync round; returns (watchers still unsynced, whether anything moved).

        Chooses up to `max_watchers_per_sync` unsynced watchers, cancels those
        whose next revision is compacted, reads at most `max_events_per_sync`
        events of history from the lowest revision the rest need, and sends
        each its share. A watcher that reached the current revision becomes
        synced; one that still has history to read goes to the back of the
        unsynced group, so every watcher gets its turn.
        """
        if not self.unsynced.watchers:
            return 0, False
        kv = self.kv
        cur, compact = kv.current_rev, kv.compact_rev
        chosen, min_rev = self.unsynced.choose(self.max_watchers_per_sync, cur, compact)
        moved = self._cancel_compacted(chosen, compact, cur)
        if min_rev is None:
            return len(self.unsynced), moved
        limit = self.max_events_per_sync
        evs = kv.events(min_rev, cur + 1, limit)
        upto = evs[-1].kv.mod_revision if limit and len(evs) >= limit else cur
        shared = SharedEvents(evs)
        batch = new_watcher_batch(chosen, evs)
        for w in list(chosen.watchers):
            if w.min_rev < compact or w.min_rev > upto and w.min_rev <= cur:
                continue  # compacted but not yet told (channel full), or beyond this read
            self._advance(w, batch.get(w), max(w.min_rev, upto + 1), cur, shared)
            moved = True
        return len(self.unsynced), moved

    def _advance(self, w: Watcher, evs: list[Event] | None, next_rev: int, cur: int, shared: SharedEvents) -> None:
        """Send an unsynced watcher its history share and regroup it by how far it got."""
        self.unsynced.delete(w)
        if evs:
            resp = WatchResponse(w.id, cur, evs, shared=shared)
            if not w.send(resp):
                self._park(w, resp, next_rev)
                return
        w.min_rev = next_rev
        (self.synced if next_rev > cur else self.unsynced).add(w)

    def _cancel_compacted(self, chosen: WatcherGroup, compact: int, cur: int) -> bool:
        """Tell watchers that need compacted revisions, and drop them (they stay if their channel is full)."""
        moved = False
        for w in list(chosen.watchers):
            if w.min_rev >= compact:
                continue
            if w.ch.try_send(WatchResponse(w.id, 0, compact_revision=compact)):
                w.compacted = True
                self.unsynced.delete(w)
                if chosen is not self.unsynced:
                    chosen.delete(w)
                moved = True
        return moved

    # -- slow consumers: victims ---------------------------------------------------

    def move_victims(self) -> int:
        """Retry parked responses; delivered watchers rejoin synced or unsynced. Returns how many.

        Per channel, in parking order, until the channel is full again: a wake-up costs the
        channels and the moves, not a look at every victim (a fan-out can park thousands).
        """
        if not self.victims:
            return 0
        cur = self.kv.current_rev
        moved = 0
        for ch, parked in list(self._victims_by_ch.items()):
            if ch.full() and not ch.closed:
                continue
            for w in list(parked):
                resp, next_rev = self.victims[w]
                if not ch.try_send(resp):
                    break
                self._unpark(w)
                w.victim = False
                w.min_rev = next_rev
                (self.unsynced if next_rev <= cur else self.synced).add(w)
                moved += 1
        if moved and self.unsynced.watchers:
            self._sync_wake.set()
        return moved

    def wake_victims(self) -> None:
        """A channel made room: retry victims now instead of at the next tick."""
        if self.victims:
            self._victim_wake.set()

    # -- progress ----------------------------------------------------------------

    def all_synced(self, watchers: Iterable[Watcher]) -> bool:
        """Whether none of `watchers` has events still to come below the current revision.

        A compacted watcher counts as synced: it will never get another event.
        """
        synced = self.synced.watchers
        return all(w in synced or w.compacted for w in watchers)

    def progress(self, w: Watcher) -> None:
        """A progress notification for one synced watcher (dropped if its channel is full, as in etcd)."""
        if w in self.synced.watchers:
            w.ch.try_send(WatchResponse(w.id, self.rev()))

    def progress_all(self, watchers: Iterable[Watcher], ch: WatchChannel) -> bool:
        """One notification (watch id -1) for a whole stream, only if every watcher on it is synced.

        Only then is every event up to the current revision already queued
        ahead of it in the channel, which is what a progress revision promises.
        """
        if not self.all_synced(watchers):
            return False
        return ch.try_send(WatchResponse(INVALID_WATCH_ID, self.rev()))

    # -- loops -------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        """Run sync rounds every `sync_interval`, back to back (yielding) while they make progress."""
        while True:
            pause = self.sync_interval
            if self.unsynced.watchers:
                t0 = time.monotonic()
                try:
                    remaining, moved = self.sync_watchers()
                except Exception:  # noqa: BLE001 - keep serving other watchers; a bug is logged
                    self.log.exception("watch sync round failed")
                    remaining, moved = len(self.unsynced), False
                if remaining and moved:
                    # More to do: give the loop back for as long as the round took, then go on.
                    await asyncio.sleep(min(time.monotonic() - t0, self.sync_interval))
                    continue
            await _wait(self._sync_wake, pause if self.unsynced.watchers else None)

    async def _victim_loop(self) -> None:
        """Retry parked responses whenever a channel drains, or every `victim_interval`."""
        while True:
            while self.move_victims():
                await asyncio.sleep(0)
            await _wait(self._victim_wake, self.victim_interval if self.victims else None)


async def _wait(ev: asyncio.Event, timeout: float | None) -> None:
    """Wait for `ev` (then clear it) or until `timeout` passes."""
    try:
        async with asyncio.timeout(timeout):
            await ev.wait()
    except TimeoutError:
        pass
    ev.clear()


__all__ = [
    "MAX_EVENTS_PER_SYNC",
    "MAX_WATCHERS_PER_SYNC",
    "SYNC_INTERVAL",
    "VICTIM_RETRY_INTERVAL",
    "WatchableStore",
]
