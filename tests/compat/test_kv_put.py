"""Put and single-key Get: revisions, versions and the exact JSON etcdctl prints.

Why etcdctl JSON: it is what operators and scripts consume, and Go's encoding/json
with omitempty means a zero field must be *absent*, not 0; a server that fills in
zeros (or forgets a field) changes what clients see.
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
    current_revision,
    kv_json,
    strip_header,
)


def test_put_returns_only_header_with_next_revision(member: Member, prefix: str) -> None:
    rev = current_revision(member)
    out = member.etcdctl("put", prefix + "k", "v")
    assert_header(out["header"], rev + 1)
    assert strip_header(out) == {}


def test_get_after_put_reports_revisions_version_and_count(member: Member, prefix: str) -> None:
    key = prefix + "k"
    r1 = member.etcdctl("put", key, "v1")["header"]["revision"]
    out = member.etcdctl("get", key)
    assert_header(out["header"], r1)
    assert strip_header(out) == {"kvs": [kv_json(key, "v1", r1, r1, 1)], "count": 1}

    r2 = member.etcdctl("put", key, "v2")["header"]["revision"]
    assert r2 == r1 + 1
    out = member.etcdctl("get", key)
    assert_header(out["header"], r2)
    assert strip_header(out) == {"kvs": [kv_json(key, "v2", r1, r2, 2)], "count": 1}


def test_get_missing_key_has_no_kvs_and_no_count(member: Member, prefix: str) -> None:
    rev = current_revision(member)
    out = member.etcdctl("get", prefix + "missing")
    assert_header(out["header"], rev)
    assert strip_header(out) == {}


def test_version_restarts_after_delete(member: Member, prefix: str) -> None:
    key = prefix + "k"
    member.etcdctl("put", key, "a")
    member.etcdctl("put", key, "b")
    rdel = member.etcdctl("del", key)["header"]["revision"]
    assert strip_header(member.etcdctl("get", key)) == {}
    r3 = member.etcdctl("put", key, "c")["header"]["revision"]
    assert r3 == rdel + 1
    assert strip_header(member.etcdctl("get", key)) == {"kvs": [kv_json(key, "c", r3, r3, 1)], "count": 1}


def test_empty_value_is_stored_and_value_field_omitted(member: Member, prefix: str) -> None:
    key = prefix + "empty"
    rev = member.etcdctl("put", key, "")["header"]["revision"]
    out = member.etcdctl("get", key)
    assert strip_header(out) == {"kvs": [kv_json(key, "", rev, rev, 1)], "count": 1}
    assert "value" not in out["kvs"][0]


def test_binary_and_unicode_values_round_trip(member: Member, prefix: str) -> None:
    key = prefix + "ü/ключ"
    value = "välue with spaces\tand tab ✓"
    rev = member.etcdctl("put", key, value)["header"]["revision"]
    assert strip_header(member.etcdctl("get", key)) == {"kvs": [kv_json(key, value, rev, rev, 1)], "count": 1}


def test_put_prev_kv(member: Member, prefix: str) -> None:
    key = prefix + "k"
    r1 = member.etcdctl("put", key, "old", "--prev-kv")["header"]["revision"]
    first = member.etcdctl("put", prefix + "other", "x", "--prev-kv")
    assert "prev_kv" not in first  # a new key has no previous value
    out = member.etcdctl("put", key, "new", "--prev-kv")
    assert_header(out["header"], first["header"]["revision"] + 1)
    assert strip_header(out) == {"prev_kv": kv_json(key, "old", r1, r1, 1)}


def test_put_ignore_value_keeps_value_and_bumps_version(member: Member, prefix: str) -> None:
    key = prefix + "k"
    r1 = member.etcdctl("put", key, "keep")["header"]["revision"]
    r2 = member.etcdctl("put", key, "--ignore-value")["header"]["revision"]
    assert r2 == r1 + 1
    assert member.etcdctl("get", key)["kvs"] == [kv_json(key, "keep", r1, r2, 2)]


def test_put_ignore_value_on_missing_key_fails(member: Member, prefix: str) -> None:
    rev = current_revision(member)
    with pytest.raises(EtcdctlError) as err:
        member.etcdctl("put", prefix + "missing", "--ignore-value")
    assert err.value.message == "etcdserver: key not found"
    assert current_revision(member) == rev
    assert strip_header(member.etcdctl("get", prefix + "missing")) == {}


def test_put_ignore_lease_on_missing_key_fails(member: Member, prefix: str) -> None:
    with pytest.raises(EtcdctlError) as err:
        member.etcdctl("put", prefix + "missing", "v", "--ignore-lease")
    assert err.value.message == "etcdserver: key not found"


def test_put_with_unknown_lease_fails_and_writes_nothing(member: Member, prefix: str) -> None:
    rev = current_revision(member)
    with pytest.raises(EtcdctlError) as err:
        member.etcdctl("put", prefix + "k", "v", "--lease=1234abcd")
    assert err.value.message == "etcdserver: requested lease not found"
    assert current_revision(member) == rev
    assert strip_header(member.etcdctl("get", prefix + "k")) == {}


def test_put_with_lease_then_ignore_lease_keeps_lease(member: Member, prefix: str) -> None:
    key = prefix + "k"
    grant = member.etcdctl("lease", "grant", "600")
    lease_id = grant["ID"]
    assert grant["TTL"] == 600
    try:
        r1 = member.etcdctl("put", key, "v1", f"--lease={lease_id:x}")["header"]["revision"]
        assert member.etcdctl("get", key)["kvs"] == [kv_json(key, "v1", r1, r1, 1, lease=lease_id)]
        r2 = member.etcdctl("put", key, "v2", "--ignore-lease")["header"]["revision"]
        assert member.etcdctl("get", key)["kvs"] == [kv_json(key, "v2", r1, r2, 2, lease=lease_id)]
        # A plain put detaches the lease.
        r3 = member.etcdctl("put", key, "v3")["header"]["revision"]
        assert member.etcdctl("get", key)["kvs"] == [kv_json(key, "v3", r1, r3, 3)]
    finally:
        member.etcdctl("lease", "revoke", f"{lease_id:x}")


def test_serializable_get_matches_linearizable(member: Member, prefix: str) -> None:
    key = prefix + "k"
    rev = member.etcdctl("put", key, "v")["header"]["revision"]
    lin = member.etcdctl("get", key, "--consistency=l")
    ser = member.etcdctl("get", key, "--consistency=s")
    assert strip_header(ser) == strip_header(lin) == {"kvs": [kv_json(key, "v", rev, rev, 1)], "count": 1}
    assert_header(ser["header"], rev)


def test_large_value_from_stdin(member: Member, prefix: str) -> None:
    """etcdctl reads the value from stdin when it is not an argument (values > ARG_MAX)."""
    key = prefix + "big"
    value = "x" * (512 * 1024)
    rev = member.etcdctl("put", key, stdin=value)["header"]["revision"]
    out = member.etcdctl("get", key)
    assert out["kvs"] == [kv_json(key, value, rev, rev, 1)]


# ---------------------------------------------------------------- gRPC


def test_grpc_put_and_range_fields(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    key = (prefix + "g").encode()
    resp = client.kv.Put(pb.PutRequest(key=key, value=b"\x00\xffbin"))
    rev = resp.header.revision
    assert_pb_header(resp.header, rev)
    assert not resp.HasField("prev_kv")
    got = client.kv.Range(pb.RangeRequest(key=key))
    assert_pb_header(got.header, rev)
    assert got.count == 1 and not got.more
    kv = got.kvs[0]
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        key,
        b"\x00\xffbin",
        rev,
        rev,
        1,
        0,
    )


def test_grpc_put_prev_kv(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    key = (prefix + "g").encode()
    r1 = client.kv.Put(pb.PutRequest(key=key, value=b"a")).header.revision
    resp = client.kv.Put(pb.PutRequest(key=key, value=b"b", prev_kv=True))
    assert resp.header.revision == r1 + 1
    assert resp.prev_kv == client.mvccpb.KeyValue(key=key, value=b"a", create_revision=r1, mod_revision=r1, version=1)


def test_grpc_ignore_value_with_value_is_rejected(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    key = (prefix + "g").encode()
    client.kv.Put(pb.PutRequest(key=key, value=b"a"))
    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided"):
        client.kv.Put(pb.PutRequest(key=key, value=b"x", ignore_value=True))
    assert client.kv.Range(pb.RangeRequest(key=key)).kvs[0].value == b"a"


def test_grpc_ignore_lease_with_lease_is_rejected(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    key = (prefix + "g").encode()
    client.kv.Put(pb.PutRequest(key=key, value=b"a"))
    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease is provided"):
        client.kv.Put(pb.PutRequest(key=key, value=b"x", lease=77, ignore_lease=True))


def test_grpc_ignore_value_and_lease_on_missing_key(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    key = (prefix + "missing").encode()
    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found"):
        client.kv.Put(pb.PutRequest(key=key, ignore_value=True))
    with assert_grpc_error(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found"):
        client.kv.Put(pb.PutRequest(key=key, value=b"v", ignore_lease=True))


def test_grpc_put_unknown_lease_is_not_found(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    with assert_grpc_error(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"):
        client.kv.Put(pb.PutRequest(key=(prefix + "k").encode(), value=b"v", lease=0x1234ABCD))
