"""Unit tests for etcdpy.auth (store, permissions, simple tokens) and the apply-side auth hook.

Expectations follow etcd's server/auth (3.5) and what etcd 3.4.23 answers over gRPC
(checked with a probe against a real member: error texts, the root-role quirks,
Authenticate's token format). Password hashes here use bcrypt's minimum cost so
the suite stays fast; the server uses cost 10.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest

from etcdpy import errors
from etcdpy.auth import READ, READWRITE, WRITE, AuthInfo, AuthStore, SimpleTokenProvider, token_index
from etcdpy.auth.perms import (
    Interval,
    IntervalSet,
    UnifiedRangePermissions,
    is_valid_permission_range,
    merge_permissions,
    permission_interval,
)
from etcdpy.auth.simple_token import LETTERS, TOKEN_PREFIX_LENGTH, gen_token_prefix
from etcdpy.mvcc import KVStore
from etcdpy.mvcc.backend import Backend
from etcdpy.pb import auth_pb2, raft_internal_pb2, rpc_pb2
from etcdpy.server.apply import Applier
from etcdpy.server.apply_auth import AuthApplier, check_lease_puts

Perm = auth_pb2.Permission


def hashed(password: str) -> str:
    return base64.b64encode(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))).decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------- permissions


def perms_of(*perms: tuple[int, bytes, bytes]) -> UnifiedRangePermissions:
    role = auth_pb2.Role(name=b"r", keyPermission=[Perm(permType=t, key=k, range_end=e) for t, k, e in perms])
    return merge_permissions(["r"], lambda name: role if name == "r" else None)


def test_single_key_permission_allows_only_that_key() -> None:
    p = perms_of((READWRITE, b"k", b""))
    assert p.permits(b"k", b"", READ) and p.permits(b"k", b"", WRITE)
    assert not p.permits(b"k0", b"", READ)
    assert not p.permits(b"j", b"", WRITE)
    assert p.permits(b"k", b"k\x00", READ)  # the range holding exactly k
    assert not p.permits(b"k", b"l", READ)  # k, k\x00, ... are more than k


def test_prefix_permission_covers_sub_ranges_but_not_from_key() -> None:
    p = perms_of((READ, b"p/", b"p0"))
    assert p.permits(b"p/x", b"", READ)
    assert p.permits(b"p/", b"p0", READ)
    assert p.permits(b"p/a", b"p/b", READ)
    assert not p.permits(b"p/", b"\x00", READ)  # etcd 3.4.23: denied
    assert not p.permits(b"p/x", b"", WRITE)


def test_open_ended_permission() -> None:
    p = perms_of((WRITE, b"m", b"\x00"))
    assert p.permits(b"zzz", b"", WRITE)
    assert p.permits(b"m", b"\x00", WRITE)
    assert p.permits(b"n", b"\x00", WRITE)
    assert not p.permits(b"l", b"\x00", WRITE)
    assert not p.permits(b"m", b"", READ)


def test_ranges_are_covered_by_the_union_of_permissions() -> None:
    p = perms_of((READ, b"a", b"c"), (READ, b"c", b"e"))
    assert p.permits(b"b", b"d", READ)  # only together
    gap = perms_of((READ, b"a", b"c"), (READ, b"d", b"f"))
    assert not gap.permits(b"b", b"e", READ)
    assert gap.permits(b"d", b"e", READ)


def test_readwrite_counts_as_both() -> None:
    p = perms_of((READ, b"a", b""), (WRITE, b"b", b""), (READWRITE, b"c", b""))
    assert p.permits(b"a", b"", READ) and not p.permits(b"a", b"", WRITE)
    assert p.permits(b"b", b"", WRITE) and not p.permits(b"b", b"", READ)
    assert p.permits(b"c", b"", READ) and p.permits(b"c", b"", WRITE)


def test_missing_roles_grant_nothing() -> None:
    p = merge_permissions(["gone"], lambda name: None)
    assert not p.permits(b"a", b"", READ)


def test_interval_set_covers_fold() -> None:
    s = IntervalSet()
    s.add(permission_interval(b"b", b"d"))
    s.add(permission_interval(b"a", b"c"))
    assert s.covers(Interval(b"a", b"d"))
    assert not s.covers(Interval(b"a", b"e"))
    assert not s.covers(Interval(b"a", None))
    s.add(permission_interval(b"d", b"\x00"))
    assert s.covers(Interval(b"a", None))
    assert not IntervalSet().covers(Interval(b"a", b"b"))


def test_valid_permission_ranges() -> None:
    assert is_valid_permission_range(b"a", b"")
    assert is_valid_permission_range(b"a", b"b")
    assert is_valid_permission_range(b"a", b"\x00")
    assert not is_valid_permission_range(b"", b"")
    assert not is_valid_permission_range(b"b", b"a")
    assert not is_valid_permission_range(b"a", b"a")


# ---------------------------------------------------------------------- simple tokens


def test_token_prefix_and_index() -> None:
    prefix = gen_token_prefix()
    assert len(prefix) == TOKEN_PREFIX_LENGTH and set(prefix) <= set(LETTERS)
    assert gen_token_prefix() != prefix
    assert token_index("abc.15") == 15
    for bad in ("abc", "abc.", "a.b.1", "abc.x", "abc.-1"):
        assert token_index(bad) is None


def test_tokens_expire_unless_used() -> None:
    clock = FakeClock()
    t = SimpleTokenProvider(ttl=300, clock=clock)
    t.enable()
    tok = t.assign("alice", "P" * 16, 7)
    assert tok == "PPPPPPPPPPPPPPPP.7"
    clock.now += 299
    assert t.username(tok) == "alice"  # renews
    clock.now += 299
    assert t.username(tok) == "alice"
    clock.now += 301
    assert t.username(tok) is None
    assert len(t) == 0


def test_expired_tokens_are_purged_on_assign() -> None:
    clock = FakeClock()
    t = SimpleTokenProvider(ttl=10, clock=clock)
    t.enable()
    t.assign("a", "A" * 16, 1)
    clock.now += 11
    t.assign("b", "B" * 16, 2)
    assert len(t) == 1


def test_tokens_invalidated_per_user_and_on_disable() -> None:
    t = SimpleTokenProvider()
    t.enable()
    a1, a2, b = t.assign("a", "x" * 16, 1), t.assign("a", "y" * 16, 2), t.assign("b", "z" * 16, 3)
    t.invalidate_user("a")
    assert t.username(a1) is None and t.username(a2) is None and t.username(b) == "b"
    t.disable()
    assert t.username(b) is None
    assert t.assign("b", "z" * 16, 4) == "zzzzzzzzzzzzzzzz.4" and len(t) == 0  # disabled: nothing kept


# ---------------------------------------------------------------------- the store


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    be = Backend(str(tmp_path / "db"))
    yield be
    be.close()


@pytest.fixture
def store(backend: Backend) -> AuthStore:
    return AuthStore(backend, bcrypt_cost=4)


def add_user(s: AuthStore, name: str, password: str = "pw", no_password: bool = False) -> None:
    req = rpc_pb2.AuthUserAddRequest(name=name, options=auth_pb2.UserAddOptions(no_password=no_password))
    if not no_password:
        req.hashedPassword = hashed(password)
    s.run(lambda tx: s.user_add(tx, req))


def add_role(s: AuthStore, name: str, *perms: tuple[int, bytes, bytes]) -> None:
    s.run(lambda tx: s.role_add(tx, rpc_pb2.AuthRoleAddRequest(name=name)))
    for t, k, e in perms:
        grant = rpc_pb2.AuthRoleGrantPermissionRequest(name=name, perm=Perm(permType=t, key=k, range_end=e))
        s.run(lambda tx, g=grant: s.role_grant_permission(tx, g))


def grant(s: AuthStore, user: str, role: str) -> None:
    s.run(lambda tx: s.user_grant_role(tx, rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role)))


def enable_with_root(s: AuthStore) -> None:
    add_user(s, "root", "rootpw")
    grant(s, "root", "root")
    s.run(s.auth_enable)


def info(s: AuthStore, user: str) -> AuthInfo:
    return AuthInfo(user, s.revision)


def test_new_store_starts_disabled_at_revision_1(store: AuthStore, backend: Backend) -> None:
    assert not store.enabled and store.revision == 1
    assert AuthStore(backend).revision == 1


def test_every_change_bumps_the_revision_and_persists(store: AuthStore, backend: Backend) -> None:
    add_user(store, "alice")
    add_role(store, "r", (READ, b"k", b""))
    grant(store, "alice", "r")
    assert store.revision == 5  # user add, role add, grant-permission, grant-role
    reopened = AuthStore(backend)
    assert reopened.revision == 5
    assert reopened.get_user("alice") is not None and list(reopened.get_user("alice").roles) == ["r"]


def test_user_add_errors(store: AuthStore) -> None:
    with pytest.raises(errors.ErrUserEmpty):
        add_user(store, "")
    add_user(store, "alice")
    with pytest.raises(errors.ErrUserAlreadyExist):
        add_user(store, "alice")
    assert store.revision == 2  # failures change nothing


def test_password_is_stored_hashed(store: AuthStore) -> None:
    add_user(store, "alice", "secret")
    user = store.get_user("alice")
    assert user is not None and user.password.startswith(b"$2") and b"secret" not in user.password
    assert bcrypt.checkpw(b"secret", user.password)


def test_auth_enable_needs_root_with_root_role(store: AuthStore) -> None:
    with pytest.raises(errors.ErrRootUserNotExist):
        store.run(store.auth_enable)
    add_user(store, "root")
    with pytest.raises(errors.ErrRootRoleNotExist):
        store.run(store.auth_enable)
    grant(store, "root", "root")  # the root role may be granted without existing (etcd)
    store.run(store.auth_enable)
    assert store.enabled
    rev = store.revision
    store.run(store.auth_enable)  # already enabled: no-op
    assert store.revision == rev


def test_auth_disable_bumps_revision_and_drops_tokens(store: AuthStore) -> None:
    enable_with_root(store)
    store.run(lambda tx: store.authenticate(tx, "root", "T" * 16, 42))
    assert store.auth_info_from_token("TTTTTTTTTTTTTTTT.42") == AuthInfo("root", store.revision)
    rev = store.revision
    store.run(store.auth_disable)
    assert not store.enabled and store.revision == rev + 1
    store.run(lambda tx: store.auth_enable(tx))
    with pytest.raises(errors.ErrInvalidAuthToken):
        store.auth_info_from_token("TTTTTTTTTTTTTTTT.42")


def test_auth_status(store: AuthStore) -> None:
    assert store.auth_status() == rpc_pb2.AuthStatusResponse(enabled=False, authRevision=1)
    enable_with_root(store)
    assert store.auth_status() == rpc_pb2.AuthStatusResponse(enabled=True, authRevision=3)


def test_root_is_protected_while_enabled(store: AuthStore) -> None:
    enable_with_root(store)
    add_role(store, "root")
    with pytest.raises(errors.ErrInvalidAuthMgmt):
        store.run(lambda tx: store.user_delete(tx, rpc_pb2.AuthUserDeleteRequest(name="root")))
    with pytest.raises(errors.ErrInvalidAuthMgmt):
        store.run(lambda tx: store.user_revoke_role(tx, rpc_pb2.AuthUserRevokeRoleRequest(name="root", role="root")))
    with pytest.raises(errors.ErrInvalidAuthMgmt):
        store.run(lambda tx: store.role_delete(tx, rpc_pb2.AuthRoleDeleteRequest(role="root")))
    store.run(store.auth_disable)
    store.run(lambda tx: store.role_delete(tx, rpc_pb2.AuthRoleDeleteRequest(role="root")))
    store.run(lambda tx: store.user_delete(tx, rpc_pb2.AuthUserDeleteRequest(name="root")))


def test_grant_and_revoke_roles(store: AuthStore) -> None:
    add_user(store, "alice")
    with pytest.raises(errors.ErrRoleNotFound):
        grant(store, "alice", "nosuch")
    with pytest.raises(errors.ErrUserNotFound):
        grant(store, "bob", "root")
    add_role(store, "b")
    add_role(store, "a")
    grant(store, "alice", "b")
    grant(store, "alice", "a")
    rev = store.revision
    grant(store, "alice", "a")  # already granted: no-op
    assert store.revision == rev
    assert store.user_get(rpc_pb2.AuthUserGetRequest(name="alice")).roles == ["a", "b"]
    with pytest.raises(errors.ErrRoleNotGranted):
        store.run(lambda tx: store.user_revoke_role(tx, rpc_pb2.AuthUserRevokeRoleRequest(name="alice", role="c")))
    store.run(lambda tx: store.user_revoke_role(tx, rpc_pb2.AuthUserRevokeRoleRequest(name="alice", role="b")))
    assert store.user_get(rpc_pb2.AuthUserGetRequest(name="alice")).roles == ["a"]
    with pytest.raises(errors.ErrUserNotFound):
        store.user_get(rpc_pb2.AuthUserGetRequest(name="nosuch"))


def test_role_delete_takes_the_role_from_users(store: AuthStore) -> None:
    add_user(store, "alice")
    add_user(store, "bob")
    add_role(store, "r")
    add_role(store, "s")
    grant(store, "alice", "r")
    grant(store, "alice", "s")
    grant(store, "bob", "r")
    store.run(lambda tx: store.role_delete(tx, rpc_pb2.AuthRoleDeleteRequest(role="r")))
    assert store.user_get(rpc_pb2.AuthUserGetRequest(name="alice")).roles == ["s"]
    assert store.user_get(rpc_pb2.AuthUserGetRequest(name="bob")).roles == []
    assert store.role_list().roles == ["s"]
    with pytest.raises(errors.ErrRoleNotFound):
        store.run(lambda tx: store.role_delete(tx, rpc_pb2.AuthRoleDeleteRequest(role="r")))


def test_lists_are_sorted(store: AuthStore) -> None:
    for name in ("carol", "alice", "bob"):
        add_user(store, name)
        add_role(store, "r-" + name)
    assert store.user_list().users == ["alice", "bob", "carol"]
    assert store.role_list().roles == ["r-alice", "r-bob", "r-carol"]


def test_role_add_errors(store: AuthStore) -> None:
    with pytest.raises(errors.ErrRoleEmpty):
        add_role(store, "")
    add_role(store, "r")
    with pytest.raises(errors.ErrRoleAlreadyExist):
        add_role(store, "r")


def test_grant_permission_updates_type_and_keeps_key_order(store: AuthStore) -> None:
    add_role(store, "r", (READ, b"k", b""), (READ, b"p/", b"p0"), (WRITE, b"a", b""))
    grant_rw = rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=Perm(permType=READWRITE, key=b"k"))
    store.run(lambda tx: store.role_grant_permission(tx, grant_rw))
    perms = store.role_get(rpc_pb2.AuthRoleGetRequest(role="r")).perm
    assert [(p.key, p.range_end, p.permType) for p in perms] == [
        (b"a", b"", WRITE),
        (b"k", b"", READWRITE),
        (b"p/", b"p0", READ),
    ]


def test_grant_permission_errors(store: AuthStore) -> None:
    with pytest.raises(errors.ErrPermissionNotGiven):
        store.run(lambda tx: store.role_grant_permission(tx, rpc_pb2.AuthRoleGrantPermissionRequest(name="r")))
    bad = rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=Perm(key=b"b", range_end=b"a"))
    with pytest.raises(errors.ErrInvalidAuthMgmt):
        store.run(lambda tx: store.role_grant_permission(tx, bad))
    ok = rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=Perm(key=b"a"))
    with pytest.raises(errors.ErrRoleNotFound):
        store.run(lambda tx: store.role_grant_permission(tx, ok))


def test_revoke_permission(store: AuthStore) -> None:
    add_role(store, "r", (READ, b"k", b""), (READ, b"p/", b"p0"))
    revoke = rpc_pb2.AuthRoleRevokePermissionRequest(role="r", key=b"p/")  # range_end must match too
    with pytest.raises(errors.ErrPermissionNotGranted):
        store.run(lambda tx: store.role_revoke_permission(tx, revoke))
    revoke.range_end = b"p0"
    store.run(lambda tx: store.role_revoke_permission(tx, revoke))
    assert [p.key for p in store.role_get(rpc_pb2.AuthRoleGetRequest(role="r")).perm] == [b"k"]


def test_root_role_reports_all_permissions(store: AuthStore) -> None:
    with pytest.raises(errors.ErrRoleNotFound):
        store.role_get(rpc_pb2.AuthRoleGetRequest(role="root"))
    add_role(store, "root")
    perms = store.role_get(rpc_pb2.AuthRoleGetRequest(role="root")).perm
    assert list(perms) == [Perm(permType=READWRITE, key=b"", range_end=b"\x00")]


def test_permission_checks(store: AuthStore) -> None:
    add_user(store, "alice")
    add_role(store, "r", (READWRITE, b"k", b""), (READ, b"p/", b"p0"))
    grant(store, "alice", "r")
    store.is_put_permitted(None, b"anything")  # auth disabled: everything goes
    enable_with_root(store)
    alice = info(store, "alice")
    store.is_put_permitted(alice, b"k")
    store.is_range_permitted(alice, b"p/", b"p0")
    with pytest.raises(errors.ErrPermissionDenied):
        store.is_put_permitted(alice, b"p/x")
    with pytest.raises(errors.ErrPermissionDenied):
        store.is_delete_range_permitted(alice, b"k", b"l")
    with pytest.raises(errors.ErrUserEmpty):
        store.is_range_permitted(None, b"k", b"")
    with pytest.raises(errors.ErrUserEmpty):
        store.is_range_permitted(AuthInfo("", 0), b"k", b"")
    with pytest.raises(errors.ErrPermissionDenied):
        store.is_range_permitted(info(store, "ghost"), b"k", b"")
    store.is_delete_range_permitted(info(store, "root"), b"\x00", b"\x00")


def test_checks_with_stale_revision_fail(store: AuthStore) -> None:
    add_user(store, "alice")
    add_role(store, "r", (READWRITE, b"k", b""))
    grant(store, "alice", "r")
    enable_with_root(store)
    old = info(store, "alice")
    add_role(store, "other")
    with pytest.raises(errors.ErrAuthOldRevision):
        store.is_put_permitted(old, b"k")
    store.is_put_permitted(info(store, "alice"), b"k")


def test_permission_cache_follows_changes(store: AuthStore) -> None:
    add_user(store, "alice")
    add_role(store, "r")
    grant(store, "alice", "r")
    enable_with_root(store)
    with pytest.raises(errors.ErrPermissionDenied):
        store.is_put_permitted(info(store, "alice"), b"k")
    grant_k = rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=Perm(permType=WRITE, key=b"k"))
    store.run(lambda tx: store.role_grant_permission(tx, grant_k))
    store.is_put_permitted(info(store, "alice"), b"k")
    revoke = rpc_pb2.AuthRoleRevokePermissionRequest(role="r", key=b"k")
    store.run(lambda tx: store.role_revoke_permission(tx, revoke))
    with pytest.raises(errors.ErrPermissionDenied):
        store.is_put_permitted(info(store, "alice"), b"k")


def test_admin_checks(store: AuthStore) -> None:
    store.is_admin_permitted(None)
    add_user(store, "alice")
    enable_with_root(store)
    store.is_admin_permitted(AuthInfo("root", 0))  # no revision check for admin requests
    with pytest.raises(errors.ErrPermissionDenied):
        store.is_admin_permitted(info(store, "alice"))
    with pytest.raises(errors.ErrUserNotFound):
        store.is_admin_permitted(info(store, "ghost"))
    with pytest.raises(errors.ErrUserEmpty):
        store.is_admin_permitted(None)
    assert store.has_role("root", "root") and not store.has_role("alice", "root") and not store.has_role("x", "y")


def put_op(key: bytes) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=b"v"))


def test_txn_checks_every_op_of_both_branches_and_nested_txns(store: AuthStore) -> None:
    add_user(store, "alice")
    add_role(store, "r", (READWRITE, b"k", b""), (READ, b"q", b""))
    grant(store, "alice", "r")
    enable_with_root(store)
    alice = info(store, "alice")
    ok = rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=b"q")],
        success=[put_op(b"k")],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"q"))],
    )
    store.check_txn_permitted(alice, ok)
    for bad in (
        rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(key=b"z")]),
        rpc_pb2.TxnRequest(failure=[put_op(b"q")]),
        rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(failure=[put_op(b"z")]))]),
        rpc_pb2.TxnRequest(
            success=[
                rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"q"))  # q is read-only
            ]
        ),
    ):
        with pytest.raises(errors.ErrPermissionDenied):
            store.check_txn_permitted(alice, bad)


def test_watch_check_maps_empty_key_to_the_first_key(store: AuthStore) -> None:
    add_user(store, "alice")
    add_role(store, "r", (READ, b"\x00", b"\x00"))
    grant(store, "alice", "r")
    enable_with_root(store)
    store.check_watch_permitted(info(store, "alice"), b"", b"\x00")
    store.check_watch_permitted(info(store, "alice"), b"a", b"b")


def test_password_hash_and_authenticate(store: AuthStore) -> None:
    add_user(store, "alice", "pw")
    add_user(store, "np", no_password=True)
    with pytest.raises(errors.ErrAuthNotEnabled):
        store.password_hash("alice")
    enable_with_root(store)
    pw_hash, rev = store.password_hash("alice")
    assert bcrypt.checkpw(b"pw", pw_hash) and rev == store.revision
    with pytest.raises(errors.ErrAuthFailed):
        store.password_hash("ghost")
    with pytest.raises(errors.ErrNoPasswordUser):
        store.password_hash("np")
    resp = store.run(lambda tx: store.authenticate(tx, "alice", "A" * 16, 99))
    assert resp.token == "AAAAAAAAAAAAAAAA.99"
    assert store.auth_info_from_token(resp.token) == AuthInfo("alice", store.revision)
    with pytest.raises(errors.ErrAuthFailed):
        store.run(lambda tx: store.authenticate(tx, "np", "B" * 16, 100))
    for bad in ("AAAAAAAAAAAAAAAA.98", "garbage", "A.b.1"):
        with pytest.raises(errors.ErrInvalidAuthToken):
            store.auth_info_from_token(bad)


def test_tokens_die_with_password_change_and_user_delete(store: AuthStore) -> None:
    add_user(store, "alice", "pw")
    enable_with_root(store)
    t1 = store.run(lambda tx: store.authenticate(tx, "alice", "A" * 16, 10)).token
    chg = rpc_pb2.AuthUserChangePasswordRequest(name="alice", hashedPassword=hashed("new"))
    store.run(lambda tx: store.user_change_password(tx, chg))
    with pytest.raises(errors.ErrInvalidAuthToken):
        store.auth_info_from_token(t1)
    assert bcrypt.checkpw(b"new", store.password_hash("alice")[0])
    t2 = store.run(lambda tx: store.authenticate(tx, "alice", "B" * 16, 11)).token
    store.run(lambda tx: store.user_delete(tx, rpc_pb2.AuthUserDeleteRequest(name="alice")))
    with pytest.raises(errors.ErrInvalidAuthToken):
        store.auth_info_from_token(t2)


def test_tokens_are_ignored_while_disabled(store: AuthStore) -> None:
    assert store.auth_info_from_token("garbage") is None  # etcd >= 3.5.10


def test_failed_change_leaves_memory_alone(store: AuthStore) -> None:
    """A change that raises stages nothing that outlives it: revision and flags stay put."""
    add_user(store, "root")
    rev = store.revision
    with pytest.raises(errors.ErrRootRoleNotExist):
        store.run(store.auth_enable)
    assert store.revision == rev and not store.enabled


# ---------------------------------------------------------------------- the apply hook


@dataclass
class FakeLease:
    keys: set[bytes] = field(default_factory=set)


@dataclass
class FakeLessor:
    leases: dict[int, FakeLease] = field(default_factory=dict)

    def lookup(self, lease_id: int) -> FakeLease | None:
        return self.leases.get(lease_id)


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KVStore]:
    s = KVStore(str(tmp_path / "kv"))
    yield s
    s.close()


@pytest.fixture
def applied(kv: KVStore) -> tuple[Applier, AuthStore, FakeLessor]:
    lessor = FakeLessor()
    applier = Applier(kv, lessor)
    auth = AuthStore(kv.backend, bcrypt_cost=4)
    applier.auth = AuthApplier(kv, auth, lambda: applier.lessor)
    return applier, auth, lessor


class Log:
    """Applies requests as consecutive log entries, with a proposer identity in the header."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self.index = 0

    def apply(self, user: str = "", revision: int = 0, **fields: object):  # type: ignore[no-untyped-def]
        self.index += 1
        req = raft_internal_pb2.InternalRaftRequest(**fields)
        req.header.ID = self.index
        req.header.username = user
        req.header.auth_revision = revision
        return self.applier.apply(req, self.index, 1)


def setup_auth(log: Log, auth: AuthStore) -> None:
    log.apply(auth_user_add=rpc_pb2.AuthUserAddRequest(name="root", hashedPassword=hashed("r")))
    log.apply(auth_user_grant_role=rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    log.apply(auth_user_add=rpc_pb2.AuthUserAddRequest(name="alice", hashedPassword=hashed("a")))
    log.apply(auth_role_add=rpc_pb2.AuthRoleAddRequest(name="r"))
    perm = Perm(permType=READWRITE, key=b"k", range_end=b"l")
    log.apply(auth_role_grant_permission=rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=perm))
    log.apply(auth_user_grant_role=rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="r"))
    assert log.apply(auth_enable=rpc_pb2.AuthEnableRequest()).err is None
    assert auth.enabled


def test_auth_requests_move_the_consistent_index(applied: tuple[Applier, AuthStore, FakeLessor], kv: KVStore) -> None:
    applier, auth, _ = applied
    log = Log(applier)
    res = log.apply(auth_user_add=rpc_pb2.AuthUserAddRequest(name="alice", hashedPassword=hashed("a")))
    assert res.err is None and isinstance(res.resp, rpc_pb2.AuthUserAddResponse)
    assert kv.consistent_index == 1 and kv.current_rev == 1  # auth changes make no KV revision
    res = log.apply(auth_user_add=rpc_pb2.AuthUserAddRequest(name="alice", hashedPassword=hashed("a")))
    assert isinstance(res.err, errors.ErrUserAlreadyExist) and kv.consistent_index == 2


def test_admin_requests_need_root_once_enabled(applied: tuple[Applier, AuthStore, FakeLessor]) -> None:
    applier, auth, _ = applied
    log = Log(applier)
    setup_auth(log, auth)
    rev = auth.revision
    res = log.apply("alice", rev, auth_role_add=rpc_pb2.AuthRoleAddRequest(name="x"))
    assert isinstance(res.err, errors.ErrPermissionDenied)
    assert isinstance(log.apply(auth_user_list=rpc_pb2.AuthUserListRequest()).err, errors.ErrUserEmpty)
    assert log.apply("root", rev, auth_user_list=rpc_pb2.AuthUserListRequest()).resp.users == ["alice", "root"]
    # users may read themselves and their roles
    assert log.apply("alice", rev, auth_user_get=rpc_pb2.AuthUserGetRequest(name="alice")).resp.roles == ["r"]
    assert isinstance(
        log.apply("alice", rev, auth_user_get=rpc_pb2.AuthUserGetRequest(name="root")).err, errors.ErrPermissionDenied
    )
    assert log.apply("alice", rev, auth_role_get=rpc_pb2.AuthRoleGetRequest(role="r")).err is None
    assert isinstance(
        log.apply("alice", rev, auth_role_get=rpc_pb2.AuthRoleGetRequest(role="root")).err, errors.ErrPermissionDenied
    )
    res = log.apply("root", rev, auth_status=rpc_pb2.AuthStatusRequest())
    assert res.resp == rpc_pb2.AuthStatusResponse(enabled=True, authRevision=rev)


def test_kv_writes_are_checked_at_apply_time(applied: tuple[Applier, AuthStore, FakeLessor], kv: KVStore) -> None:
    applier, auth, _ = applied
    log = Log(applier)
    setup_auth(log, auth)
    rev = auth.revision
    assert log.apply("alice", rev, put=rpc_pb2.PutRequest(key=b"k1", value=b"v")).err is None
    denied = log.apply("alice", rev, put=rpc_pb2.PutRequest(key=b"z", value=b"v"))
    assert isinstance(denied.err, errors.ErrPermissionDenied)
    assert kv.consistent_index == log.index and kv.current_rev == 2
    assert isinstance(log.apply(put=rpc_pb2.PutRequest(key=b"k1", value=b"v")).err, errors.ErrUserEmpty)
    txn = rpc_pb2.TxnRequest(success=[put_op(b"k2"), put_op(b"z")])
    assert isinstance(log.apply("alice", rev, txn=txn).err, errors.ErrPermissionDenied)
    dr = rpc_pb2.DeleteRangeRequest(key=b"k", range_end=b"m")
    assert isinstance(log.apply("alice", rev, delete_range=dr).err, errors.ErrPermissionDenied)
    assert log.apply("alice", rev, delete_range=rpc_pb2.DeleteRangeRequest(key=b"k", range_end=b"l")).err is None
    # a permission revoked by an earlier entry wins over the proposer's older view
    revoke = rpc_pb2.AuthRoleRevokePermissionRequest(role="r", key=b"k", range_end=b"l")
    assert log.apply("root", rev, auth_role_revoke_permission=revoke).err is None
    assert isinstance(log.apply("alice", rev, put=rpc_pb2.PutRequest(key=b"k1")).err, errors.ErrAuthOldRevision)
    res = log.apply("alice", auth.revision, put=rpc_pb2.PutRequest(key=b"k1"))
    assert isinstance(res.err, errors.ErrPermissionDenied)
    # compaction needs no permission (etcd 3.4.23 and 3.5)
    assert log.apply("alice", auth.revision, compaction=rpc_pb2.CompactionRequest(revision=1)).err is None


def test_lease_puts_need_write_on_the_lease_keys(applied: tuple[Applier, AuthStore, FakeLessor]) -> None:
    applier, auth, lessor = applied
    log = Log(applier)
    setup_auth(log, auth)
    lessor.leases[7] = FakeLease({b"k1", b"zzz"})
    alice = AuthInfo("alice", auth.revision)
    with pytest.raises(errors.ErrPermissionDenied):
        check_lease_puts(auth, alice, sorted(lessor.leases[7].keys))
    check_lease_puts(auth, AuthInfo("root", auth.revision), [b"zzz"])
    res = log.apply("alice", auth.revision, put=rpc_pb2.PutRequest(key=b"k1", lease=7))
    assert isinstance(res.err, errors.ErrPermissionDenied)
    res = log.apply("alice", auth.revision, lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=7))
    assert isinstance(res.err, errors.ErrPermissionDenied)


def test_authenticate_entry_hands_out_index_token(applied: tuple[Applier, AuthStore, FakeLessor]) -> None:
    applier, auth, _ = applied
    log = Log(applier)
    setup_auth(log, auth)
    req = raft_internal_pb2.InternalAuthenticateRequest(name="alice", simple_token="Q" * 16)
    res = log.apply(authenticate=req)
    assert res.err is None and res.resp.token == f"{'Q' * 16}.{log.index}"
    assert auth.auth_info_from_token(res.resp.token) == AuthInfo("alice", auth.revision)


def test_root_info_is_for_server_proposals(store: AuthStore) -> None:
    assert store.root_info() is None  # auth off: no identity needed
    enable_with_root(store)
    root = store.root_info()
    assert root == AuthInfo("root", store.revision)
    store.is_admin_permitted(root)


def test_recover_rereads_state_from_a_replaced_backend(store: AuthStore, tmp_path: Path) -> None:
    other = Backend(str(tmp_path / "other"))
    try:
        donor = AuthStore(other, bcrypt_cost=4)
        enable_with_root(donor)
        store.recover(other)
        assert store.enabled and store.revision == donor.revision
        assert store.get_user("root") is not None
    finally:
        other.close()


def test_api_helpers_for_watch_and_lease(store: AuthStore) -> None:
    from types import SimpleNamespace

    from etcdpy.api.auth import (
        check_lease_keys_readable,
        check_watch_permitted,
        is_lease_revoke_permitted,
        require_auth_info,
        token_from_metadata,
        watch_cancel_reason,
    )

    add_user(store, "alice")
    add_role(store, "r", (READ, b"k", b"l"))
    grant(store, "alice", "r")
    server = SimpleNamespace(auth_store=store)
    alice = AuthInfo("alice", store.revision)
    check_watch_permitted(server, None, b"z", b"")  # auth off
    require_auth_info(server, None)
    enable_with_root(store)
    alice = AuthInfo("alice", store.revision)
    check_watch_permitted(server, alice, b"k", b"l")
    with pytest.raises(errors.ErrPermissionDenied) as denied:
        check_watch_permitted(server, alice, b"k", b"\x00")
    assert watch_cancel_reason(denied.value) == "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    assert watch_cancel_reason(errors.ErrUserEmpty()) == (
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
    )
    check_lease_keys_readable(server, alice, [b"k1", b"k2"])
    with pytest.raises(errors.ErrPermissionDenied):
        check_lease_keys_readable(server, alice, [b"k1", b"z"])
    with pytest.raises(errors.ErrPermissionDenied):
        is_lease_revoke_permitted(server, alice, [b"k1"])  # read-only on k
    is_lease_revoke_permitted(server, store.root_info(), [b"anything"])
    with pytest.raises(errors.ErrUserEmpty):
        require_auth_info(server, None)
    assert token_from_metadata([("x", "1"), ("authorization", "b"), ("token", "a")]) == "a"
    assert token_from_metadata([("authorization", b"b")]) == "b"
    assert token_from_metadata(None) is None
