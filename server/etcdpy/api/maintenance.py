"""The Maintenance service: status, alarms, hashes and defragmentation of this member."""

from __future__ import annotations

import grpc

from etcdpy.api.status import rpc
from etcdpy.pb import rpc_pb2, rpc_pb2_grpc
from etcdpy.server.etcdserver import EtcdServer


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    @rpc
    async def Status(self, request: rpc_pb2.StatusRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.StatusResponse:
        return self.server.status()

    @rpc
    async def Alarm(self, request: rpc_pb2.AlarmRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.AlarmResponse:
        # No alarm can be raised yet (NOSPACE/CORRUPT arrive with the maintenance issue), so the list is empty.
        resp = rpc_pb2.AlarmResponse()
        self.server.fill_header(resp.header)
        return resp

    @rpc
    async def HashKV(self, request: rpc_pb2.HashKVRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.HashKVResponse:
        assert self.server.kv is not None
        h, rev, compact_rev = self.server.kv.hash_kv(request.revision)
        resp = rpc_pb2.HashKVResponse(hash=h, compact_revision=compact_rev)
        self.server.fill_header(resp.header)
        resp.header.revision = rev
        return resp

    @rpc
    async def Hash(self, request: rpc_pb2.HashRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.HashResponse:
        assert self.server.kv is not None
        resp = rpc_pb2.HashResponse(hash=self.server.kv.hash())
        self.server.fill_header(resp.header)
        return resp

    @rpc
    async def Defragment(
        self, request: rpc_pb2.DefragmentRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DefragmentResponse:
        assert self.server.kv is not None
        self.server.kv.defrag()
        resp = rpc_pb2.DefragmentResponse()
        self.server.fill_header(resp.header)
        return resp
