"""The Cluster service: membership as applied from the log."""

from __future__ import annotations

import grpc

from etcdpy.api.status import rpc
from etcdpy.pb import rpc_pb2, rpc_pb2_grpc
from etcdpy.server import reconfig
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

    def _members_response(self, resp: object, members: list[Member]) -> None:
        resp.members.extend(member_pb(m) for m in members)  # type: ignore[attr-defined]
        self.server.fill_header(resp.header, with_revision=False)  # type: ignore[attr-defined]

    @rpc
    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        m, members = await reconfig.add_member(self.server, list(request.peerURLs), request.isLearner)
        resp = rpc_pb2.MemberAddResponse(member=member_pb(m))
        self._members_response(resp, members)
        return resp

    @rpc
    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        members = await reconfig.remove_member(self.server, request.ID)
        resp = rpc_pb2.MemberRemoveResponse()
        self._members_response(resp, members)
        return resp

    @rpc
    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        members = await reconfig.update_member(self.server, request.ID, list(request.peerURLs))
        resp = rpc_pb2.MemberUpdateResponse()
        self._members_response(resp, members)
        return resp

    @rpc
    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        members = await reconfig.promote_member(self.server, request.ID)
        resp = rpc_pb2.MemberPromoteResponse()
        self._members_response(resp, members)
        return resp
