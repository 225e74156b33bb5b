"""The lessor: leases by id, their deadlines and attached keys (etcd's server/lease/lessor.go).

Two kinds of state, kept apart on purpose:

* Replicated state — which leases exist, their TTL, which keys are attached —
  changes only in the apply step (`grant`, `revoke`, `checkpoint`,
  `on_kv_changes`), so every member holds the same. Grant and revoke write the
  `lease` bucket into the write batch of the apply that changed them, so the
  consistent index covers them: after a crash either both are on disk or
  neither, and the WAL replay redoes both.
* Local state — deadlines — exists only on the primary lessor (the raft
  leader's). A member that is not the leader keeps every lease "forever";
  becoming leader (`promote`) gives every lease a fresh full TTL plus an
  extension (etcd extends by one election timeout, because the new leader
  cannot know when the old one last saw a keep-alive); losing leadership
  (`demote`) suspends expiry again. Only the primary renews leases and finds
  expired ones, and it does not revoke them itself: revocation goes through
  the raft log (`LeaseRevokeRequest`) so all members delete the same keys at
  the same revision.

Everything runs on the event-loop thread, so there are no locks. Time comes
from an injected monotonic clock (seconds, float) so tests can drive it.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from etcdpy import errors
from etcdpy.lease import persist
from etcdpy.pb import kv_pb2

if TYPE_CHECKING:
    from etcdpy.mvcc import Backend, Batch, KVStore

BUCKET_LEASE = "lease"  # etcd's bucket name (also etcdpy.mvcc.backend.BUCKET_LEASE)

MAX_LEASE_TTL = 9_000_000_000
"""etcd's MaxLeaseTTL (seconds); a grant above it fails with ErrLeaseTTLTooLarge."""

LEASE_REVOKE_RATE = 1000
"""etcd's leaseRevokeRate: at most this many expired leases are revoked per second."""

EXPIRED_LEASE_RETRY_INTERVAL = 3.0
"""etcd's expiredLeaseRetryInterval: an expired lease handed out for revocation is
not handed out again before this many seconds, so a slow revoke is not duplicated."""

FOREVER_SECONDS = (2**63 - 1) / 1e9
"""What etcd reports as the remaining time of a lease with no deadline (math.MaxInt64 ns)."""

_RECOVER_PAGE = 10_000
_PUT = kv_pb2.Event.PUT


def min_lease_ttl(election_ticks: int, heartbeat_ms: int) -> int:
    """etcd's minimum TTL: ceil(1.5 election timeouts) in whole seconds (2 s with the defaults).

    A shorter lease could expire during the election that follows a leader
    failure, before any member is able to renew it.
    """
    return math.ceil((3 * election_ticks // 2) * heartbeat_ms / 1000)


class NotPrimary(Exception):
    """Renew asked of a lessor that is not the leader's (etcd's ErrNotPrimary; never client-visible)."""


class LeaseExpired(Exception):
    """Renew of a lease that is past its deadline but not revoked yet: the caller waits for the revoke."""


class TxnDelete(Protocol):
    """What revocation needs from an MVCC write txn (etcd's lease.TxnDelete)."""

    @property
    def batch(self) -> Batch: ...

    def delete_range(self, key: bytes, end: bytes | None) -> tuple[int, list[kv_pb2.KeyValue]]: ...


@dataclass(eq=False)
class Lease:
    """One lease. `expiry` is a clock reading, or None for "no deadline" (not primary)."""

    id: int
    ttl: int
    remaining_ttl: int = 0
    expiry: float | None = None
    keys: set[bytes] = field(default_factory=set)

    def renewal_ttl(self) -> int:
        """getRemainingTTL: a checkpointed remaining TTL, when set, replaces the TTL on promotion."""
        return self.remaining_ttl if self.remaining_ttl > 0 else self.ttl

    def record(self) -> persist.LeaseRecord:
        return persist.LeaseRecord(id=self.id, ttl=self.ttl, remaining_ttl=self.remaining_ttl)


class Lessor:
    """etcd's lessor, minus the goroutines: the server drives expiry (see etcdpy.lease.expiry)."""

    def __init__(
        self,
        min_ttl: int,
        clock: Callable[[], float] = time.monotonic,
        revoke_rate: int = LEASE_REVOKE_RATE,
        expired_retry_interval: float = EXPIRED_LEASE_RETRY_INTERVAL,
    ) -> None:
        self.min_ttl = min_ttl
        self.revoke_rate = revoke_rate
        self.expired_retry_interval = expired_retry_interval
        self._clock = clock
        self._leases: dict[int, Lease] = {}
        self._item_map: dict[bytes, int] = {}
        self._primary = False
        # etcd's LeaseExpiredNotifier as a lazy heap with at most one live entry per lease
        # (etcd updates its entry in place): _queued_at[id] is the time of that entry and
        # _notify_at[id] the time wanted now. A renewal only moves the wanted time later;
        # the entry is moved when it surfaces. Entries whose time is not _queued_at[id]
        # are stale and dropped when they surface.
        self._heap: list[tuple[float, int]] = []
        self._notify_at: dict[int, float] = {}
        self._queued_at: dict[int, float] = {}
        self._waiters: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ recovery

    def recover(self, backend: Backend, store: KVStore, leased: Iterable[tuple[bytes, int]] | None = None) -> None:
        """initAndRecover + the KV restore's re-attach: leases from the bucket, keys from the live KVs.

        Every recovered lease starts with no deadline; the next promotion gives it one.
        `leased` is (key, lease) of every live key holding one, when the caller already
        collected it off the loop (snapshot install); otherwise the store is scanned here.
        """
        self._leases.clear()
        self._item_map.clear()
        self._clear_notifier()
        for _key, value in backend.iterate(BUCKET_LEASE):
            rec = persist.decode(value)
            self._leases[rec.id] = Lease(id=rec.id, ttl=max(rec.ttl, self.min_ttl), remaining_ttl=rec.remaining_ttl)
        if leased is not None:
            for key, lease_id in leased:
                if lease_id in self._leases:
                    self._attach(key, lease_id)
        elif self._leases:  # without leases no live key can hold one: revoke deletes them atomically
            for kv in _live_kvs(store):
                if kv.lease:
                    self._attach(kv.key, kv.lease)
        if self._primary:
            self.promote(0.0)

    # ------------------------------------------------------------------ apply step (replicated)

    def lookup(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def grant(self, lease_id: int, ttl: int, batch: Batch) -> Lease:
        """Create a lease and stage its bucket row in `batch`; checks in etcd's order.

        A TTL below the minimum is raised to it and the raised value is what the
        client is told, exactly as etcd answers a grant of 1 s with TTL 2.
        """
        if lease_id == 0:
            raise errors.ErrLeaseNotFound()
        if ttl > MAX_LEASE_TTL:
            raise errors.ErrLeaseTTLTooLarge()
        if lease_id in self._leases:
            raise errors.ErrLeaseExist()
        lease = Lease(id=lease_id, ttl=max(ttl, self.min_ttl))
        if self._primary:
            self._refresh(lease, 0.0, self._clock())
        self._leases[lease_id] = lease
        _persist(lease, batch)
        return lease

    def revoke(self, lease_id: int, txn: TxnDelete) -> None:
        """Delete the lease's keys in `txn` (sorted, so every member writes the same) and its row.

        Both land in the one write batch of this apply: one revision for all
        the keys, and no state where the lease is gone but its keys are not.
        """
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            raise errors.ErrLeaseNotFound()
        self._notify_at.pop(lease_id, None)
        self._queued_at.pop(lease_id, None)
        for key in sorted(lease.keys):
            txn.delete_range(key, None)
            if self._item_map.get(key) == lease_id:
                del self._item_map[key]
        txn.batch.delete(BUCKET_LEASE, persist.lease_key(lease_id))
        self._wake()

    def checkpoint(self, lease_id: int, remaining_ttl: int) -> None:
        """Record a checkpointed remaining TTL (used by the next promotion); unknown ids are ignored.

        Not persisted, as in etcd 3.4/3.5 without --experimental-enable-lease-checkpoint-persist.
        """
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.remaining_ttl = remaining_ttl

    def on_kv_changes(self, events: Iterable[kv_pb2.Event]) -> None:
        """Attach/detach keys after an apply committed: a put moves the key to its new lease
        (none = detached), a delete detaches it. Deriving this from the committed events
        means an aborted write never touches the lessor."""
        for ev in events:
            key = ev.kv.key
            new = ev.kv.lease if ev.type == _PUT else 0
            old = self._item_map.get(key, 0)
            if old == new:
                continue
            if old:
                self._detach(key, old)
            if new:
                self._attach(key, new)

    def _attach(self, key: bytes, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is None:
            return  # cannot happen after a put's lease check; etcd only logs it on recovery
        lease.keys.add(key)
        self._item_map[key] = lease_id

    def _detach(self, key: bytes, lease_id: int) -> None:
        self._item_map.pop(key, None)
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def get_lease(self, key: bytes) -> int:
        """GetLease: the lease a key is attached to, 0 for none."""
        return self._item_map.get(key, 0)

    # ------------------------------------------------------------------ primary only (local)

    @property
    def is_primary(self) -> bool:
        return self._primary

    def promote(self, extend: float) -> None:
        """Become the primary: every lease gets deadline now + extend + TTL.

        With many leases, etcd also spreads deadlines that pile up in the same
        second, so that no more than 3/4 of the revoke rate expire per second.
        """
        self._primary = True
        now = self._clock()
        for lease in self._leases.values():
            self._refresh(lease, extend, now)
        if len(self._leases) >= self.revoke_rate:
            self._spread_expiries(extend, now)
        self._wake()

    def _spread_expiries(self, extend: float, now: float) -> None:
        leases = sorted(self._leases.values(), key=lambda le: (self._remaining(le, now), le.id))
        base_window = self._remaining(leases[0], now)
        next_window = base_window + 1.0
        expires = 0
        target = (3 * self.revoke_rate) // 4
        for lease in leases:
            remaining = self._remaining(lease, now)
            if remaining > next_window:
                base_window = remaining
                next_window = base_window + 1.0
                expires = 1
                continue
            expires += 1
            if expires <= target:
                continue
            delay = expires / target - (remaining - base_window)
            next_window = base_window + delay
            self._refresh(lease, delay + extend, now)

    def demote(self) -> None:
        """Stop being the primary: no lease expires here until the next promotion."""
        for lease in self._leases.values():
            lease.expiry = None
        self._clear_notifier()
        self._primary = False
        self._wake()  # a renewal waiting for promotion must learn that this member lost the lead

    def renew(self, lease_id: int) -> int:
        """Give a lease a fresh full TTL and return it (what a keep-alive answers).

        NotPrimary on a non-leader, ErrLeaseNotFound for an unknown lease, and
        LeaseExpired when the deadline passed: the caller must wait until the
        revoke applies (then it is "not found") or this lessor is demoted.
        """
        if not self._primary:
            raise NotPrimary()
        lease = self._leases.get(lease_id)
        if lease is None:
            raise errors.ErrLeaseNotFound()
        now = self._clock()
        if self._remaining(lease, now) <= 0:
            raise LeaseExpired()
        # etcd first clears a checkpointed remaining TTL through the log, then refreshes
        # with the full TTL; without a checkpointer only the full TTL matters.
        self._set_expiry(lease, now + lease.ttl)
        return lease.ttl

    def find_expired(self, limit: int) -> list[Lease]:
        """Up to `limit` leases past their deadline, each then held back for the retry interval."""
        if not self._primary:
            return []
        now = self._clock()
        found: list[Lease] = []
        while len(found) < limit:
            top = self._peek()
            if top is None or now < top[0]:
                break
            lease = self._leases[top[1]]
            self._register(lease.id, now + self.expired_retry_interval)
            if self._remaining(lease, now) <= 0:
                found.append(lease)
        return found

    # ------------------------------------------------------------------ queries

    def remaining(self, lease: Lease) -> float:
        """Seconds until the deadline (negative once past), FOREVER_SECONDS with no deadline."""
        return self._remaining(lease, self._clock())

    def time_to_live(self, lease: Lease) -> int:
        """The TTL etcd reports: the remaining seconds truncated toward zero (Go's int64(float))."""
        return int(self.remaining(lease))

    def leases(self) -> list[Lease]:
        """All leases, soonest deadline first (etcd's leasesByExpiry), ties by id."""
        now = self._clock()
        return sorted(self._leases.values(), key=lambda le: (self._remaining(le, now), le.id))

    def __len__(self) -> int:
        return len(self._leases)

    # ------------------------------------------------------------------ waiting (for the async glue)

    def add_waiter(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, at the next promotion, demotion or revoke.

        Renewal waits on these to re-check its condition without polling.
        """
        self._waiters.append(callback)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for cb in waiters:
            cb()

    # ------------------------------------------------------------------ deadlines

    def _remaining(self, lease: Lease, now: float) -> float:
        if lease.expiry is None:
            return FOREVER_SECONDS
        return lease.expiry - now

    def _refresh(self, lease: Lease, extend: float, now: float) -> None:
        self._set_expiry(lease, now + extend + lease.renewal_ttl())

    def _set_expiry(self, lease: Lease, expiry: float) -> None:
        lease.expiry = expiry
        self._register(lease.id, expiry)

    def _register(self, lease_id: int, at: float) -> None:
        self._notify_at[lease_id] = at
        queued = self._queued_at.get(lease_id)
        if queued is not None and queued <= at:
            return  # the queued entry surfaces first and is moved to `at` then (no growth per renewal)
        self._queued_at[lease_id] = at
        heapq.heappush(self._heap, (at, lease_id))

    def _peek(self) -> tuple[float, int] | None:
        heap = self._heap
        while heap:  # each pass pops, moves or returns: bounded by the live entries
            at, lease_id = heap[0]
            if self._queued_at.get(lease_id) != at:
                heapq.heappop(heap)  # stale: superseded by an earlier entry
                continue
            wanted = self._notify_at.get(lease_id)
            if wanted is None:
                heapq.heappop(heap)
                del self._queued_at[lease_id]
                continue
            if wanted > at:  # renewed since it was queued: move it
                heapq.heapreplace(heap, (wanted, lease_id))
                self._queued_at[lease_id] = wanted
                continue
            return at, lease_id
        return None

    def _clear_notifier(self) -> None:
        self._heap.clear()
        self._notify_at.clear()
        self._queued_at.clear()


def _persist(lease: Lease, batch: Batch) -> None:
    batch.put(BUCKET_LEASE, persist.lease_key(lease.id), persist.encode(lease.record()))


def _live_kvs(store: KVStore) -> Iterator[kv_pb2.KeyValue]:
    """Every live key at the current revision, a page at a time (memory stays bounded)."""
    start = b"\x00"
    while True:
        page = store.range(start, b"\x00", limit=_RECOVER_PAGE).kvs
        yield from page
        if len(page) < _RECOVER_PAGE:
            return
        start = page[-1].key + b"\x00"
