"""The Cluster service: membership as applied from the log."""

from __future__ import annotations

import grpc

from etcdpy.api.status import rpc
from etcdpy.pb import rpc_pb2, rpc_pb2_grpc
from etcdpy.server.etcdserver import EtcdServer
from etcdpy.server.membership import Member


def member_pb(m: Member) -> rpc_pb2.Member:
    return rpc_pb2.Member(
        ID=m.id, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls, isLearner=m.is_learner
    )


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    @rpc
    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        if request.linearizable:
            await self.server.linearizable_read_notify()
        members = [member_pb(m) for _, m in sorted(self.server.cluster.members.items())]
        resp = rpc_pb2.MemberListResponse(members=members)
        self.server.fill_header(resp.header, with_revision=False)
        return resp
