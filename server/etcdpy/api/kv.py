"""The KV service: validate each request as etcd's v3rpc layer does, then hand it to the server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from etcdpy.api import validate
from etcdpy.api.auth import AuthInfo, auth_info, auth_required
from etcdpy.api.status import rpc
from etcdpy.pb import rpc_pb2, rpc_pb2_grpc
from etcdpy.server.etcdserver import EtcdServer

T = TypeVar("T")


class KVService(rpc_pb2_grpc.KVServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    # The handlers are plain functions returning the server's awaitable (`rpc` makes the
    # coroutine the gRPC server runs): without auth a request's task then resumes through one
    # coroutine fewer, and none is made just to learn that the caller need not be known.

    def _as_caller(
        self, context: grpc.aio.ServicerContext, call: Callable[[AuthInfo | None], Awaitable[T]]
    ) -> Awaitable[T]:
        """`call` with who is calling: `call(None)` itself while auth is off, else a coroutine
        that learns the caller first."""
        if auth_required(self.server):
            return self._learn_caller_then(context, call)
        return call(None)

    async def _learn_caller_then(
        self, context: grpc.aio.ServicerContext, call: Callable[[AuthInfo | None], Awaitable[T]]
    ) -> T:
        return await call(await auth_info(self.server, context))

    @rpc
    def Range(
        self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext
    ) -> Awaitable[rpc_pb2.RangeResponse]:
        validate.check_range_request(request)
        return self._as_caller(context, lambda auth: self.server.range(request, auth))

    @rpc
    def RangeEncoded(self, request: rpc_pb2.RangeRequest, context: grpc.aio.ServicerContext) -> Awaitable[bytes]:
        """What the gRPC server runs for Range (see `add_to_server`): the answer comes encoded,
        a big one encoded on the worker thread that built it instead of on the loop."""
        validate.check_range_request(request)
        return self._as_caller(context, lambda auth: self.server.range_wire(request, auth))

    def add_to_server(self, g: grpc.aio.Server) -> None:
        """Register like the generated `add_KVServicer_to_server`, but Range sends pre-encoded bytes
        and the writes keep the bytes their requests arrived as."""
        handlers = {
            "Range": grpc.unary_unary_rpc_method_handler(
                self.RangeEncoded,
                request_deserializer=rpc_pb2.RangeRequest.FromString,
                response_serializer=_passthrough,
            ),
            "Put": grpc.unary_unary_rpc_method_handler(
                self.PutReceived,
                request_deserializer=_keeping_wire(rpc_pb2.PutRequest.FromString),
                response_serializer=rpc_pb2.PutResponse.SerializeToString,
            ),
            "DeleteRange": grpc.unary_unary_rpc_method_handler(
                self.DeleteRangeReceived,
                request_deserializer=_keeping_wire(rpc_pb2.DeleteRangeRequest.FromString),
                response_serializer=rpc_pb2.DeleteRangeResponse.SerializeToString,
            ),
            "Txn": grpc.unary_unary_rpc_method_handler(
                self.TxnReceived,
                request_deserializer=_keeping_wire(rpc_pb2.TxnRequest.FromString),
                response_serializer=rpc_pb2.TxnResponse.SerializeToString,
            ),
            "Compact": grpc.unary_unary_rpc_method_handler(
                self.Compact,
                request_deserializer=rpc_pb2.CompactionRequest.FromString,
                response_serializer=rpc_pb2.CompactionResponse.SerializeToString,
            ),
        }
        # Both forms, as generated code registers: servers look registered methods up first.
        g.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("etcdserverpb.KV", handlers),))
        g.add_registered_method_handlers("etcdserverpb.KV", handlers)

    # The writes: the gRPC servers run the `...Received` handlers (see `add_to_server`), whose
    # request comes with the bytes it arrived as; the server logs those bytes as they are
    # (`EtcdServer.put`'s `wire`). The plain ones serve callers holding only the message.

    @rpc
    def Put(self, request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> Awaitable[rpc_pb2.PutResponse]:
        return self._put(request, None, context)

    @rpc
    def PutReceived(
        self, received: tuple[rpc_pb2.PutRequest, bytes], context: grpc.aio.ServicerContext
    ) -> Awaitable[rpc_pb2.PutResponse]:
        return self._put(*received, context)

    def _put(
        self, request: rpc_pb2.PutRequest, wire: bytes | None, context: grpc.aio.ServicerContext
    ) -> Awaitable[rpc_pb2.PutResponse]:
        validate.check_put_request(request)
        return self._as_caller(context, lambda auth: self.server.put(request, auth, wire))

    @rpc
    def DeleteRange(
        self, request: rpc_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext
    ) -> Awaitable[rpc_pb2.DeleteRangeResponse]:
        return self._delete_range(request, None, context)

    @rpc
    def DeleteRangeReceived(
        self, received: tuple[rpc_pb2.DeleteRangeRequest, bytes], context: grpc.aio.ServicerContext
    ) -> Awaitable[rpc_pb2.DeleteRangeResponse]:
        return self._delete_range(*received, context)

    def _delete_range(
        self, request: rpc_pb2.DeleteRangeRequest, wire: bytes | None, context: grpc.aio.ServicerContext
    ) -> Awaitable[rpc_pb2.DeleteRangeResponse]:
        validate.check_delete_request(request)
        return self._as_caller(context, lambda auth: self.server.delete_range(request, auth, wire))

    @rpc
    def Txn(self, request: rpc_pb2.TxnRequest, context: grpc.aio.ServicerContext) -> Awaitable[rpc_pb2.TxnResponse]:
        return self._txn(request, None, context)

    @rpc
    def TxnReceived(
        self, received: tuple[rpc_pb2.TxnRequest, bytes], context: grpc.aio.ServicerContext
    ) -> Awaitable[rpc_pb2.TxnResponse]:
        return self._txn(*received, context)

    def _txn(
        self, request: rpc_pb2.TxnRequest, wire: bytes | None, context: grpc.aio.ServicerContext
    ) -> Awaitable[rpc_pb2.TxnResponse]:
        read_only = validate.check_txn_request(request, self.server.cfg.max_txn_ops)
        return self._as_caller(context, lambda auth: self.server.txn(request, auth, read_only, wire))

    @rpc
    async def Compact(
        self, request: rpc_pb2.CompactionRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.CompactionResponse:
        return await self._as_caller(context, lambda auth: self.server.compact(request, auth))


def _keeping_wire(decode: Callable[[bytes], T]) -> Callable[[bytes], tuple[T, bytes]]:
    """A deserializer giving the decoded request together with its bytes."""

    def decode_keeping_wire(data: bytes) -> tuple[T, bytes]:
        return decode(data), data

    return decode_keeping_wire


def _passthrough(resp: bytes | rpc_pb2.RangeResponse) -> bytes:
    """Range's serializer: the answer comes encoded (a message is still accepted)."""
    return resp if isinstance(resp, bytes) else resp.SerializeToString()
