"""Watchers, their shared response channel and the watch stream (etcd's mvcc `watcher.go`).

A `WatchStream` is what one client gRPC Watch stream owns: many watchers that
share one bounded `WatchChannel`. The store pushes `WatchResponse`s into the
channel without ever waiting (a full channel turns the watcher into a victim,
see watchable_store.py); the API layer's send loop drains it.

Events are protobuf `mvccpb.Event` objects shared by every watcher that
receives them and must be treated as read-only. Each response also carries the
`SharedEvents` it was cut from, so the API layer can encode every event once
and reuse the bytes for all watchers and streams (see api/watch.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from etcdpy.pb.kv_pb2 import Event

if TYPE_CHECKING:
    from etcdpy.watch.watchable_store import WatchableStore

AUTO_WATCH_ID = 0
"""A create request with this watch id asks the stream to pick one (etcd's AutoWatchID)."""

INVALID_WATCH_ID = -1
"""Watch id of responses that belong to no watcher: failed creates, stream-wide progress."""

DEFAULT_CHANNEL_CAPACITY = 128
"""Responses buffered per stream before its watchers become victims (etcd's chanBufLen)..."""

DEFAULT_RESPONSES_PER_WATCHER = 4
"""...or this many per watcher on the stream, whichever is more."""


class WatchError(Exception):
    """A watch create/cancel refusal; the message is etcd's, sent as cancel_reason."""


class ErrWatcherNotExist(WatchError):
    def __init__(self) -> None:
        super().__init__("mvcc: watcher does not exist")


class ErrEmptyWatcherRange(WatchError):
    def __init__(self) -> None:
        super().__init__("mvcc: watcher range is empty")


class ErrWatcherDuplicateID(WatchError):
    def __init__(self) -> None:
        super().__init__("mvcc: duplicate watch ID provided on the WatchStream")


class SharedEvents:
    """The events of one notify (one txn) or one history read, shared by all watchers served from it.

    `cache` belongs to whoever encodes the events (the API layer); keeping it
    here lets one encoding serve every watcher on every stream. It also pins
    `events`, so caching by `id(event)` is safe for the cache's lifetime.
    """

    __slots__ = ("events", "cache")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self.cache: dict[Any, Any] = {}


class WatchResponse:
    """What the store sends one watcher (etcd's mvcc.WatchResponse).

    `revision` is the store revision the response reflects; a response with no
    events is a progress notification; `compact_revision` != 0 means the
    watcher was cancelled because its next revision was compacted away.
    """

    __slots__ = ("watch_id", "revision", "events", "compact_revision", "shared")

    def __init__(
        self,
        watch_id: int,
        revision: int,
        events: Sequence[Event] = (),
        compact_revision: int = 0,
        shared: SharedEvents | None = None,
    ) -> None:
        self.watch_id = watch_id
        self.revision = revision
        self.events = events
        self.compact_revision = compact_revision
        self.shared = shared

    def __repr__(self) -> str:
        return (
            f"WatchResponse(id={self.watch_id}, rev={self.revision}, events={len(self.events)}, "
            f"compact={self.compact_revision})"
        )


class WatchChannel:
    """A bounded FIFO of responses for one stream, never blocking the producer.

    `try_send` refuses when full (the store then parks the watcher as a victim
    instead of blocking a write); `force` always appends, for control responses
    that the API layer must not lose (created, canceled, progress). The API layer
    awaits `wait_room` before handling each client request, so those stay within
    the bound too (etcd's recvLoop blocks on its bounded ctrlStream the same way:
    a client that sends requests without reading is slowed down, not buffered).
    `on_space` is called when the consumer takes items, so victims are retried as
    soon as there is room rather than on a timer.
    """

    def __init__(self, capacity: int = DEFAULT_CHANNEL_CAPACITY, on_space: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self._q: deque[Any] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._on_space = on_space
        self.closed = False

    def __len__(self) -> int:
        return len(self._q)

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def try_send(self, item: Any) -> bool:
        if self.closed:
            return True  # a closed stream's watchers are being cancelled: drop, never victimize
        if len(self._q) >= self.capacity:
            return False
        self._q.append(item)
        self._ready.set()
        return True

    def force(self, item: Any) -> None:
        if not self.closed:
            self._q.append(item)
            self._ready.set()

    async def wait_room(self) -> None:
        """Until fewer than `capacity` items are queued (or the channel is closed)."""
        while len(self._q) >= self.capacity and not self.closed:
            self._room.clear()
            await self._room.wait()

    async def wait(self) -> None:
        """Until something is queued (or the channel is closed)."""
        while not self._q and not self.closed:
            self._ready.clear()
            await self._ready.wait()

    def take(self, max_items: int = 0) -> list[Any]:
        """Pop up to `max_items` (0 = all) queued items, oldest first."""
        q = self._q
        n = len(q) if max_items <= 0 else min(max_items, len(q))
        out = [q.popleft() for _ in range(n)]
        if out:
            self._room.set()
        if out and self._on_space is not None:
            self._on_space()
        return out

    def close(self) -> None:
        self.closed = True
        self._q.clear()
        self._ready.set()
        self._room.set()


class Watcher:
    """One watch: a key or range, the next revision it needs, and where its responses go.

    `end` is None for a single key, b"" for every key >= `key` (etcd's "\\0"
    range end), else the exclusive range end. `min_rev` is the lowest revision
    the watcher has not yet been sent. Exactly one of: in the synced group, in
    the unsynced group, a victim, compacted, or cancelled.
    """

    __slots__ = ("key", "end", "min_rev", "id", "ch", "drop_types", "victim", "compacted", "restore", "cancelled")

    def __init__(
        self, key: bytes, end: bytes | None, min_rev: int, watch_id: int, ch: WatchChannel, drop_types: frozenset[int]
    ) -> None:
        self.key = key
        self.end = end
        self.min_rev = min_rev
        self.id = watch_id
        self.ch = ch
        self.drop_types = drop_types
        self.victim = False
        self.compacted = False
        self.restore = False
        self.cancelled = False

    def __repr__(self) -> str:
        return f"Watcher(id={self.id}, key={self.key!r}, end={self.end!r}, min_rev={self.min_rev})"

    def contains(self, key: bytes) -> bool:
        end = self.end
        if end is None:
            return key == self.key
        return self.key <= key and (end == b"" or key < end)

    def filter(self, events: Sequence[Event]) -> Sequence[Event]:
        """The events this watcher's NOPUT/NODELETE filters let through."""
        drop = self.drop_types
        if not drop:
            return events
        return [e for e in events if e.type not in drop]

    def send(self, resp: WatchResponse) -> bool:
        """Queue `resp` without waiting; False if the channel is full.

        Filtered-out events are dropped here; a response left with no events is
        not sent at all (it is not a progress notification) and counts as sent.
        """
        if resp.events:
            evs = self.filter(resp.events)
            if not evs:
                return True
            resp.events = evs
        return self.ch.try_send(resp)


def filter_types(no_put: bool, no_delete: bool) -> frozenset[int]:
    """Event types to drop for the create request's NOPUT / NODELETE filters."""
    out = set()
    if no_put:
        out.add(Event.PUT)
    if no_delete:
        out.add(Event.DELETE)
    return frozenset(out)


class WatchStream:
    """etcd's mvcc watchStream: the watchers of one client stream and their shared channel.

    Watch ids are per stream: client-chosen ids must be unused; automatic ids
    count up from 0 and skip ids in use (etcd 3.4/3.5). A watcher cancelled by
    compaction keeps its id until the client cancels it, as in etcd.
    """

    def __init__(
        self,
        store: WatchableStore,
        capacity: int = DEFAULT_CHANNEL_CAPACITY,
        per_watcher: int = DEFAULT_RESPONSES_PER_WATCHER,
    ) -> None:
        self._store = store
        self._base_capacity = capacity
        self._per_watcher = per_watcher
        self.ch = WatchChannel(capacity, store.wake_victims)
        self.watchers: dict[int, Watcher] = {}
        self._next_id = 0
        self.closed = False

    def watch(
        self,
        watch_id: int,
        key: bytes,
        end: bytes | None,
        start_rev: int,
        drop_types: frozenset[int] = frozenset(),
    ) -> int:
        """Create a watcher on [key, end) from `start_rev` (<= 0: the next revision); returns its id."""
        if end and key >= end:
            raise ErrEmptyWatcherRange()
        if self.closed:
            raise ErrEmptyWatcherRange()  # what etcd answers on a closed stream
        if watch_id == AUTO_WATCH_ID:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self.watchers:
            raise ErrWatcherDuplicateID()
        w = self._store.watch(key, end, start_rev, watch_id, self.ch, drop_types)
        self.watchers[watch_id] = w
        # Room for a few writes' worth of responses to every watcher: one write fanning out to
        # many watchers of a stream should not by itself turn them into victims.
        self.ch.capacity = max(self._base_capacity, self._per_watcher * len(self.watchers))
        return watch_id

    def cancel(self, watch_id: int) -> None:
        """Remove a watcher; ErrWatcherNotExist if the id is unknown (no response is due then)."""
        w = self.watchers.get(watch_id)
        if w is None or self.closed:
            raise ErrWatcherNotExist()
        self._store.cancel_watcher(w)
        del self.watchers[watch_id]

    def close(self) -> None:
        """Cancel every watcher and close the channel (the client stream is gone)."""
        if self.closed:
            return
        self.closed = True
        for w in self.watchers.values():
            self._store.cancel_watcher(w)
        self.watchers.clear()
        self.ch.close()

    @property
    def store(self) -> WatchableStore:
        return self._store

    def rev(self) -> int:
        return self._store.rev()

    def request_progress(self, watch_id: int) -> None:
        """Queue a progress notification for one watcher if it is synced (else nothing)."""
        w = self.watchers.get(watch_id)
        if w is not None:
            self._store.progress(w)

    def request_progress_all(self) -> bool:
        """Queue one stream-wide progress notification (watch id -1) if every watcher is synced.

        False when some watcher is behind or the channel is full: the caller
        retries later (etcd 3.5's deferred progress), because a revision
        announced now could be lower than events still to be delivered.
        """
        return self._store.progress_all(self.watchers.values(), self.ch)

    def all_synced(self, watchers: Iterable[Watcher] | None = None) -> bool:
        return self._store.all_synced(self.watchers.values() if watchers is None else watchers)


__all__ = [
    "AUTO_WATCH_ID",
    "DEFAULT_CHANNEL_CAPACITY",
    "DEFAULT_RESPONSES_PER_WATCHER",
    "INVALID_WATCH_ID",
    "ErrEmptyWatcherRange",
    "ErrWatcherDuplicateID",
    "ErrWatcherNotExist",
    "SharedEvents",
    "WatchChannel",
    "WatchError",
    "WatchResponse",
    "WatchStream",
    "Watcher",
    "filter_types",
]
