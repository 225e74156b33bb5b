"""The Auth service, and how every other service learns who is calling (etcd's v3rpc auth.go + AuthInfoFromCtx).

Who is calling: `auth_info(server, context)` reads the ``token`` metadata (or
``authorization``, etcd's gateway name) and resolves it against the auth store.
A simple token names the raft index of the Authenticate entry that created it,
so a member that has not applied that entry yet waits for it first. With auth
disabled nobody needs to be anyone: the answer is None, whatever the metadata.
A TLS client certificate's common name is the other way etcd identifies users:
with --client-cert-auth and no token, `auth_info_from_tls` takes the CN as the user.

Every Auth RPC is a raft proposal, as in etcd 3.5, so all members agree on the
outcome and reads of users and roles are linearizable. Passwords never enter the
log in clear: UserAdd and UserChangePassword hash with bcrypt (cost 10) and
Authenticate checks the password against the hash before proposing, both on a
worker thread because bcrypt takes tens of milliseconds of CPU.

`AdminInterceptor` guards the Maintenance and Cluster RPCs that etcd reserves
for the root role, without touching those services.

Hooks for the other services: Watch calls `auth_info` on its stream context and
`check_watch_permitted` per create request, answering a refusal with a canceled
response whose reason is `watch_cancel_reason(err)`. Lease passes `auth_info` to
`EtcdServer.lease_revoke` (the applier then checks write on the lease's keys),
and `check_lease_keys_readable` guards LeaseTimeToLive(keys=true).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import bcrypt
import grpc

from etcdpy import errors
from etcdpy.api.status import rpc, status_code
from etcdpy.api.tlsauth import peer_common_name
from etcdpy.auth.simple_token import token_index
from etcdpy.auth.store import AuthInfo, AuthStore
from etcdpy.pb import raft_internal_pb2, rpc_pb2, rpc_pb2_grpc

if TYPE_CHECKING:
    from etcdpy.server.etcdserver import EtcdServer

TOKEN_METADATA_KEYS = ("token", "authorization")


# ---------------------------------------------------------------------- who is calling


def token_from_metadata(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The first ``token`` (else ``authorization``) metadata value, as etcd's AuthInfoFromCtx picks it."""
    if not metadata:
        return None
    for wanted in TOKEN_METADATA_KEYS:
        for key, value in metadata:
            if key == wanted:
                return value.decode() if isinstance(value, bytes) else str(value)
    return None


def auth_info_from_tls(server: EtcdServer, context: Any) -> AuthInfo | None:
    """The verified client certificate's common name as the user (etcd's AuthInfoFromTLS).

    Only with --client-cert-auth: without it gRPC verified no certificate, so a CN would
    be the client's unchecked claim. Called only when no token was sent (a token wins).
    The revision is the store's current one, as etcd's: a certificate cannot go stale.
    """
    store = server.auth_store
    if context is None or store is None or not server.cfg.client_cert_auth:
        return None
    cn = peer_common_name(context)
    return AuthInfo(cn, store.revision) if cn else None


async def auth_info_from_metadata(
    server: EtcdServer, metadata: Sequence[tuple[str, Any]] | None, context: Any = None
) -> AuthInfo | None:
    """Resolve the caller: None when auth is off or no credentials were sent; raises on a bad token."""
    store = server.auth_store
    if store is None or not store.enabled:
        return None
    token = token_from_metadata(metadata)
    if token is None:
        return auth_info_from_tls(server, context)
    index = token_index(token)
    if index is None:
        raise errors.ErrInvalidAuthToken()
    if index > server.progress.applied_index:
        # The token may come from an Authenticate entry this member has not applied yet. That
        # entry was committed before the token was handed out, so once this member has applied
        # everything committed now (a ReadIndex round) it has it, or the index is forged: no
        # wait for an index that may never come, and nothing left registered.
        try:
            async with asyncio.timeout(server.cfg.request_timeout):
                await server.linearizable_read_notify()
        except (TimeoutError, errors.EtcdError):
            raise errors.ErrInvalidAuthToken() from None
        if index > server.progress.applied_index:
            raise errors.ErrInvalidAuthToken()
    return store.auth_info_from_token(token)


def auth_required(server: EtcdServer) -> bool:
    """Whether `auth_info` has anything to find out: auth is enabled.

    The KV handlers ask this first and await `auth_info` only when it is true, so a
    request on a server without auth creates no coroutine for it (each write and read
    passes here).
    """
    store = server.auth_store
    return store is not None and store.enabled


async def auth_info(server: EtcdServer, context: grpc.aio.ServicerContext) -> AuthInfo | None:
    """The helper every service calls first: who is making this RPC."""
    if not auth_required(server):
        return None  # the common case costs no metadata scan
    return await auth_info_from_metadata(server, context.invocation_metadata(), context)


def check_watch_permitted(server: EtcdServer, ai: AuthInfo | None, key: bytes, range_end: bytes) -> None:
    """For Watch create: raise unless the caller may read [key, range_end) (etcd's isWatchPermitted)."""
    if server.auth_store is not None:
        server.auth_store.check_watch_permitted(ai, key, range_end)


_GO_CODE_NAMES = {
    "PERMISSION_DENIED": "PermissionDenied",
    "UNAUTHENTICATED": "Unauthenticated",
    "INVALID_ARGUMENT": "InvalidArgument",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "UNKNOWN": "Unknown",
}


def watch_cancel_reason(err: errors.EtcdError) -> str:
    """The cancel_reason etcd puts in a refused watch-create response: the Go status string.

    etcd reports token, revision and empty-user problems as such and anything else as
    "permission denied".
    """
    if not isinstance(err, (errors.ErrInvalidAuthToken, errors.ErrAuthOldRevision, errors.ErrUserEmpty)):
        err = errors.ErrPermissionDenied()
    return f"rpc error: code = {_GO_CODE_NAMES.get(err.code, err.code)} desc = {err.message}"


def is_lease_revoke_permitted(server: EtcdServer, ai: AuthInfo | None, lease_keys: Sequence[bytes]) -> None:
    """API-side twin of the apply-time check: revoking deletes the keys, so write on all of them is needed."""
    from etcdpy.server.apply_auth import check_lease_puts

    if server.auth_store is not None and server.auth_store.enabled:
        check_lease_puts(server.auth_store, ai, sorted(lease_keys))


def check_lease_keys_readable(server: EtcdServer, ai: AuthInfo | None, lease_keys: Sequence[bytes]) -> None:
    """LeaseTimeToLive with keys=true: a non-root caller must be able to read every key it would list."""
    store = server.auth_store
    if store is None or not store.enabled:
        return
    try:
        store.is_admin_permitted(ai)
        return
    except errors.EtcdError:
        pass
    for key in sorted(lease_keys):
        store.is_range_permitted(ai, key, b"")


def require_auth_info(server: EtcdServer, ai: AuthInfo | None) -> None:
    """etcd's requireAuthInfo (lease RPCs): with auth on, anonymous callers are refused."""
    store = server.auth_store
    if store is not None and store.enabled and ai is None:
        raise errors.ErrUserEmpty()


# ---------------------------------------------------------------------- passwords (worker threads)


def hash_password(password: str, cost: int) -> str:
    """bcrypt hash, base64-encoded as etcd's AuthUserAddRequest.hashedPassword carries it. Slow: call off-loop."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost))
    return base64.b64encode(hashed).decode()


def password_matches(password: str, hashed: bytes) -> bool:
    """bcrypt comparison; a missing or malformed hash matches nothing. Slow: call off-loop."""
    try:
        return bcrypt.checkpw(password.encode(), hashed)
    except ValueError:
        return False


# ---------------------------------------------------------------------- the service


class AuthService(rpc_pb2_grpc.AuthServicer):
    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    @property
    def store(self) -> AuthStore:
        assert self.server.auth_store is not None
        return self.server.auth_store

    async def _propose(self, field: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Propose `request` as InternalRaftRequest.<field> with the caller's identity in the header."""
        ai = await auth_info(self.server, context)
        irr = raft_internal_pb2.InternalRaftRequest()
        getattr(irr, field).CopyFrom(request)
        resp = await self.server.process_internal_raft_request(irr, auth=ai)
        self.server.fill_header(resp.header)
        return resp

    @rpc
    async def AuthEnable(self, request: rpc_pb2.AuthEnableRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_enable", request, context)

    @rpc
    async def AuthDisable(self, request: rpc_pb2.AuthDisableRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_disable", request, context)

    @rpc
    async def AuthStatus(self, request: rpc_pb2.AuthStatusRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_status", request, context)

    @rpc
    async def Authenticate(self, request: rpc_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext) -> Any:
        """Check the password here, then let the log hand out the token (etcd's EtcdServer.Authenticate).

        If the auth store changed while the password was being checked (say, the password
        itself), the check is redone against the new state before the token is returned.
        """
        server = self.server
        await server.linearizable_read_notify()
        while True:
            hashed, checked_rev = self.store.password_hash(request.name)
            if not await asyncio.to_thread(password_matches, request.password, hashed):
                server.log.info("invalid password", extra={"fields": {"user-name": request.name}})
                raise errors.ErrAuthFailed()
            internal = raft_internal_pb2.InternalAuthenticateRequest(
                name=request.name, simple_token=self.store.gen_token_prefix()
            )
            resp = await server.process_internal_raft_request(
                raft_internal_pb2.InternalRaftRequest(authenticate=internal)
            )
            if checked_rev == self.store.revision:
                server.fill_header(resp.header)
                return resp

    @rpc
    async def UserAdd(self, request: rpc_pb2.AuthUserAddRequest, context: grpc.aio.ServicerContext) -> Any:
        if not request.options.no_password:
            request.hashedPassword = await asyncio.to_thread(hash_password, request.password, self.store.bcrypt_cost)
        request.password = ""
        return await self._propose("auth_user_add", request, context)

    @rpc
    async def UserGet(self, request: rpc_pb2.AuthUserGetRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_user_get", request, context)

    @rpc
    async def UserList(self, request: rpc_pb2.AuthUserListRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_user_list", request, context)

    @rpc
    async def UserDelete(self, request: rpc_pb2.AuthUserDeleteRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_user_delete", request, context)

    @rpc
    async def UserChangePassword(
        self, request: rpc_pb2.AuthUserChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        if request.password:
            request.hashedPassword = await asyncio.to_thread(hash_password, request.password, self.store.bcrypt_cost)
        request.password = ""
        return await self._propose("auth_user_change_password", request, context)

    @rpc
    async def UserGrantRole(self, request: rpc_pb2.AuthUserGrantRoleRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_user_grant_role", request, context)

    @rpc
    async def UserRevokeRole(
        self, request: rpc_pb2.AuthUserRevokeRoleRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._propose("auth_user_revoke_role", request, context)

    @rpc
    async def RoleAdd(self, request: rpc_pb2.AuthRoleAddRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_role_add", request, context)

    @rpc
    async def RoleGet(self, request: rpc_pb2.AuthRoleGetRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_role_get", request, context)

    @rpc
    async def RoleList(self, request: rpc_pb2.AuthRoleListRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_role_list", request, context)

    @rpc
    async def RoleDelete(self, request: rpc_pb2.AuthRoleDeleteRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._propose("auth_role_delete", request, context)

    @rpc
    async def RoleGrantPermission(
        self, request: rpc_pb2.AuthRoleGrantPermissionRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._propose("auth_role_grant_permission", request, context)

    @rpc
    async def RoleRevokePermission(
        self, request: rpc_pb2.AuthRoleRevokePermissionRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return await self._propose("auth_role_revoke_permission", request, context)


# ---------------------------------------------------------------------- root-only RPCs of other services

MAINTENANCE_ADMIN_METHODS = frozenset(
    f"/etcdserverpb.Maintenance/{m}" for m in ("Defragment", "Snapshot", "Hash", "HashKV", "MoveLeader", "Downgrade")
)
"""etcd 3.5's authMaintenanceServer: these need the root role; Status and Alarm do not."""

CLUSTER_ADMIN_METHODS = frozenset(
    f"/etcdserverpb.Cluster/{m}" for m in ("MemberAdd", "MemberRemove", "MemberUpdate", "MemberPromote")
)
"""etcd's checkMembershipOperationPermission; MemberList is open to everyone."""


class AdminInterceptor(grpc.aio.ServerInterceptor):
    """Refuse root-only Maintenance and Cluster RPCs to non-root callers while auth is enabled.

    Maintenance answers with the auth store's raw error (code Unknown, "auth: ..."),
    Cluster with the mapped etcdserver error, each exactly as etcd 3.4/3.5 do.
    """

    def __init__(self, server: EtcdServer) -> None:
        self.server = server

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.guard(handler_call_details.method, handler)

    def guard(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` itself, or guarded by the root check if `method` is root-only.

        Also used once per method at registration (`etcdpy.api.grpcbackend`), so that no
        interceptor runs on every call of every method.
        """
        if method not in MAINTENANCE_ADMIN_METHODS and method not in CLUSTER_ADMIN_METHODS:
            return handler
        return _guarded(handler, self._checker(method in MAINTENANCE_ADMIN_METHODS))

    def _checker(self, raw_errors: bool) -> Callable[[grpc.aio.ServicerContext], Any]:
        async def check(context: grpc.aio.ServicerContext) -> None:
            await check_admin_call(self.server, context, raw_errors)

        return check


async def check_admin_call(server: EtcdServer, context: Any, raw_errors: bool) -> None:
    """Abort the call unless auth is off or the caller has the root role (shared with the JSON gateway).

    `raw_errors`: answer with the auth store's unmapped error, as etcd's Maintenance does.
    """
    store = server.auth_store
    if store is None or not store.enabled:
        return
    try:
        ai = await auth_info(server, context)
        store.is_admin_permitted(ai)
    except errors.EtcdError as e:
        err = errors.unmapped_auth_error(e) if raw_errors else e
        await context.abort(status_code(err), err.message)


def _guarded(handler: grpc.RpcMethodHandler, check: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
    """The same handler, running `check(context)` before the real work."""
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            result = inner_stream(request, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                await result

        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )
    return handler
