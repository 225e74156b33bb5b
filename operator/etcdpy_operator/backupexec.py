"""Backups, the I/O side: observe the backup state of a cluster, run the one step `backup.plan_backup` chose.

Why a separate step after the member reconcile (not an action of the member planner): a backup only reads
from one healthy member and writes to its own volume, so it may run while a membership operation is in
flight; keeping it apart leaves the member planner's one-action-per-reconcile contract untouched. Every
write that the next step depends on goes to the API server first (status.backup.inFlight is latched
before the Pod exists), so a restarted operator resumes or records the backup, never starts a second one.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from etcdpy_operator import GROUP, VERSION, builders
from etcdpy_operator.agent import RESULT_PREFIX
from etcdpy_operator.backup import (
    BACKUP_KIND,
    BACKUP_MOUNT,
    BACKUP_PLURAL,
    COND_BACKUP_READY,
    LABEL_BACKUP_OF,
    LABEL_BACKUP_POD,
    BackupAction,
    BackupObserved,
    BackupPodObs,
    BackupSpec,
    BackupStatus,
    BKind,
    InFlight,
    Trigger,
    after_failure,
    after_success,
    backup_condition,
    fmt_time,
    plan_backup,
)
from etcdpy_operator.kube import Kube, KubeError, now_rfc3339
from etcdpy_operator.model import LABEL_MANAGED_BY, LABEL_NAME, Observed

AGENT_COMMAND = ["python3", "-m", "etcdpy_operator.agent", "backup"]


class BackupMetrics:
    """Backup counters and gauges on the operator's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["namespace", "cluster"]
        self.succeeded = Counter(
            "etcdpy_operator_backups_succeeded", "Backups verified and stored.", [*labels, "trigger"], registry=registry
        )
        self.failed = Counter("etcdpy_operator_backups_failed", "Backups that failed.", [*labels, "trigger"], registry=registry)
        self.last_time = Gauge(
            "etcdpy_operator_last_successful_backup_timestamp_seconds", "Unix time of the last backup.", labels,
            registry=registry,
        )
        self.last_size = Gauge("etcdpy_operator_last_backup_size_bytes", "Size of the last backup file.", labels,
                               registry=registry)
        self.last_revision = Gauge("etcdpy_operator_last_backup_revision", "Revision of the last backup.", labels,
                                   registry=registry)
        self.recovery_steps = Counter(
            "etcdpy_operator_recovery_steps", "Quorum-loss recovery steps taken, by step.", [*labels, "step"],
            registry=registry,
        )
        self.last_seconds = Gauge("etcdpy_operator_last_backup_duration_seconds", "Time the last snapshot took.",
                                  labels, registry=registry)


def healthy_members(o: Observed) -> tuple[str, ...]:
    """Healthy started voters whose Pod is Ready, followers first (a snapshot loads the member it streams from)."""
    out = [
        m for m in o.voters()
        if m.started and o.is_healthy(m.key) and (p := o.pods.get(m.key)) is not None and p.ready and not p.deleting
    ]
    out.sort(key=lambda m: (m.id == o.leader_id, m.key))
    return tuple(m.key for m in out)


async def observe_backup(kube: Kube, body: dict[str, Any], o: Observed, now: dt.datetime) -> BackupObserved:
    """Read what a backup decision needs: status.backup, backup Pods, the volume, pending EtcdBackups."""
    ns, cluster = o.namespace, o.cluster
    spec = BackupSpec.from_body(body.get("spec") or {})
    status = BackupStatus.from_status((body.get("status") or {}).get("backup"))
    pods_raw = await kube._run(kube.core.list_namespaced_pod, ns, label_selector=f"{LABEL_BACKUP_OF}={cluster}")
    pods = {}
    for p in pods_raw.get("items") or []:
        meta = p.get("metadata") or {}
        if (meta.get("labels") or {}).get(LABEL_BACKUP_OF) != cluster:
            continue
        pods[meta["name"]] = BackupPodObs(
            meta["name"], (p.get("status") or {}).get("phase", "Pending"), bool(meta.get("deletionTimestamp"))
        )
    claim_exists, claim_bound = True, True
    if spec is not None:
        pvc = await kube._run(
            kube.core.read_namespaced_persistent_volume_claim, spec.claim(cluster), ns, missing_ok=True
        )
        claim_exists = pvc is not None
        claim_bound = bool(pvc) and (pvc.get("status") or {}).get("phase") == "Bound"
    reqs = await kube._run(kube.custom.list_namespaced_custom_object, GROUP, VERSION, ns, BACKUP_PLURAL, missing_ok=True)
    pending = sorted(
        
            ((r.get("metadata") or {}).get("creationTimestamp", ""), r["metadata"]["name"])
            for r in (reqs or {}).get("items") or []
            if (r.get("spec") or {}).get("clusterName") == cluster
            and (r.get("status") or {}).get("phase", "Pending") == "Pending"
            and not r["metadata"].get("deletionTimestamp")
        
    )
    return BackupObserved(
        cluster=cluster,
        now=now,
        spec=spec,
        status=status,
        healthy_members=healthy_members(o),
        claim_exists=claim_exists,
        claim_bound=claim_bound,
        pods=pods,
        requests=tuple(name for _, name in pending),
        cluster_ready=bool(o.cluster_id),
    )


def backup_pvc(spec: BackupSpec, cluster: str, namespace: str) -> dict[str, Any]:
    """The backup volume made from the claim template.

    Deliberately without an owner reference: deleting the EtcdCluster must not delete its backups (restoring
    a deleted cluster is what they are for), and without the cluster label, so member clean-up never sees it.
    """
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": spec.claim(cluster),
            "namespace": namespace,
            "labels": {LABEL_NAME: "etcdpy", LABEL_MANAGED_BY: "etcdpy-operator", LABEL_BACKUP_OF: cluster},
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": spec.template_size}}},
    }
    if spec.template_class:
        body["spec"]["storageClassName"] = spec.template_class
    return body


def backup_pod(o: Observed, spec: BackupSpec, uid: str, f: InFlight, member: str) -> dict[str, Any]:
    """A run-once Pod from the cluster's image that saves a snapshot of `member` onto the backup volume."""
    cluster, ns = o.cluster, o.namespace
    args = [
        f"--endpoint={builders.client_url(o.spec, cluster, ns, member)}",
        f"--dir={BACKUP_MOUNT}",
        f"--cluster={cluster}",
        f"--member={member}",
        f"--claim={spec.claim(cluster)}",
        f"--trigger={f.trigger.value}",
    ]
    if f.request:
        args.append(f"--request={f.request}")
    if spec.max_count:
        args.append(f"--max-count={spec.max_count}")
    if spec.max_age:
        args.append(f"--max-age={spec.max_age}")
    mounts: list[dict[str, Any]] = [{"name": "backups", "mountPath": BACKUP_MOUNT}]
    volumes: list[dict[str, Any]] = [{"name": "backups", "persistentVolumeClaim": {"claimName": spec.claim(cluster)}}]
    if o.spec.client_tls_secret:
        d = builders.TLS_CLIENT_DIR
        args += [f"--cacert={d}/ca.crt", f"--cert={d}/tls.crt", f"--key={d}/tls.key"]
        mounts.append({"name": "tls-client", "mountPath": d, "readOnly": True})
        volumes.append({"name": "tls-client", "secret": {"secretName": o.spec.client_tls_secret, "defaultMode": 0o400}})
    template = o.spec.pod_template
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": builders.pod_security_context(),
        "containers": [
            {
                "name": "backup",
                "image": o.spec.image,
                "imagePullPolicy": o.spec.image_pull_policy,
                "command": AGENT_COMMAND,
                "args": args,
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    for key in ("nodeSelector", "tolerations", "priorityClassName"):
        if template.get(key):
            pod_spec[key] = template[key]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f.pod,
            "namespace": ns,
            "labels": {LABEL_NAME: "etcdpy", LABEL_MANAGED_BY: "etcdpy-operator", LABEL_BACKUP_OF: cluster,
                       LABEL_BACKUP_POD: f.pod},
            "ownerReferences": [builders.owner_reference(cluster, uid)],
        },
        "spec": pod_spec,
    }


def parse_result(log_text: str) -> dict[str, Any]:
    """The agent's result line from a backup Pod's log ({'error': ...} when there is none)."""
    for line in reversed(log_text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                result = json.loads(line[len(RESULT_PREFIX) :])
            except ValueError:
                break
            return result if isinstance(result, dict) else {"error": "malformed result"}
    tail = " | ".join(log_text.strip().splitlines()[-3:])
    return {"error": f"no result from the backup Pod (log: {tail[-400:] or 'empty'})"}


class BackupStep:
    """Run one backup step for one cluster (built per reconcile)."""

    def __init__(
        self, kube: Kube, body: dict[str, Any], o: Observed, metrics: BackupMetrics, log: Any, crash: Any = None
    ) -> None:
        self.kube, self.body, self.o, self.metrics, self.log, self.crash = kube, body, o, metrics, log, crash

    def _hit(self, point: str) -> None:
        if self.crash is not None:
            self.crash.hit(point, self.log)

    async def run(self, now: dt.datetime) -> dict[str, Any] | None:
        """Observe, plan, execute; returns the BackupReady condition to show (None: backups not configured)."""
        bo = await observe_backup(self.kube, self.body, self.o, now)
        action = plan_backup(bo)
        backup_status = dict((self.body.get("status") or {}).get("backup") or {})
        if action.acts:
            self.log.info("backup %s: %s", action.kind.value, action.message)
            try:
                backup_status.update(await self.execute(action, bo))
            except KubeError as e:
                self.log.warning("backup step %s failed: %s", action.kind.value, e)
                await self.kube.event(self.body, "Warning", "BackupStepFailed", f"{action.kind.value}: {e}")
        previous = next(
            (c for c in (self.body.get("status") or {}).get("conditions") or [] if c.get("type") == COND_BACKUP_READY),
            None,
        )
        return backup_condition(backup_status, bo.spec, now_rfc3339(), previous)

    async def _patch(self, fields: dict[str, Any]) -> None:
        await self.kube.patch_status(self.o.namespace, self.o.cluster, {"backup": fields})

    async def _patch_request(self, name: str, status: dict[str, Any]) -> None:
        await self.kube._run(
            self.kube.custom.patch_namespaced_custom_object_status, GROUP, VERSION, self.o.namespace, BACKUP_PLURAL,
            name, {"status": status}, missing_ok=True,
        )

    async def execute(self, a: BackupAction, bo: BackupObserved) -> dict[str, Any]:
        """Carry out `a`; returns the status.backup fields it wrote."""
        ns = self.o.namespace
        spec = bo.spec
        if a.kind is BKind.CREATE_CLAIM:
            assert spec is not None
            await self.kube.create(backup_pvc(spec, self.o.cluster, ns))
            await self.kube.event(self.body, "Normal", "BackupVolumeCreated", a.message)
            return {}
        if a.kind is BKind.SET_NEXT:
            await self._patch({"nextScheduledTime": a.next_scheduled})
            return {"nextScheduledTime": a.next_scheduled}
        if a.kind is BKind.REJECT:
            await self._patch_request(a.request, {"phase": "Failed", "message": a.message})
            await self.kube.event(self.body, "Warning", "BackupRejected", f"EtcdBackup {a.request}: {a.message}")
            return {}
        if a.kind is BKind.DELETE_POD:
            await self.kube.delete_pod(ns, a.pod)
            return {}
        f = a.in_flight
        if a.kind is BKind.LATCH:
            assert f is not None
            fields: dict[str, Any] = {"inFlight": f.to_status()}
            await self._patch(fields)
            if f.request:
                await self._patch_request(f.request, {"phase": "Running", "startedAt": f.started_at,
                                                      "message": a.message})
            await self.kube.event(self.body, "Normal", "BackupStarted", a.message)
            self._hit("after-backup-latch")
            return fields
        if a.kind is BKind.CREATE_POD:
            assert f is not None and spec is not None
            await self.kube.create(backup_pod(self.o, spec, str(self.body["metadata"].get("uid", "")), f, a.member))
            self._hit("after-backup-pod-create")
            fields = {"inFlight": {**f.to_status(), "member": a.member}}  # after the Pod: no Pod + member = lost
            await self._patch(fields)
            return fields
        if a.kind is BKind.COLLECT:
            assert f is not None
            return await self._collect(bo, f)
        if a.kind in (BKind.FAIL, BKind.SKIP):
            if a.pod and a.pod in bo.pods:
                await self.kube.delete_pod(ns, a.pod)
            slot = f.scheduled_for if f is not None else a.next_scheduled
            return await self._failed(bo, f, slot, a.message)
        return {}

    async def _collect(self, bo: BackupObserved, f: InFlight) -> dict[str, Any]:
        try:
            text = await self._pod_log(f.pod)
        except KubeError as e:
            text = f"cannot read the log: {e}"
        result = parse_result(text)
        if "error" in result or not result.get("name"):
            return await self._failed(bo, f, f.scheduled_for, str(result.get("error", "no file name in the result")))
        last = {k: result.get(k) for k in ("name", "claim", "time", "revision", "size", "sha256", "member", "seconds")}
        last["trigger"] = f.trigger.value
        fields = {**after_success(bo, f), "lastSuccessfulBackup": last}
        await self._patch(fields)
        if f.request:
            await self._patch_request(f.request, {
                "phase": "Succeeded", "fileName": last["name"], "claim": last["claim"], "revision": last["revision"],
                "size": last["size"], "sha256": last["sha256"], "member": last["member"], "seconds": last["seconds"],
                "completedAt": now_rfc3339(), "message": "backup verified and stored",
            })
        pruned = result.get("pruned") or []
        msg = (f"backup {last['name']} (revision {last['revision']}, {last['size']} bytes, from {last['member']}) "
               f"verified on {last['claim']}" + (f"; pruned {', '.join(pruned)}" if pruned else ""))
        await self.kube.event(self.body, "Normal", "BackupSucceeded", msg)
        key = (self.o.namespace, self.o.cluster)
        self.metrics.succeeded.labels(*key, f.trigger.value).inc()
        self.metrics.last_time.labels(*key).set(bo.now.timestamp())
        self.metrics.last_size.labels(*key).set(float(last["size"] or 0))
        self.metrics.last_revision.labels(*key).set(float(last["revision"] or 0))
        self.metrics.last_seconds.labels(*key).set(float(last["seconds"] or 0))
        return fields

    async def _failed(self, bo: BackupObserved, f: InFlight | None, slot: str, message: str) -> dict[str, Any]:
        fields = after_failure(bo, f, slot, message)
        await self._patch(fields)
        trigger = f.trigger if f is not None else Trigger.SCHEDULED
        if f is not None and f.request:
            await self._patch_request(f.request, {"phase": "Failed", "message": message[:1000],
                                                  "completedAt": now_rfc3339()})
        retry = fields.get("retryAt")
        what = f"EtcdBackup {f.request}" if f is not None and f.request else f"scheduled backup ({slot})"
        await self.kube.event(self.body, "Warning", "BackupFailed",
                              f"{what} failed: {message}" + (f"; retrying at {retry}" if retry else ""))
        self.metrics.failed.labels(self.o.namespace, self.o.cluster, trigger.value).inc()
        return fields

    async def _pod_log(self, pod: str) -> str:
        return await read_pod_log(self.kube, self.o.namespace, pod, "backup")


async def read_pod_log(kube: Kube, namespace: str, pod: str, container: str, tail: int = 50) -> str:
    """The end of a finished Pod's log (`kubectl logs`), where the run-once Pods print their result."""
    import asyncio

    from kubernetes.client.rest import ApiException

    def call() -> str:
        resp = kube.core.read_namespaced_pod_log(
            pod, namespace, container=container, tail_lines=tail, _preload_content=False, _request_timeout=15
        )
        return str(resp.data.decode(errors="replace"))

    try:
        return await asyncio.to_thread(call)
    except (ApiException, OSError) as e:
        raise KubeError(f"read_namespaced_pod_log: {e}") from e


def merge_condition(conditions: list[dict[str, Any]], cond: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The status conditions with BackupReady replaced (or dropped when backups are not configured)."""
    out = [c for c in conditions if c.get("type") != COND_BACKUP_READY]
    if cond is not None:
        out.append(cond)
    return out


__all__ = ["BACKUP_KIND", "BackupMetrics", "BackupStep", "fmt_time", "merge_condition"]
