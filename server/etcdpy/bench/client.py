"""One client process: `concurrency` requests in flight on grpc.aio, latencies recorded.

Runs in a spawned process (never forked: gRPC's core does not survive fork) so that
several clients use several cores, as real clients would; one Python process tops out
near one core of request encoding long before a server does.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from etcdpy.bench import streams
from etcdpy.bench.workloads import KEY_PREFIX, KeyChooser, Op, TxnCache, make_op

READY_TIMEOUT_S = 60.0
"""How long a worker waits for the parent's go signal before giving up."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a client process needs; picklable because it crosses a spawn."""

    index: int
    clients: int
    endpoints: tuple[str, ...]
    workload: str
    concurrency: int
    warmup_s: float
    duration_s: float | None
    requests: int | None
    keyspace: int
    value_size: int
    timeout_s: float
    seed: int
    role: str = ""
    """watch-fanout only: "watcher" or "writer"."""
    watchers: int = 1000
    watch_streams: int = 10
    watch_rate: float = 20.0


@dataclass
class WorkerResult:
    """What a client process reports back; latencies in seconds, successes only."""

    index: int
    latencies: array = field(default_factory=lambda: array("d"))
    errors: Counter[str] = field(default_factory=Counter)
    error_sample: str = ""
    conflicts: int = 0
    elapsed_s: float = 0.0
    failure: str = ""
    watch_counts: array | None = None
    """watch-fanout watcher: events received per watch (end marker excluded)."""
    writes_acked: int | None = None
    """watch-fanout writer: acknowledged puts (every watch must see each once)."""


@dataclass
class _Budget:
    """Stop condition shared by the slots of one phase (one event loop, so no lock)."""

    deadline: float
    remaining: int | None

    def take(self) -> bool:
        """Claim one more request, or say the phase is over."""
        if time.perf_counter() >= self.deadline:
            return False
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


def worker_main(spec: WorkerSpec, ready: Any, go: Any, results: Any) -> None:
    """Process entry point: run the phases and put one WorkerResult on `results`."""
    try:
        result = asyncio.run(_run(spec, ready, go))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, not swallowed
        result = WorkerResult(index=spec.index, failure=f"{type(exc).__name__}: {exc}")
        ready.put(spec.index)  # unblock the parent if we died before signalling
    results.put(result)


async def _run(spec: WorkerSpec, ready: Any, go: Any) -> WorkerResult:
    """Connect, tell the parent we are ready, warm up, then measure."""
    import grpc

    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    channels = [grpc.aio.insecure_channel(ep) for ep in spec.endpoints]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=spec.timeout_s)
        if spec.workload == "watch-fanout":
            return await _run_watch(spec, channels, ready, go)
        stubs = [rpc_pb2_grpc.KVStub(c) for c in channels]
        cache = TxnCache()
        cleanup = None
        if spec.workload == "txn":
            await _load_revisions(stubs[0], rpc_pb2, KEY_PREFIX[spec.workload], cache.revisions, spec.timeout_s)
        if spec.workload == "lease-keepalive":
            ops, cleanup = await streams.keepalive_ops(spec, channels, rpc_pb2, rpc_pb2_grpc)
        else:
            ops = _make_ops(spec, stubs, rpc_pb2, cache)
        ready.put(spec.index)
        if not await asyncio.to_thread(go.wait, READY_TIMEOUT_S):
            raise TimeoutError("parent never said go")
        if spec.warmup_s > 0:
            await _phase(spec, ops, _Budget(time.perf_counter() + spec.warmup_s, None), None)
        result = WorkerResult(index=spec.index)
        deadline = time.perf_counter() + (spec.duration_s if spec.duration_s else 86400.0)
        start = time.perf_counter()
        await _phase(spec, ops, _Budget(deadline, spec.requests), result)
        result.elapsed_s = time.perf_counter() - start
        if cleanup is not None:
            await cleanup()
        return result
    finally:
        for channel in channels:
            await channel.close()


async def _run_watch(spec: WorkerSpec, channels: list[Any], ready: Any, go: Any) -> WorkerResult:
    """watch-fanout: watchers open their watches before saying ready; the writer writes."""
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    result = WorkerResult(index=spec.index)
    opened = []
    if spec.role == "watcher":
        opened = await streams.open_watchers(spec, channels, rpc_pb2, rpc_pb2_grpc)
    ready.put(spec.index)
    if not await asyncio.to_thread(go.wait, READY_TIMEOUT_S):
        raise TimeoutError("parent never said go")
    t0 = time.monotonic()
    if spec.role == "watcher":
        await streams.run_watchers(spec, opened, t0, result)
    else:
        await streams.run_writer(spec, channels, rpc_pb2, rpc_pb2_grpc, t0, result)
    return result


async def _load_revisions(stub: Any, pb: Any, prefix: bytes, out: dict[bytes, int], timeout_s: float) -> None:
    """Fill the mod-revision cache from the server, as kube-apiserver's watch cache is.

    Without it every key left by an earlier round would cost one failed compare
    before its first real write, and the run would measure conflicts, not writes.
    """
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    resp = await stub.Range(pb.RangeRequest(key=prefix, range_end=end, keys_only=True), timeout=timeout_s)
    for kv in resp.kvs:
        out[kv.key] = kv.mod_revision


def _make_ops(spec: WorkerSpec, stubs: list[Any], pb: Any, cache: TxnCache) -> list[Op]:
    """One op per in-flight slot; slots are spread over the endpoints round-robin."""
    workers = spec.clients if spec.workload == "txn" else 1
    chooser = KeyChooser(KEY_PREFIX[spec.workload], spec.keyspace, spec.index % workers, workers)
    value = random.Random(spec.seed).randbytes(spec.value_size)
    ops = []
    for slot in range(spec.concurrency):
        stub = stubs[(spec.index * spec.concurrency + slot) % len(stubs)]
        ops.append(make_op(spec.workload, stub, pb, chooser, value, spec.timeout_s, cache))
    return ops


async def _phase(spec: WorkerSpec, ops: list[Op], budget: _Budget, out: WorkerResult | None) -> None:
    """Run every slot until the budget is spent; record into `out` unless warming up."""
    await asyncio.gather(
        *(_slot(op, random.Random(spec.seed * 1000 + i), budget, out) for i, op in enumerate(ops))
    )


async def _slot(op: Op, rng: random.Random, budget: _Budget, out: WorkerResult | None) -> None:
    """One in-flight request at a time, back to back: a closed-loop client."""
    clock = time.perf_counter
    while budget.take():
        start = clock()
        try:
            res = await op(rng)
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by code
            if out is not None:
                _record_error(out, exc)
            continue
        if out is not None:
            out.latencies.append(clock() - start)
            if res.conflict:
                out.conflicts += 1


def _record_error(out: WorkerResult, exc: Exception) -> None:
    """Count an error under its gRPC code name; keep the first message as a sample."""
    code = getattr(exc, "code", None)
    name = getattr(exc, "code_name", None)
    if name is None and callable(code):
        name = code().name
    out.errors[name or type(exc).__name__] += 1
    if not out.error_sample:
        details = getattr(exc, "details", None)
        text = details() if callable(details) else str(exc)
        out.error_sample = f"{name or type(exc).__name__}: {text}"[:300]
