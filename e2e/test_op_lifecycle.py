"""Operator scenarios: create, scale, delete — each with a client writing throughout and every ack checked.

Written against the Kubernetes API only, so they run on the API double with the test node (default) and
on a real cluster (`--kubeconfig`). Durations are measured (never asserted) and written to E2E_RESULTS.
"""

from __future__ import annotations

from typing import Any

import pytest
from e2ekit import (
    Kube,
    Writer,
    assert_converged,
    summary,
    t,
    wait_available,
    wait_until,
)
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.timeout(1500)  # scenarios wait on real processes; each wait has its own deadline


def _create(kube: Kube, ns: str, name: str, replicas: int, **spec: Any) -> Writer:
    kube.create_etcdcluster(ns, name, {"replicas": replicas, **spec})
    return Writer(kube, ns, name).start()


def test_create_3(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    """`kubectl apply` of 3 members → Available; all writes kept; deleting the cluster removes what it owns."""
    kube = operator
    writer = _create(kube, ns, "c3", 3)
    took = wait_available(kube, ns, "c3", 3)
    ids = assert_converged(kube, ns, "c3", 3)
    st = kube.etcdcluster(ns, "c3")["status"]
    assert st.get("clusterID") and st.get("leader") in ids, summary(kube, ns, "c3")
    assert {m.get("name") for m in st["members"]} == set(ids)
    assert writer.verify() > 0
    timings["create_3"] = {"apply_to_available_s": took}
    reasons = {e.reason for e in kube.events(ns) if e.involved_object.kind == "EtcdCluster"}
    assert reasons, "the operator posts Events about its EtcdCluster"

    kube.delete_etcdcluster(ns, "c3")
    wait_until(lambda: not kube.member_pods(ns, "c3") and not kube.core.list_namespaced_persistent_volume_claim(
        ns, label_selector="etcd.etcdpy.io/cluster=c3").items, t(120), "owned Pods and PVCs to be collected")


@pytest.mark.e2e_slow
@pytest.mark.parametrize("replicas", [1, 5])
def test_create_1_and_5(operator: Kube, ns: str, replicas: int, timings: dict[str, dict[str, Any]]) -> None:
    kube = operator
    name = f"c{replicas}"
    writer = _create(kube, ns, name, replicas)
    took = wait_available(kube, ns, name, replicas, timeout=120 * replicas)
    assert_converged(kube, ns, name, replicas)
    assert writer.verify() > 0
    timings[f"create_{replicas}"] = {"apply_to_available_s": took}


def _scale(kube: Kube, ns: str, name: str, steps: list[int], timings: dict[str, Any]) -> None:
    """Scale through `steps`, waiting for each to converge; member identities of survivors never change."""
    ids = assert_converged(kube, ns, name, steps[0])
    for size in steps[1:]:
        before = len(ids)
        kube.patch_etcdcluster(ns, name, {"replicas": size})
        took = wait_available(kube, ns, name, size, timeout=150 * max(1, abs(size - before)))
        timings[f"scale_{before}_to_{size}_s"] = took
        now = assert_converged(kube, ns, name, size)
        kept = set(ids) & set(now)
        assert all(ids[m] == now[m] for m in kept), "a surviving member changed identity"
        assert len(kept) == min(before, size), f"scaling {before}->{size} kept {sorted(kept)} of {sorted(ids)}"
        ids = now


def test_scale_3_5_3(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    """Scale out one learner at a time and back in, writes continuing."""
    kube = operator
    writer = _create(kube, ns, "s", 3)
    result: dict[str, Any] = {"apply_to_available_s": wait_available(kube, ns, "s", 3)}
    _scale(kube, ns, "s", [3, 5, 3], result)
    assert writer.verify() > 0
    timings["scale_3_5_3"] = result


@pytest.mark.e2e_slow
def test_scale_1_3_5_3_1(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    kube = operator
    writer = _create(kube, ns, "s", 1)
    result: dict[str, Any] = {"apply_to_available_s": wait_available(kube, ns, "s", 1)}
    _scale(kube, ns, "s", [1, 3, 5, 3, 1], result)
    assert writer.verify() > 0
    timings["scale_1_3_5_3_1"] = result


def test_invalid_spec_refused(operator: Kube, ns: str) -> None:
    """The CRD schema refuses bad specs with a message a person understands; nothing is created."""
    kube = operator
    cases: list[tuple[dict[str, Any], str]] = [({"replicas": 0}, "spec.replicas"), ({"replicas": 12}, "spec.replicas"),
             ({"version": "latest"}, "spec.version"), ({"storage": {"size": "lots"}}, "spec.storage.size"),
             ({"etcd": {"heartbeatInterval": 100, "electionTimeout": 200}}, "electionTimeout")]
    for spec, field in cases:
        with pytest.raises(ApiException) as exc:
            kube.create_etcdcluster(ns, "bad", spec)
        assert exc.value.status == 422, (spec, exc.value.status)
        assert field in exc.value.body and "is invalid" in exc.value.body, exc.value.body
    with pytest.raises(ApiException) as exc:
        kube.create_etcdcluster(ns, "x" * 41, {})
    assert exc.value.status == 422 and "40" in exc.value.body
    assert not kube.member_pods(ns, "bad")


def test_refused_change_touches_nothing(operator: Kube, ns: str) -> None:
    """A downgrade passes the schema but is refused by the operator in a condition; the member is untouched."""
    kube = operator
    writer = _create(kube, ns, "v", 1)
    wait_available(kube, ns, "v", 1)
    pods = {p.metadata.name: p.metadata.uid for p in kube.member_pods(ns, "v")}
    kube.patch_etcdcluster(ns, "v", {"version": "0.0.1"})

    def refused() -> bool:
        st = kube.etcdcluster(ns, "v").get("status") or {}
        return any(c.get("reason") == "VersionChangeRefused" for c in st.get("conditions") or [])
    wait_until(refused, t(60), f"a VersionChangeRefused condition ({summary(kube, ns, 'v')})")
    assert {p.metadata.name: p.metadata.uid for p in kube.member_pods(ns, "v")} == pods
    assert writer.verify() > 0
