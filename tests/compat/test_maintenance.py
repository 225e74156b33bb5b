"""Maintenance and cluster views: endpoint status/health, member list, restarts.

Why: operators and tools (etcdctl, kube-apiserver's version gate, health probes)
read these; and a member must come back from SIGTERM or SIGKILL with the same
identity and every acknowledged write.
"""

from __future__ import annotations

import signal

from harness import GrpcClient, Member, assert_header, current_revision, kv_json, strip_header

STATUS_FIELDS = {"header", "version", "dbSize", "leader", "raftIndex", "raftTerm", "raftAppliedIndex", "dbSizeInUse", "errors", "isLearner"}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("-")[0].split("."))


def test_endpoint_status_json(member: Member, prefix: str) -> None:
    rev = member.etcdctl("put", prefix + "k", "v")["header"]["revision"]
    out = member.etcdctl("endpoint", "status")
    assert isinstance(out, list) and len(out) == 1
    entry = out[0]
    assert set(entry) == {"Endpoint", "Status"}
    assert entry["Endpoint"] == member.endpoint
    status = entry["Status"]
    assert set(status) <= STATUS_FIELDS, status
    assert_header(status["header"], rev)
    version = status["version"]
    assert version.startswith("3.") and _version_tuple(version) >= (3, 4), version
    assert status["leader"] == status["header"]["member_id"]  # a single member leads itself
    assert status["raftTerm"] == status["header"]["raft_term"]
    assert status["raftIndex"] >= status["raftAppliedIndex"] > 0
    assert status["dbSize"] > 0
    assert 0 < status["dbSizeInUse"] <= status["dbSize"]
    assert "isLearner" not in status  # false is omitted
    assert "errors" not in status  # no alarms


def test_raft_index_advances_with_writes(member: Member, prefix: str) -> None:
    before = member.etcdctl("endpoint", "status")[0]["Status"]
    member.etcdctl("put", prefix + "k", "v")
    after = member.etcdctl("endpoint", "status")[0]["Status"]
    assert after["raftIndex"] > before["raftIndex"]
    assert after["raftAppliedIndex"] > before["raftAppliedIndex"]
    assert after["header"]["revision"] == before["header"]["revision"] + 1


def test_endpoint_health_json(member: Member) -> None:
    out = member.etcdctl("endpoint", "health")
    assert isinstance(out, list) and len(out) == 1
    entry = out[0]
    assert entry["endpoint"] == member.endpoint
    assert entry["health"] is True
    assert "error" not in entry
    assert isinstance(entry["took"], str) and entry["took"]


def test_member_list_json(member: Member) -> None:
    out = member.etcdctl("member", "list")
    assert_header(out["header"], None)  # Cluster RPC headers carry no revision
    assert strip_header(out) == {
        "members": [
            {
                "ID": out["header"]["member_id"],
                "name": member.name,
                "peerURLs": [member.peer_url],
                "clientURLs": [member.client_url],
            }
        ]
    }


def test_member_list_table_mentions_started(member: Member) -> None:
    """The simple format shows 'started' once the member has published its name and client URLs."""
    out = member.etcdctl("member", "list", json=False)
    fields = [f.strip() for f in out.strip().split(",")]
    assert fields[1:] == ["started", member.name, member.peer_url, member.client_url, "false"]
    assert int(fields[0], 16) > 0


def test_grpc_status(client: GrpcClient, member: Member) -> None:
    pb = client.pb
    rev = current_revision(member)
    st = client.maintenance.Status(pb.StatusRequest())
    assert st.header.revision == rev
    assert st.header.member_id and st.header.cluster_id and st.header.raft_term
    assert st.leader == st.header.member_id
    assert _version_tuple(st.version) >= (3, 4)
    assert st.raftTerm == st.header.raft_term
    assert st.raftIndex >= st.raftAppliedIndex > 0
    assert st.dbSize > 0
    assert not st.isLearner
    assert list(st.errors) == []


def test_grpc_member_list(client: GrpcClient, member: Member) -> None:
    resp = client.cluster.MemberList(client.pb.MemberListRequest())
    assert resp.header.revision == 0
    assert resp.header.member_id and resp.header.cluster_id and resp.header.raft_term
    assert [(m.ID, m.name, list(m.peerURLs), list(m.clientURLs), m.isLearner) for m in resp.members] == [
        (resp.header.member_id, member.name, [member.peer_url], [member.client_url], False)
    ]


def test_graceful_restart_keeps_identity_and_data(fresh_member: Member) -> None:
    m = fresh_member
    rev = m.etcdctl("put", "k", "v")["header"]["revision"]
    before = m.etcdctl("endpoint", "status")[0]["Status"]
    m.stop()
    assert not m.running()
    m.start()
    after = m.etcdctl("endpoint", "status")[0]["Status"]
    for field in ("cluster_id", "member_id"):
        assert after["header"][field] == before["header"][field]
    assert after["header"]["revision"] == rev
    assert after["raftTerm"] >= before["raftTerm"]
    assert after["raftIndex"] >= before["raftIndex"]
    assert m.etcdctl("get", "k")["kvs"] == [kv_json("k", "v", rev, rev, 1)]
    assert m.etcdctl("put", "k", "v2")["header"]["revision"] == rev + 1


def test_kill9_restart_keeps_acknowledged_writes(fresh_member: Member) -> None:
    m = fresh_member
    revs = [m.etcdctl("put", f"k{i}", f"v{i}")["header"]["revision"] for i in range(5)]
    m.etcdctl("del", "k0")
    m.kill(signal.SIGKILL)
    assert not m.running()
    m.start()
    assert current_revision(m) == revs[-1] + 1
    out = m.etcdctl("get", "k", "--prefix")
    assert strip_header(out) == {
        "kvs": [kv_json(f"k{i}", f"v{i}", revs[i], revs[i], 1) for i in range(1, 5)],
        "count": 4,
    }
    assert m.etcdctl("get", "k0", f"--rev={revs[0]}")["kvs"] == [kv_json("k0", "v0", revs[0], revs[0], 1)]
