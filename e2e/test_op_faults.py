"""Operator scenarios with faults a node or a user causes: a Pod deleted, a volume lost, data corrupted,
a member process killed, etcd unreachable. A client writes throughout; every acknowledged write is checked.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from e2ekit import (
    Kube,
    Writer,
    assert_converged,
    member_names,
    summary,
    t,
    wait_available,
    wait_until,
)

pytestmark = pytest.mark.timeout(1500)  # scenarios wait on real processes; each wait has its own deadline

SEED = 20261203


def _cluster(kube: Kube, ns: str, name: str, replicas: int = 3) -> tuple[Writer, dict[str, int]]:
    kube.create_etcdcluster(ns, name, {"replicas": replicas})
    writer = Writer(kube, ns, name).start()
    wait_available(kube, ns, name, replicas)
    return writer, assert_converged(kube, ns, name, replicas)


def _victim(ids: dict[str, int]) -> str:
    rng = random.Random(SEED)
    name = rng.choice(sorted(ids))
    print(f"seed {SEED}: victim {name}")
    return name


def test_pod_deleted_comes_back_as_same_member(operator: Kube, ns: str,
                                               timings: dict[str, dict[str, Any]]) -> None:
    """A deleted Pod is re-created on its volume as the same member (same name, same etcd id)."""
    kube = operator
    writer, ids = _cluster(kube, ns, "p")
    victim = _victim(ids)
    old_uid = kube.core.read_namespaced_pod(victim, ns).metadata.uid
    start = time.monotonic()
    kube.core.delete_namespaced_pod(victim, ns)
    wait_until(lambda: kube.core.read_namespaced_pod(victim, ns).metadata.uid != old_uid, t(120),
               f"{victim} to be re-created ({summary(kube, ns, 'p')})")
    wait_available(kube, ns, "p", 3)
    timings["pod_loss"] = {"delete_to_available_s": round(time.monotonic() - start, 2)}
    assert assert_converged(kube, ns, "p", 3) == ids, "the same members, with the same ids"
    assert writer.verify() > 0


def test_pod_and_volume_deleted_member_replaced(operator: Kube, ns: str,
                                                timings: dict[str, dict[str, Any]]) -> None:
    """Pod and PVC deleted: the member is removed from etcd and replaced by a new one on a fresh volume."""
    kube = operator
    writer, ids = _cluster(kube, ns, "v")
    victim = _victim(ids)
    start = time.monotonic()
    kube.core.delete_namespaced_persistent_volume_claim(victim, ns)
    kube.core.delete_namespaced_pod(victim, ns)

    def replaced() -> bool:
        names = member_names(kube, ns, "v")
        return victim not in names and len(names) == 3
    wait_until(replaced, t(300), f"{victim} to be replaced ({summary(kube, ns, 'v')})")
    wait_available(kube, ns, "v", 3)
    timings["volume_loss"] = {"delete_to_replaced_available_s": round(time.monotonic() - start, 2)}
    now = assert_converged(kube, ns, "v", 3)
    assert victim not in now and set(ids) - {victim} <= set(now)
    assert all(now[m] == ids[m] for m in set(ids) - {victim}), "the other members kept their identity"
    assert writer.verify() > 0


@pytest.mark.e2e_slow
def test_corrupt_member_data_replaced(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    """Garbage over one member's files, then its process dies: it crash-loops on the data error and is replaced."""
    kube = operator
    if not kube.is_double:
        pytest.skip("needs the test node's access to volumes")
    writer, ids = _cluster(kube, ns, "k")
    victim = _victim(ids)
    time.sleep(2)  # some writes on disk
    start = time.monotonic()
    kube.corrupt_volume(ns, victim)
    kube.kill_pod_process(ns, victim)

    def replaced() -> bool:
        names = member_names(kube, ns, "k")
        return victim not in names and len(names) == 3
    wait_until(replaced, t(400), f"{victim} (corrupt) to be replaced ({summary(kube, ns, 'k')})")
    wait_available(kube, ns, "k", 3)
    timings["corrupt_data"] = {"corrupt_to_replaced_available_s": round(time.monotonic() - start, 2)}
    assert writer.verify() > 0


@pytest.mark.e2e_slow
def test_member_process_killed(operator: Kube, ns: str) -> None:
    """kill -9 of a member: the node restarts it in place; the operator keeps the same members."""
    kube = operator
    writer, ids = _cluster(kube, ns, "x")
    victim = _victim(ids)
    kube.kill_pod_process(ns, victim)
    wait_until(lambda: (kube.core.read_namespaced_pod(victim, ns).status.container_statuses or [None])[0]
               .restart_count >= 1, t(60), "the container restart")
    wait_available(kube, ns, "x", 3)
    assert assert_converged(kube, ns, "x", 3) == ids
    assert writer.verify() > 0


@pytest.mark.e2e_slow
def test_etcd_unreachable_status_truthful_nothing_deleted(operator: Kube, ns: str) -> None:
    """Every member frozen (SIGSTOP): status turns Degraded and keeps being refreshed; nothing is deleted."""
    kube = operator
    if not kube.is_double:
        pytest.skip("freezes member processes through the test node")
    writer, ids = _cluster(kube, ns, "u")
    writer.stop()
    acked = dict(writer.acked)
    pods = {p.metadata.name: p.metadata.uid for p in kube.member_pods(ns, "u")}
    pvcs = {c.metadata.name: c.metadata.uid for c in kube.core.list_namespaced_persistent_volume_claim(ns).items}
    for name in ids:
        kube.freeze_pod(ns, name)
    try:
        def degraded() -> bool:
            cond = kube.condition(ns, "u", "Available") or {}
            return cond.get("status") == "False"
        wait_until(degraded, t(120), f"Available=False ({summary(kube, ns, 'u')})")
        first = kube.etcdcluster(ns, "u")["status"].get("lastReconcileTime")
        wait_until(lambda: kube.etcdcluster(ns, "u")["status"].get("lastReconcileTime") != first, t(60),
                   "status to keep being refreshed while etcd is unreachable")
        time.sleep(15)  # give a wrong operator time to do something destructive
        assert {p.metadata.name: p.metadata.uid for p in kube.member_pods(ns, "u")} == pods
        assert {c.metadata.name: c.metadata.uid for c in
                kube.core.list_namespaced_persistent_volume_claim(ns).items} == pvcs
    finally:
        for name in ids:
            kube.thaw_pod(ns, name)
    wait_available(kube, ns, "u", 3)
    assert assert_converged(kube, ns, "u", 3) == ids
    writer = Writer(kube, ns, "u")
    writer.acked = acked
    assert writer.verify() == len(acked)
