"""Compaction: what stays readable, the exact errors below/above the window, idempotence.

Why fresh members: compaction is global and irreversible, so each test owns its
keyspace and its revision numbers are exact (a fresh store starts at revision 1).
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
    current_revision,
    kv_json,
    strip_header,
)

COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE = "etcdserver: mvcc: required revision is a future revision"


def _history(member: Member) -> dict[str, int]:
    """k: v1@2, v2@3, v3@4; gone: put@5, deleted@6; other: put@7. Current revision 7."""
    revs = {
        "k1": member.etcdctl("put", "k", "v1")["header"]["revision"],
        "k2": member.etcdctl("put", "k", "v2")["header"]["revision"],
        "k3": member.etcdctl("put", "k", "v3")["header"]["revision"],
        "gone": member.etcdctl("put", "gone", "x")["header"]["revision"],
        "gone_del": member.etcdctl("del", "gone")["header"]["revision"],
        "other": member.etcdctl("put", "other", "o")["header"]["revision"],
    }
    assert list(revs.values()) == [2, 3, 4, 5, 6, 7]
    return revs


def _error(member: Member, *args: str) -> str:
    with pytest.raises(EtcdctlError) as err:
        member.etcdctl(*args)
    return err.value.message


def test_etcdctl_compaction_window(fresh_member: Member) -> None:
    m = fresh_member
    _history(m)
    out = m.etcdctl("compaction", "3", json=False)
    assert out.strip() == "compacted revision 3"
    # Compaction is not a write: the revision does not move.
    assert current_revision(m) == 7

    assert _error(m, "get", "k", "--rev=2") == COMPACTED
    assert _error(m, "get", "k", "--rev=1") == COMPACTED
    at3 = m.etcdctl("get", "k", "--rev=3")
    assert_header(at3["header"], 7)
    assert strip_header(at3) == {"kvs": [kv_json("k", "v2", 2, 3, 2)], "count": 1}
    assert m.etcdctl("get", "k", "--rev=4")["kvs"] == [kv_json("k", "v3", 2, 4, 3)]
    assert m.etcdctl("get", "gone", "--rev=5")["kvs"] == [kv_json("gone", "x", 5, 5, 1)]
    assert strip_header(m.etcdctl("get", "gone", "--rev=6")) == {}
    assert m.etcdctl("get", "k", "--rev=7")["kvs"] == [kv_json("k", "v3", 2, 4, 3)]
    assert _error(m, "get", "k", "--rev=8") == FUTURE
    # Latest data is untouched.
    assert m.etcdctl("get", "k")["kvs"] == [kv_json("k", "v3", 2, 4, 3)]


def test_compacting_twice_or_lower_fails(fresh_member: Member) -> None:
    m = fresh_member
    _history(m)
    m.etcdctl("compaction", "5", json=False)
    assert _error(m, "compaction", "5") == COMPACTED
    assert _error(m, "compaction", "4") == COMPACTED
    assert _error(m, "compaction", "8") == FUTURE
    assert m.etcdctl("compaction", "6", json=False).strip() == "compacted revision 6"
    assert _error(m, "get", "", "--from-key", "--rev=5") == COMPACTED


def test_compaction_at_current_revision_keeps_latest_state(fresh_member: Member) -> None:
    m = fresh_member
    _history(m)
    assert m.etcdctl("compaction", "--physical", "7", json=False).strip() == "compacted revision 7"
    out = m.etcdctl("get", "", "--from-key")
    assert strip_header(out) == {
        "kvs": [kv_json("k", "v3", 2, 4, 3), kv_json("other", "o", 7, 7, 1)],
        "count": 2,
    }
    assert _error(m, "get", "k", "--rev=6") == COMPACTED
    # Writing after compaction continues from the same revision counter.
    assert m.etcdctl("put", "k", "v4")["header"]["revision"] == 8
    assert m.etcdctl("get", "k")["kvs"] == [kv_json("k", "v4", 2, 8, 4)]


def test_compaction_survives_restart(fresh_member: Member) -> None:
    m = fresh_member
    _history(m)
    m.etcdctl("compaction", "4", json=False)
    m.restart()
    assert _error(m, "get", "k", "--rev=3") == COMPACTED
    assert _error(m, "compaction", "4") == COMPACTED
    assert m.etcdctl("get", "k", "--rev=4")["kvs"] == [kv_json("k", "v3", 2, 4, 3)]
    assert current_revision(m) == 7


def test_grpc_compact_errors_and_header(fresh_client: GrpcClient, fresh_member: Member) -> None:
    pb = fresh_client.pb
    kv = fresh_client.kv
    _history(fresh_member)
    with assert_grpc_error(grpc.StatusCode.OUT_OF_RANGE, FUTURE):
        kv.Compact(pb.CompactionRequest(revision=8))
    resp = kv.Compact(pb.CompactionRequest(revision=4, physical=True))
    assert resp.header.revision == 7
    assert resp.header.cluster_id and resp.header.member_id and resp.header.raft_term
    with assert_grpc_error(grpc.StatusCode.OUT_OF_RANGE, COMPACTED):
        kv.Compact(pb.CompactionRequest(revision=4))
    with assert_grpc_error(grpc.StatusCode.OUT_OF_RANGE, COMPACTED):
        kv.Compact(pb.CompactionRequest(revision=2))
    with assert_grpc_error(grpc.StatusCode.OUT_OF_RANGE, COMPACTED):
        kv.Range(pb.RangeRequest(key=b"k", revision=3))
    with assert_grpc_error(grpc.StatusCode.OUT_OF_RANGE, FUTURE):
        kv.Range(pb.RangeRequest(key=b"k", revision=100))
    # Inside a txn the same checks apply and nothing is written.
    get_old = pb.RequestOp(request_range=pb.RangeRequest(key=b"k", revision=3))
    put = pb.RequestOp(request_put=pb.PutRequest(key=b"new", value=b"v"))
    with assert_grpc_error(grpc.StatusCode.OUT_OF_RANGE, COMPACTED):
        kv.Txn(pb.TxnRequest(success=[put, get_old]))
    assert kv.Range(pb.RangeRequest(key=b"new")).count == 0
    assert kv.Range(pb.RangeRequest(key=b"k")).header.revision == 7
