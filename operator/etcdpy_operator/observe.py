"""Observe one cluster: its Kubernetes objects and what etcd itself says, into an `Observed`.

Why etcd is asked member by member: the member list must come from the leader (a partitioned member may
serve a stale list, and orphan clean-up trusts it), and each member's own Status is the only truthful
source for its health, learner state and raft index. Every call has a deadline, so an unreachable member
or a whole unreachable cluster still yields an Observed (and a truthful status).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from etcdpy_operator import builders
from etcdpy_operator.etcd import ClientTLS, EtcdClient, EtcdError
from etcdpy_operator.kube import Kube
from etcdpy_operator.model import (
    ANN_SPEC_HASH,
    ANN_STATE,
    ANN_VERSION,
    LABEL_MEMBER,
    EtcdMember,
    MemberHealth,
    Observed,
    Operation,
    PodObs,
    PvcObs,
    Spec,
    client_service,
    peer_service,
)

# A container that failed this many restarts in a row crash-loops; one kill -9 (or OOM kill) is not that.
CRASH_LOOP_RESTARTS = 2


@dataclass(frozen=True)
class Settings:
    """Process-wide operator settings (from flags and environment)."""

    default_version: str
    image_repository: str
    etcd_timeout: float = 2.0


def pod_obs(body: dict[str, Any]) -> PodObs:
    """The planner's view of a member Pod, including whether its container crash-loops and why."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    ann = meta.get("annotations") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    statuses = [c for c in status.get("containerStatuses") or [] if c.get("name") == "etcd"]
    restarts, crash_looping, message = 0, False, ""
    if statuses:
        cs = statuses[0]
        restarts = int(cs.get("restartCount") or 0)
        state = cs.get("state") or {}
        last = (cs.get("lastState") or {}).get("terminated") or state.get("terminated") or {}
        waiting = state.get("waiting") or {}
        failed_exit = bool(last) and int(last.get("exitCode") or 0) != 0
        running = "running" in state
        crash_looping = (
            restarts >= CRASH_LOOP_RESTARTS
            and not ready
            and (waiting.get("reason") == "CrashLoopBackOff" or (failed_exit and not running))
        )
        if failed_exit:
            lines = (last.get("message") or last.get("reason") or "").strip().splitlines()
            message = f"exit {last.get('exitCode')}: {lines[-1] if lines else ''}".strip()
    return PodObs(
        name=meta.get("name", ""),
        phase=status.get("phase") or "Pending",
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        spec_hash=ann.get(ANN_SPEC_HASH, ""),
        version=ann.get(ANN_VERSION, ""),
        initial_state=ann.get(ANN_STATE, "existing"),
        restarts=restarts,
        crash_looping=crash_looping,
        message=message[:300],
    )


def pvc_obs(body: dict[str, Any]) -> PvcObs:
    meta = body.get("metadata") or {}
    return PvcObs(
        name=meta.get("name", ""),
        phase=(body.get("status") or {}).get("phase") or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
    )


def _member_key(body: dict[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return str((meta.get("labels") or {}).get(LABEL_MEMBER) or meta.get("name", ""))


async def missing_objects(kube: Kube, cluster: str, namespace: str, replicas: int) -> tuple[str, ...]:
    """Which of the peer Service, client Service and PDB are absent or out of date."""
    peer, client, pdb = await asyncio.gather(
        kube.get_service(namespace, peer_service(cluster)),
        kube.get_service(namespace, client_service(cluster)),
        kube.get_pdb(namespace, cluster),
    )
    out = []
    if peer is None:
        out.append("peer-service")
    if client is None:
        out.append("client-service")
    want = builders.pdb_budget(replicas)
    if pdb is None or any((pdb.get("spec") or {}).get(k) != v for k, v in want.items()):
        out.append("pdb")
    return tuple(out)


async def read_tls(kube: Kube, namespace: str, spec: Spec) -> tuple[ClientTLS | None, str]:
    """The operator's client TLS material and a message when a Secret is missing or incomplete."""
    tls: ClientTLS | None = None
    for role, secret in (("client", spec.client_tls_secret), ("peer", spec.peer_tls_secret)):
        if not secret:
            continue
        data = await kube.read_secret(namespace, secret)
        if data is None:
            return None, f"{role} TLS Secret {secret!r} not found"
        missing = [k for k in ("tls.crt", "tls.key", "ca.crt") if not data.get(k)]
        if missing:
            return None, f"{role} TLS Secret {secret!r} lacks {', '.join(missing)}"
        if role == "client":
            tls = ClientTLS(ca=data["ca.crt"], cert=data["tls.crt"], key=data["tls.key"])
    return tls, ""


async def observe_etcd(
    client: EtcdClient, urls: dict[str, str]
) -> tuple[dict[str, MemberHealth], tuple[EtcdMember, ...] | None, bool, int, int, str]:
    """Status of every candidate member, then the member list from the leader (else any member).

    Returns (health by member name, members or None, list came from the leader, leader id, cluster id,
    error text).
    """
    names = sorted(urls)
    results = await asyncio.gather(*(client.status(urls[n]) for n in names))
    health = dict(zip(names, results, strict=True))
    leader_id = _leader(health)
    leader_name = next((n for n, h in health.items() if h.reachable and h.member_id == leader_id), "")
    order = ([leader_name] if leader_name else []) + [n for n in names if n != leader_name and health[n].reachable]
    members: tuple[EtcdMember, ...] | None = None
    from_leader, cluster_id, error = False, 0, ""
    for name in order:
        try:
            cluster_id, members = await client.member_list(urls[name], linearizable=bool(leader_id))
            from_leader = bool(leader_id) and name == leader_name
            break
        except EtcdError as e:
            error = f"member list from {name}: {e.message or e.code}"
    if members is None and not error:
        reasons = sorted({h.error for h in health.values() if h.error})
        error = "no member answers" + (f" ({'; '.join(reasons)[:300]})" if reasons else "")
    return health, members, from_leader, leader_id, cluster_id, error


def _leader(health: dict[str, MemberHealth]) -> int:
    """The leader id most members agree on, preferring a member that says it is the leader itself."""
    for h in health.values():
        if h.reachable and h.leader_id and h.member_id == h.leader_id:
            return h.leader_id
    votes: dict[int, int] = {}
    for h in health.values():
        if h.reachable and h.leader_id:
            votes[h.leader_id] = votes.get(h.leader_id, 0) + 1
    return max(votes, key=lambda k: votes[k]) if votes else 0


async def observe(kube: Kube, body: dict[str, Any], settings: Settings) -> tuple[Observed, ClientTLS | None]:
    """Everything the planner needs about one EtcdCluster (body = the object as read just now)."""
    meta = body["metadata"]
    cluster, namespace = meta["name"], meta["namespace"]
    status = body.get("status") or {}
    spec = Spec.from_body(body.get("spec") or {}, settings.default_version, settings.image_repository)
    pods_raw, pvcs_raw, missing = await asyncio.gather(
        kube.list_pods(namespace, cluster),
        kube.list_pvcs(namespace, cluster),
        missing_objects(kube, cluster, namespace, spec.replicas),
    )
    pods = {_member_key(p): pod_obs(p) for p in pods_raw}
    pvcs = {_member_key(p): pvc_obs(p) for p in pvcs_raw}
    tls, tls_error = await read_tls(kube, namespace, spec)
    known = set(pods) | {m.get("name", "") for m in status.get("members") or []}
    operation = Operation.from_status(status.get("operation"))
    if operation is not None:
        known.add(operation.member)
    known.discard("")
    client = EtcdClient(tls, timeout=settings.etcd_timeout)
    urls = {n: builders.client_url(spec, cluster, namespace, n) for n in known}
    health, members, from_leader, leader_id, cluster_id, etcd_error = await observe_etcd(client, urls)
    if members is not None:
        extra = {m.key: builders.client_url(spec, cluster, namespace, m.key) for m in members if m.key not in urls}
        if extra:
            more = await asyncio.gather(*(client.status(u) for u in extra.values()))
            health.update(zip(extra, more, strict=True))
    if tls_error and not etcd_error:
        etcd_error = tls_error
    observed = Observed(
        cluster=cluster,
        namespace=namespace,
        generation=int(meta.get("generation") or 0),
        spec=spec,
        operation=operation,
        cluster_id=status.get("clusterID", ""),
        observed_cluster_id=f"{cluster_id:x}" if cluster_id else "",
        cluster_token=status.get("clusterToken", ""),
        members=members,
        members_from_leader=from_leader,
        health=health,
        leader_id=leader_id,
        pods=pods,
        pvcs=pvcs,
        missing_objects=missing,
        tls_error=tls_error,
        etcd_error=etcd_error,
    )
    return observed, tls
