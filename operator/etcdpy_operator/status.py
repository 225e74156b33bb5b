"""The EtcdCluster status written after every reconcile: what was seen, what is under way, what is wrong.

Why it is rebuilt from scratch each time (keeping only transition times): a status derived from the
current observation cannot freeze at the last good value when etcd stops answering.
"""

from __future__ import annotations

from typing import Any

from etcdpy_operator import builders
from etcdpy_operator.model import Action, Kind, Observed, OpType, quorum

PHASE_BY_OP = {
    OpType.BOOTSTRAP: "Creating",
    OpType.ADD: "Scaling",
    OpType.REMOVE: "Scaling",
    OpType.REPLACE: "Replacing",
    OpType.ROLL: "Rolling",
}


def members_status(o: Observed) -> list[dict[str, Any]]:
    """One entry per member etcd lists (or, when etcd is silent, per member Pod/volume we know of)."""
    out = []
    listed = {m.key: m for m in o.members or ()}
    names = sorted(set(listed) | (set(o.pods) | set(o.pvcs) if o.members is None else set()))
    for name in names:
        m = listed.get(name)
        pod = o.pods.get(name)
        h = o.health_of(name)
        entry: dict[str, Any] = {
            "name": name,
            "peerURL": builders.peer_url(o.spec, o.cluster, o.namespace, name),
            "clientURL": builders.client_url(o.spec, o.cluster, o.namespace, name),
            "ready": bool(pod and pod.ready and h.reachable),
            "healthy": o.is_healthy(name),
            "podPhase": pod.phase if pod else "Missing",
            "restarts": pod.restarts if pod else 0,
        }
        if m is not None:
            entry.update(id=f"{m.id:x}", learner=m.is_learner, started=m.started)
            if m.peer_urls:
                entry["peerURL"] = m.peer_urls[0]
            if m.client_urls:
                entry["clientURL"] = m.client_urls[0]
        if h.reachable:
            entry.update(dbSize=h.db_size, raftIndex=h.raft_index)
        if pod is not None and pod.version:
            entry["version"] = pod.version  # the etcdpy release it runs (Status only knows the etcd API version)
        message = (pod.message if pod and pod.crash_looping else "") or ("" if h.reachable else h.error)
        if message:
            entry["message"] = message[:300]
        out.append(entry)
    return out


def _condition(
    ctype: str, ok: bool, reason: str, message: str, previous: dict[str, dict[str, Any]], now: str, gen: int
) -> dict[str, Any]:
    value = "True" if ok else "False"
    old = previous.get(ctype)
    since = old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") else now
    return {
        "type": ctype,
        "status": value,
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": since,
        "observedGeneration": gen,
    }


def build(
    o: Observed, action: Action, previous: dict[str, Any], now: str, error: str = "", succeeded: bool = True
) -> dict[str, Any]:
    """The full status for this reconcile (`error`: the executor's failure, if any)."""
    prev_conditions = {c.get("type", ""): c for c in previous.get("conditions") or []}
    voters = o.voters()
    healthy = o.healthy_voters()
    has_leader = o.leader is not None
    available = has_leader and bool(voters) and len(healthy) >= quorum(len(voters))
    members = members_status(o)
    op = action.operation if action.kind is Kind.LATCH else o.operation
    if action.kind is Kind.CLEAR:
        op = None
    established = bool(o.cluster_id or o.observed_cluster_id)

    if not available:
        if o.members is None:
            avail_reason, avail_msg = "EtcdUnreachable", o.etcd_error or "etcd does not answer"
        elif not has_leader:
            avail_reason, avail_msg = "NoLeader", "no member reports a leader"
        else:
            avail_reason, avail_msg = "QuorumLost", f"{len(healthy)} of {len(voters)} voters healthy"
    else:
        avail_reason, avail_msg = "QuorumHealthy", f"{len(healthy)} of {len(voters)} voters healthy"

    degraded_reason, degraded_msg = "", ""
    if error:
        degraded_reason, degraded_msg = "ReconcileError", error
    elif action.kind is Kind.BLOCKED:
        degraded_reason, degraded_msg = action.reason, action.message
    elif established and o.members is None:
        degraded_reason, degraded_msg = "EtcdUnreachable", o.etcd_error or "etcd does not answer"
    elif established and not has_leader:
        degraded_reason, degraded_msg = "NoLeader", "no member reports a leader"
    elif established and (unhealthy := [m["name"] for m in members if not m["healthy"]]):
        degraded_reason, degraded_msg = "MembersUnhealthy", f"unhealthy: {', '.join(unhealthy)}"

    progressing = op is not None or action.acts
    if op is not None:
        prog_reason, prog_msg = op.type.value, f"{op.type.value} {op.member}" + (
            f" (replacing {op.replaces})" if op.replaces else ""
        )
    elif action.acts:
        prog_reason, prog_msg = action.reason or action.kind.value, action.message
    else:
        prog_reason, prog_msg = (action.reason or "Stable"), action.message or "nothing to do"

    if o.spec.paused:
        phase = "Paused"
    elif op is not None:
        phase = PHASE_BY_OP[op.type]
    elif not established:
        phase = "Pending"
    elif degraded_reason or not available:
        phase = "Degraded"
    else:
        phase = "Running"

    gen = o.generation
    conditions = [
        _condition("Available", available, avail_reason, avail_msg, prev_conditions, now, gen),
        _condition("Progressing", progressing, prog_reason, prog_msg, prev_conditions, now, gen),
        _condition(
            "Degraded",
            bool(degraded_reason),
            degraded_reason or "AllHealthy",
            degraded_msg or "every member is healthy",
            prev_conditions,
            now,
            gen,
        ),
    ]
    if o.spec.replicas % 2 == 0:
        conditions.append(
            _condition(
                "EvenMembers",
                True,
                "EvenReplicas",
                f"{o.spec.replicas} members tolerate no more failures than {o.spec.replicas - 1}",
                prev_conditions,
                now,
                gen,
            )
        )
    pod_versions = {p.version for p in o.pods.values() if p.version}
    leader = o.leader
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": gen,
        "clusterID": o.cluster_id or o.observed_cluster_id,
        "clusterToken": o.cluster_token or previous.get("clusterToken", ""),
        "leader": leader.key if leader else "",
        "version": pod_versions.pop() if len(pod_versions) == 1 else "",
        "selector": builders.selector_string(o.cluster),
        "currentMembers": len(o.members) if o.members is not None else int(previous.get("currentMembers") or 0),
        "readyMembers": sum(1 for m in members if m["ready"] and not m.get("learner")),
        "desiredMembers": o.spec.replicas,
        "learnerMembers": sum(1 for m in members if m.get("learner")),
        "members": members,
        "operation": op.to_status() if op is not None else None,
        "conditions": conditions,
        "lastReconcileTime": now,
    }
    if succeeded and not error:
        status["lastSuccessfulReconcileTime"] = now
    return status
