"""Membership changes on a live 3-member cluster: learners, promote, remove, update.

etcd's rules under test: a new member joins as a learner (started with
``--initial-cluster-state existing``), catches up while serving only serializable
reads, and can be promoted only once in sync with the leader; at most one learner
at a time; only learners can be promoted; a removed member stops by itself; a
member's peer URLs can be changed and the member restarted on the new ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import grpc
import pytest

from harness import Cluster, EtcdctlError, Member, assert_grpc_error, reserve_port, wait_until

from .conftest import ELECTION_TIMEOUT


def _put_many(cluster: Cluster, prefix: str, n: int) -> None:
    cl = cluster.members[0].grpc()
    for i in range(n):
        cl.kv.Put(cl.pb.PutRequest(key=f"{prefix}{i:04d}".encode(), value=f"v{i}".encode()), timeout=10)


def _serializable_count(m: Member, prefix: str) -> int:
    cl = m.grpc()
    key = prefix.encode()
    end = key[:-1] + bytes([key[-1] + 1])
    return cl.kv.Range(cl.pb.RangeRequest(key=key, range_end=end, count_only=True, serializable=True), timeout=5).count


def _promote(cluster: Cluster, member_id: int) -> str:
    """``etcdctl member promote`` in the simple output format.

    Why not ``-w json``: etcdctl 3.4.23 has no JSON printer for promote and panics
    (nil pointer dereference in printerUnsupported.MemberPromote) after the
    promotion succeeded, which would look like a failure.
    """
    return cluster.etcdctl("member", "promote", f"{member_id:x}", json=False)


def _promote_error(cluster: Cluster, member_id: int) -> str:
    with pytest.raises(EtcdctlError) as info:
        _promote(cluster, member_id)
    return info.value.message


def test_learner_add_catch_up_promote(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    voters = list(cluster.members)
    _put_many(cluster, "/learner/", 200)

    learner = cluster.add_member("m3", learner=True, start=False)
    lid = cluster.member_id(learner)
    entry = next(m for m in cluster.member_list() if m["ID"] == lid)
    assert entry["isLearner"] is True
    assert entry["peerURLs"] == [learner.peer_url]
    assert not entry.get("name") and not entry.get("clientURLs"), "not started yet: no name, no client URLs"

    # Not started, so not in sync: etcd refuses to promote it.
    assert _promote_error(cluster, lid) == "etcdserver: can only promote a learner member which is in sync with leader"
    # Only learners can be promoted.
    assert _promote_error(cluster, cluster.member_id(voters[0])) == "etcdserver: can only promote a learner member"
    # At most one learner.
    with pytest.raises(EtcdctlError) as info:
        cluster.etcdctl("member", "add", "m4", "--learner", f"--peer-urls=http://127.0.0.99:{learner.peer.port}")
    assert info.value.message == "etcdserver: too many learner members in cluster"

    # Start it: it joins the existing cluster and catches up by itself.
    learner.start()
    wait_until(lambda: _serializable_count(learner, "/learner/") == 200, 30, "the learner to catch up")
    cl = learner.grpc()
    resp = cl.kv.Range(cl.pb.RangeRequest(key=b"/learner/0199", serializable=True), timeout=5)
    assert [kv.value for kv in resp.kvs] == [b"v199"]
    with assert_grpc_error(grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner"):
        cl.kv.Range(cl.pb.RangeRequest(key=b"/learner/0199"), timeout=5)
    status = cluster.status(learner)
    assert status is not None and status.get("isLearner") is True

    # Caught up: promotion succeeds (poll — "in sync" is judged by the leader's progress view).
    def promoted() -> str | None:
        try:
            return _promote(cluster, lid)
        except EtcdctlError as exc:
            if "in sync with leader" in exc.message or "unhealthy cluster" in exc.message:
                return None
            raise

    text = wait_until(promoted, 30, "the learner's promotion")
    assert re.search(rf"Member\s+{lid:x} promoted in cluster\s+[0-9a-f]+", text), text
    learner.learner = False
    entry = next(m for m in cluster.member_list() if m["ID"] == lid)
    assert not entry.get("isLearner", False) and entry["name"] == "m3"

    # Now a voter: linearizable reads work on it, and all four agree on one leader.
    wait_until(
        lambda: cl.kv.Range(cl.pb.RangeRequest(key=b"/learner/0000"), timeout=5).kvs,
        10 * ELECTION_TIMEOUT,
        "a linearizable read on the promoted member",
    )
    cluster.leader(timeout=10)
    cluster.etcdctl("put", "/learner/after", "x")
    assert len(cluster.etcdctl("endpoint", "status", "--cluster")) == 4


def test_remove_follower(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    leader = cluster.leader()
    follower = next(m for m in cluster.members if m is not leader)
    removed_id = cluster.remove_member(follower)

    # A removed member learns it was removed and stops (etcd: exits 0); at the very
    # least it must stop serving as a member of the cluster.
    def stopped_serving() -> bool:
        if not follower.running():
            return True
        cl = follower.grpc()
        try:
            cl.kv.Range(cl.pb.RangeRequest(key=b"/x"), timeout=1)
        except grpc.RpcError:
            return True
        return False

    wait_until(stopped_serving, 30, "the removed member to stop")
    if follower.proc is not None and follower.proc.poll() is not None:
        assert follower.proc.returncode == 0, f"removed member exited with {follower.proc.returncode}"

    ids = [m["ID"] for m in cluster.member_list()]
    assert len(ids) == 2 and removed_id not in ids
    # The two remaining members are a working cluster (quorum 2 of 2).
    out = cluster.etcdctl("put", "/removed/after", "x")
    assert out["header"]["revision"] > 1
    assert len({s["Status"]["leader"] for s in cluster.etcdctl("endpoint", "status", "--cluster")}) == 1


def test_member_update_of_two_followers_keeps_quorum(make_cluster: Callable[..., Cluster]) -> None:
    """Updating the peer URLs of two followers of three, before restarting either, keeps the cluster writable.

    Each still listens at its old URL until it restarts; the leader keeps using the
    connection it has (etcd keeps the one the member opened), so the quorum stays.
    """
    cluster = make_cluster(3)
    leader = cluster.leader()
    followers = [m for m in cluster.members if m is not leader]
    reserved = []
    for m in followers:
        port = reserve_port(host=m.host)
        reserved.append(port)
        cluster.reconfigure("member", "update", f"{cluster.member_id(m):x}", f"--peer-urls=http://{m.host}:{port.port}")
    for i in range(5):
        cluster.etcdctl("put", f"/update2/{i}", "x", endpoints=[leader.endpoint])
    for m in followers:
        cl = m.grpc()
        got = wait_until(
            lambda cl=cl: cl.kv.Range(cl.pb.RangeRequest(key=b"/update2/4"), timeout=5).kvs,
            20,
            f"a linearizable read on {m.name} after both updates",
        )
        assert [kv.value for kv in got] == [b"x"]
    assert cluster.leader(timeout=10) is leader
    for port in reserved:
        port.release()


def test_member_update_peer_urls_and_restart(make_cluster: Callable[..., Cluster]) -> None:
    """Move a follower to a new peer port: update the membership, restart it listening there."""
    cluster = make_cluster(3)
    leader = cluster.leader()
    member = next(m for m in cluster.members if m is not leader)
    mid = cluster.member_id(member)
    new_peer = reserve_port(host=member.host)
    new_url = f"http://{member.host}:{new_peer.port}"

    out = cluster.reconfigure("member", "update", f"{mid:x}", f"--peer-urls={new_url}")
    entry = next(m for m in out["members"] if m["ID"] == mid)
    assert entry["peerURLs"] == [new_url]
    assert next(m for m in cluster.member_list() if m["ID"] == mid)["peerURLs"] == [new_url]

    member.stop()
    old_peer, member.peer = member.peer, new_peer
    old_peer.release()
    cluster.etcdctl("put", "/update/while-down", "x", endpoints=[leader.endpoint])
    member.start()
    # It rejoins over the new URL: it sees the write made while it was down and
    # serves linearizable reads (which need its leader to reach it).
    cl = member.grpc()
    resp = wait_until(
        lambda: cl.kv.Range(cl.pb.RangeRequest(key=b"/update/while-down"), timeout=5).kvs,
        30,
        "a linearizable read on the moved member",
    )
    assert [kv.value for kv in resp] == [b"x"]
    assert cluster.leader(timeout=10) in cluster.members
