"""The Maintenance service: status, alarms, hashes, defragmentation, snapshots and leader moves of this member.

What etcd answers, and therefore this service (checked against etcd 3.4.23):

* Status.errors lists "etcdserver: no leader" when there is none, then every
  active alarm as Go prints an AlarmMember ("memberID:<decimal id> alarm:NOSPACE ",
  trailing space included).
* Alarm goes through the raft log for every action, GET included; GET with
  alarm NONE lists every alarm; the response header is filled as etcd 3.5 does
  (3.4 leaves it empty; etcdctl prints only the alarms either way).
* Defragment and MoveLeader answer with an empty response (no header), as etcd.
* Snapshot streams the backend in 32 KiB messages whose remaining_bytes counts
  down to 0, then one last message whose blob is the sha256 of everything sent
  before it; `etcdctl snapshot save` writes all of it to the file.
* MoveLeader is refused with "etcdserver: not leader" on a follower and with
  "etcdserver: bad leader transferee" for an unknown or learner target; moving
  to the current leader itself succeeds at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from etcdpy.api.status import refuse_stream_on_learner, rpc, status_code
from etcdpy.errors import EtcdError
from etcdpy.pb import rpc_pb2, rpc_pb2_grpc
from etcdpy.server.etcdserver import EtcdServer
from etcdpy.server.maintenance import MaintenanceOps


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    @property
    def ops(self) -> MaintenanceOps:
        ops = self.server.maintenance
        assert ops is not None, "the server is not started"
        return ops

    @rpc
    async def Status(self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.StatusResponse:
        resp = self.server.status()
        if self.server.maintenance is not None:
            resp.errors.extend(self.server.maintenance.status_errors())
        return resp

    @rpc
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.AlarmResponse:
        return await self.ops.alarm(request)

    @rpc
    async def HashKV(self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.HashKVResponse:
        assert self.server.kv is not None
        h, rev, compact_rev = await self.server.kv.hash_kv_async(request.revision)
        resp = rpc_pb2.HashKVResponse(hash=h, compact_revision=compact_rev)
        self.server.fill_header(resp.header)
        resp.header.revision = rev
        return resp

    @rpc
    async def Hash(self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.HashResponse:
        assert self.server.kv is not None
        resp = rpc_pb2.HashResponse(hash=await self.server.kv.hash_async())
        self.server.fill_header(resp.header)
        return resp

    @rpc
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        await self.ops.defragment()
        return rpc_pb2.DefragmentResponse()

    @rpc
    async def MoveLeader(
        self, request: rpc_pb2.MoveLeaderRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MoveLeaderResponse:
        await self.ops.move_leader(request.targetID)
        return rpc_pb2.MoveLeaderResponse()

    async def Snapshot(
        self, request: rpc_pb2.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        await refuse_stream_on_learner(self.server, context)
        try:
            sender = await self.ops.snapshot()
        except EtcdError as e:
            await context.abort(status_code(e), e.message)
            return
        try:
            async for resp in sender.responses():
                yield resp
        except EtcdError as e:
            await context.abort(status_code(e), e.message)
        finally:
            sender.close()
