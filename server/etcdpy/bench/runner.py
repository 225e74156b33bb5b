"""Running one workload against one target with several client processes.

The parent only coordinates: it spawns the clients, waits until each has connected,
releases them together, and merges what they report. It sends no load itself, so the
parent's own work never competes with the clients inside a measurement.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from collections.abc import Callable
from typing import Any

from etcdpy.bench.client import WorkerResult, WorkerSpec, worker_main
from etcdpy.bench.stats import Summary, summarize
from etcdpy.bench.targets import Target
from etcdpy.bench.workloads import KEY_PREFIX, key_for

SPAWN_TIMEOUT_S = 60.0
"""Spawning a client means a fresh interpreter importing grpc: seconds on a busy box."""
PRELOAD_BATCH_BYTES = 1_000_000
"""Keep a preload Txn well under etcd's 1.5 MiB request limit."""
PRELOAD_MAX_OPS = 100
"""...and under its 128 operations per Txn."""


class BenchError(RuntimeError):
    """A run could not produce a measurement (client crashed, never connected...)."""


@dataclass(frozen=True)
class RunConfig:
    """The load shape, identical for every target in one bench invocation."""

    clients: int = 2
    concurrency: int = 64
    duration_s: float | None = 10.0
    requests: int | None = None
    warmup_s: float = 1.0
    keyspace: int = 10_000
    value_size: int = 256
    timeout_s: float = 10.0
    seed: int = 1
    watchers: int = 1000
    watch_streams: int = 10
    watch_rate: float = 20.0


Log = Callable[[str], None]


@dataclass
class Measurement:
    """Raw outcome of one or more runs of one workload on one target.

    Kept raw (every latency) rather than summarized so that several rounds can be
    pooled into one honest set of percentiles.
    """

    latencies: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    error_sample: str = ""
    conflicts: int = 0
    loads: list[tuple[float, float, float]] = field(default_factory=list)
    round_ops_per_s: list[float] = field(default_factory=list)
    lost: int | None = None
    """watch-fanout: events some watch should have received and did not (must be 0)."""
    writes: int | None = None
    """watch-fanout: acknowledged writes; each watch must have seen each one once."""
    cpu_s: float | None = None
    """Server CPU seconds (all members) spent inside the measured window; None if unknown."""
    wal_fsyncs: float | None = None
    """WAL fsyncs per member inside the measured window (from /metrics); None if unknown."""
    backend_commits: float | None = None
    """Backend commits per member inside the measured window; None if unknown."""

    def add(self, other: "Measurement") -> None:
        """Pool another round into this one."""
        if other.cpu_s is not None:
            self.cpu_s = (self.cpu_s or 0.0) + other.cpu_s
        if other.wal_fsyncs is not None and other.backend_commits is not None:
            self.wal_fsyncs = (self.wal_fsyncs or 0.0) + other.wal_fsyncs
            self.backend_commits = (self.backend_commits or 0.0) + other.backend_commits
        self.latencies.extend(other.latencies)
        self.elapsed_s += other.elapsed_s
        self.errors.update(other.errors)
        self.error_sample = self.error_sample or other.error_sample
        self.conflicts += other.conflicts
        self.loads.extend(other.loads)
        self.round_ops_per_s.extend(other.round_ops_per_s)
        if other.lost is not None:
            self.lost = (self.lost or 0) + other.lost
            self.writes = (self.writes or 0) + (other.writes or 0)

    def summary(self, workload: str, target: str) -> Summary:
        """Percentiles over all pooled latencies; load is the mean of the rounds' loads."""
        load = tuple(sum(x[i] for x in self.loads) / len(self.loads) for i in range(3)) if self.loads else (0.0,) * 3
        out = summarize(
            workload,
            target,
            self.latencies,
            self.elapsed_s,
            self.errors,
            conflicts=self.conflicts,
            error_sample=self.error_sample,
            load_avg=load,  # type: ignore[arg-type]
        )
        out.rounds_ops_per_s = list(self.round_ops_per_s)
        out.lost, out.writes = self.lost, self.writes
        if self.cpu_s is not None and self.latencies:
            out.cpu_us_per_op = self.cpu_s / len(self.latencies) * 1e6
        if self.wal_fsyncs and self.latencies:
            out.ops_per_wal_fsync = len(self.latencies) / self.wal_fsyncs
        if self.backend_commits and self.latencies:
            out.ops_per_backend_commit = len(self.latencies) / self.backend_commits
        return out


def run_workload(target: Target, workload: str, cfg: RunConfig, log: Log) -> Measurement:
    """Measure `workload` against `target` once, merging the client processes' results."""
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=worker_main, args=(spec, ready, go, results), daemon=True)
        for spec in _specs(target, workload, cfg)
    ]
    for proc in procs:
        proc.start()
    try:
        _await_ready(ready, procs)
        load = os.getloadavg()
        go.set()
        window = CpuWindow(target.cpu_seconds, cfg)
        disk = CpuWindow(target.disk_counters, cfg)
        log(f"  {target.name} {workload}: running ({_shape(cfg)})")
        collected = _collect(results, len(procs), cfg)
        cpu_s = window.finish()
        disk_delta = disk.finish()
    finally:
        _reap(procs)
    out = _merge(collected, load)
    out.cpu_s = cpu_s
    if disk_delta is not None:
        out.wal_fsyncs, out.backend_commits = (x / max(1, target.members) for x in disk_delta)
    return out


class CpuWindow:
    """Samples the server when the clients' measured window opens and closes: CPU time, counters.

    The clients warm up for `warmup_s` after the start signal and then measure for
    `duration_s`; sampling on the same schedule here makes "CPU / measured requests"
    the server's CPU cost per request (and "requests / WAL fsyncs" its batching). With a
    request budget the window ends when the last client reports (a slight overestimate:
    the tail of the run is included). `sample` returns a number or a tuple of numbers.
    """

    def __init__(self, sample: Callable[[], Any], cfg: RunConfig) -> None:
        self._sample = sample
        self._cfg = cfg
        self._start: Any = None
        self._end: Any = None
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-window", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        time.sleep(self._cfg.warmup_s)
        self._start = self._sample()
        if self._cfg.requests is None and self._cfg.duration_s is not None:
            time.sleep(max(0.0, self._t0 + self._cfg.warmup_s + self._cfg.duration_s - time.monotonic()))
            self._end = self._sample()

    def finish(self) -> Any:
        """The change inside the window (a number, or a tuple like the samples), or None if unknown."""
        self._thread.join(timeout=self._cfg.warmup_s + (self._cfg.duration_s or 0) + 5.0)
        end = self._end if self._end is not None else self._sample()
        if self._start is None or end is None:
            return None
        if isinstance(end, tuple):
            return tuple(max(0.0, b - a) for a, b in zip(self._start, end))
        return max(0.0, end - self._start)


def _specs(target: Target, workload: str, cfg: RunConfig) -> list[WorkerSpec]:
    """One spec per client process; a request budget is split as evenly as it goes."""
    specs = []
    watch = workload == "watch-fanout"
    clients = min(cfg.clients, cfg.watch_streams) if watch else cfg.clients
    for i in range(clients):
        share = None
        if cfg.requests is not None:
            share = cfg.requests // cfg.clients + (1 if i < cfg.requests % cfg.clients else 0)
        specs.append(
            WorkerSpec(
                index=i,
                clients=clients,
                endpoints=tuple(target.endpoints),
                workload=workload,
                concurrency=cfg.concurrency,
                warmup_s=cfg.warmup_s,
                duration_s=None if cfg.requests is not None else cfg.duration_s,
                requests=share,
                keyspace=cfg.keyspace,
                value_size=cfg.value_size,
                timeout_s=cfg.timeout_s,
                seed=cfg.seed * 7919 + i,
                role="watcher" if watch else "",
                watchers=cfg.watchers,
                watch_streams=cfg.watch_streams,
                watch_rate=cfg.watch_rate,
            )
        )
    if watch:  # one more process: the writer (its requests budget is the whole one)
        writer = replace(specs[0], index=clients, role="writer", requests=cfg.requests, seed=cfg.seed * 7919 + clients)
        specs.append(writer)
    return specs


def _await_ready(ready: multiprocessing.Queue, procs: list[multiprocessing.process.BaseProcess]) -> None:
    """Wait for every client to connect, so no client measures while others start.

    A client that died before connecting (e.g. it could not import its parent's main
    module, which spawn requires) fails the run at once instead of after the timeout.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while len(seen) < len(procs):
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(seen)}/{len(procs)} clients connected in {SPAWN_TIMEOUT_S:.0f}s")
        try:
            seen.add(ready.get(timeout=0.2))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise BenchError(f"client process exited with code {dead[0]} before connecting") from None


def _collect(results: multiprocessing.Queue, count: int, cfg: RunConfig) -> list[WorkerResult]:
    """Read every client's result (before joining: a full pipe would block its exit)."""
    if cfg.requests is not None:
        budget = SPAWN_TIMEOUT_S + cfg.warmup_s + cfg.requests * cfg.timeout_s
    else:
        budget = SPAWN_TIMEOUT_S + cfg.warmup_s + (cfg.duration_s or 0) + cfg.timeout_s
    deadline = time.monotonic() + budget
    out: list[WorkerResult] = []
    while len(out) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"only {len(out)}/{count} clients reported in {budget:.0f}s")
        try:
            out.append(results.get(timeout=left))
        except queue.Empty:
            continue
    failed = [r.failure for r in out if r.failure]
    if failed:
        raise BenchError("client failed: " + "; ".join(failed))
    return out


def _reap(procs: list[multiprocessing.process.BaseProcess]) -> None:
    """Join our client processes; terminate any that hang (only ours, by handle)."""
    for proc in procs:
        proc.join(timeout=10.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5.0)


def _merge(results: list[WorkerResult], load: tuple[float, float, float]) -> Measurement:
    """Combine per-client results; the window is the slowest client's, to be conservative."""
    out = Measurement(loads=[load])
    for r in results:
        out.latencies.extend(r.latencies)
        out.errors.update(r.errors)
        out.error_sample = out.error_sample or r.error_sample
        out.conflicts += r.conflicts
    out.elapsed_s = max((r.elapsed_s for r in results), default=0.0)
    writers = [r.writes_acked for r in results if r.writes_acked is not None]
    if writers:  # watch-fanout: every watch must have seen every acknowledged write
        acked = sum(writers)
        counts = [c for r in results if r.watch_counts is not None for c in r.watch_counts]
        out.writes = acked
        out.lost = sum(max(0, acked - c) for c in counts)
    out.round_ops_per_s.append(len(out.latencies) / out.elapsed_s if out.elapsed_s > 0 else 0.0)
    return out


def _shape(cfg: RunConfig) -> str:
    """A short description of the load for progress lines."""
    amount = f"{cfg.requests} requests" if cfg.requests is not None else f"{cfg.duration_s:g}s"
    return f"{cfg.clients} clients x {cfg.concurrency} in flight, {amount} after {cfg.warmup_s:g}s warm-up"


def preload(target: Target, prefix: bytes, cfg: RunConfig) -> None:
    """Write every key of the keyspace once, in batched Txns, so reads always hit.

    Batched because the preload is set-up, not measurement: one Txn per ~100 keys keeps
    it to a second or so even on a slow target.
    """
    import grpc

    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    value = random.Random(cfg.seed).randbytes(cfg.value_size)
    batch = max(1, min(PRELOAD_MAX_OPS, PRELOAD_BATCH_BYTES // (cfg.value_size + 64)))
    with grpc.insecure_channel(target.endpoints[0]) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)
        for start in range(0, cfg.keyspace, batch):
            puts = [
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key_for(prefix, i), value=value))
                for i in range(start, min(start + batch, cfg.keyspace))
            ]
            stub.Txn(rpc_pb2.TxnRequest(success=puts), timeout=max(cfg.timeout_s, 30.0))


def preload_prefix(workload: str) -> bytes:
    """The key prefix a workload reads, i.e. what its preload must write."""
    return KEY_PREFIX[workload]
