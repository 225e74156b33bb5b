"""Leases: grant, attach, time-to-live, keep-alive, revoke, expiry and restart, as etcd does them.

Why these: leases are how clients (kube-apiserver events, locks, elections) make keys
disappear when they stop renewing. What matters to them is exactly what is checked
here: the TTL granted (raised to the minimum), that a keep-alive answers every request
(TTL 0 for a lease that is gone, not an error), that revoking or expiring a lease
deletes all its keys in one revision, and that a restart keeps leases and keys.

Observed on etcd 3.4.23 and 3.5.1 with default timing (heartbeat 100 ms, election 1000 ms):
minimum TTL 2 s; TimeToLive of an unknown lease answers TTL -1; the order of the
attached keys in TimeToLive is not specified (Go map order), so keys compare as sets.
Expiry is awaited by polling with a deadline, never by sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

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
    unb64,
    wait_until,
)

MIN_TTL = 2  # ceil(1.5 x the default 1 s election timeout)
EXPIRY_DEADLINE = 30.0  # a 2 s lease, a 0.5 s expiry scan, a loaded 2-core machine


def grant(member: Member, ttl: int) -> int:
    out = member.etcdctl("lease", "grant", str(ttl))
    return int(out["ID"])


def ttl_json(member: Member, lease_id: int, keys: bool = False) -> dict:  # type: ignore[type-arg]
    args = ["lease", "timetolive", f"{lease_id:x}"] + (["--keys"] if keys else [])
    return member.etcdctl(*args)  # type: ignore[no-any-return]


def key_gone(member: Member, key: str) -> bool:
    return not member.etcdctl("get", key).get("kvs")


@pytest.fixture
def leases(member: Member) -> Iterator[list[int]]:
    """Leases a test created on the shared member; revoked afterwards so none expires into later tests."""
    made: list[int] = []
    yield made
    for lease_id in made:
        member.etcdctl("lease", "revoke", f"{lease_id:x}", check=False)


def random_id() -> int:
    """A client-chosen id unlikely to collide with ids on the shared member."""
    return random.SystemRandom().randrange(1 << 40, 1 << 62)


# ---------------------------------------------------------------------- etcdctl


def test_grant_put_timetolive_keys_and_list(member: Member, prefix: str, leases: list[int]) -> None:
    out = member.etcdctl("lease", "grant", "600")
    lease_id = out["ID"]
    leases.append(lease_id)
    assert out["TTL"] == 600 and out["Error"] == ""
    assert_header({k: out[k] for k in ("cluster_id", "member_id", "revision", "raft_term")}, out["revision"])
    r1 = member.etcdctl("put", prefix + "a", "1", f"--lease={lease_id:x}")["header"]["revision"]
    r2 = member.etcdctl("put", prefix + "b", "2", f"--lease={lease_id:x}")["header"]["revision"]
    assert member.etcdctl("get", prefix + "a")["kvs"] == [kv_json(prefix + "a", "1", r1, r1, 1, lease=lease_id)]

    info = ttl_json(member, lease_id, keys=True)
    assert info["id"] == lease_id and info["granted-ttl"] == 600
    assert 590 <= info["ttl"] <= 600
    assert info["revision"] == r2
    assert sorted(unb64(k) for k in info["keys"]) == [(prefix + "a").encode(), (prefix + "b").encode()]
    assert ttl_json(member, lease_id)["keys"] is None  # without --keys etcd sends none

    listed = member.etcdctl("lease", "list")
    assert {"id": lease_id} in listed["leases"]


def test_grant_below_minimum_reports_the_minimum(member: Member, leases: list[int]) -> None:
    for asked in ("1", "0"):
        out = member.etcdctl("lease", "grant", asked)
        leases.append(out["ID"])
        assert out["TTL"] == MIN_TTL
        assert ttl_json(member, out["ID"])["granted-ttl"] == MIN_TTL


def test_keep_alive_once_renews_to_the_granted_ttl(member: Member, leases: list[int]) -> None:
    lease_id = grant(member, 600)
    leases.append(lease_id)
    out = member.etcdctl("lease", "keep-alive", "--once", f"{lease_id:x}")
    assert out["ID"] == lease_id and out["TTL"] == 600
    assert ttl_json(member, lease_id)["ttl"] >= 590


def test_keep_alive_once_and_timetolive_of_unknown_lease(member: Member) -> None:
    unknown = random_id()
    with pytest.raises(EtcdctlError) as err:
        member.etcdctl("lease", "keep-alive", "--once", f"{unknown:x}")
    assert err.value.message == "etcdserver: requested lease not found"
    info = ttl_json(member, unknown, keys=True)
    assert (info["id"], info["ttl"], info["granted-ttl"], info["keys"]) == (unknown, -1, 0, None)
    text = member.etcdctl("lease", "timetolive", f"{unknown:x}", json=False)
    assert text.strip() == f"lease {unknown:016x} already expired"


def test_revoke_deletes_all_keys_in_one_revision(member: Member, prefix: str) -> None:
    lease_id = grant(member, 600)
    for name in ("c", "a", "b"):
        member.etcdctl("put", prefix + name, "v", f"--lease={lease_id:x}")
    member.etcdctl("put", prefix + "keep", "v")
    before = current_revision(member)
    out = member.etcdctl("lease", "revoke", f"{lease_id:x}", json=False)
    assert out.strip() == f"lease {lease_id:016x} revoked"
    assert current_revision(member) == before + 1
    remaining = member.etcdctl("get", prefix, "--prefix")["kvs"]
    assert [unb64(kv["key"]) for kv in remaining] == [(prefix + "keep").encode()]
    # The three keys existed one revision earlier, and are gone at the revoke's revision.
    assert member.etcdctl("get", prefix, "--prefix", f"--rev={before}", "--keys-only")["count"] == 4
    assert member.etcdctl("get", prefix, "--prefix", f"--rev={before + 1}", "--keys-only")["count"] == 1
    assert ttl_json(member, lease_id)["ttl"] == -1


def test_revoke_unknown_lease_fails(member: Member, client: GrpcClient) -> None:
    unknown = random_id()
    with pytest.raises(EtcdctlError) as err:
        member.etcdctl("lease", "revoke", f"{unknown:x}")
    assert "etcdserver: requested lease not found" in err.value.message
    for lease_id in (unknown, 0):
        with assert_grpc_error(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"):
            client.lease.LeaseRevoke(client.pb.LeaseRevokeRequest(ID=lease_id))


def test_put_ignore_lease_keeps_the_lease(member: Member, prefix: str) -> None:
    key = prefix + "k"
    lease_id = grant(member, 600)
    r1 = member.etcdctl("put", key, "v1", f"--lease={lease_id:x}")["header"]["revision"]
    r2 = member.etcdctl("put", key, "v2", "--ignore-lease")["header"]["revision"]
    assert member.etcdctl("get", key)["kvs"] == [kv_json(key, "v2", r1, r2, 2, lease=lease_id)]
    assert [unb64(k) for k in ttl_json(member, lease_id, keys=True)["keys"]] == [key.encode()]
    member.etcdctl("lease", "revoke", f"{lease_id:x}")
    assert key_gone(member, key)  # still attached, so the revoke deleted it


def test_plain_put_and_delete_detach_keys(member: Member, prefix: str, leases: list[int]) -> None:
    lease_id = grant(member, 600)
    leases.append(lease_id)
    for name in ("a", "b", "c"):
        member.etcdctl("put", prefix + name, "v", f"--lease={lease_id:x}")
    member.etcdctl("put", prefix + "a", "plain")
    member.etcdctl("del", prefix + "b")
    assert [unb64(k) for k in ttl_json(member, lease_id, keys=True)["keys"]] == [(prefix + "c").encode()]
    member.etcdctl("lease", "revoke", f"{lease_id:x}")
    leases.remove(lease_id)
    kvs = member.etcdctl("get", prefix, "--prefix")["kvs"]
    assert [(unb64(kv["key"]), unb64(kv["value"]), kv.get("lease")) for kv in kvs] == [
        ((prefix + "a").encode(), b"plain", None)
    ]


def test_short_lease_expires_and_deletes_its_keys_in_one_revision(fresh_member: Member) -> None:
    m = fresh_member
    lease_id = grant(m, 1)  # raised to the 2 s minimum
    m.etcdctl("put", "/exp/a", "1", f"--lease={lease_id:x}")
    m.etcdctl("put", "/exp/b", "2", f"--lease={lease_id:x}")
    m.etcdctl("put", "/exp/keep", "3")
    assert current_revision(m) == 4
    wait_until(lambda: key_gone(m, "/exp/a"), EXPIRY_DEADLINE, "the expired lease's keys to be deleted")
    assert current_revision(m) == 5  # both keys in one revision
    assert [unb64(kv["key"]) for kv in m.etcdctl("get", "/exp/", "--prefix")["kvs"]] == [b"/exp/keep"]
    assert ttl_json(m, lease_id)["ttl"] == -1
    assert {"id": lease_id} not in (m.etcdctl("lease", "list").get("leases") or [])


def test_restart_keeps_leases_and_keys(fresh_member: Member) -> None:
    m = fresh_member
    long_id = grant(m, 600)
    short_id = grant(m, 2)
    r_long = m.etcdctl("put", "/rs/long", "v", f"--lease={long_id:x}")["header"]["revision"]
    m.etcdctl("put", "/rs/short", "v", f"--lease={short_id:x}")
    m.restart()
    info = ttl_json(m, long_id, keys=True)
    assert info["granted-ttl"] == 600 and 590 <= info["ttl"] <= 601  # fresh TTL (+ the promotion's extension)
    assert [unb64(k) for k in info["keys"]] == [b"/rs/long"]
    assert m.etcdctl("get", "/rs/long")["kvs"] == [kv_json("/rs/long", "v", r_long, r_long, 1, lease=long_id)]
    # A recovered lease still expires once this member leads again, and takes its key with it.
    wait_until(lambda: key_gone(m, "/rs/short"), EXPIRY_DEADLINE, "the recovered short lease to expire")
    rev = current_revision(m)
    m.etcdctl("lease", "revoke", f"{long_id:x}")
    assert key_gone(m, "/rs/long") and current_revision(m) == rev + 1


# ---------------------------------------------------------------------- gRPC


def test_grpc_grant_raises_ttl_and_timetolive(client: GrpcClient, leases: list[int]) -> None:
    pb = client.pb
    resp = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=1))
    leases.append(resp.ID)
    assert resp.ID > 0 and resp.TTL == MIN_TTL and resp.error == ""
    ttl = client.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=resp.ID))
    assert ttl.ID == resp.ID and ttl.grantedTTL == MIN_TTL and 0 <= ttl.TTL <= MIN_TTL
    unknown = client.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=random_id(), keys=True))
    assert unknown.TTL == -1 and unknown.grantedTTL == 0 and list(unknown.keys) == []


def test_grpc_client_chosen_id_and_lease_exists(client: GrpcClient, leases: list[int]) -> None:
    pb = client.pb
    lease_id = random_id()
    rev = client.kv.Range(pb.RangeRequest(key=b"/__probe__")).header.revision
    resp = client.lease.LeaseGrant(pb.LeaseGrantRequest(ID=lease_id, TTL=600))
    leases.append(lease_id)
    assert (resp.ID, resp.TTL) == (lease_id, 600)
    assert_pb_header(resp.header, rev)  # a grant creates no revision
    with assert_grpc_error(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists"):
        client.lease.LeaseGrant(pb.LeaseGrantRequest(ID=lease_id, TTL=60))
    assert client.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id)).grantedTTL == 600


def test_grpc_ttl_too_large(client: GrpcClient, leases: list[int]) -> None:
    pb = client.pb
    with assert_grpc_error(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL"):
        client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=9_000_000_001))
    resp = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=9_000_000_000))
    leases.append(resp.ID)
    assert resp.TTL == 9_000_000_000
    ttl = client.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=resp.ID))
    assert ttl.grantedTTL == 9_000_000_000 and ttl.TTL == 8_999_999_999


def test_grpc_keepalive_stream_answers_every_request(client: GrpcClient, prefix: str, leases: list[int]) -> None:
    pb = client.pb
    a = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60)).ID
    b = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=120)).ID
    leases.extend([a, b])
    rev = client.kv.Put(pb.PutRequest(key=(prefix + "k").encode(), value=b"v", lease=a)).header.revision
    unknown = random_id()
    ids = [a, unknown, b, a]
    responses = list(client.lease.LeaseKeepAlive(iter(pb.LeaseKeepAliveRequest(ID=i) for i in ids), timeout=30))
    assert [(r.ID, r.TTL) for r in responses] == [(a, 60), (unknown, 0), (b, 120), (a, 60)]
    for r in responses:
        assert_pb_header(r.header, rev)


def test_grpc_keepalive_after_revoke_answers_ttl_zero(client: GrpcClient) -> None:
    pb = client.pb
    lease_id = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60)).ID
    client.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))
    (resp,) = list(client.lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease_id)]), timeout=30))
    assert (resp.ID, resp.TTL) == (lease_id, 0)


def test_grpc_put_and_txn_with_unknown_lease(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    key = (prefix + "k").encode()
    with assert_grpc_error(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"):
        client.kv.Put(pb.PutRequest(key=key, value=b"v", lease=random_id()))
    op = pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"v", lease=random_id()))
    with assert_grpc_error(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"):
        client.kv.Txn(pb.TxnRequest(success=[op]))


def test_grpc_revoke_header_and_leases_list(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    lease_id = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600)).ID
    listed = client.lease.LeaseLeases(pb.LeaseLeasesRequest())
    assert lease_id in {s.ID for s in listed.leases}
    rev = client.kv.Put(pb.PutRequest(key=(prefix + "k").encode(), value=b"v", lease=lease_id)).header.revision
    assert_pb_header(listed.header, rev - 1)
    resp = client.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id))
    assert_pb_header(resp.header, rev + 1)
    assert lease_id not in {s.ID for s in client.lease.LeaseLeases(pb.LeaseLeasesRequest()).leases}
    assert client.kv.Range(pb.RangeRequest(key=(prefix + "k").encode())).count == 0
