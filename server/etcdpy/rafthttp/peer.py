"""The sending half for one remote member: its queue, its message stream, its snapshots.

One task per peer keeps one gRPC stream open and writes into it, in order, everything raft
queued for that peer since the last write, as one batch: while a write is in flight new
messages pile up and leave together in the next one, so batches grow exactly when the
network or the receiver is slow (pipelining without a per-batch acknowledgement). The
receiver answers only the opening header and the periodic pings that measure the
round-trip time.

When the stream breaks the peer is reported unreachable (raft then probes it instead of
streaming entries) and the task reconnects with exponential back-off; a stream that worked
resets the back-off. The queue is bounded in messages and bytes; a message that does not
fit is dropped and the peer reported unreachable, as etcd does when its buffers are full.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

import grpc

from etcdpy.pb import peer_pb2
from etcdpy.pb.wire import length_delimited, uvarint
from etcdpy.raft.types import Message

from .codec import TAG_BATCH_MESSAGES, encode_message
from .common import (
    ERR_MEMBER_REMOVED,
    METHOD_SNAPSHOT,
    METHOD_STREAM,
    MemberRemoved,
    PeerUnreachable,
    grpc_target,
    is_removed_rejection,
    open_channel,
    rejection,
)

if TYPE_CHECKING:
    from .transport import Transport

_MESSAGE_OVERHEAD = 64
_ENTRY_OVERHEAD = 24


class SnapshotSource(Protocol):
    """What `Backend.open_snapshot()` returns: the backend file in chunks, then `close()`."""

    def chunks(self, chunk_size: int = ...) -> object: ...

    def close(self) -> None: ...


class StreamClosed(Exception):
    """The receiver ended the stream (or its reader stopped)."""


def approx_size(m: Message) -> int:
    """Bytes a queued message stands for, for the queue's byte bound (cheaper than encoding)."""
    if not m.entries:
        return _MESSAGE_OVERHEAD
    return _MESSAGE_OVERHEAD + sum(len(e.data) for e in m.entries) + _ENTRY_OVERHEAD * len(m.entries)


class PeerSender:
    """Everything this member sends to one peer. Lives on the transport's event loop."""

    def __init__(self, transport: Transport, peer_id: int, urls: list[str]) -> None:
        for u in urls:
            grpc_target(u)  # fail on a bad URL now, not in the background task
        self.t = transport
        self.id = peer_id
        self.urls = list(urls)
        self._url_idx = 0
        self._queue: deque[tuple[Message, int]] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ping_due = False
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._snap_channels: dict[str, grpc.aio.Channel] = {}
        self._snap_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._current_url: str | None = None
        self.active_since: float | None = None
        self.rtt: float | None = None
        self.sent_messages = 0
        self.sent_batches = 0
        self.sent_bytes = 0
        self.dropped_messages = 0
        self.send_failures = 0
        self.snapshots_sent = 0
        self.snapshot_failures = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"rafthttp-peer-{self.id:x}")

    async def close(self) -> None:
        """Stop sending; queued messages are discarded, snapshot transfers cancelled."""
        self._closed = True
        tasks = [t for t in (self._task, *self._snap_tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._queue.clear()
        self._queued_bytes = 0
        self._deactivate("peer removed or transport stopped", quiet=True)
        await self._close_channels(list(self._channels) + list(self._snap_channels))

    async def _close_channels(self, urls: list[str]) -> None:
        chans = [c for u in urls for c in (self._channels.pop(u, None), self._snap_channels.pop(u, None)) if c]
        await asyncio.gather(*(c.close() for c in chans), return_exceptions=True)

    async def update_urls(self, urls: list[str]) -> None:
        """New peer URLs: used from the next (re)connection on; a working stream is kept.

        The member whose URLs changed is still listening where it was until it restarts, so
        cutting a working stream would cut it off: updating two members of three before
        restarting them would lose quorum. etcd keeps using the connection the member opened
        the same way. A peer that is down is redialled at the new URLs at once.
        """
        for u in urls:
            grpc_target(u)
        gone = [u for u in self.urls if u not in urls]
        self.urls = list(urls)
        self._url_idx = 0
        current = self._current_url if self.active_since is not None else None
        if current is not None:
            await self._close_channels([u for u in gone if u != current])
            return
        await self.restart_stream()
        await self._close_channels(gone)

    async def restart_stream(self) -> None:
        """Tear the current stream down and start over (after a URL change)."""
        task, self._task = self._task, None  # a concurrent restart must not start a second loop
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._deactivate("stream restarted")
        if self._task is None:
            self.start()

    def blocked(self) -> bool:
        return self.t.faults.is_blocked(self.id, self.urls)

    def on_faults_changed(self) -> None:
        """A newly blocked peer loses its queue and snapshot transfers at once, and its stream
        as soon as the writer wakes up (it checks the block before every write)."""
        if self.blocked():
            self.dropped_messages += len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            for t in list(self._snap_tasks):
                t.cancel()
        self._wake.set()

    # -- the queue -------------------------------------------------------------------------

    def enqueue(self, m: Message) -> bool:
        """Queue `m` for the stream; False (and nothing queued) when the queue is full."""
        size = approx_size(m)
        q = self._queue
        opts = self.t.options
        if len(q) >= opts.queue_messages or (q and self._queued_bytes + size > opts.queue_bytes):
            self.dropped_messages += 1
            return False
        q.append((m, size))
        self._queued_bytes += size
        self._wake.set()
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _next_batch(self) -> tuple[bytes, int]:
        """Encode queued messages (up to the batch size) and a pending ping as one StreamRequest."""
        q = self._queue
        cache = self.t.entry_cache
        limit = self.t.options.batch_bytes
        parts: list[bytes] = []
        size = 0
        n = 0
        released = 0
        while q and (n == 0 or size < limit):
            m, approx = q.popleft()
            released += approx
            enc = encode_message(m, cache)
            parts.append(TAG_BATCH_MESSAGES)
            parts.append(uvarint(len(enc)))
            parts.append(enc)
            size += len(enc)
            n += 1
        self._queued_bytes -= released
        if self._ping_due:
            self._ping_due = False
            parts.append(b"\x18")  # StreamRequest.ping
            parts.append(uvarint(time.monotonic_ns()))
        return b"".join(parts), n

    # -- the stream ------------------------------------------------------------------------

    def _channel(self, url: str, snapshot: bool = False) -> grpc.aio.Channel:
        pool = self._snap_channels if snapshot else self._channels
        ch = pool.get(url)
        if ch is None:
            ch = open_channel(url, self.t.options, self.t.tls, self.t.channel_credentials(url))
            pool[url] = ch
        return ch

    async def _run(self) -> None:
        opts = self.t.options
        backoff = opts.backoff_initial
        while not self._closed:
            if self.blocked():
                self._deactivate("blocked by fault injection")
                await asyncio.sleep(opts.fault_poll_interval)
                continue
            url = self.urls[self._url_idx % len(self.urls)]
            try:
                await self._stream_once(url)
                reason = "stream closed by the peer"
            except asyncio.CancelledError:
                raise
            except MemberRemoved:
                self._deactivate("this member was removed from the cluster")
                self.t.member_removed(self.id)
                return
            except Exception as e:  # any failure ends this connection attempt; we retry
                reason = _describe(e)
            if self.active_since is not None:
                backoff = opts.backoff_initial
            self._deactivate(reason)
            if url not in self.urls:  # a stream kept across a URL update has ended: its channel goes too
                await self._close_channels([url])
            self.send_failures += 1
            self.t.call_report_unreachable(self.id)
            self._url_idx += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, opts.backoff_max)

    async def _stream_once(self, url: str) -> None:
        """Open a stream to `url`, wait until it is accepted, then write batches until it fails."""
        mc = self._channel(url).stream_stream(
            METHOD_STREAM, request_serializer=None, response_deserializer=peer_pb2.StreamResponse.FromString
        )
        call = mc()
        try:
            try:
                await call.write(self.t.stream_header(self.id))
                first = await asyncio.wait_for(call.read(), self.t.options.dial_timeout)
            except grpc.aio.AioRpcError as e:
                if is_removed_rejection(e):
                    raise MemberRemoved(e.details()) from None
                raise
            if first is grpc.aio.EOF or not first.accepted:
                await _raise_call_error(call)
            self._activate(url)
            reader = asyncio.create_task(self._read_responses(call))
            pinger = asyncio.create_task(self._ping_loop())
            try:
                await self._write_loop(call, reader)
            finally:
                for t in (reader, pinger):
                    t.cancel()
                await asyncio.gather(reader, pinger, return_exceptions=True)
        finally:
            call.cancel()

    async def _write_loop(self, call: grpc.aio.StreamStreamCall, reader: asyncio.Task[None]) -> None:
        wake = self._wake
        while True:
            if not self._queue and not self._ping_due:
                wake.clear()
                await wake.wait()
            if reader.done():
                reader.result()  # raises the reader's error, if any
                raise StreamClosed("the peer closed the stream")
            if self.blocked():
                raise StreamClosed("blocked by fault injection")
            data, n = self._next_batch()
            await call.write(data)
            if n:
                self.sent_batches += 1
                self.sent_messages += n
            self.sent_bytes += len(data)

    async def _read_responses(self, call: grpc.aio.StreamStreamCall) -> None:
        """Pongs give the round-trip time; the end of this stream ends the writer too."""
        try:
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                if resp.pong:
                    now = time.monotonic_ns()
                    if resp.pong <= now:
                        self.rtt = (now - resp.pong) / 1e9
                        self.t.call_on_rtt(self.id, self.rtt)
        except grpc.aio.AioRpcError as e:
            if is_removed_rejection(e):
                raise MemberRemoved(e.details()) from None
            raise
        finally:
            self._wake.set()

    async def _ping_loop(self) -> None:
        interval = self.t.options.probe_interval
        self._ping_due = True
        self._wake.set()
        while True:
            await asyncio.sleep(interval)
            self._ping_due = True
            self._wake.set()

    def _activate(self, url: str) -> None:
        self._current_url = url
        if self.active_since is None:
            self.active_since = time.monotonic()
            self.t.log.info(
                "peer became active", extra={"fields": {"peer-id": f"{self.id:x}", "remote-peer-url": url}}
            )

    def _deactivate(self, reason: str, quiet: bool = False) -> None:
        if self.active_since is not None:
            self.active_since = None
            (self.t.log.info if quiet else self.t.log.warning)(
                "peer became inactive (message send to peer failed)",
                extra={"fields": {"peer-id": f"{self.id:x}", "error": reason}},
            )

    # -- snapshots -------------------------------------------------------------------------

    def send_snapshot(self, m: Message) -> None:
        task = asyncio.create_task(self._send_snapshot(m), name=f"rafthttp-snapshot-{self.id:x}")
        self._snap_tasks.add(task)
        task.add_done_callback(self._snap_tasks.discard)

    async def _send_snapshot(self, m: Message) -> None:
        """Stream the MsgSnap and the backend file; report the outcome to raft either way."""
        t = self.t
        index = m.snapshot.metadata.index if m.snapshot is not None else 0
        source: SnapshotSource | None = None
        ok = False
        try:
            if self.blocked():
                raise PeerUnreachable("blocked by fault injection")
            got = t.snapshot_source(m) if t.snapshot_source is not None else None
            # The server may first flush the store off the loop, so the source can be awaitable.
            source = await got if inspect.isawaitable(got) else got
            # One attempt: the backend stream cannot be rewound, and raft retries on failure.
            url = self.urls[self._url_idx % len(self.urls)]
            mc = self._channel(url, snapshot=True).stream_unary(
                METHOD_SNAPSHOT, request_serializer=None, response_deserializer=peer_pb2.SnapshotResponse.FromString
            )
            try:
                await mc(self._snapshot_chunks(m, source), timeout=t.options.snapshot_timeout)
            except grpc.aio.AioRpcError as e:
                if is_removed_rejection(e):
                    raise MemberRemoved(e.details()) from None
                raise
            ok = True
        except MemberRemoved:
            t.member_removed(self.id)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            t.log.warning(
                "failed to send snapshot",
                extra={"fields": {"peer-id": f"{self.id:x}", "snapshot-index": index, "error": _describe(e)}},
            )
        finally:
            if source is not None:
                source.close()
            if ok:
                self.snapshots_sent += 1
                fields = {"peer-id": f"{self.id:x}", "snapshot-index": index}
                t.log.info("sent database snapshot", extra={"fields": fields})
            else:
                self.snapshot_failures += 1
                t.call_report_unreachable(self.id)
            t.call_report_snapshot(self.id, not ok)

    def _urls_from_current(self) -> list[str]:
        i = self._url_idx % len(self.urls)
        return self.urls[i:] + self.urls[:i]

    async def _snapshot_chunks(self, m: Message, source: SnapshotSource | None) -> AsyncIterator[bytes]:
        """SnapshotChunk requests: header + MsgSnap, the file in pieces read on a worker thread, the end."""
        first = peer_pb2.SnapshotChunk(header=self.t.peer_header(self.id)).SerializeToString()
        yield first + length_delimited(b"\x12", encode_message(m))
        total = 0
        if source is not None:
            it = iter(source.chunks(self.t.options.snapshot_chunk_bytes))  # type: ignore[call-overload]
            try:
                while True:
                    if self.blocked():
                        raise PeerUnreachable("blocked by fault injection")
                    chunk = await asyncio.to_thread(next, it, None)
                    if chunk is None:
                        break
                    total += len(chunk)
                    self.sent_bytes += len(chunk)
                    yield length_delimited(b"\x1a", chunk)
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    try:
                        close()
                    except ValueError:
                        pass  # still running on the worker thread (cancelled): it ends with the GC
        yield peer_pb2.SnapshotChunk(last=True, size=total).SerializeToString()

    # -- unary calls -----------------------------------------------------------------------

    async def unary(self, method: str, request: bytes, response_cls: type, timeout: float) -> object:
        """Call `method` on the first URL that answers; PeerUnreachable if none does."""
        if self.blocked():
            raise PeerUnreachable(f"peer {self.id:x}: blocked by fault injection")
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        for url in self._urls_from_current():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            mc = self._channel(url).unary_unary(
                method, request_serializer=None, response_deserializer=response_cls.FromString
            )
            try:
                return await mc(request, timeout=remaining)
            except grpc.aio.AioRpcError as e:
                if is_removed_rejection(e):
                    self.t.member_removed(self.id)
                    raise MemberRemoved(e.details()) from None
                last = e
        raise PeerUnreachable(f"peer {self.id:x}: {_describe(last) if last else 'timed out'}")


async def _raise_call_error(call: grpc.aio.StreamStreamCall) -> None:
    """The stream ended before it was accepted: raise what the receiver said."""
    code = await call.code()
    details = await call.details()
    if code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith(ERR_MEMBER_REMOVED):
        raise MemberRemoved(details)
    raise StreamClosed(f"stream refused: {code.name}: {details}")


def _describe(e: BaseException) -> str:
    rej = rejection(e)
    if rej is not None:
        return f"{rej[0].name}: {rej[1]}"
    if isinstance(e, TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}"
