"""Member and cluster ids are derived from the configuration exactly as etcd derives them.

The expected values are computed with etcdpy's own functions; against real etcd
(ETCDPY_TEST_TARGET=etcd) this proves the functions reproduce etcd's ids.
"""

from __future__ import annotations

from collections.abc import Callable

from harness import Cluster
from etcdpy.server.membership import compute_cluster_id, compute_member_id


def test_member_and_cluster_ids_match_etcds_derivation(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(1)
    m = cluster.members[0]
    out = m.etcdctl("member", "list")
    member_id = compute_member_id([m.peer_url], cluster.token)
    assert out["header"]["member_id"] == member_id
    assert out["header"]["cluster_id"] == compute_cluster_id([member_id])
    assert [x["ID"] for x in out["members"]] == [member_id]


def test_known_default_ids() -> None:
    """etcd's defaults (name default, peer http://localhost:2380, token etcd-cluster) are well known."""
    mid = compute_member_id(["http://localhost:2380"], "etcd-cluster")
    assert f"{mid:x}" == "8e9e05c52164694d"
    assert f"{compute_cluster_id([mid]):x}" == "cdf818194e3a8c32"
