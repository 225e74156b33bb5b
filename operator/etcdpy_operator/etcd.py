"""The operator's etcd client: membership and status calls over etcdpy's gRPC stubs, with short deadlines.

Why grpc.aio with a fresh channel per call: the operator talks to a handful of members a few times per
reconcile; a short-lived channel cannot go stale when a member's Pod (and address) is replaced, and every
call carries a deadline so an unreachable member costs at most `timeout` and never blocks the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

from etcdpy_operator.model import EtcdMember, MemberHealth


@dataclass(frozen=True)
class ClientTLS:
    """PEM bytes from the client TLS Secret (the operator presents the members' own client cert)."""

    ca: bytes
    cert: bytes
    key: bytes


class EtcdError(Exception):
    """An etcd call failed; `code` is the gRPC status code name, the message etcd's own text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _target(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


class EtcdClient:
    """Calls one member at a time (by client URL); the caller decides which member to ask."""

    def __init__(self, tls: ClientTLS | None = None, timeout: float = 2.0) -> None:
        self.tls = tls
        self.timeout = timeout

    def _channel(self, url: str) -> grpc.aio.Channel:
        options = [("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 200)]
        if self.tls is not None and url.startswith("https"):
            creds = grpc.ssl_channel_credentials(self.tls.ca, self.tls.key, self.tls.cert)
            return grpc.aio.secure_channel(_target(url), creds, options=options)
        return grpc.aio.insecure_channel(_target(url), options=options)

    async def _call(self, url: str, stub_cls: Any, method: str, request: Any, timeout: float | None = None) -> Any:
        async with self._channel(url) as channel:
            stub = stub_cls(channel)
            try:
                return await getattr(stub, method)(request, timeout=timeout or self.timeout)
            except grpc.aio.AioRpcError as e:
                raise EtcdError(e.code().name, e.details() or "") from e
            except TimeoutError as e:
                raise EtcdError("DEADLINE_EXCEEDED", "timed out") from e

    async def status(self, url: str) -> MemberHealth:
        """Maintenance.Status of the member at `url`; an unreachable member yields reachable=False."""
        try:
            r = await self._call(url, rpc_pb2_grpc.MaintenanceStub, "Status", rpc_pb2.StatusRequest())
        except EtcdError as e:
            return MemberHealth(reachable=False, error=e.message or e.code)
        return MemberHealth(
            reachable=True,
            member_id=r.header.member_id,
            leader_id=r.leader,
            raft_index=r.raftIndex,
            raft_applied_index=r.raftAppliedIndex,
            db_size=r.dbSize,
            version=r.version,
            is_learner=r.isLearner,
            errors=tuple(r.errors),
        )

    async def member_list(self, url: str, linearizable: bool = True) -> tuple[int, tuple[EtcdMember, ...]]:
        """(cluster id, members) as the member at `url` sees them (linearizable: confirmed by the leader)."""
        req = rpc_pb2.MemberListRequest(linearizable=linearizable)
        r = await self._call(url, rpc_pb2_grpc.ClusterStub, "MemberList", req)
        return r.header.cluster_id, tuple(_member(m) for m in r.members)

    async def member_add(self, url: str, peer_url: str, learner: bool = True) -> EtcdMember:
        req = rpc_pb2.MemberAddRequest(peerURLs=[peer_url], isLearner=learner)
        r = await self._call(url, rpc_pb2_grpc.ClusterStub, "MemberAdd", req, timeout=self.timeout * 3)
        return _member(r.member)

    async def member_promote(self, url: str, member_id: int) -> None:
        req = rpc_pb2.MemberPromoteRequest(ID=member_id)
        await self._call(url, rpc_pb2_grpc.ClusterStub, "MemberPromote", req, timeout=self.timeout * 3)

    async def member_remove(self, url: str, member_id: int) -> None:
        req = rpc_pb2.MemberRemoveRequest(ID=member_id)
        await self._call(url, rpc_pb2_grpc.ClusterStub, "MemberRemove", req, timeout=self.timeout * 3)

    async def move_leader(self, leader_url: str, target_id: int) -> None:
        """MoveLeader must be sent to the current leader."""
        req = rpc_pb2.MoveLeaderRequest(targetID=target_id)
        await self._call(leader_url, rpc_pb2_grpc.MaintenanceStub, "MoveLeader", req, timeout=self.timeout * 5)


def _member(m: Any) -> EtcdMember:
    return EtcdMember(
        id=m.ID,
        name=m.name,
        peer_urls=tuple(m.peerURLs),
        client_urls=tuple(m.clientURLs),
        is_learner=m.isLearner,
    )
