"""The backend space quota (etcd's server/storage/quota.go).

etcd charges each write an estimated cost and refuses it when the backend size
plus that cost would reach `--quota-backend-bytes` (0 = the 2 GiB default):

* a Put costs 256 bytes of metadata overhead plus its key and value;
* a Txn costs the larger of its success and failure branches, counting only the
  top-level Put ops of each branch (nested txns and other ops cost nothing);
* a LeaseGrant costs 64 bytes;
* a request that costs nothing (a Txn without puts) always passes, even over
  the quota (etcd 3.4.23 behaves so: reads and deletes must keep working while
  the operator frees space).

The size is the RocksDB directory size (`Backend.size`), which walks the
directory; the quota is asked on every write, so the size is cached for
`SIZE_TTL_SECONDS` and refreshed early after operations that change it a lot
(defragmentation) by `invalidate()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from etcdpy.config import DEFAULT_QUOTA_BACKEND_BYTES
from etcdpy.pb import raft_internal_pb2, rpc_pb2

KV_OVERHEAD = 256
"""etcd's kvOverhead: estimated metadata cost of storing one key."""

LEASE_OVERHEAD = 64
"""etcd's leaseOverhead: estimated cost of storing one lease."""

MAX_QUOTA_BYTES = 8 * 1024 * 1024 * 1024
"""etcd's suggested maximum quota; larger ones only get a warning."""

COST_BOUND_PER_BYTE = 1 + KV_OVERHEAD // 2
"""No request costs more than this many times its encoded size: every charged put needs at
least two bytes of encoding and costs its key and value (part of the size) plus KV_OVERHEAD;
a LeaseGrant (at least two bytes) costs LEASE_OVERHEAD. Below the quota by that margin, the
exact cost need not be computed."""

REQUEST_ENVELOPE_BYTES = 1 << 20
"""How much a proposed request's encoding may exceed --max-request-bytes: the gRPC layer lets a
message through 512 KiB over it (so the server can answer etcd's "too large" error), and the
internal header adds a few bytes."""

SIZE_TTL_SECONDS = 0.1
"""How long a measured backend size is trusted before it is measured again."""


def cost_put(r: rpc_pb2.PutRequest) -> int:
    return KV_OVERHEAD + len(r.key) + len(r.value)


def cost_txn(r: rpc_pb2.TxnRequest) -> int:
    """The costlier branch; only top-level puts count (as etcd's costTxn)."""

    def branch(ops: Iterable[rpc_pb2.RequestOp]) -> int:
        return sum(cost_put(op.request_put) for op in ops if op.WhichOneof("request") == "request_put")

    return max(branch(r.success), branch(r.failure))


def cost(req: raft_internal_pb2.InternalRaftRequest) -> int:
    """The quota charge of a proposed request; 0 for every kind etcd does not charge."""
    kind = _which(req)
    if kind == "put":
        return cost_put(req.put)
    if kind == "txn":
        return cost_txn(req.txn)
    if kind == "lease_grant":
        return LEASE_OVERHEAD
    return 0


def is_charged(req: raft_internal_pb2.InternalRaftRequest) -> bool:
    """Whether the request is one the quota judges at all (Put, Txn, LeaseGrant)."""
    return _which(req) in ("put", "txn", "lease_grant")


_CHARGED_FIELDS = ("put", "txn", "lease_grant")


def _which(req: raft_internal_pb2.InternalRaftRequest) -> str | None:
    """The charged request kind set in `req` (InternalRaftRequest has no oneof, so look field by field)."""
    for name in _CHARGED_FIELDS:
        if req.HasField(name):
            return name
    return None


class BackendQuota:
    """etcd's backendQuota over a size function, with a short-lived size cache."""

    def __init__(
        self,
        size_fn: Callable[[], int],
        quota_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        max_request_bytes: int | None = None,
    ) -> None:
        self.max_bytes = quota_bytes if quota_bytes > 0 else DEFAULT_QUOTA_BACKEND_BYTES
        self._any_request_cost = (
            None if max_request_bytes is None else COST_BOUND_PER_BYTE * (max_request_bytes + REQUEST_ENVELOPE_BYTES)
        )
        """The most any request that can reach the quota costs (None: unknown); below the quota by
        this much, a request is not even looked at."""
        self._size_fn = size_fn
        self._clock = clock
        self._size = 0
        self._measured_at: float | None = None

    def size(self) -> int:
        now = self._clock()
        if self._measured_at is None or now - self._measured_at >= SIZE_TTL_SECONDS:
            self._size = self._size_fn()
            self._measured_at = now
        return self._size

    def invalidate(self) -> None:
        """Measure again on the next question (after a defragmentation or a restore)."""
        self._measured_at = None

    def surely_fits(self) -> bool:
        """Whether any request at all fits against the size last measured, without measuring.

        The apply step's usual answer to `available(req, measure=False)`, without looking at
        the request: its per-entry question is then one comparison.
        """
        return self._measured_at is not None and self._fits_any_at(self._size)

    def fits_any(self) -> bool:
        """Whether any request at all fits, measuring the size when due: `available`'s first
        answer, for a caller that has not built the request (`etcdpy.server.rawrequest`)."""
        return self._fits_any_at(self.size())

    def _fits_any_at(self, size: int) -> bool:
        bound = self._any_request_cost
        return bound is not None and size + bound < self.max_bytes

    def available(self, req: raft_internal_pb2.InternalRaftRequest, measure: bool = True) -> bool:
        """etcd's Available: free requests always pass; others need size + cost < quota.

        The apply step asks with measure=False, i.e. against the size the proposer's own
        check just used: in etcd both checks read the same size counter, which moves only
        when the backend commits, so a write that passed its check rarely fails at apply.
        Measuring again in between would make that common here (the size is a directory walk).
        """
        size = self.size() if measure or self._measured_at is None else self._size
        if self._fits_any_at(size):
            return True  # far enough below the quota for the largest request there can be
        if size + COST_BOUND_PER_BYTE * req.ByteSize() < self.max_bytes:
            return True  # whatever it costs, it fits (the usual case: far below the quota)
        c = cost(req)
        if c == 0:
            return True
        return size + c < self.max_bytes

    def remaining(self) -> int:
        return self.max_bytes - self.size()
