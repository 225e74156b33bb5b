"""Operator features the lifecycle scenarios do not look at: owned Services and PDB, `paused`, Events,
and the operator's own /metrics and /healthz (the last two only where the suite runs the operator).
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from e2ekit import Kube, Writer, assert_converged, summary, t, wait_available, wait_until


def _owned_by(obj: Any, cluster: str) -> bool:
    refs = obj.metadata.owner_references or []
    return any(r.kind == "EtcdCluster" and r.name == cluster and r.controller for r in refs)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


@pytest.mark.e2e_slow
def test_objects_pause_events_metrics(operator: Kube, ns: str) -> None:
    """Services + PDB owned and shaped right; a paused cluster ignores a scale change until resumed."""
    kube = operator
    kube.create_etcdcluster(ns, "e", {"replicas": 1})
    writer = Writer(kube, ns, "e").start()
    wait_available(kube, ns, "e", 1)

    peers = kube.core.read_namespaced_service("e-peers", ns)
    client = kube.core.read_namespaced_service("e-client", ns)
    pdb = kube.policy.read_namespaced_pod_disruption_budget("e", ns)
    assert peers.spec.cluster_ip == "None" and peers.spec.publish_not_ready_addresses is True
    assert client.spec.cluster_ip and client.spec.cluster_ip != "None"
    assert pdb.spec.min_available == 1, pdb.spec  # one member: no voluntary disruption at all
    for obj in (peers, client, pdb, *kube.member_pods(ns, "e")):
        assert _owned_by(obj, "e"), obj.metadata.name

    kube.patch_etcdcluster(ns, "e", {"paused": True, "replicas": 3})
    wait_until(lambda: kube.etcdcluster(ns, "e")["status"].get("phase") == "Paused", t(60),
               f"phase Paused ({summary(kube, ns, 'e')})")
    time.sleep(8)  # a wrong operator would start adding members now
    assert len(kube.member_pods(ns, "e")) == 1
    assert kube.etcdcluster(ns, "e")["status"].get("operation") in (None, {})

    kube.patch_etcdcluster(ns, "e", {"paused": False})
    wait_available(kube, ns, "e", 3, timeout=300)
    pdb = kube.policy.read_namespaced_pod_disruption_budget("e", ns)
    assert pdb.spec.max_unavailable == 1, pdb.spec  # three members: one may go
    reasons = {e.reason for e in kube.events(ns) if e.involved_object.kind == "EtcdCluster"}
    assert {"ScaleUp", "MemberAdded", "MemberPromoted", "PodCreated"} <= reasons, reasons

    ports = getattr(kube, "operator_ports", None)
    if ports is not None:
        health, metrics = ports
        assert _get(f"http://127.0.0.1:{health}/healthz")[0] == 200
        text = _get(f"http://127.0.0.1:{metrics}/metrics")[1]
        labels = f'cluster="e",namespace="{ns}"'
        assert f"etcdpy_operator_ready_members{{{labels}}} 3.0" in text, text[-2000:]
        assert f"etcdpy_operator_desired_members{{{labels}}} 3.0" in text
        assert f"etcdpy_operator_has_leader{{{labels}}} 1.0" in text
        assert "etcdpy_operator_reconciles_total{" in text
        assert "etcdpy_operator_last_successful_reconcile_timestamp_seconds{" in text
    assert writer.verify() > 0


@pytest.mark.e2e_slow
def test_wiped_volume_never_comes_back_empty(operator: Kube, ns: str) -> None:
    """A member's disk replaced by an empty one (and the process restarted) must not rejoin as an empty copy
    of itself or start a second cluster: it is replaced (or refilled from the leader), same cluster id, all
    writes kept."""
    kube = operator
    kube.create_etcdcluster(ns, "w", {"replicas": 3})
    writer = Writer(kube, ns, "w").start()
    wait_available(kube, ns, "w", 3)
    ids = assert_converged(kube, ns, "w", 3)
    cluster_id = kube.etcdcluster(ns, "w")["status"]["clusterID"]
    victim = sorted(ids)[1]
    kube.wipe_volume(ns, victim)
    kube.kill_pod_process(ns, victim)

    def recovered() -> bool:
        st = kube.etcdcluster(ns, "w")["status"]
        names = {m["name"] for m in st.get("members") or []}
        restarted = victim not in names or any(
            (p.status.container_statuses or [None])[0].restart_count >= 1
            for p in kube.member_pods(ns, "w") if p.metadata.name == victim
        )
        return restarted and kube.available(ns, "w", 3)

    wait_until(recovered, t(400), f"{victim} (wiped) replaced or refilled ({summary(kube, ns, 'w')})")
    after = assert_converged(kube, ns, "w", 3)
    assert kube.etcdcluster(ns, "w")["status"]["clusterID"] == cluster_id
    survivors = {n: i for n, i in ids.items() if n != victim}
    assert {n: after.get(n) for n in survivors} == survivors  # the other members were never touched
    assert writer.verify() > 0
