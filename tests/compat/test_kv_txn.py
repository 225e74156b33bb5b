"""Txn: compares (every target and result, missing keys, ranges), branches, nesting, limits.

Why this file is long: Txn is etcd's only multi-key primitive; kube-apiserver's
optimistic concurrency (``If ModRevision(key) == rev Then Put Else Get``), locks and
elections all depend on the exact compare semantics, and on a Txn being one revision.
"""

from __future__ import annotations

import grpc
import pytest
from harness import (
    EtcdctlError,
    GrpcClient,
    Member,
    assert_grpc_error,
    assert_header,
    assert_pb_header,
    b64,
    current_revision,
    kv_json,
    strip_header,
    txn_stdin,
)

# ---------------------------------------------------------------- etcdctl txn


def test_txn_success_branch_json(member: Member, prefix: str) -> None:
    k, k2, k3 = prefix + "k", prefix + "k2", prefix + "k3"
    r1 = member.etcdctl("put", k, "v")["header"]["revision"]
    stdin = txn_stdin(
        [f'value("{k}") = "v"', f'mod("{k}") = "{r1}"', f'create("{k}") = "{r1}"', f'version("{k}") = "1"'],
        [f"put {k2} new", f"get {k}", f"del {k3}"],
        [f"put {k3} never"],
    )
    out = member.etcdctl("txn", stdin=stdin)
    rev = r1 + 1
    assert_header(out["header"], rev)
    assert strip_header(out) == {
        "succeeded": True,
        "responses": [
            {"Response": {"response_put": {"header": {"revision": rev}}}},
            {"Response": {"response_range": {"header": {"revision": rev}, "kvs": [kv_json(k, "v", r1, r1, 1)], "count": 1}}},
            {"Response": {"response_delete_range": {"header": {"revision": rev}}}},
        ],
    }
    assert member.etcdctl("get", k2)["kvs"] == [kv_json(k2, "new", rev, rev, 1)]
    assert strip_header(member.etcdctl("get", k3)) == {}


def test_txn_failure_branch_json(member: Member, prefix: str) -> None:
    k, other = prefix + "k", prefix + "other"
    r1 = member.etcdctl("put", k, "v")["header"]["revision"]
    out = member.etcdctl("txn", stdin=txn_stdin([f'value("{k}") = "nope"'], [f"put {other} yes"], [f"put {other} no", f"get {k}"]))
    rev = r1 + 1
    assert_header(out["header"], rev)
    assert strip_header(out) == {  # succeeded: false is omitted
        "responses": [
            {"Response": {"response_put": {"header": {"revision": rev}}}},
            {"Response": {"response_range": {"header": {"revision": rev}, "kvs": [kv_json(k, "v", r1, r1, 1)], "count": 1}}},
        ]
    }
    assert member.etcdctl("get", other)["kvs"][0]["value"] == b64("no")


@pytest.mark.parametrize(
    ("compare", "succeeds"),
    [
        ('version("{m}") = "0"', True),
        ('create("{m}") = "0"', True),
        ('mod("{m}") = "0"', True),
        ('version("{m}") > "0"', False),
        ('mod("{m}") < "1"', True),
        # A VALUE compare on a missing key always fails, whatever the operator.
        ('value("{m}") = ""', False),
        ('value("{m}") != "x"', False),
        ('value("{m}") < "z"', False),
    ],
)
def test_txn_compare_on_missing_key(member: Member, prefix: str, compare: str, succeeds: bool) -> None:
    out = member.etcdctl("txn", stdin=txn_stdin([compare.format(m=prefix + "missing")], [], []))
    assert out.get("succeeded", False) is succeeds


@pytest.mark.parametrize(
    ("compare", "succeeds"),
    [
        ('value("{k}") = "bbb"', True),
        ('value("{k}") != "bbb"', False),
        ('value("{k}") > "bba"', True),
        ('value("{k}") > "bbb"', False),
        ('value("{k}") < "bbc"', True),
        ('value("{k}") < "bb"', False),
        ('version("{k}") = "2"', True),
        ('version("{k}") > "1"', True),
        ('version("{k}") < "2"', False),
        ('version("{k}") != "2"', False),
        ('create("{k}") = "{c}"', True),
        ('create("{k}") < "{m}"', True),
        ('create("{k}") > "{c}"', False),
        ('mod("{k}") = "{m}"', True),
        ('mod("{k}") > "{c}"', True),
        ('mod("{k}") != "{m}"', False),
    ],
)
def test_txn_compare_results(member: Member, prefix: str, compare: str, succeeds: bool) -> None:
    k = prefix + "k"
    c = member.etcdctl("put", k, "aaa")["header"]["revision"]
    m = member.etcdctl("put", k, "bbb")["header"]["revision"]
    out = member.etcdctl("txn", stdin=txn_stdin([compare.format(k=k, c=c, m=m)], [], []))
    assert out.get("succeeded", False) is succeeds


def test_txn_duplicate_key_is_rejected(member: Member, prefix: str) -> None:
    k = prefix + "dup"
    rev = current_revision(member)
    with pytest.raises(EtcdctlError) as err:
        member.etcdctl("txn", stdin=txn_stdin([], [f"put {k} 1", f"put {k} 2"], []))
    assert err.value.message == "etcdserver: duplicate key given in txn request"
    assert current_revision(member) == rev
    assert strip_header(member.etcdctl("get", k)) == {}


def test_read_only_txn_does_not_bump_revision(member: Member, prefix: str) -> None:
    k = prefix + "k"
    rev = member.etcdctl("put", k, "v")["header"]["revision"]
    out = member.etcdctl("txn", stdin=txn_stdin([f'value("{k}") = "v"'], [f"get {k}"], []))
    assert_header(out["header"], rev)
    assert out["responses"][0]["Response"]["response_range"]["header"] == {"revision": rev}
    assert current_revision(member) == rev


def test_txn_delete_of_nothing_does_not_bump_revision(member: Member, prefix: str) -> None:
    rev = current_revision(member)
    out = member.etcdctl("txn", stdin=txn_stdin([], [f"del {prefix}missing"], []))
    assert_header(out["header"], rev)
    assert strip_header(out) == {
        "succeeded": True,
        "responses": [{"Response": {"response_delete_range": {"header": {"revision": rev}}}}],
    }
    assert current_revision(member) == rev


# ---------------------------------------------------------------- gRPC txn


def _op_put(pb, key: bytes, value: bytes = b"v", **kw):  # type: ignore[no-untyped-def]
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, **kw))


def _op_get(pb, key: bytes, **kw):  # type: ignore[no-untyped-def]
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **kw))


def _op_del(pb, key: bytes, **kw):  # type: ignore[no-untyped-def]
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, **kw))


def _prefix_end(p: bytes) -> bytes:
    return p[:-1] + bytes([p[-1] + 1])


@pytest.mark.parametrize("target", ["VERSION", "CREATE", "MOD", "VALUE", "LEASE"])
@pytest.mark.parametrize("result", ["EQUAL", "NOT_EQUAL", "GREATER", "LESS"])
def test_grpc_compare_matrix(client: GrpcClient, prefix: str, target: str, result: str) -> None:
    """Each target x result, each with an operand below, equal to and above the actual value."""
    pb = client.pb
    key = (prefix + "k").encode()
    lease = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600)).ID if target == "LEASE" else 0
    try:
        create = client.kv.Put(pb.PutRequest(key=key, value=b"m", lease=lease)).header.revision
        mod = client.kv.Put(pb.PutRequest(key=key, value=b"m", lease=lease)).header.revision
        actual = {"VERSION": 2, "CREATE": create, "MOD": mod, "VALUE": b"m", "LEASE": lease}[target]
        field = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision", "VALUE": "value", "LEASE": "lease"}[
            target
        ]
        if target == "VALUE":
            operands = {-1: b"l", 0: b"m", 1: b"n"}
        else:
            operands = {-1: actual - 1, 0: actual, 1: actual + 1}
        expect = {
            "EQUAL": lambda d: d == 0,
            "NOT_EQUAL": lambda d: d != 0,
            "GREATER": lambda d: d < 0,  # actual > operand
            "LESS": lambda d: d > 0,  # actual < operand
        }[result]
        for delta, operand in operands.items():
            cmp = pb.Compare(
                key=key,
                target=getattr(pb.Compare, target),
                result=getattr(pb.Compare, result),
                **{field: operand},
            )
            resp = client.kv.Txn(pb.TxnRequest(compare=[cmp]))
            assert resp.succeeded is expect(delta), (target, result, operand, actual)
            assert resp.header.revision == mod
    finally:
        if lease:
            client.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease))


def test_grpc_compare_missing_key_uses_zero_values(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    missing = (prefix + "missing").encode()
    C = pb.Compare
    cases = [
        (C(key=missing, target=C.VERSION, result=C.EQUAL, version=0), True),
        (C(key=missing, target=C.CREATE, result=C.EQUAL, create_revision=0), True),
        (C(key=missing, target=C.MOD, result=C.LESS, mod_revision=1), True),
        (C(key=missing, target=C.LEASE, result=C.EQUAL, lease=0), True),
        (C(key=missing, target=C.VALUE, result=C.EQUAL, value=b""), False),
        (C(key=missing, target=C.VALUE, result=C.NOT_EQUAL, value=b"x"), False),
    ]
    for cmp, want in cases:
        assert client.kv.Txn(pb.TxnRequest(compare=[cmp])).succeeded is want, cmp


def test_grpc_compare_with_range_end(client: GrpcClient, prefix: str) -> None:
    """A ranged compare succeeds only if every key in the range satisfies it."""
    pb = client.pb
    C = pb.Compare
    p = prefix.encode()
    for k in (b"a", b"b", b"c"):
        client.kv.Put(pb.PutRequest(key=p + k, value=b"same"))
    client.kv.Put(pb.PutRequest(key=p + b"c", value=b"same"))  # c now has version 2
    end = _prefix_end(p)

    def ok(cmp) -> bool:  # type: ignore[no-untyped-def]
        return client.kv.Txn(pb.TxnRequest(compare=[cmp])).succeeded

    assert ok(C(key=p, range_end=end, target=C.VALUE, result=C.EQUAL, value=b"same"))
    assert ok(C(key=p, range_end=end, target=C.VERSION, result=C.GREATER, version=0))
    assert not ok(C(key=p, range_end=end, target=C.VERSION, result=C.EQUAL, version=1))
    assert ok(C(key=p, range_end=p + b"c", target=C.VERSION, result=C.EQUAL, version=1))
    # An empty range: VALUE fails, other targets compare against zero values.
    empty, empty_end = p + b"x", p + b"y"
    assert ok(C(key=empty, range_end=empty_end, target=C.VERSION, result=C.EQUAL, version=0))
    assert not ok(C(key=empty, range_end=empty_end, target=C.VALUE, result=C.EQUAL, value=b""))


def test_grpc_multiple_compares_are_anded(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    C = pb.Compare
    k = (prefix + "k").encode()
    client.kv.Put(pb.PutRequest(key=k, value=b"v"))
    good = C(key=k, target=C.VALUE, result=C.EQUAL, value=b"v")
    bad = C(key=k, target=C.VERSION, result=C.EQUAL, version=5)
    assert client.kv.Txn(pb.TxnRequest(compare=[good, good])).succeeded
    assert not client.kv.Txn(pb.TxnRequest(compare=[good, bad])).succeeded


def test_grpc_txn_sub_response_revisions_and_read_your_writes(client: GrpcClient, prefix: str) -> None:
    """Inside a txn a Range sees the txn's earlier writes, and each sub-response header
    carries the revision visible at that point (the old one before the first write)."""
    pb = client.pb
    k = (prefix + "k").encode()
    r0 = client.kv.Put(pb.PutRequest(key=k, value=b"old")).header.revision
    resp = client.kv.Txn(
        pb.TxnRequest(
            success=[
                _op_get(pb, k),
                _op_del(pb, (prefix + "none").encode()),
                _op_put(pb, k, b"new"),
                _op_get(pb, k),
                _op_del(pb, (prefix + "none").encode()),
            ]
        )
    )
    r1 = r0 + 1
    assert_pb_header(resp.header, r1)
    assert resp.succeeded
    first, del_before, put, second, del_after = resp.responses
    assert first.response_range.header.revision == r0
    assert [(kv.value, kv.version) for kv in first.response_range.kvs] == [(b"old", 1)]
    assert del_before.response_delete_range.header.revision == r0
    assert put.response_put.header.revision == r1
    assert second.response_range.header.revision == r1
    assert [(kv.value, kv.version, kv.mod_revision) for kv in second.response_range.kvs] == [(b"new", 2, r1)]
    assert del_after.response_delete_range.header.revision == r1
    # Sub-response headers carry only the revision.
    h = put.response_put.header
    assert (h.cluster_id, h.member_id, h.raft_term) == (0, 0, 0)


def test_grpc_txn_writes_share_one_revision(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    p = prefix.encode()
    client.kv.Put(pb.PutRequest(key=p + b"gone", value=b"x"))
    rev = client.kv.Put(pb.PutRequest(key=p + b"b", value=b"x")).header.revision
    resp = client.kv.Txn(
        pb.TxnRequest(success=[_op_put(pb, p + b"a"), _op_put(pb, p + b"b"), _op_del(pb, p + b"gone")])
    )
    assert resp.header.revision == rev + 1
    rng = client.kv.Range(pb.RangeRequest(key=p, range_end=_prefix_end(p)))
    assert [(kv.key, kv.mod_revision, kv.version) for kv in rng.kvs] == [(p + b"a", rev + 1, 1), (p + b"b", rev + 1, 2)]


def test_grpc_empty_and_read_only_txn_keep_revision(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    k = (prefix + "k").encode()
    rev = client.kv.Put(pb.PutRequest(key=k, value=b"v")).header.revision
    empty = client.kv.Txn(pb.TxnRequest())
    assert empty.succeeded and len(empty.responses) == 0
    assert_pb_header(empty.header, rev)
    ro = client.kv.Txn(pb.TxnRequest(success=[_op_get(pb, k), _op_get(pb, k, count_only=True)]))
    assert_pb_header(ro.header, rev)
    assert ro.responses[1].response_range.count == 1
    nothing = client.kv.Txn(pb.TxnRequest(success=[_op_del(pb, (prefix + "missing").encode())]))
    assert_pb_header(nothing.header, rev)
    assert nothing.responses[0].response_delete_range.deleted == 0
    assert client.kv.Range(pb.RangeRequest(key=k)).header.revision == rev


def test_grpc_txn_put_prev_kv_and_delete_prev_kv(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    k, d = (prefix + "k").encode(), (prefix + "d").encode()
    r1 = client.kv.Put(pb.PutRequest(key=k, value=b"1")).header.revision
    r2 = client.kv.Put(pb.PutRequest(key=d, value=b"2")).header.revision
    resp = client.kv.Txn(pb.TxnRequest(success=[_op_put(pb, k, b"x", prev_kv=True), _op_del(pb, d, prev_kv=True)]))
    assert (resp.responses[0].response_put.prev_kv.value, resp.responses[0].response_put.prev_kv.mod_revision) == (b"1", r1)
    dr = resp.responses[1].response_delete_range
    assert dr.deleted == 1 and [(kv.key, kv.mod_revision) for kv in dr.prev_kvs] == [(d, r2)]


def test_grpc_nested_txn(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    C = pb.Compare
    k, a, b = (prefix + "k").encode(), (prefix + "a").encode(), (prefix + "b").encode()
    rev = client.kv.Put(pb.PutRequest(key=k, value=b"v")).header.revision
    inner = pb.TxnRequest(
        compare=[C(key=k, target=C.VALUE, result=C.EQUAL, value=b"other")],
        success=[_op_put(pb, a, b"inner-success")],
        failure=[_op_put(pb, a, b"inner-failure"), _op_get(pb, k)],
    )
    outer = pb.TxnRequest(
        compare=[C(key=k, target=C.VALUE, result=C.EQUAL, value=b"v")],
        success=[pb.RequestOp(request_txn=inner), _op_put(pb, b, b"outer")],
        failure=[_op_put(pb, b, b"never")],
    )
    resp = client.kv.Txn(outer)
    assert resp.succeeded
    assert_pb_header(resp.header, rev + 1)
    nested = resp.responses[0].response_txn
    assert not nested.succeeded
    assert nested.header.revision == 0  # etcd leaves nested txn headers empty
    assert nested.responses[0].response_put.header.revision == rev + 1
    assert [kv.value for kv in nested.responses[1].response_range.kvs] == [b"v"]
    assert resp.responses[1].response_put.header.revision == rev + 1
    got = {kv.key: (kv.value, kv.mod_revision) for kv in client.kv.Range(pb.RangeRequest(key=prefix.encode(), range_end=_prefix_end(prefix.encode()))).kvs}
    assert got == {a: (b"inner-failure", rev + 1), b: (b"outer", rev + 1), k: (b"v", rev)}


def test_grpc_duplicate_keys(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    p = prefix.encode()
    dup = "etcdserver: duplicate key given in txn request"
    rev = client.kv.Put(pb.PutRequest(key=p + b"x", value=b"orig")).header.revision
    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, dup):
        client.kv.Txn(pb.TxnRequest(success=[_op_put(pb, p + b"x"), _op_put(pb, p + b"x")]))
    # A put inside a deleted range in the same branch is a duplicate too.
    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, dup):
        client.kv.Txn(pb.TxnRequest(success=[_op_put(pb, p + b"x"), _op_del(pb, p, range_end=_prefix_end(p))]))
    # ... and across nesting levels.
    nested = pb.TxnRequest(success=[_op_put(pb, p + b"x")])
    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, dup):
        client.kv.Txn(pb.TxnRequest(success=[_op_put(pb, p + b"x"), pb.RequestOp(request_txn=nested)]))
    assert client.kv.Range(pb.RangeRequest(key=p + b"x")).header.revision == rev
    # The same key in the success and the failure branch is fine (only one runs).
    ok = client.kv.Txn(pb.TxnRequest(success=[_op_put(pb, p + b"x", b"s")], failure=[_op_put(pb, p + b"x", b"f")]))
    assert ok.succeeded and ok.header.revision == rev + 1
    # So are the inner success and failure branches of a nested txn.
    both = pb.TxnRequest(success=[_op_put(pb, p + b"y", b"s")], failure=[_op_put(pb, p + b"y", b"f")])
    ok = client.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_txn=both), _op_put(pb, p + b"z")]))
    assert ok.succeeded and ok.header.revision == rev + 2
    assert [kv.value for kv in client.kv.Range(pb.RangeRequest(key=p + b"x")).kvs] == [b"s"]


def test_grpc_txn_op_limit(client: GrpcClient, prefix: str) -> None:
    """128 operations per branch (and 128 compares) are allowed; 129 are not."""
    pb = client.pb
    C = pb.Compare
    p = prefix.encode()
    too_many = "etcdserver: too many operations in txn request"
    rev = client.kv.Put(pb.PutRequest(key=p + b"seed", value=b"v")).header.revision

    ok = client.kv.Txn(pb.TxnRequest(success=[_op_put(pb, p + b"%03d" % i) for i in range(128)]))
    assert ok.header.revision == rev + 1 and len(ok.responses) == 128
    cnt = client.kv.Range(pb.RangeRequest(key=p + b"0", range_end=p + b"2", count_only=True))
    assert cnt.count == 128

    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, too_many):
        client.kv.Txn(pb.TxnRequest(success=[_op_put(pb, p + b"n%03d" % i) for i in range(129)]))
    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, too_many):
        client.kv.Txn(pb.TxnRequest(failure=[_op_get(pb, p + b"seed") for _ in range(129)]))
    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, too_many):
        client.kv.Txn(pb.TxnRequest(compare=[C(key=p + b"seed", target=C.VERSION, version=1)] * 129))
    # The limit is per list: 128 success + 128 failure ops are fine.
    both = client.kv.Txn(
        pb.TxnRequest(
            success=[_op_get(pb, p + b"seed") for _ in range(128)],
            failure=[_op_get(pb, p + b"seed") for _ in range(128)],
        )
    )
    assert both.succeeded and both.header.revision == rev + 1
    assert client.kv.Range(pb.RangeRequest(key=p + b"n000")).count == 0
