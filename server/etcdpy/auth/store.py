"""The auth store (etcd's server/auth/store.go): users, roles, permissions, enable flag, revision.

Persistence follows etcd's schema, in this member's backend:

* bucket ``auth``: ``authEnabled`` (one byte, 1 or 0) and ``authRevision``
  (8-byte big-endian), the revision being bumped by every change of users,
  roles, permissions or the enable flag;
* bucket ``authUsers``: user name -> serialized ``authpb.User`` (bcrypt hash in
  ``password``, roles kept sorted);
* bucket ``authRoles``: role name -> serialized ``authpb.Role`` (permissions
  kept sorted by key).

Every change arrives as a committed raft entry and is applied on the event loop
thread. A change is staged in an `AuthTx` that wraps the write batch the applier
commits together with the consistent index; the in-memory state (enabled flag,
revision, permission cache, tokens) changes only once that batch is written, so
a failed request leaves no trace in either. Reads always see committed state.

Everything here is deterministic: the slow and random parts (bcrypt hashing and
checking, token prefixes) happen in the API layer before proposing.
"""

from __future__ import annotations

import base64
import binascii
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from etcdpy import errors
from etcdpy.auth.perms import (
    OPEN_END,
    READ,
    READWRITE,
    WRITE,
    UnifiedRangePermissions,
    is_valid_permission_range,
    merge_permissions,
)
from etcdpy.auth.simple_token import SimpleTokenProvider, gen_token_prefix, token_index
from etcdpy.pb import auth_pb2, rpc_pb2

if TYPE_CHECKING:
    from etcdpy.mvcc.backend import Backend, Batch

BUCKET_AUTH = "auth"
BUCKET_AUTH_USERS = "authUsers"
BUCKET_AUTH_ROLES = "authRoles"
KEY_AUTH_ENABLED = b"authEnabled"
KEY_AUTH_REVISION = b"authRevision"

ROOT_USER = "root"
ROOT_ROLE = "root"
DEFAULT_BCRYPT_COST = 10

_U64 = struct.Struct(">Q")
T = TypeVar("T")


def root_permission() -> auth_pb2.Permission:
    """What RoleGet reports for the root role: read-write on every key."""
    return auth_pb2.Permission(permType=READWRITE, key=b"", range_end=OPEN_END)


@dataclass(frozen=True)
class AuthInfo:
    """Who makes a request, and the auth revision their credentials were checked at."""

    username: str
    revision: int


def has_root_role(user: auth_pb2.User) -> bool:
    return ROOT_ROLE in user.roles


class AuthTx:
    """The auth writes of one applied entry, plus what to do in memory once they are committed."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self._on_commit: list[Callable[[], None]] = []

    def put_user(self, user: auth_pb2.User) -> None:
        self.batch.put(BUCKET_AUTH_USERS, user.name, user.SerializeToString())

    def delete_user(self, name: str) -> None:
        self.batch.delete(BUCKET_AUTH_USERS, name.encode())

    def put_role(self, role: auth_pb2.Role) -> None:
        self.batch.put(BUCKET_AUTH_ROLES, role.name, role.SerializeToString())

    def delete_role(self, name: str) -> None:
        self.batch.delete(BUCKET_AUTH_ROLES, name.encode())

    def save_enabled(self, enabled: bool) -> None:
        self.batch.put(BUCKET_AUTH, KEY_AUTH_ENABLED, b"\x01" if enabled else b"\x00")

    def save_revision(self, revision: int) -> None:
        self.batch.put(BUCKET_AUTH, KEY_AUTH_REVISION, _U64.pack(revision))

    def on_commit(self, fn: Callable[[], None]) -> None:
        self._on_commit.append(fn)

    def committed(self) -> None:
        """Called by whoever wrote the batch: bring the in-memory state up to date."""
        fns, self._on_commit = self._on_commit, []
        for fn in fns:
            fn()


class AuthStore:
    """etcd's authStore on an etcdpy backend; owned by the event loop thread."""

    def __init__(
        self,
        backend: Backend,
        tokens: SimpleTokenProvider | None = None,
        bcrypt_cost: int = DEFAULT_BCRYPT_COST,
        logger: logging.Logger | None = None,
    ) -> None:
        self._be = backend
        self.tokens = tokens or SimpleTokenProvider()
        self.bcrypt_cost = bcrypt_cost if 4 <= bcrypt_cost <= 31 else DEFAULT_BCRYPT_COST
        self.log = logger or logging.getLogger("etcdpy.auth")
        self._perm_cache: dict[str, UnifiedRangePermissions] = {}
        self.recover()

    # ------------------------------------------------------------------ state

    def recover(self, backend: Backend | None = None) -> None:
        """(Re)load the enable flag and revision from the backend (start-up, snapshot install).

        Pass `backend` when the snapshot install replaced the Backend object itself.
        A brand-new store starts at revision 1, as etcd's NewAuthStore commits it.
        """
        if backend is not None:
            self._be = backend
        raw_enabled = self._be.get(BUCKET_AUTH, KEY_AUTH_ENABLED)
        raw_rev = self._be.get(BUCKET_AUTH, KEY_AUTH_REVISION)
        self._enabled = raw_enabled == b"\x01"
        self._revision = _U64.unpack(raw_rev)[0] if raw_rev and len(raw_rev) == 8 else 0
        if self._revision == 0:
            self._revision = 1
            self._be.put(BUCKET_AUTH, KEY_AUTH_REVISION, _U64.pack(1))
        self._perm_cache.clear()
        if self._enabled:
            self.tokens.enable()
        else:
            self.tokens.disable()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def revision(self) -> int:
        return self._revision

    def run(self, fn: Callable[[AuthTx], T]) -> T:
        """Apply one change in its own batch (tests and tools; the applier shares its batch)."""
        tx = AuthTx(self._be.batch())
        result = fn(tx)
        self._be.write(tx.batch)
        tx.committed()
        return result

    def _commit_revision(self, tx: AuthTx) -> None:
        """Every change bumps the revision, which makes older permission checks stale."""
        new = self._revision + 1
        tx.save_revision(new)

        def done() -> None:
            self._revision = new
            self._perm_cache.clear()

        tx.on_commit(done)

    # ------------------------------------------------------------------ reads

    def get_user(self, name: str) -> auth_pb2.User | None:
        raw = self._be.get(BUCKET_AUTH_USERS, name.encode())
        if raw is None:
            return None
        user = auth_pb2.User()
        user.ParseFromString(raw)
        return user

    def get_role(self, name: str) -> auth_pb2.Role | None:
        raw = self._be.get(BUCKET_AUTH_ROLES, name.encode())
        if raw is None:
            return None
        role = auth_pb2.Role()
        role.ParseFromString(raw)
        return role

    def all_users(self) -> list[auth_pb2.User]:
        """In key order, as etcd's bucket scan returns them."""
        out = []
        for _, raw in self._be.iterate(BUCKET_AUTH_USERS):
            user = auth_pb2.User()
            user.ParseFromString(raw)
            out.append(user)
        return out

    def all_roles(self) -> list[auth_pb2.Role]:
        out = []
        for _, raw in self._be.iterate(BUCKET_AUTH_ROLES):
            role = auth_pb2.Role()
            role.ParseFromString(raw)
            out.append(role)
        return out

    def has_role(self, username: str, role: str) -> bool:
        user = self.get_user(username)
        return user is not None and role in user.roles

    # ------------------------------------------------------------------ enable / disable / status

    def auth_enable(self, tx: AuthTx) -> rpc_pb2.AuthEnableResponse:
        """Needs a root user holding the root role; enabling twice is a no-op."""
        if self._enabled:
            return rpc_pb2.AuthEnableResponse()
        root = self.get_user(ROOT_USER)
        if root is None:
            raise errors.ErrRootUserNotExist()
        if not has_root_role(root):
            raise errors.ErrRootRoleNotExist()
        tx.save_enabled(True)

        def done() -> None:
            self._enabled = True
            self.tokens.enable()
            self._perm_cache.clear()

        tx.on_commit(done)
        self.log.info("enabled authentication")
        return rpc_pb2.AuthEnableResponse()

    def auth_disable(self, tx: AuthTx) -> rpc_pb2.AuthDisableResponse:
        """Disabling drops every token; disabling twice is a no-op."""
        if not self._enabled:
            return rpc_pb2.AuthDisableResponse()
        tx.save_enabled(False)
        self._commit_revision(tx)

        def done() -> None:
            self._enabled = False
            self.tokens.disable()

        tx.on_commit(done)
        self.log.info("disabled authentication")
        return rpc_pb2.AuthDisableResponse()

    def auth_status(self) -> rpc_pb2.AuthStatusResponse:
        return rpc_pb2.AuthStatusResponse(enabled=self._enabled, authRevision=self._revision)

    # ------------------------------------------------------------------ authentication

    def password_hash(self, name: str) -> tuple[bytes, int]:
        """CheckPassword's first half (on the loop): the stored hash and the revision it was read at.

        The bcrypt comparison itself is slow, so the caller runs it on a worker thread.
        """
        if not self._enabled:
            raise errors.ErrAuthNotEnabled()
        user = self.get_user(name)
        if user is None:
            raise errors.ErrAuthFailed()
        if user.options.no_password:
            raise errors.ErrNoPasswordUser()
        return user.password, self._revision

    def authenticate(self, tx: AuthTx, name: str, prefix: str, index: int) -> rpc_pb2.AuthenticateResponse:
        """Apply-time half of Authenticate: hand out `<prefix>.<index>` (password was checked before proposing)."""
        if not self._enabled:
            raise errors.ErrAuthNotEnabled()
        user = self.get_user(name)
        if user is None or user.options.no_password:
            raise errors.ErrAuthFailed()
        token = f"{prefix}.{index}"
        tx.on_commit(lambda: self.tokens.assign(name, prefix, index))
        return rpc_pb2.AuthenticateResponse(token=token)

    def gen_token_prefix(self) -> str:
        return gen_token_prefix()

    def root_info(self) -> AuthInfo | None:
        """Credentials for the server's own proposals (etcd's WithRoot), e.g. revoking expired leases."""
        return AuthInfo(ROOT_USER, self._revision) if self._enabled else None

    def auth_info_from_token(self, token: str) -> AuthInfo | None:
        """AuthInfoFromCtx for a token: None while auth is disabled (etcd 3.5), else the user or an error."""
        if not self._enabled:
            return None
        if token_index(token) is None:
            raise errors.ErrInvalidAuthToken()
        user = self.tokens.username(token)
        if user is None:
            raise errors.ErrInvalidAuthToken()
        return AuthInfo(user, self._revision)

    # ------------------------------------------------------------------ users

    def user_add(self, tx: AuthTx, r: rpc_pb2.AuthUserAddRequest) -> rpc_pb2.AuthUserAddResponse:
        if not r.name:
            raise errors.ErrUserEmpty()
        if self.get_user(r.name) is not None:
            raise errors.ErrUserAlreadyExist()
        user = auth_pb2.User(name=r.name.encode())
        user.options.CopyFrom(r.options)
        if not r.options.no_password:
            user.password = _decode_hash(r.hashedPassword)
        tx.put_user(user)
        self._commit_revision(tx)
        self.log.info("added a user", extra={"fields": {"user-name": r.name}})
        return rpc_pb2.AuthUserAddResponse()

    def user_delete(self, tx: AuthTx, r: rpc_pb2.AuthUserDeleteRequest) -> rpc_pb2.AuthUserDeleteResponse:
        if self._enabled and r.name == ROOT_USER:
            raise errors.ErrInvalidAuthMgmt()
        if self.get_user(r.name) is None:
            raise errors.ErrUserNotFound()
        tx.delete_user(r.name)
        self._commit_revision(tx)
        tx.on_commit(lambda: self.tokens.invalidate_user(r.name))
        self.log.info("deleted a user", extra={"fields": {"user-name": r.name}})
        return rpc_pb2.AuthUserDeleteResponse()

    def user_change_password(
        self, tx: AuthTx, r: rpc_pb2.AuthUserChangePasswordRequest
    ) -> rpc_pb2.AuthUserChangePasswordResponse:
        user = self.get_user(r.name)
        if user is None:
            raise errors.ErrUserNotFound()
        user.password = b"" if user.options.no_password else _decode_hash(r.hashedPassword)
        tx.put_user(user)
        self._commit_revision(tx)
        tx.on_commit(lambda: self.tokens.invalidate_user(r.name))
        self.log.info("changed a password of a user", extra={"fields": {"user-name": r.name}})
        return rpc_pb2.AuthUserChangePasswordResponse()

    def user_grant_role(self, tx: AuthTx, r: rpc_pb2.AuthUserGrantRoleRequest) -> rpc_pb2.AuthUserGrantRoleResponse:
        """The root role may be granted even before it exists as a role (etcd does so)."""
        user = self.get_user(r.user)
        if user is None:
            raise errors.ErrUserNotFound()
        if r.role != ROOT_ROLE and self.get_role(r.role) is None:
            raise errors.ErrRoleNotFound()
        if r.role in user.roles:
            return rpc_pb2.AuthUserGrantRoleResponse()
        roles = sorted([*user.roles, r.role])
        del user.roles[:]
        user.roles.extend(roles)
        tx.put_user(user)
        self._commit_revision(tx)
        self.log.info("granted a role to a user", extra={"fields": {"user-name": r.user, "role-name": r.role}})
        return rpc_pb2.AuthUserGrantRoleResponse()

    def user_revoke_role(
        self, tx: AuthTx, r: rpc_pb2.AuthUserRevokeRoleRequest
    ) -> rpc_pb2.AuthUserRevokeRoleResponse:
        if self._enabled and r.name == ROOT_USER and r.role == ROOT_ROLE:
            raise errors.ErrInvalidAuthMgmt()
        user = self.get_user(r.name)
        if user is None:
            raise errors.ErrUserNotFound()
        kept = [role for role in user.roles if role != r.role]
        if len(kept) == len(user.roles):
            raise errors.ErrRoleNotGranted()
        del user.roles[:]
        user.roles.extend(kept)
        tx.put_user(user)
        self._commit_revision(tx)
        self.log.info("revoked a role from a user", extra={"fields": {"user-name": r.name, "role-name": r.role}})
        return rpc_pb2.AuthUserRevokeRoleResponse()

    def user_get(self, r: rpc_pb2.AuthUserGetRequest) -> rpc_pb2.AuthUserGetResponse:
        user = self.get_user(r.name)
        if user is None:
            raise errors.ErrUserNotFound()
        return rpc_pb2.AuthUserGetResponse(roles=list(user.roles))

    def user_list(self) -> rpc_pb2.AuthUserListResponse:
        return rpc_pb2.AuthUserListResponse(users=[u.name.decode() for u in self.all_users()])

    # ------------------------------------------------------------------ roles

    def role_add(self, tx: AuthTx, r: rpc_pb2.AuthRoleAddRequest) -> rpc_pb2.AuthRoleAddResponse:
        if not r.name:
            raise errors.ErrRoleEmpty()
        if self.get_role(r.name) is not None:
            raise errors.ErrRoleAlreadyExist()
        tx.put_role(auth_pb2.Role(name=r.name.encode()))
        self._commit_revision(tx)
        self.log.info("created a role", extra={"fields": {"role-name": r.name}})
        return rpc_pb2.AuthRoleAddResponse()

    def role_delete(self, tx: AuthTx, r: rpc_pb2.AuthRoleDeleteRequest) -> rpc_pb2.AuthRoleDeleteResponse:
        """Deleting a role also takes it away from every user holding it."""
        if self._enabled and r.role == ROOT_ROLE:
            raise errors.ErrInvalidAuthMgmt()
        if self.get_role(r.role) is None:
            raise errors.ErrRoleNotFound()
        tx.delete_role(r.role)
        for user in self.all_users():
            kept = [role for role in user.roles if role != r.role]
            if len(kept) != len(user.roles):
                del user.roles[:]
                user.roles.extend(kept)
                tx.put_user(user)
        self._commit_revision(tx)
        self.log.info("deleted a role", extra={"fields": {"role-name": r.role}})
        return rpc_pb2.AuthRoleDeleteResponse()

    def role_get(self, r: rpc_pb2.AuthRoleGetRequest) -> rpc_pb2.AuthRoleGetResponse:
        """The root role reports read-write on everything, whatever is stored for it (etcd 3.5)."""
        role = self.get_role(r.role)
        if role is None:
            raise errors.ErrRoleNotFound()
        if r.role == ROOT_ROLE:
            return rpc_pb2.AuthRoleGetResponse(perm=[root_permission()])
        return rpc_pb2.AuthRoleGetResponse(perm=list(role.keyPermission))

    def role_list(self) -> rpc_pb2.AuthRoleListResponse:
        return rpc_pb2.AuthRoleListResponse(roles=[r.name.decode() for r in self.all_roles()])

    def role_grant_permission(
        self, tx: AuthTx, r: rpc_pb2.AuthRoleGrantPermissionRequest
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        """Add a permission, or change the type of the one with the same key and range_end."""
        if not r.HasField("perm"):
            raise errors.ErrPermissionNotGiven()
        if not is_valid_permission_range(r.perm.key, r.perm.range_end):
            raise errors.ErrInvalidAuthMgmt()
        role = self.get_role(r.name)
        if role is None:
            raise errors.ErrRoleNotFound()
        perms = list(role.keyPermission)
        # etcd looks only at the first permission whose key is >= the new key.
        idx = next((i for i, p in enumerate(perms) if p.key >= r.perm.key), len(perms))
        if idx < len(perms) and perms[idx].key == r.perm.key and perms[idx].range_end == r.perm.range_end:
            perms[idx].permType = r.perm.permType
        else:
            perms.append(auth_pb2.Permission(permType=r.perm.permType, key=r.perm.key, range_end=r.perm.range_end))
            perms.sort(key=lambda p: p.key)
        del role.keyPermission[:]
        role.keyPermission.extend(perms)
        tx.put_role(role)
        self._commit_revision(tx)
        self.log.info("granted/updated a permission to a role", extra={"fields": {"role-name": r.name}})
        return rpc_pb2.AuthRoleGrantPermissionResponse()

    def role_revoke_permission(
        self, tx: AuthTx, r: rpc_pb2.AuthRoleRevokePermissionRequest
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        role = self.get_role(r.role)
        if role is None:
            raise errors.ErrRoleNotFound()
        kept = [p for p in role.keyPermission if p.key != r.key or p.range_end != r.range_end]
        if len(kept) == len(role.keyPermission):
            raise errors.ErrPermissionNotGranted()
        del role.keyPermission[:]
        role.keyPermission.extend(kept)
        tx.put_role(role)
        self._commit_revision(tx)
        self.log.info("revoked a permission on range", extra={"fields": {"role-name": r.role}})
        return rpc_pb2.AuthRoleRevokePermissionResponse()

    # ------------------------------------------------------------------ permission checks

    def _perms_of(self, username: str) -> UnifiedRangePermissions | None:
        """The per-user cache; cleared whenever the auth revision moves."""
        perms = self._perm_cache.get(username)
        if perms is None:
            user = self.get_user(username)
            if user is None:
                return None
            perms = merge_permissions(user.roles, self.get_role)
            self._perm_cache[username] = perms
        return perms

    def is_op_permitted(self, ai: AuthInfo | None, key: bytes, range_end: bytes, perm_type: int) -> None:
        """isOpPermitted: raise unless auth is off, the user is root, or their roles cover the keys.

        A check made with credentials older than the current auth revision fails with
        ErrAuthOldRevision: the client re-authenticates and retries.
        """
        if not self._enabled:
            return
        if ai is None or ai.revision == 0:
            raise errors.ErrUserEmpty()
        if ai.revision < self._revision:
            raise errors.ErrAuthOldRevision()
        user = self.get_user(ai.username)
        if user is None:
            raise errors.ErrPermissionDenied()
        if has_root_role(user):
            return
        perms = self._perms_of(ai.username)
        if perms is None or not perms.permits(key, range_end, perm_type):
            raise errors.ErrPermissionDenied()

    def is_put_permitted(self, ai: AuthInfo | None, key: bytes) -> None:
        self.is_op_permitted(ai, key, b"", WRITE)

    def is_range_permitted(self, ai: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self.is_op_permitted(ai, key, range_end, READ)

    def is_delete_range_permitted(self, ai: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        self.is_op_permitted(ai, key, range_end, WRITE)

    def is_admin_permitted(self, ai: AuthInfo | None) -> None:
        """IsAdminPermitted: the user must hold the root role (no revision check, as in etcd)."""
        if not self._enabled:
            return
        if ai is None or not ai.username:
            raise errors.ErrUserEmpty()
        user = self.get_user(ai.username)
        if user is None:
            raise errors.ErrUserNotFound()
        if not has_root_role(user):
            raise errors.ErrPermissionDenied()

    def check_watch_permitted(self, ai: AuthInfo | None, key: bytes, range_end: bytes) -> None:
        """A watch needs read on what it watches; an empty key means from the first key (b"\\x00")."""
        self.is_range_permitted(ai, key or b"\x00", range_end)

    def check_txn_permitted(self, ai: AuthInfo | None, rt: rpc_pb2.TxnRequest) -> None:
        """checkTxnPermission: every compare needs read, every op in both branches its own right."""
        for c in rt.compare:
            self.is_range_permitted(ai, c.key, c.range_end)
        for op in (*rt.success, *rt.failure):
            kind = op.WhichOneof("request")
            if kind == "request_range":
                self.is_range_permitted(ai, op.request_range.key, op.request_range.range_end)
            elif kind == "request_put":
                self.is_put_permitted(ai, op.request_put.key)
            elif kind == "request_delete_range":
                d = op.request_delete_range
                if d.prev_kv:
                    self.is_range_permitted(ai, d.key, d.range_end)
                self.is_delete_range_permitted(ai, d.key, d.range_end)
            elif kind == "request_txn":
                self.check_txn_permitted(ai, op.request_txn)


def _decode_hash(hashed: str) -> bytes:
    """The proposal carries the bcrypt hash base64-encoded (etcd's hashedPassword)."""
    try:
        return base64.b64decode(hashed, validate=True)
    except (binascii.Error, ValueError):
        raise errors.ErrNoPasswordUser() from None
