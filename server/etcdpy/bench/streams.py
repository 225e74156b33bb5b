"""Streaming workloads: watch fan-out and lease keep-alives.

watch-fanout: `watchers` watches on one prefix, spread over `watch_streams` gRPC Watch
streams (one WatchCreateRequest per watch, all on the same prefix), opened by the
watcher processes before the start signal; one writer process puts under the prefix at
`watch_rate` writes/s (0: as fast as a single serial writer goes). Each value starts
with the writer's send time (CLOCK_MONOTONIC, which is system-wide on Linux, so it is
comparable across processes) and a flag byte; delivery latency is receive time minus
send time. After the run the writer puts an end marker; a watcher stops once each of
its watches has seen it (or after `timeout_s` of draining). Every watch must have
received every acknowledged write exactly once and in revision order: the parent
compares each watch's count with the writer's acknowledged writes (the shortfall is
"lost"); a repeated or out-of-order revision is counted as an error.

lease-keepalive: every in-flight slot grants its own lease, opens its own
LeaseKeepAlive stream and sends the next keep-alive as soon as the previous response
arrives; latency is write-to-response on that stream.
"""

from __future__ import annotations

import asyncio
import struct
import time
from array import array
from typing import Any

from etcdpy.bench.workloads import KEY_PREFIX, OpResult, key_for

HEADER = struct.Struct("<dB")
"""Value header: send time (time.monotonic()) and flag (0 write, 1 end marker)."""
END_FLAG = 1
LEASE_TTL_S = 60


class StreamError(Exception):
    """A stream ended or answered something unexpected: counted as an error by name."""

    def __init__(self, code_name: str, text: str) -> None:
        super().__init__(text)
        self.code_name = code_name


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def stream_sizes(watchers: int, streams: int) -> list[int]:
    """Watches per stream, as even as it goes."""
    return [watchers // streams + (1 if s < watchers % streams else 0) for s in range(streams)]


def encode_value(ts: float, flag: int, size: int) -> bytes:
    head = HEADER.pack(ts, flag)
    return head + b"\0" * max(0, size - len(head))


# --- watch-fanout: watcher side -------------------------------------------------------


class _WatchStream:
    """One Watch stream with its watches; counts land in the process-wide arrays."""

    def __init__(self, call: Any, base: int, size: int) -> None:
        self.call = call
        self.base = base  # index of this stream's first watch in the process's arrays
        self.size = size
        self.slot: dict[int, int] = {}  # watch_id -> global index


async def open_watchers(spec: Any, channels: list[Any], pb: Any, pb_grpc: Any) -> list[_WatchStream]:
    """Open this process's share of the streams and create every watch on them."""
    prefix = KEY_PREFIX[spec.workload]
    create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix)))
    procs = spec.clients
    sizes = stream_sizes(spec.watchers, spec.watch_streams)
    streams, base = [], 0
    for s, size in enumerate(sizes):
        if s % procs != spec.index:
            continue
        stub = pb_grpc.WatchStub(channels[s % len(channels)])
        ws = _WatchStream(stub.Watch(), base, size)
        base += size
        streams.append(ws)

    async def create_all(ws: _WatchStream) -> None:
        for _ in range(ws.size):
            await ws.call.write(create)
        while len(ws.slot) < ws.size:
            resp = await asyncio.wait_for(ws.call.read(), timeout=spec.timeout_s)
            if resp is _eof():
                raise StreamError("WATCH_EOF", "watch stream closed while creating watches")
            if not resp.created or resp.canceled:
                raise StreamError("WATCH_NOT_CREATED", f"unexpected response while creating: {resp}")
            ws.slot[resp.watch_id] = ws.base + len(ws.slot)

    await asyncio.gather(*(create_all(ws) for ws in streams))
    return streams


def _eof() -> Any:
    import grpc

    return grpc.aio.EOF


async def run_watchers(spec: Any, streams: list[_WatchStream], t0: float, result: Any) -> None:
    """Read every stream until all its watches saw the end marker (or the drain ends).

    Latency and delivered events are recorded for events received inside the measured
    window [t0 + warmup, t0 + warmup + duration]; counts cover the whole run.
    """
    total = sum(ws.size for ws in streams)
    counts = array("q", [0] * total)
    last = array("q", [0] * total)
    w0 = t0 + spec.warmup_s
    w1 = w0 + (spec.duration_s or 0.0)
    give_up = w1 + spec.timeout_s + 5.0
    bad = [0]

    async def reader(ws: _WatchStream) -> None:
        eof = _eof()
        clock = time.monotonic
        unpack = HEADER.unpack_from
        lat = result.latencies
        slot = ws.slot
        remaining = ws.size
        while remaining:
            left = give_up - clock()
            if left <= 0:
                return
            try:
                resp = await asyncio.wait_for(ws.call.read(), timeout=left)
            except TimeoutError:
                return
            if resp is eof:
                raise StreamError("WATCH_EOF", "watch stream closed before the end marker")
            now = clock()
            i = slot.get(resp.watch_id)
            if i is None or resp.canceled or resp.compact_revision:
                raise StreamError("WATCH_CANCELED", f"unexpected watch response: {resp}"[:300])
            for ev in resp.events:
                kv = ev.kv
                ts, flag = unpack(kv.value)
                if flag == END_FLAG:
                    remaining -= 1
                    continue
                rev = kv.mod_revision
                if rev <= last[i]:
                    bad[0] += 1
                last[i] = rev
                counts[i] += 1
                if w0 <= now < w1:
                    lat.append(now - ts)

    outcomes = await asyncio.gather(*(reader(ws) for ws in streams), return_exceptions=True)
    for exc in outcomes:
        if isinstance(exc, BaseException):
            _count(result, exc)
    if bad[0]:
        result.errors["REORDERED_OR_DUPLICATE"] += bad[0]
        result.error_sample = result.error_sample or "REORDERED_OR_DUPLICATE: an event at or below the last revision"
    result.watch_counts = counts
    result.elapsed_s = spec.duration_s or 0.0
    for ws in streams:
        ws.call.cancel()


def _count(result: Any, exc: BaseException) -> None:
    name = getattr(exc, "code_name", None)
    code = getattr(exc, "code", None)
    if name is None and callable(code):
        name = code().name
    name = name or type(exc).__name__
    result.errors[name] += 1
    if not result.error_sample:
        details = getattr(exc, "details", None)
        result.error_sample = f"{name}: {details() if callable(details) else exc}"[:300]


# --- watch-fanout: writer side --------------------------------------------------------


async def run_writer(spec: Any, channels: list[Any], pb: Any, pb_grpc: Any, t0: float, result: Any) -> None:
    """Serial puts under the prefix at `watch_rate`/s (0: back to back), then the end marker."""
    stub = pb_grpc.KVStub(channels[0])
    prefix = KEY_PREFIX[spec.workload]
    clock = time.monotonic
    end = t0 + spec.warmup_s + (spec.duration_s or 0.0)
    interval = 1.0 / spec.watch_rate if spec.watch_rate > 0 else 0.0
    size = max(spec.value_size, HEADER.size)
    seq, acked, nxt = 0, 0, t0
    budget = spec.requests
    while clock() < end and (budget is None or seq < budget):
        if interval:
            nxt += interval
            delay = nxt - clock()
            if delay > 0:
                await asyncio.sleep(delay)
        key = key_for(prefix, seq % spec.keyspace)
        seq += 1
        try:
            await stub.Put(pb.PutRequest(key=key, value=encode_value(clock(), 0, size)), timeout=spec.timeout_s)
            acked += 1
        except Exception as exc:  # noqa: BLE001 - counted by code
            _count(result, exc)
    for attempt in range(5):
        try:
            marker = encode_value(clock(), END_FLAG, HEADER.size)
            await stub.Put(pb.PutRequest(key=prefix + b"~end", value=marker), timeout=spec.timeout_s)
            break
        except Exception as exc:  # noqa: BLE001
            if attempt == 4:
                _count(result, exc)
            await asyncio.sleep(0.2)
    result.writes_acked = acked
    result.elapsed_s = spec.duration_s or 0.0


# --- lease-keepalive --------------------------------------------------------------------


async def keepalive_ops(spec: Any, channels: list[Any], pb: Any, pb_grpc: Any) -> tuple[list[Any], Any]:
    """One lease and one LeaseKeepAlive stream per slot; returns (ops, async cleanup)."""
    eof = _eof()
    slots = []
    for slot in range(spec.concurrency):
        channel = channels[(spec.index * spec.concurrency + slot) % len(channels)]
        slots.append(pb_grpc.LeaseStub(channel))
    grants = await asyncio.gather(
        *(s.LeaseGrant(pb.LeaseGrantRequest(TTL=LEASE_TTL_S), timeout=spec.timeout_s) for s in slots)
    )
    calls = [s.LeaseKeepAlive() for s in slots]

    def make(call: Any, lease_id: int) -> Any:
        req = pb.LeaseKeepAliveRequest(ID=lease_id)

        async def op(_rng: Any) -> OpResult:
            await call.write(req)
            resp = await asyncio.wait_for(call.read(), timeout=spec.timeout_s)
            if resp is eof:
                raise StreamError("KEEPALIVE_EOF", "keep-alive stream closed")
            if resp.TTL <= 0:
                raise StreamError("LEASE_NOT_FOUND", f"keep-alive of lease {lease_id:x} answered TTL {resp.TTL}")
            return OpResult()

        return op

    ops = [make(c, g.ID) for c, g in zip(calls, grants)]

    async def cleanup() -> None:
        for c in calls:
            c.cancel()
        await asyncio.gather(
            *(s.LeaseRevoke(pb.LeaseRevokeRequest(ID=g.ID), timeout=spec.timeout_s) for s, g in zip(slots, grants)),
            return_exceptions=True,
        )

    return ops, cleanup
