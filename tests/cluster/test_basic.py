"""A healthy 3-member cluster as etcdctl sees it: member list, endpoint status, health."""

from __future__ import annotations

from harness import Cluster, wait_until


def test_member_list_has_all_three_started_members(cluster3: Cluster) -> None:
    out = cluster3.etcdctl("member", "list")
    members = out["members"]
    assert len(members) == 3
    by_name = {m["name"]: m for m in members}
    assert set(by_name) == {"m0", "m1", "m2"}, "every member started and published its name"
    for m in cluster3.members:
        entry = by_name[m.name]
        assert entry["peerURLs"] == [m.peer_url]
        assert entry["clientURLs"] == [m.client_url]
        assert not entry.get("isLearner", False)
    assert len({m["ID"] for m in members}) == 3
    assert out["header"]["cluster_id"] > 0 and "revision" not in out["header"]


def test_endpoint_status_cluster_one_leader_one_term(cluster3: Cluster) -> None:
    """All members name the same leader (one of them), share a raft term and a cluster id."""

    def settled() -> list[dict] | None:
        statuses = cluster3.etcdctl("endpoint", "status", "--cluster")
        if len({s["Status"]["raftIndex"] for s in statuses}) != 1:
            return None  # a follower is still catching up (e.g. the publish entries)
        return statuses

    cluster3.etcdctl("put", "/basic/status", "x")
    statuses = wait_until(settled, 10, "all members at the same raft index")
    assert sorted(s["Endpoint"] for s in statuses) == sorted(m.client_url for m in cluster3.members)
    leaders = {s["Status"]["leader"] for s in statuses}
    assert len(leaders) == 1
    member_ids = {s["Status"]["header"]["member_id"] for s in statuses}
    assert len(member_ids) == 3 and leaders <= member_ids, "the leader is one of the members"
    assert len({s["Status"]["raftTerm"] for s in statuses}) == 1
    assert len({s["Status"]["header"]["raft_term"] for s in statuses}) == 1
    assert len({s["Status"]["header"]["cluster_id"] for s in statuses}) == 1
    assert len({s["Status"]["header"]["revision"] for s in statuses}) == 1
    for s in statuses:
        assert s["Status"]["version"], s
        assert s["Status"]["dbSize"] > 0
        assert s["Status"]["raftAppliedIndex"] == s["Status"]["raftIndex"]
        assert not s["Status"].get("isLearner", False)
        assert not s["Status"].get("errors")


def test_endpoint_health_cluster(cluster3: Cluster) -> None:
    out = cluster3.etcdctl("endpoint", "health", "--cluster")
    assert sorted(h["endpoint"] for h in out) == sorted(m.client_url for m in cluster3.members)
    assert all(h["health"] is True for h in out), out
    assert all(not h.get("error") for h in out), out
