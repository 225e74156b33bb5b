"""Prometheus metrics of the operator, on a registry owned by the process (no module-level state)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    """Counters per cluster and action, gauges of each cluster's last observed shape."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["namespace", "cluster"]
        r = self.registry
        self.reconciles = Counter("etcdpy_operator_reconciles", "Reconciles run.", labels, registry=r)
        self.errors = Counter("etcdpy_operator_reconcile_errors", "Reconciles that failed.", labels, registry=r)
        self.actions = Counter(
            "etcdpy_operator_actions", "Actions executed, by kind.", [*labels, "action"], registry=r
        )
        self.desired = Gauge("etcdpy_operator_desired_members", "spec.replicas.", labels, registry=r)
        self.ready = Gauge("etcdpy_operator_ready_members", "Ready voting members.", labels, registry=r)
        self.learners = Gauge("etcdpy_operator_learner_members", "Learner members.", labels, registry=r)
        self.has_leader = Gauge("etcdpy_operator_has_leader", "1 when a member reports a leader.", labels, registry=r)
        self.last_success = Gauge(
            "etcdpy_operator_last_successful_reconcile_timestamp_seconds",
            "Unix time of the last reconcile without error.",
            labels,
            registry=r,
        )

    def record(self, namespace: str, cluster: str, status: dict[str, Any] | None, action: str, ok: bool) -> None:
        """Account for one reconcile of a cluster (status None: nothing could be observed)."""
        key = (namespace, cluster)
        self.reconciles.labels(*key).inc()
        if not ok:
            self.errors.labels(*key).inc()
        if action:
            self.actions.labels(*key, action).inc()
        if status is not None:
            self.desired.labels(*key).set(status.get("desiredMembers", 0))
            self.ready.labels(*key).set(status.get("readyMembers", 0))
            self.learners.labels(*key).set(status.get("learnerMembers", 0))
            self.has_leader.labels(*key).set(1 if status.get("leader") else 0)
        if ok:
            self.last_success.labels(*key).set(time.time())

    def forget(self, namespace: str, cluster: str) -> None:
        """Drop a deleted cluster's series."""
        for metric in (self.desired, self.ready, self.learners, self.has_leader, self.last_success):
            try:
                metric.remove(namespace, cluster)
            except KeyError:
                pass
