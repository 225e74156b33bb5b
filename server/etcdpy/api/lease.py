"""The Lease service (etcd's v3rpc LeaseServer): grants and revokes through the log, renewals on the leader.

What etcd answers, and therefore this service (checked against etcd 3.4.23):

* LeaseGrant reports the TTL actually granted (a TTL below the minimum is raised);
  a TTL above 9,000,000,000 s is OUT_OF_RANGE "too large lease TTL"; a taken id is
  FAILED_PRECONDITION "lease already exists".
* LeaseRevoke of an unknown lease (or id 0) is NOT_FOUND "requested lease not found".
* LeaseKeepAlive answers every request, in order, with the renewed TTL; for an
  unknown or already expired lease the TTL is 0 rather than an error, and the
  stream stays open. The header is taken before renewing, so its revision is
  never later than the renewal (a lease revoked at rev N is never reported as
  renewed at a revision after N).
* LeaseTimeToLive of an unknown lease is not an error either: TTL -1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from etcdpy import errors
from etcdpy.api.auth import auth_info
from etcdpy.api.status import refuse_stream_on_learner, rpc, status_code
from etcdpy.pb import rpc_pb2, rpc_pb2_grpc
from etcdpy.server.etcdserver import EtcdServer


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    @rpc
    async def LeaseGrant(
        self, request: rpc_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseGrantResponse:
        return await self.server.lease_grant(request)

    @rpc
    async def LeaseRevoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        """Revoking deletes the lease's keys, so the applier needs the caller to check write on them."""
        return await self.server.lease_revoke(request, await auth_info(self.server, context))

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[rpc_pb2.LeaseKeepAliveRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpc_pb2.LeaseKeepAliveResponse]:
        await refuse_stream_on_learner(self.server, context)
        async for req in request_iterator:
            resp = rpc_pb2.LeaseKeepAliveResponse(ID=req.ID)
            self.server.fill_header(resp.header)
            try:
                resp.TTL = await self.server.lease_renew_on_leader(req.ID)
            except errors.ErrLeaseNotFound:
                resp.TTL = 0
            except errors.EtcdError as e:
                await context.abort(status_code(e), e.message)
            yield resp

    @rpc
    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        try:
            return await self.server.lease_ttl_on_leader(request)
        except errors.ErrLeaseNotFound:
            resp = rpc_pb2.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)
            self.server.fill_header(resp.header)
            return resp

    @rpc
    async def LeaseLeases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        return self.server.lease_leases()
