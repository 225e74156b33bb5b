"""The KV service: validate each request as etcd's v3rpc layer does, then hand it to the server."""

from __future__ import annotations

import grpc

from etcdpy.api import validate
from etcdpy.api.auth import auth_info
from etcdpy.api.status import rpc
from etcdpy.pb import rpc_pb2, rpc_pb2_grpc
from etcdpy.server.etcdserver import EtcdServer


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    @rpc
    async def Range(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.RangeResponse:
        validate.check_range_request(request)
        return await self.server.range(request, await auth_info(self.server, context))

    @rpc
    async def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.PutResponse:
        validate.check_put_request(request)
        return await self.server.put(request, await auth_info(self.server, context))

    @rpc
    async def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.DeleteRangeResponse:
        validate.check_delete_request(request)
        return await self.server.delete_range(request, await auth_info(self.server, context))

    @rpc
    async def Txn(self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> rpc_pb2.TxnResponse:
        validate.check_txn_request(request, self.server.cfg.max_txn_ops)
        return await self.server.txn(request, await auth_info(self.server, context))

    @rpc
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        return await self.server.compact(request, await auth_info(self.server, context))
