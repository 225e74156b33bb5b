"""The Watch service (etcd's v3rpc `watch.go`): one bidirectional stream, many watchers.

Per client stream a `ServerWatchStream` runs three coroutines:

* the receive loop handles create / cancel / progress requests. It does so
  synchronously, so a watcher is registered with the store and its `created`
  response is queued in the stream's channel in the same step: nothing can be
  queued for the watcher before its `created`, and etcd's "pending until
  created" buffering is unnecessary.
* the send loop drains the channel (events, control responses, progress) in
  order and writes them to gRPC. A slow client only fills the channel; the
  store then parks that stream's watchers as victims (watchable_store.py).
* the progress loop sends periodic progress notifications to watchers created
  with `progress_notify` that got no events since the last tick.

Fan-out cost: events are encoded once. Responses are written as raw protobuf
bytes (the service is registered with a pass-through serializer): a response
is its small header/watch-id prefix followed by the events' encodings, and
those are cached on the `SharedEvents` of the notify, so a thousand watchers of
one key on ten streams cost one `Event` serialization (and one prev_kv read)
plus a prefix per watcher.

Behaviour follows etcd 3.4/3.5 as checked against etcd 3.4.23 in
tests/compat/test_watch.py; where the versions differ we follow 3.5
(noted at each place).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from etcdpy import errors
from etcdpy.api.auth import auth_info, check_watch_permitted, watch_cancel_reason
from etcdpy.api.status import refuse_stream_on_learner, status_code
from etcdpy.pb import kv_pb2, rpc_pb2
from etcdpy.pb.wire import uvarint
from etcdpy.raft.types import NONE
from etcdpy.server.etcdserver import EtcdServer
from etcdpy.watch import INVALID_WATCH_ID, SharedEvents, WatchError, WatchResponse, WatchStream, filter_types

log = logging.getLogger("etcdpy.api")

MIN_PROGRESS_INTERVAL = 0.1
"""etcd raises a shorter --experimental-watch-progress-notify-interval to 100 ms."""

REQUIRE_LEADER_KEY = "hasleader"
REQUIRE_LEADER_VALUE = "true"
MAX_NO_LEADER_TICKS = 3
"""Election timeouts without a leader before leader-requiring streams are cancelled (etcd's maxNoLeaderCnt)."""

SEND_BATCH = 64
"""Channel items taken per send-loop pass (bounds the time between deferred-progress checks)."""

DEFERRED_PROGRESS_RETRY = 0.1
"""How often an idle stream re-checks a progress request it could not answer yet."""

_EVENTS_TAG = b"\x5a"  # WatchResponse.events: field 11, length-delimited
_PREV_KV_TAG = b"\x1a"  # Event.prev_kv: field 3, length-delimited
_HEADER_TAG = b"\x0a"  # WatchResponse.header: field 1
_WATCH_ID_TAG = b"\x10"  # field 2, varint
_CANCELED_TRUE = b"\x20\x01"  # field 4
_COMPACT_REV_TAG = b"\x28"  # field 5, varint
_FRAGMENT_TRUE = b"\x38\x01"  # field 7


def _serialize(msg: Any) -> bytes:
    """Responses are either pre-encoded bytes (events) or messages (control responses)."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def _is_create(ev: kv_pb2.Event) -> bool:
    return ev.type == kv_pb2.Event.PUT and ev.kv.create_revision == ev.kv.mod_revision


PrevReader = Callable[[kv_pb2.Event], kv_pb2.KeyValue | None]


def encode_events(evs: Sequence[kv_pb2.Event], shared: SharedEvents | None, prev: bool, read_prev: PrevReader) -> list[bytes]:
    """Each event as a complete `events` field of a WatchResponse, from the shared cache when possible.

    With `prev`, the event also carries the key's previous KeyValue (the
    value at mod_revision - 1); a creation has none, so it is not looked up.
    """
    cache = shared.cache if shared is not None else {}
    out = []
    for ev in evs:
        ck = (prev, id(ev))
        entry = cache.get(ck)
        if entry is None:
            body = ev.SerializeToString()
            if prev and not _is_create(ev):
                pkv = read_prev(ev)
                if pkv is not None:
                    pb = pkv.SerializeToString()
                    body += _PREV_KV_TAG + uvarint(len(pb)) + pb
            entry = _EVENTS_TAG + uvarint(len(body)) + body
            cache[ck] = entry
        out.append(entry)
    return out


def split_fragments(prefix: bytes, frag_prefix: bytes, entries: list[bytes], max_bytes: int) -> list[bytes]:
    """etcd's sendFragments: one message, or several marked `fragment` but the last, each < max_bytes.

    A response smaller than the limit, or with fewer than two events, is sent
    whole; otherwise events are packed greedily, at least one per fragment.
    """
    total = len(prefix) + sum(len(e) for e in entries)
    if total < max_bytes or len(entries) < 2:
        return [prefix + b"".join(entries)]
    out: list[bytes] = []
    i = 0
    while i < len(entries):
        size = len(frag_prefix)
        j = i
        while j < len(entries):
            if j > i and size + len(entries[j]) >= max_bytes:
                break
            size += len(entries[j])
            j += 1
        last = j == len(entries)
        out.append((prefix if last else frag_prefix) + b"".join(entries[i:j]))
        i = j
    return out


class ServerWatchStream:
    """One client stream: its watchers (a `WatchStream`), their options, and the three loops."""

    def __init__(self, service: WatchService, ws: WatchStream) -> None:
        self.service = service
        self.server = service.server
        self.ws = ws
        # watch id -> "no events sent since the last progress tick" (etcd's progress map)
        self.progress: dict[int, bool] = {}
        self.prev_kv: set[int] = set()
        self.fragment: set[int] = set()
        self.deferred_progress = False
        self.no_leader = asyncio.Event()
        self._hdr_key: tuple[int, int] | None = None
        self._hdr_bytes = b""

    # -- requests --------------------------------------------------------------------

    async def recv_loop(
        self, requests: AsyncIterator[rpc_pb2.WatchRequest], context: grpc.aio.ServicerContext | None = None
    ) -> None:
        async for req in requests:
            await self.ws.ch.wait_room()  # control responses stay within the channel bound
            if context is not None and req.WhichOneof("request_union") == "create_request":
                if not await self.permitted(req.create_request, context):
                    continue
            self.handle(req)

    async def permitted(self, c: rpc_pb2.WatchCreateRequest, context: grpc.aio.ServicerContext) -> bool:
        """etcd's isWatchPermitted, asked per create request: a token can expire or lose its role mid-stream.

        Resolving the caller may wait for the Authenticate entry to be applied, so it
        happens here, awaited in request order, before the synchronous `handle`. A
        refusal is a created+canceled response (the stream stays up for other watches),
        with the reason etcd 3.5 gives and its invalid watch id.
        """
        try:
            ai = await auth_info(self.server, context)
            check_watch_permitted(self.server, ai, c.key or b"\x00", c.range_end)
        except errors.EtcdError as e:
            self._control(INVALID_WATCH_ID, self.ws.rev(), created=True, canceled=True, reason=watch_cancel_reason(e))
            return False
        return True

    def handle(self, req: rpc_pb2.WatchRequest) -> None:
        """Apply one request; every response it causes is queued before this returns."""
        kind = req.WhichOneof("request_union")
        if kind == "create_request":
            self._create(req.create_request)
        elif kind == "cancel_request":
            self._cancel(req.cancel_request.watch_id)
        elif kind == "progress_request":
            self._request_progress()
        # anything else: ignored, the stream stays up (etcd)

    def _create(self, c: rpc_pb2.WatchCreateRequest) -> None:
        key = c.key or b"\x00"  # the empty key means the smallest key
        end: bytes | None = c.range_end or None
        if end == b"\x00":
            end = b""  # every key >= key
        ws = self.ws
        if c.start_revision < 0:
            # etcd 3.5 refuses a negative start revision this way (3.4 did not check).
            self._control(INVALID_WATCH_ID, ws.rev(), created=True, canceled=True, reason=errors.ErrCompacted.message)
            return
        wsrev = ws.rev()
        drop = filter_types(
            rpc_pb2.WatchCreateRequest.NOPUT in c.filters, rpc_pb2.WatchCreateRequest.NODELETE in c.filters
        )
        try:
            wid = ws.watch(c.watch_id, key, end, c.start_revision or wsrev + 1, drop)
        except WatchError as e:
            self._control(INVALID_WATCH_ID, wsrev, created=True, canceled=True, reason=str(e))
            return
        if c.progress_notify:
            self.progress[wid] = True
        if c.prev_kv:
            self.prev_kv.add(wid)
        if c.fragment:
            self.fragment.add(wid)
        self._control(wid, wsrev, created=True)

    def _cancel(self, wid: int) -> None:
        try:
            self.ws.cancel(wid)
        except WatchError:
            return  # unknown id: etcd sends nothing
        self.progress.pop(wid, None)
        self.prev_kv.discard(wid)
        self.fragment.discard(wid)
        self._control(wid, self.ws.rev(), canceled=True)

    def _request_progress(self) -> None:
        """Answer now if every watcher is synced, else once they are (etcd 3.5; 3.4 answered at once)."""
        if not self.deferred_progress and not self.ws.request_progress_all():
            self.deferred_progress = True

    def _control(self, wid: int, rev: int, *, created: bool = False, canceled: bool = False, reason: str = "") -> None:
        resp = rpc_pb2.WatchResponse(watch_id=wid, created=created, canceled=canceled, cancel_reason=reason)
        resp.header.revision = rev
        self.server.fill_header(resp.header)
        self.ws.ch.force(resp)

    # -- responses -------------------------------------------------------------------

    async def send_loop(self, write: Callable[[bytes], Any]) -> None:
        """Write everything queued, in order, until the channel is closed."""
        ch = self.ws.ch
        while True:
            if self.deferred_progress:
                try:
                    async with asyncio.timeout(DEFERRED_PROGRESS_RETRY):
                        await ch.wait()
                except TimeoutError:
                    pass
            else:
                await ch.wait()
            if ch.closed:
                return
            for item in ch.take(SEND_BATCH):
                if isinstance(item, WatchResponse):
                    for data in self._encode(item):
                        await write(data)
                    if item.events and self.progress.get(item.watch_id):
                        self.progress[item.watch_id] = False  # an event is progress enough
                else:
                    await write(item.SerializeToString())
            if self.deferred_progress and self.ws.request_progress_all():
                self.deferred_progress = False

    def _header(self, rev: int) -> bytes:
        """The encoded header for `rev`, rebuilt only when the revision or term changes."""
        key = (rev, self.server.progress.applied_term)
        if key != self._hdr_key:
            h = rpc_pb2.ResponseHeader(revision=rev)
            self.server.fill_header(h, with_revision=rev != 0)
            self._hdr_key = key
            self._hdr_bytes = h.SerializeToString()
        return self._hdr_bytes

    def _encode(self, resp: WatchResponse) -> list[bytes]:
        """One WatchResponse as wire bytes (several if fragmented)."""
        hdr = self._header(resp.revision)
        prefix = _HEADER_TAG + uvarint(len(hdr)) + hdr
        if resp.watch_id:
            prefix += _WATCH_ID_TAG + uvarint(resp.watch_id)
        if resp.compact_revision:
            prefix += _CANCELED_TRUE + _COMPACT_REV_TAG + uvarint(resp.compact_revision)
        if not resp.events:
            return [prefix]
        wid = resp.watch_id
        entries = encode_events(resp.events, resp.shared, wid in self.prev_kv, self._read_prev)
        if wid in self.fragment:
            return split_fragments(prefix, prefix + _FRAGMENT_TRUE, entries, self.service.max_response_bytes)
        return [prefix + b"".join(entries)]

    def _read_prev(self, ev: kv_pb2.Event) -> kv_pb2.KeyValue | None:
        """The key's value just before the event; None if it did not exist or is compacted away."""
        try:
            r = self.ws.store.kv.range(ev.kv.key, None, rev=ev.kv.mod_revision - 1)
        except errors.EtcdError:
            return None
        return r.kvs[0] if r.kvs else None

    # -- periodic progress -------------------------------------------------------------

    async def progress_loop(self) -> None:
        """etcd's progressTicker: notify progress_notify watchers that got no events since the last tick."""
        while True:
            await asyncio.sleep(self.service.progress_interval())
            for wid, idle in list(self.progress.items()):
                if idle:
                    self.ws.request_progress(wid)
                self.progress[wid] = True


class WatchService:
    """The etcdserverpb.Watch service; registered with `add_to_server` (raw-bytes responses)."""

    def __init__(self, server: EtcdServer, max_response_bytes: int) -> None:
        self.server = server
        self.max_response_bytes = max_response_bytes
        self._rng = random.Random()
        self._leader_streams: set[ServerWatchStream] = set()
        self._monitor: asyncio.Task[None] | None = None

    def progress_interval(self) -> float:
        """The configured interval plus up to 10% jitter, so streams do not all tick together (etcd)."""
        base = max(self.server.cfg.watch_progress_notify_interval, MIN_PROGRESS_INTERVAL)
        return base + self._rng.uniform(0, base / 10)

    def add_to_server(self, g: grpc.aio.Server) -> None:
        handlers = {
            "Watch": grpc.stream_stream_rpc_method_handler(
                self.Watch,
                request_deserializer=rpc_pb2.WatchRequest.FromString,
                response_serializer=_serialize,
            )
        }
        # Both forms, as generated code registers: servers look registered methods up first.
        g.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("etcdserverpb.Watch", handlers),))
        g.add_registered_method_handlers("etcdserverpb.Watch", handlers)

    async def Watch(self, requests: AsyncIterator[rpc_pb2.WatchRequest], context: grpc.aio.ServicerContext) -> None:
        server = self.server
        await refuse_stream_on_learner(server, context)
        require_leader = _requires_leader(context)
        if require_leader and server.lead == NONE:
            await _abort(context, errors.ErrNoLeader())
        store = server.watchable
        if store is None:
            await _abort(context, errors.ErrStopped())
        assert store is not None
        sws = ServerWatchStream(self, store.new_watch_stream())
        if require_leader:
            self._track_leader(sws)
        try:
            await self._run(sws, requests, context)
        finally:
            self._leader_streams.discard(sws)
            sws.ws.close()

    async def _run(
        self, sws: ServerWatchStream, requests: AsyncIterator[rpc_pb2.WatchRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """Serve until the client goes away, a read fails, or the leader is lost (leader-requiring streams).

        A client that only half-closes (ends its requests) keeps receiving, as in etcd.
        """
        recv = asyncio.create_task(sws.recv_loop(requests, context), name="watch-recv")
        send = asyncio.create_task(sws.send_loop(context.write), name="watch-send")
        prog = asyncio.create_task(sws.progress_loop(), name="watch-progress")
        no_leader = asyncio.create_task(sws.no_leader.wait(), name="watch-no-leader")
        tasks = {recv, send, prog, no_leader}
        try:
            waiting = {recv, send, no_leader}
            while True:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if recv in done and recv.exception() is None and send not in done and no_leader not in done:
                    waiting.discard(recv)  # EOF from the client: keep sending
                    continue
                break
            if no_leader in done:
                await _abort(context, errors.ErrNoLeader())
            for t in done:
                if t is not no_leader and not t.cancelled() and t.exception() is not None:
                    exc = t.exception()
                    if not isinstance(exc, (grpc.aio.AbortError, grpc.RpcError, asyncio.CancelledError)):
                        log.warning("watch stream ended by error: %r", exc)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- hasleader -------------------------------------------------------------------

    def _track_leader(self, sws: ServerWatchStream) -> None:
        self._leader_streams.add(sws)
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.create_task(self._monitor_leader(), name="watch-leader-monitor")

    async def _monitor_leader(self) -> None:
        """etcd's monitorLeader: after MAX_NO_LEADER_TICKS election timeouts without a leader,
        cancel every stream that asked for one. Ends when no such stream is left."""
        misses = 0
        while self._leader_streams:
            await asyncio.sleep(self.server.cfg.election_ms / 1000.0)
            misses = misses + 1 if self.server.lead == NONE else 0
            if misses >= MAX_NO_LEADER_TICKS:
                for sws in list(self._leader_streams):
                    sws.no_leader.set()
                self._leader_streams.clear()


def _requires_leader(context: grpc.aio.ServicerContext) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == REQUIRE_LEADER_KEY and value == REQUIRE_LEADER_VALUE:
            return True
    return False


async def _abort(context: grpc.aio.ServicerContext, err: errors.EtcdError) -> None:
    await context.abort(status_code(err), err.message)


__all__ = ["ServerWatchStream", "WatchService", "encode_events", "split_fragments"]
