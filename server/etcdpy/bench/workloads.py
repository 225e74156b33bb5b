"""The request shapes each workload sends.

Every workload is one awaited unary KV call per operation, so latency means the same
thing across workloads: from handing the request to gRPC to having the decoded reply.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Awaitable, Callable

WORKLOADS: dict[str, str] = {
    "put": "Put of a random key from the keyspace with a fixed-size value",
    "range": "linearizable single-key Range over a preloaded keyspace",
    "range-serializable": "serializable single-key Range over a preloaded keyspace",
    "txn": "Txn(If ModRevision(key)==rev Then Put Else Range), kube-apiserver's write shape",
    "watch-fanout": "--watchers watches on one prefix over --watch-streams Watch streams, one writer at "
    "--watch-rate puts/s; delivered events/s, delivery latency, lost events",
    "lease-keepalive": "one lease and one LeaseKeepAlive stream per in-flight slot, keep-alives back to back",
}
"""Workload name -> one-line description (printed by --list-workloads and the README)."""

KEY_PREFIX: dict[str, bytes] = {
    "put": b"bench/put/",
    "range": b"bench/range/",
    "range-serializable": b"bench/range/",
    "txn": b"bench/txn/",
    "watch-fanout": b"bench/watch/",
    "lease-keepalive": b"bench/lease/",
}
"""Range workloads share one prefix so one preload serves both."""

PRELOADED = frozenset({"range", "range-serializable"})
"""Workloads that need every key of the keyspace to exist before they start."""

STREAMING = frozenset({"watch-fanout", "lease-keepalive"})
"""Workloads on bidirectional streams (etcdpy.bench.streams), not unary KV calls."""


def key_for(prefix: bytes, index: int) -> bytes:
    """Fixed-width keys, so every request in a workload has the same size."""
    return prefix + b"%010d" % index


@dataclass
class OpResult:
    """What one completed operation tells the caller beyond its latency."""

    conflict: bool = False


@dataclass
class TxnCache:
    """Per-process state of the txn workload, shared by its in-flight slots."""

    revisions: dict[bytes, int] = field(default_factory=dict)
    inflight: set[bytes] = field(default_factory=set)


Op = Callable[[random.Random], Awaitable[OpResult]]
"""One operation: picks its key with the given RNG and awaits the call."""


@dataclass(frozen=True)
class KeyChooser:
    """Picks keys from a client process's share of the keyspace.

    Processes get disjoint shares (index i belongs to worker i % clients) for the txn
    workload, whose cached mod revisions would otherwise be invalidated by the other
    processes and turn the run into a measurement of conflicts.
    """

    prefix: bytes
    keyspace: int
    worker: int = 0
    workers: int = 1

    def pick(self, rng: random.Random) -> bytes:
        """A uniformly random key from this worker's share."""
        share = max(1, (self.keyspace - self.worker + self.workers - 1) // self.workers)
        return key_for(self.prefix, rng.randrange(share) * self.workers + self.worker)


def make_op(
    workload: str,
    stub: Any,
    pb: Any,
    chooser: KeyChooser,
    value: bytes,
    timeout_s: float,
    txn_cache: TxnCache,
) -> Op:
    """Build the coroutine factory for one workload against one KV stub.

    `txn_cache` is shared by all slots of a process: each key's last known mod
    revision (the txn workload needs it the way kube-apiserver needs its watch cache)
    and the keys being written right now.
    """
    if workload == "put":
        return _put_op(stub, pb, chooser, value, timeout_s)
    if workload in ("range", "range-serializable"):
        return _range_op(stub, pb, chooser, timeout_s, workload == "range-serializable")
    if workload == "txn":
        return _txn_op(stub, pb, chooser, value, timeout_s, txn_cache)
    raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")


def _put_op(stub: Any, pb: Any, chooser: KeyChooser, value: bytes, timeout_s: float) -> Op:
    async def op(rng: random.Random) -> OpResult:
        await stub.Put(pb.PutRequest(key=chooser.pick(rng), value=value), timeout=timeout_s)
        return OpResult()

    return op


def _range_op(stub: Any, pb: Any, chooser: KeyChooser, timeout_s: float, serializable: bool) -> Op:
    async def op(rng: random.Random) -> OpResult:
        req = pb.RangeRequest(key=chooser.pick(rng), serializable=serializable)
        resp = await stub.Range(req, timeout=timeout_s)
        if len(resp.kvs) != 1:
            raise MissingKeyError(f"expected 1 kv for {req.key!r}, got {len(resp.kvs)}")
        return OpResult()

    return op


def _txn_op(
    stub: Any,
    pb: Any,
    chooser: KeyChooser,
    value: bytes,
    timeout_s: float,
    cache: TxnCache,
) -> Op:
    revisions, inflight = cache.revisions, cache.inflight

    async def op(rng: random.Random) -> OpResult:
        key = _pick_idle(chooser, rng, inflight)
        req = pb.TxnRequest(
            compare=[
                pb.Compare(
                    key=key,
                    target=pb.Compare.MOD,
                    result=pb.Compare.EQUAL,
                    mod_revision=revisions.get(key, 0),
                )
            ],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
        )
        inflight.add(key)
        try:
            resp = await stub.Txn(req, timeout=timeout_s)
        finally:
            inflight.discard(key)
        if resp.succeeded:
            # The Put is the txn's only write, so the new mod revision is the header's.
            revisions[key] = resp.header.revision
            return OpResult()
        kvs = resp.responses[0].response_range.kvs if resp.responses else []
        revisions[key] = kvs[0].mod_revision if kvs else 0
        return OpResult(conflict=True)

    return op


def _pick_idle(chooser: KeyChooser, rng: random.Random, inflight: set[bytes]) -> bytes:
    """A key no other slot of this process is writing right now (a few tries at most).

    Two slots racing on one key guarantee a failed compare, which measures the
    client's key choice rather than the server; kube-apiserver rarely races itself.
    """
    key = chooser.pick(rng)
    for _ in range(8):
        if key not in inflight:
            break
        key = chooser.pick(rng)
    return key


class MissingKeyError(Exception):
    """A read that should have found a preloaded key did not: counted as an error."""

    code_name = "MISSING_KEY"
