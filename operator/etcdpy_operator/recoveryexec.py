"""Quorum-loss recovery, the I/O side: observe `status.recovery` and the member Pods, run one step.

Why it returns status fields as well as an Action: the reconcile writes the whole status after the step; a
recovery that supersedes the member operation in flight must also make that write drop it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from etcdpy_operator import builders
from etcdpy_operator.kube import Kube, now_rfc3339
from etcdpy_operator.model import Action, Kind, Observed
from etcdpy_operator.recovery import (
    ANN_FORCE,
    RecoveryAction,
    RecoveryObserved,
    RecoveryPodObs,
    RecoverySpec,
    RKind,
    plan_recovery,
)


@dataclass(frozen=True)
class GateResult:
    """`action` None: the member planner decides. `soft`: use the planner's action when it acts."""

    action: Action | None = None
    fields: dict[str, Any] | None = None
    soft: bool = False


def _pods(raw: list[dict[str, Any]]) -> dict[str, RecoveryPodObs]:
    out = {}
    for p in raw:
        meta = p.get("metadata") or {}
        conds = (p.get("status") or {}).get("conditions") or []
        out[meta["name"]] = RecoveryPodObs(
            meta["name"],
            force=ANN_FORCE in (meta.get("annotations") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
            ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds),
        )
    return out


def force_pod(o: Observed, uid: str, member: str, token: str, force: bool) -> dict[str, Any]:
    """The survivor's Pod as a one-member cluster, with `--force-new-cluster` when `force`."""
    peer = builders.peer_url(o.spec, o.cluster, o.namespace, member)
    body = builders.pod(o.spec, o.cluster, o.namespace, uid, member, {member: peer}, "existing", token)
    if force:
        body["metadata"].setdefault("annotations", {})[ANN_FORCE] = "true"
        container = body["spec"]["containers"][0]
        container["args"] = [*container.get("args", []), "--force-new-cluster"]
    return body


async def gate(kube: Kube, body: dict[str, Any], o: Observed, log: Any, crash: Any, metrics: Any) -> GateResult:
    """Plan and run one recovery step."""
    spec = RecoverySpec.from_body(body.get("spec") or {})
    status = dict((body.get("status") or {}).get("recovery") or {})
    raw = await kube.list_pods(o.namespace, o.cluster)
    last_backup = ((body.get("status") or {}).get("backup") or {}).get("lastSuccessfulBackup")
    r = RecoveryObserved(o, spec, status, _pods(raw), dt.datetime.now(dt.UTC), last_backup)
    a = plan_recovery(r)
    if a.kind is RKind.PASS:
        return GateResult()
    if a.kind is not RKind.WAIT:
        log.info("recovery %s %s: %s", a.kind.value, a.member or "-", a.message)
        if metrics is not None:
            metrics.recovery_steps.labels(o.namespace, o.cluster, a.kind.value).inc()
    return await _execute(kube, body, o, a, status, log, crash)


async def _patch(kube: Kube, o: Observed, fields: dict[str, Any]) -> None:
    await kube.patch_status(o.namespace, o.cluster, {"recovery": fields})


async def _execute(
    kube: Kube, body: dict[str, Any], o: Observed, a: RecoveryAction, status: dict[str, Any], log: Any, crash: Any
) -> GateResult:
    ns, uid = o.namespace, str(body["metadata"].get("uid", ""))
    token = o.cluster_token or str((body.get("status") or {}).get("clusterToken") or "")
    wait = Action(Kind.WAIT, member=a.member, reason="QuorumRecovery", message=a.message)
    k = a.kind
    if k is RKind.MARK_LOST:
        await _patch(kube, o, {"quorumLostSince": now_rfc3339()})
        await kube.event(body, "Warning", "QuorumLost", a.message)
        return GateResult(Action(Kind.WAIT, reason="QuorumLost", message=a.message), soft=True)
    if k is RKind.CLEAR_MARK:
        await _patch(kube, o, {"quorumLostSince": None})
        await kube.event(body, "Normal", "QuorumRestored", "a quorum of voters answers again")
        return GateResult()
    if k is RKind.REPORT:
        reason = a.reason or "QuorumLost"
        return GateResult(Action(Kind.BLOCKED, member=a.member, reason=reason, message=a.message), soft=True)
    if k is RKind.WAIT and not status.get("operation"):
        return GateResult(Action(Kind.WAIT, reason="QuorumLost", message=a.message), soft=True)
    if k is RKind.LATCH:
        assert a.operation is not None
        await _patch(kube, o, {"operation": a.operation})
        # the recovery supersedes any membership operation: its members are about to be removed
        await kube.patch_status(ns, o.cluster, {"operation": None})
        await kube.event(body, "Warning", "QuorumRecoveryStarted", a.message)
        crash.hit("after-recovery-latch", log)
        return GateResult(wait, fields={"operation": None})
    if k is RKind.DELETE_POD:
        await kube.delete_pod(ns, a.member)
        await kube.event(body, "Normal", "PodDeleted", a.message)
    elif k is RKind.DELETE_PVC:
        await kube.delete_pvc(ns, a.member)
        await kube.event(body, "Normal", "VolumeDeleted", a.message)
    elif k is RKind.CREATE_FORCE_POD:
        await kube.create(force_pod(o, uid, a.member, token, force=True))
        await kube.event(body, "Warning", "ForceNewCluster", a.message)
        crash.hit("after-force-new-cluster-pod", log)
    elif k is RKind.LATCH_RESTART:
        assert a.operation is not None
        await _patch(kube, o, {"operation": a.operation})
        await kube.event(body, "Normal", "QuorumRecovered", a.message)
    elif k is RKind.CREATE_POD:
        await kube.create(force_pod(o, uid, a.member, token, force=False))
        await kube.event(body, "Normal", "PodCreated", a.message)
    elif k is RKind.RESET:
        op = a.operation or {}
        restore = {"source": "Recovery", "claim": op.get("claim"), "fileName": op.get("fileName"),
                   "phase": None, "message": a.message}
        # a fresh token: new member ids and a new cluster id, even though member names restart from the lowest
        token = f"{o.cluster}-{uid[:8]}-{secrets.token_hex(4)}"
        await kube.patch_status(ns, o.cluster, {
            "clusterID": "", "clusterToken": token, "operation": None, "restore": restore,
            "recovery": {"operation": None, "quorumLostSince": None,
                         "lastRecovery": {**op, "completedAt": now_rfc3339()}},
        })
        await kube.event(body, "Warning", "ClusterRestoreFromBackup", a.message)
        return GateResult(wait, fields={"operation": None, "clusterID": "", "clusterToken": token})
    elif k is RKind.CLEAR:
        op = status.get("operation") or {}
        last = {**op, "completedAt": now_rfc3339()}
        await _patch(kube, o, {"operation": None, "quorumLostSince": None, "lastRecovery": last})
        await kube.event(body, "Normal", "QuorumRecoveryCompleted", a.message)
        return GateResult(Action(Kind.WAIT, member=a.member, reason="QuorumRecovered", message=a.message),
                          fields={"operation": None})
    return GateResult(wait, fields={"operation": None})
