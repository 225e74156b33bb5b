"""The auth side of the apply step (etcd's authApplierV3 plus the auth half of applierV3backend).

`Applier.apply` asks `AuthApplier.apply` first. It answers in three ways:

* an auth request (user/role management, enable/disable/status, the internal
  Authenticate): applied here, its writes committed in one batch with the
  consistent index, and the result returned;
* a request the proposer may not make (not root for admin requests, no right on
  some key of a Put/DeleteRange/Txn, or credentials older than the auth
  revision): a failed result, the consistent index still recorded;
* anything else: None, and the KV applier goes on as if auth did not exist.

Why permissions are checked again at apply time: the API layer checked them
against the state it saw, but a permission may have been revoked by an entry
committed before this one. The header carries who proposed and at which auth
revision; every member checks the same thing against the same state, so all
reach the same verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from etcdpy import errors
from etcdpy.auth.store import AuthInfo, AuthStore, AuthTx
from etcdpy.pb import raft_internal_pb2, rpc_pb2

if TYPE_CHECKING:
    from etcdpy.mvcc import KVStore
    from etcdpy.server.apply import ApplyResult

AuthHandler = Callable[[AuthStore, AuthTx, Any, AuthInfo, int], Any]

# Requests only a root user may make (etcd 3.5's needAdminPermission).
ADMIN_REQUESTS = frozenset(
    {
        "auth_enable",
        "auth_disable",
        "auth_status",
        "auth_user_add",
        "auth_user_delete",
        "auth_user_change_password",
        "auth_user_grant_role",
        "auth_user_revoke_role",
        "auth_role_add",
        "auth_role_grant_permission",
        "auth_role_revoke_permission",
        "auth_role_delete",
        "auth_user_list",
        "auth_role_list",
    }
)


def _user_get(s: AuthStore, tx: AuthTx, r: rpc_pb2.AuthUserGetRequest, ai: AuthInfo, index: int) -> Any:
    """A user may read their own record without being root."""
    try:
        s.is_admin_permitted(ai)
    except errors.EtcdError:
        if r.name != ai.username:
            raise
    return s.user_get(r)


def _role_get(s: AuthStore, tx: AuthTx, r: rpc_pb2.AuthRoleGetRequest, ai: AuthInfo, index: int) -> Any:
    """A user may read the roles they hold without being root."""
    try:
        s.is_admin_permitted(ai)
    except errors.EtcdError:
        if not s.has_role(ai.username, r.role):
            raise
    return s.role_get(r)


def _authenticate(
    s: AuthStore, tx: AuthTx, r: raft_internal_pb2.InternalAuthenticateRequest, ai: AuthInfo, index: int
) -> Any:
    """The token is `<prefix chosen by the proposer>.<this entry's index>`, the same on every member."""
    return s.authenticate(tx, r.name, r.simple_token, index)


AUTH_HANDLERS: dict[str, AuthHandler] = {
    "auth_enable": lambda s, tx, r, ai, i: s.auth_enable(tx),
    "auth_disable": lambda s, tx, r, ai, i: s.auth_disable(tx),
    "auth_status": lambda s, tx, r, ai, i: s.auth_status(),
    "authenticate": _authenticate,
    "auth_user_add": lambda s, tx, r, ai, i: s.user_add(tx, r),
    "auth_user_delete": lambda s, tx, r, ai, i: s.user_delete(tx, r),
    "auth_user_get": _user_get,
    "auth_user_change_password": lambda s, tx, r, ai, i: s.user_change_password(tx, r),
    "auth_user_grant_role": lambda s, tx, r, ai, i: s.user_grant_role(tx, r),
    "auth_user_revoke_role": lambda s, tx, r, ai, i: s.user_revoke_role(tx, r),
    "auth_user_list": lambda s, tx, r, ai, i: s.user_list(),
    "auth_role_list": lambda s, tx, r, ai, i: s.role_list(),
    "auth_role_add": lambda s, tx, r, ai, i: s.role_add(tx, r),
    "auth_role_delete": lambda s, tx, r, ai, i: s.role_delete(tx, r),
    "auth_role_get": _role_get,
    "auth_role_grant_permission": lambda s, tx, r, ai, i: s.role_grant_permission(tx, r),
    "auth_role_revoke_permission": lambda s, tx, r, ai, i: s.role_revoke_permission(tx, r),
}


def lease_keys(lessor: Any, lease_id: int) -> list[bytes]:
    """Keys attached to a lease, sorted; none when there is no lessor or no such lease."""
    if lessor is None or lease_id == 0:
        return []
    lease = lessor.lookup(lease_id)
    if lease is None:
        return []
    return sorted(getattr(lease, "keys", ()))


def check_lease_puts(store: AuthStore, ai: AuthInfo | None, keys: list[bytes]) -> None:
    """checkLeasePuts: revoking a lease deletes its keys, and attaching to it lets the user revoke it.

    So both need write permission on every key the lease already holds. Root
    (or auth off) short-cuts the per-key checks.
    """
    try:
        store.is_admin_permitted(ai)
        return
    except errors.EtcdError:
        pass
    for key in keys:
        store.is_put_permitted(ai, key)


class AuthApplier:
    """authApplierV3: checks and auth requests, ahead of the KV applier."""

    def __init__(self, kv: KVStore, store: AuthStore, lessor: Callable[[], Any] = lambda: None) -> None:
        self.kv = kv
        self.store = store
        # A getter, not the lessor itself: the lease subsystem may be attached later.
        self._lessor = lessor

    def apply(self, req: raft_internal_pb2.InternalRaftRequest, index: int, term: int) -> ApplyResult | None:
        """A result for auth requests and refused requests; None to let the KV applier run."""
        ai = AuthInfo(req.header.username, req.header.auth_revision)
        try:
            name = self._auth_request(req)
            if name is None:
                self.check_permitted(req, ai)
                return None
            if name in ADMIN_REQUESTS:
                self.store.is_admin_permitted(ai)
        except errors.EtcdError as e:
            return self._fail(e, index, term)
        return self._apply_auth(name, getattr(req, name), ai, index, term)

    def passes_kv_requests(self) -> bool:
        """True when `apply` would surely return None for any Put, Txn, DeleteRange or Range:
        with auth disabled nothing about them is checked."""
        return not self.store.enabled

    @staticmethod
    def _auth_request(req: raft_internal_pb2.InternalRaftRequest) -> str | None:
        if req.HasField("put") or req.HasField("txn") or req.HasField("delete_range") or req.HasField("range"):
            return None  # the hot path: skip the auth field scan
        for name in AUTH_HANDLERS:
            if req.HasField(name):
                return name
        return None

    def check_permitted(self, req: raft_internal_pb2.InternalRaftRequest, ai: AuthInfo) -> None:
        """authApplierV3's Put/Range/DeleteRange/Txn/LeaseRevoke checks."""
        s = self.store
        if not s.enabled:
            return
        if req.HasField("put"):
            p = req.put
            s.is_put_permitted(ai, p.key)
            check_lease_puts(s, ai, lease_keys(self._lessor(), p.lease))
            if p.prev_kv:
                s.is_range_permitted(ai, p.key, b"")
        elif req.HasField("delete_range"):
            d = req.delete_range
            s.is_delete_range_permitted(ai, d.key, d.range_end)
            if d.prev_kv:
                s.is_range_permitted(ai, d.key, d.range_end)
        elif req.HasField("txn"):
            s.check_txn_permitted(ai, req.txn)
        elif req.HasField("range"):
            s.is_range_permitted(ai, req.range.key, req.range.range_end)
        elif req.HasField("lease_revoke"):
            check_lease_puts(s, ai, lease_keys(self._lessor(), req.lease_revoke.ID))

    def _apply_auth(self, name: str, r: Any, ai: AuthInfo, index: int, term: int) -> ApplyResult:
        """Run one auth request; its writes and the consistent index are one atomic batch."""
        from etcdpy.server.apply import ApplyResult

        write = self.kv.write()
        tx = AuthTx(write.batch)
        try:
            resp = AUTH_HANDLERS[name](self.store, tx, r, ai, index)
        except errors.EtcdError as e:
            write.abort()
            return self._fail(e, index, term)
        except BaseException:
            write.abort()
            raise
        write.end(index, term)
        tx.committed()
        return ApplyResult(resp=resp, err=None, events=[])

    def _fail(self, err: errors.EtcdError, index: int, term: int) -> ApplyResult:
        """A refused request still moves the consistent index, like any applied entry."""
        from etcdpy.server.apply import ApplyResult

        self.kv.write().end(index, term)
        return ApplyResult(resp=None, err=err, events=[])
