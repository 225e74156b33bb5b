"""Automatic quorum-loss recovery: 2 of 3 members lose their Pods and volumes while a client writes.

The survivor's own view of the keyspace is read right after the loss (serializable: it cannot change without
a quorum); after recovery every one of those keys must be there with the same value, and the cluster must be
back to 3 members. Acknowledged writes the survivor never received are counted (measured, not asserted:
they were committed by the lost majority). Recovery times are measured.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from e2ekit import Kube, Writer, assert_converged, summary, t, wait_available, wait_until

pytestmark = [pytest.mark.timeout(1800), pytest.mark.e2e_slow]


def _read(endpoint: str, prefix: bytes, serializable: bool) -> dict[bytes, bytes]:
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    end = prefix[:-1] + bytes([prefix[-1] + 1])
    with grpc.insecure_channel(endpoint) as ch:
        r = rpc_pb2_grpc.KVStub(ch).Range(
            rpc_pb2.RangeRequest(key=prefix, range_end=end, serializable=serializable), timeout=30)
    return {kv.key: kv.value for kv in r.kvs}


@pytest.mark.parametrize("crash_at", ["", "after-recovery-latch", "after-force-new-cluster-pod"])
def test_quorum_loss_2_of_3_automatic(crash_at: str, operator: Kube, ns: str,
                                      timings: dict[str, dict[str, Any]]) -> None:
    """With `crash_at`, the operator dies at that recovery step and a fresh one must finish the recovery."""
    kube = operator
    if not kube.is_double:
        pytest.skip("reads a member directly by its Pod address")
    spec = {"replicas": 3, "recovery": {"mode": "Automatic", "quorumLossTimeout": "10s"}}
    kube.create_etcdcluster(ns, "q", spec)
    wait_available(kube, ns, "q", 3)
    writer = Writer(kube, ns, "q").start()
    time.sleep(5)
    if crash_at:
        kube.start_operator(ns, {"ETCDPY_OPERATOR_CRASH_AT": crash_at})
    pods = sorted(p.metadata.name for p in kube.member_pods(ns, "q"))
    keep, lose = pods[-1], pods[:-1]
    t0 = time.monotonic()
    for name in lose:
        kube.core.delete_namespaced_persistent_volume_claim(name, ns)
        kube.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
    survivor_pod = kube.core.read_namespaced_pod(keep, ns)
    wait_until(lambda: not any(p.metadata.name in lose for p in kube.member_pods(ns, "q")), t(60), "lost Pods gone")
    time.sleep(2)
    seen = _read(kube.endpoint(ns, survivor_pod), b"/e2e/", serializable=True)
    if crash_at:
        code = wait_until(kube.operator_exited, t(300), f"the operator to crash at {crash_at}")
        assert code == 86, f"the operator exited with {code}, not at {crash_at}"
        kube.start_operator(ns)
    wait_until(lambda: (kube.etcdcluster(ns, "q").get("status") or {}).get("recovery", {}).get("operation")
               or (kube.etcdcluster(ns, "q").get("status") or {}).get("recovery", {}).get("lastRecovery"),
               t(180), "the recovery to start")
    started = time.monotonic() - t0
    wait_until(lambda: (kube.etcdcluster(ns, "q").get("status") or {}).get("recovery", {}).get("lastRecovery"),
               t(300), "the recovery to finish")
    writable = time.monotonic() - t0
    wait_available(kube, ns, "q", 3, timeout=t(600))
    all_back = time.monotonic() - t0
    writer.stop()
    ids = assert_converged(kube, ns, "q", 3)
    assert keep in ids, summary(kube, ns, "q")
    st = kube.etcdcluster(ns, "q")["status"]
    assert st["recovery"]["lastRecovery"]["survivor"] == keep
    after = _read(kube.endpoint(ns, kube.core.read_namespaced_pod(keep, ns)), b"/e2e/", serializable=False)
    missing = {k for k in seen if after.get(k) != seen[k]}
    assert not missing, f"{len(missing)} keys the survivor held were lost or changed: {sorted(missing)[:5]}"
    acked_lost = [k for k in writer.acked if k.encode() not in after]
    reasons = [e.reason for e in kube.events(ns) if e.involved_object.kind == "EtcdCluster"]
    for r in ("QuorumLost", "QuorumRecoveryStarted", "ForceNewCluster", "QuorumRecoveryCompleted"):
        assert r in reasons, (r, reasons)
    timings["quorum_loss_2_of_3" + (f"_crash_{crash_at}" if crash_at else "")] = {
        "loss_to_recovery_start_s": round(started, 1), "loss_to_writable_s": round(writable, 1),
        "loss_to_3_available_s": round(all_back, 1), "acked_writes": len(writer.acked),
        "acked_writes_not_on_survivor": len(acked_lost), "survivor_keys_kept": len(seen),
    }


def _dump(endpoint: str, prefix: bytes, revision: int = 0) -> dict[bytes, tuple[bytes, int, int]]:
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    end = prefix[:-1] + bytes([prefix[-1] + 1])
    with grpc.insecure_channel(endpoint) as ch:
        r = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=prefix, range_end=end, revision=revision),
                                          timeout=30)
    return {kv.key: (kv.value, kv.create_revision, kv.mod_revision) for kv in r.kvs}


def test_total_loss_restores_the_newest_backup(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    """Every member loses Pod and volume: the cluster comes back from the newest verified backup, key by key."""
    from etcdpy_operator import GROUP, VERSION

    kube = operator
    if not kube.is_double:
        pytest.skip("reads members directly by their Pod addresses")
    kube.create_etcdcluster(ns, "t", {"replicas": 3, "backup": {},
                                      "recovery": {"mode": "Automatic", "quorumLossTimeout": "5s"}})
    wait_available(kube, ns, "t", 3)
    writer = Writer(kube, ns, "t").start()
    time.sleep(4)
    writer.stop()
    assert writer.verify() > 0
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "etcdbackups", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EtcdBackup", "metadata": {"name": "last"},
        "spec": {"clusterName": "t"}})
    res = wait_until(lambda: (s := kube.custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, "etcdbackups", "last").get("status") or {}).get("phase") == "Succeeded" and s,
        t(180), "the backup")
    rev = int(res["revision"])
    ep = Writer(kube, ns, "t").endpoints()[0]
    want = _dump(ep, b"/e2e/", rev)
    old_id = kube.etcdcluster(ns, "t")["status"]["clusterID"]
    t0 = time.monotonic()
    for p in kube.member_pods(ns, "t"):
        kube.core.delete_namespaced_persistent_volume_claim(p.metadata.name, ns)
        kube.core.delete_namespaced_pod(p.metadata.name, ns, grace_period_seconds=0)
    wait_until(lambda: ((kube.etcdcluster(ns, "t").get("status") or {}).get("recovery", {}).get("lastRecovery")
                        or {}).get("type") == "Restore", t(300), "the total-loss restore to start")
    wait_available(kube, ns, "t", 3, timeout=t(600))
    took = time.monotonic() - t0
    st = kube.etcdcluster(ns, "t")["status"]
    assert st["clusterID"] and st["clusterID"] != old_id
    got = _dump(Writer(kube, ns, "t").endpoints()[0], b"/e2e/")
    assert got == want, (len(got), len(want), summary(kube, ns, "t"))
    reasons = [e.reason for e in kube.events(ns) if e.involved_object.kind == "EtcdCluster"]
    assert "ClusterRestoreFromBackup" in reasons and "RestoreVerified" in reasons
    timings["total_loss_restore"] = {"loss_to_3_available_s": round(took, 1), "keys": len(want), "revision": rev}
