"""The operator killed right after each step (ETCDPY_OPERATOR_CRASH_AT) and started again must converge.

Each point is reached by the operation that passes through it (bootstrap and scale-out, scale-in,
or a rolling change); the operator must exit with 86 there, and a fresh operator process must finish
the job with etcd, Pods and PVCs agreeing, no member left half-added, and every acknowledged write kept.
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

pytestmark = pytest.mark.timeout(1500)  # scenarios wait on real processes; each wait has its own deadline

# point -> (initial replicas, the change that passes through it)
POINTS: dict[str, tuple[int, dict[str, Any]]] = {
    "after-latch": (1, {"replicas": 3}),
    "after-member-add": (1, {"replicas": 3}),
    "after-pvc-create": (1, {"replicas": 3}),
    "after-pod-create": (1, {"replicas": 3}),
    "before-promote": (1, {"replicas": 3}),
    "after-promote": (1, {"replicas": 3}),
    "after-member-remove": (3, {"replicas": 1}),
    "after-pod-delete": (3, {"replicas": 1}),
    "after-pvc-delete": (3, {"replicas": 1}),
    "mid-rolling": (3, {"etcd": {"snapshotCount": 5000}}),
    "after-leader-move": (3, {"etcd": {"snapshotCount": 5000}}),
}


@pytest.mark.e2e_slow
@pytest.mark.parametrize("point", sorted(POINTS))
def test_operator_killed_at(point: str, operator: Kube, ns: str) -> None:
    kube = operator
    if not kube.is_double:
        pytest.skip("crash points need the operator process under the suite's control")
    replicas, change = POINTS[point]
    kube.create_etcdcluster(ns, "cp", {"replicas": replicas})
    writer = Writer(kube, ns, "cp").start()
    wait_available(kube, ns, "cp", replicas)
    kube.start_operator(ns, {"ETCDPY_OPERATOR_CRASH_AT": point})
    kube.patch_etcdcluster(ns, "cp", change)
    code = wait_until(kube.operator_exited, t(300), f"the operator to crash at {point} ({summary(kube, ns, 'cp')})")
    assert code == 86, f"the operator exited with {code}, not at the crash point"
    kube.start_operator(ns)
    final = change.get("replicas", replicas)
    wait_available(kube, ns, "cp", final, timeout=400)
    assert_converged(kube, ns, "cp", final)
    if "etcd" in change:
        def rolled() -> bool:
            pods = kube.member_pods(ns, "cp")
            return len(pods) == final and all(
                "--snapshot-count=5000" in " ".join(p.spec.containers[0].args or []) for p in pods) and \
                kube.available(ns, "cp", final)
        wait_until(rolled, t(400), f"every member rolled after the crash ({summary(kube, ns, 'cp')})")
        assert_converged(kube, ns, "cp", final)
    assert writer.verify() > 0
