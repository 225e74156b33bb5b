"""A member must never bootstrap a second cluster next to (or instead of) its own.

The operator's nightmare: a member's data is lost (or swapped) and it is started
again with ``--initial-cluster-state new``. What etcd does, asserted here:

- a wiped member restarted with ``new`` and the original flags computes the same
  member id, asks its peers, learns it "has already been bootstrapped" and exits
  with an error instead of forming a fresh cluster;
- a member started on a data dir that belongs to another cluster ignores the
  ``--initial-*`` flags (an existing data dir wins) and comes up as a member of
  *that* cluster: its own cluster ID, its own membership. Our cluster's members
  refuse its peer traffic ("cluster ID mismatch") and carry on with the same
  cluster ID and membership: nothing merges, nothing forks.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from harness import Cluster, Member, wait_until


def _wait_exit(m: Member, timeout: float) -> int:
    wait_until(lambda: not m.running(), timeout, f"{m.name} to exit")
    assert m.proc is not None and m.proc.returncode is not None
    return m.proc.returncode


def test_wiped_member_restarted_as_new_refuses(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    cluster.etcdctl("put", "/boot/a", "1")
    before = cluster.etcdctl("member", "list")
    victim = cluster.members[2]
    victim.stop()
    shutil.rmtree(victim.data_dir)
    assert victim.initial_cluster_state == "new"
    victim.spawn()
    code = _wait_exit(victim, 30)
    assert code != 0, "a wiped member must not start a fresh cluster"
    log = victim.stderr_path.read_text(errors="replace") + victim.stdout_path.read_text(errors="replace")
    member_id = next(m["ID"] for m in before["members"] if m["name"] == victim.name)
    assert f"member {member_id:x} has already been bootstrapped" in log, victim.log_tail(10)

    others = cluster.members[:2]
    after = cluster.etcdctl("member", "list", endpoints=[m.endpoint for m in others])
    assert after["header"]["cluster_id"] == before["header"]["cluster_id"]
    assert sorted(m["ID"] for m in after["members"]) == sorted(m["ID"] for m in before["members"])
    out = cluster.etcdctl("get", "/boot/a", endpoints=[m.endpoint for m in others])
    assert [kv["value"] for kv in out["kvs"]] == ["MQ=="]
    cluster.etcdctl("put", "/boot/b", "2", endpoints=[m.endpoint for m in others])


def test_member_on_foreign_data_dir_does_not_merge_or_fork(make_cluster: Callable[..., Cluster], test_target: str) -> None:
    cluster = make_cluster(3)
    cluster.etcdctl("put", "/boot/ours", "1")
    ours = cluster.etcdctl("member", "list")
    foreign = make_cluster(1)
    foreign.etcdctl("put", "/boot/theirs", "1")
    theirs = foreign.etcdctl("member", "list")
    assert theirs["header"]["cluster_id"] != ours["header"]["cluster_id"]
    foreign.stop()

    victim = cluster.members[2]
    victim.stop()
    shutil.rmtree(victim.data_dir)
    shutil.copytree(foreign.members[0].data_dir, victim.data_dir)
    victim.spawn()
    others = cluster.members[:2]
    eps = [m.endpoint for m in others]

    # Whatever the impostor does, our cluster keeps its identity and membership...
    def our_view_settled() -> bool:
        out = cluster.etcdctl("member", "list", endpoints=eps)
        return out["header"]["cluster_id"] == ours["header"]["cluster_id"] and sorted(
            m["ID"] for m in out["members"]
        ) == sorted(m["ID"] for m in ours["members"])

    assert our_view_settled()
    cluster.etcdctl("put", "/boot/after", "2", endpoints=eps)
    assert cluster.etcdctl("get", "/boot/theirs", endpoints=eps).get("kvs") is None

    # ...and the impostor never joins it: it either exits or serves the other cluster.
    def impostor_settled() -> bool:
        if not victim.running():
            return True
        return cluster.status(victim) is not None

    wait_until(impostor_settled, 30, "the impostor to exit or serve")
    if victim.running():
        status = cluster.status(victim)
        assert status is not None
        assert status["header"]["cluster_id"] == theirs["header"]["cluster_id"], status
        assert status["header"]["cluster_id"] != ours["header"]["cluster_id"]
        assert cluster.etcdctl("get", "/boot/ours", endpoints=[victim.endpoint]).get("kvs") is None
        if test_target == "etcd":
            wait_until(
                lambda: "cluster ID mismatch" in others[0].stderr_path.read_text(errors="replace")
                + others[1].stderr_path.read_text(errors="replace"),
                20,
                "our members to log the rejected peer traffic",
            )
    assert our_view_settled()
    statuses = [cluster.status(m) for m in others]
    assert all(s is not None and s["header"]["cluster_id"] == ours["header"]["cluster_id"] for s in statuses)
    assert len({s["leader"] for s in statuses if s is not None}) == 1
