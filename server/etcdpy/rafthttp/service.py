"""The receiving half: the `etcdpypeerpb.Peer` gRPC service on this member's peer URLs.

Every inbound call is checked before anything reaches raft: the sender must not be a removed
member (it is told so, in etcd's words, and stops), the call must be meant for this member
and this cluster, and the sender must not be blocked by fault injection. Raft messages are
checked once more one by one (`Transport.deliver`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from etcdpy import errors
from etcdpy.pb import peer_pb2, peer_pb2_grpc
from etcdpy.raft.types import MessageType

from .codec import CodecError, decode_message

if TYPE_CHECKING:
    from .transport import Transport


async def _maybe_await(value: object) -> object:
    """Callbacks may be plain functions or coroutines; accept both."""
    if inspect.isawaitable(value):
        return await value
    return value


def snapshot_db_path(directory: str, index: int) -> str:
    """Where a received backend snapshot for raft index `index` lands (etcd's `<index>.snap.db`)."""
    return os.path.join(directory, f"{index:016x}.snap.db")


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, transport: Transport) -> None:
        self.t = transport

    async def _check(self, header: peer_pb2.PeerHeader, context: grpc.aio.ServicerContext) -> None:
        rej = self.t.check_inbound(header)
        if rej is not None:
            await context.abort(*rej)

    # -- the message stream ----------------------------------------------------------------

    async def Stream(
        self, request_iterator: AsyncIterator[peer_pb2.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[peer_pb2.StreamResponse]:
        t = self.t
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        await self._check(first.header, context)
        frm = first.header.from_id
        t.inbound_opened(frm)
        try:
            yield peer_pb2.StreamResponse(accepted=True)
            req = first
            while True:
                if req.messages:
                    t.deliver(frm, req.messages, req.ByteSize())
                if req.ping:
                    yield peer_pb2.StreamResponse(pong=req.ping)
                try:
                    req = await anext(request_iterator)
                except StopAsyncIteration:
                    return
                rej = t.check_stream(frm)
                if rej is not None:
                    await context.abort(*rej)
        finally:
            t.inbound_closed(frm)

    # -- snapshots -------------------------------------------------------------------------

    async def Snapshot(
        self, request_iterator: AsyncIterator[peer_pb2.SnapshotChunk], context: grpc.aio.ServicerContext
    ) -> peer_pb2.SnapshotResponse:
        t = self.t
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty snapshot stream")
        await self._check(first.header, context)
        if t.on_snapshot is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this member does not accept snapshots")
        try:
            m = decode_message(first.message)
        except CodecError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if m.type != MessageType.SNAP or m.snapshot is None or m.to != t.member_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "first snapshot chunk must carry a MsgSnap for this member"
            )
        frm = first.header.from_id
        index = m.snapshot.metadata.index
        fields = {"remote-peer-id": f"{frm:x}", "snapshot-index": index}
        t.log.info("receiving database snapshot", extra={"fields": fields})
        final = snapshot_db_path(t.snapshot_dir, index)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        handed_over = False
        failure = ""
        try:
            size = await self._receive_file(first, request_iterator, tmp, frm, context)
            await asyncio.to_thread(_publish, tmp, final)
            t.note_received(frm, size)
            try:
                await _maybe_await(t.on_snapshot(m, final))
                handed_over = True
            except Exception as e:
                t.log.exception("server failed to take a received snapshot")
                failure = f"failed to install snapshot: {e}"
        finally:
            _remove_quietly(tmp)
            if not handed_over:
                _remove_quietly(final)
        if failure:
            await context.abort(grpc.StatusCode.INTERNAL, failure)
        t.log.info(
            "received and saved database snapshot",
            extra={"fields": {"remote-peer-id": f"{frm:x}", "snapshot-index": index, "snapshot-size": size}},
        )
        return peer_pb2.SnapshotResponse()

    async def _receive_file(
        self,
        first: peer_pb2.SnapshotChunk,
        request_iterator: AsyncIterator[peer_pb2.SnapshotChunk],
        path: str,
        frm: int,
        context: grpc.aio.ServicerContext,
    ) -> int:
        """Write the chunks to `path` on a worker thread; the total must match the sender's count."""
        f = await asyncio.to_thread(open, path, "wb")
        try:
            total = 0
            chunk = first
            while True:
                if chunk.data:
                    await asyncio.to_thread(f.write, chunk.data)
                    total += len(chunk.data)
                if chunk.last:
                    if chunk.size != total:
                        await context.abort(grpc.StatusCode.DATA_LOSS, f"snapshot size {total} != {chunk.size}")
                    await asyncio.to_thread(_sync, f)
                    return total
                try:
                    chunk = await anext(request_iterator)
                except StopAsyncIteration:
                    await context.abort(grpc.StatusCode.DATA_LOSS, "snapshot stream ended early")
                rej = self.t.check_stream(frm)
                if rej is not None:
                    await context.abort(*rej)
        finally:
            f.close()

    # -- unary calls -----------------------------------------------------------------------

    async def Members(
        self, request: peer_pb2.MembersRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.MembersResponse:
        provider = self.t.members_provider
        if provider is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "member list not available yet")
        cluster_id, members = provider()
        resp = peer_pb2.MembersResponse(cluster_id=cluster_id)
        for m in members:
            resp.members.add(
                ID=m.id, name=m.name, peerURLs=list(m.peer_urls), clientURLs=list(m.client_urls), isLearner=m.is_learner
            )
        return resp

    async def LeaseRenew(
        self, request: peer_pb2.LeaseRenewRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.LeaseRenewResponse:
        await self._check(request.header, context)
        handler = self.t.on_lease_renew
        if handler is None:
            return peer_pb2.LeaseRenewResponse(error=errors.ErrNotCapable.message)
        try:
            ttl = await _maybe_await(handler(request.ID))
        except errors.EtcdError as e:
            return peer_pb2.LeaseRenewResponse(error=e.message)
        return peer_pb2.LeaseRenewResponse(TTL=int(ttl))  # type: ignore[call-overload]

    async def MemberPromote(
        self, request: peer_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.MemberPromoteResponse:
        await self._check(request.header, context)
        handler = self.t.on_member_promote
        if handler is None:
            return peer_pb2.MemberPromoteResponse(error=errors.ErrNotCapable.message)
        try:
            await _maybe_await(handler(request.ID))
        except errors.EtcdError as e:
            return peer_pb2.MemberPromoteResponse(error=e.message)
        return peer_pb2.MemberPromoteResponse()

    async def LeaseTimeToLive(
        self, request: peer_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.LeaseTimeToLiveResponse:
        await self._check(request.header, context)
        handler = self.t.on_lease_time_to_live
        if handler is None:
            return peer_pb2.LeaseTimeToLiveResponse(error=errors.ErrNotCapable.message)
        try:
            resp = await _maybe_await(handler(request.ID, request.keys))
        except errors.EtcdError as e:
            return peer_pb2.LeaseTimeToLiveResponse(error=e.message)
        return peer_pb2.LeaseTimeToLiveResponse(response=resp)


def _sync(f: object) -> None:
    f.flush()  # type: ignore[attr-defined]
    os.fsync(f.fileno())  # type: ignore[attr-defined]


def _publish(tmp: str, final: str) -> None:
    """Rename into place and make the rename durable (the server may rely on the file after a crash)."""
    os.replace(tmp, final)
    fd = os.open(os.path.dirname(final) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
