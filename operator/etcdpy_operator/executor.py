"""Carry out one planned action through the adapters, with env-gated crash points after each step.

Why latching writes status itself (before anything else happens): the operation must be durable before
its first step, so that a crash right after the step finds the intent in the API server.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from etcdpy_operator import builders, restoreexec
from etcdpy_operator.etcd import EtcdClient
from etcdpy_operator.kube import Kube, now_rfc3339
from etcdpy_operator.model import Action, Kind, Observed, OpType

CRASH_ENV = "ETCDPY_OPERATOR_CRASH_AT"
CRASH_EXIT_CODE = 86
CRASH_POINTS = (
    "after-latch",
    "after-member-add",
    "after-pvc-create",
    "after-pod-create",
    "before-promote",
    "after-promote",
    "after-member-remove",
    "after-pod-delete",
    "after-pvc-delete",
    "after-leader-move",
    "mid-rolling",
)


@dataclass
class CrashPoints:
    """The crash points asked for in the environment; each fires once per process (then the test restarts it)."""

    armed: set[str] = field(default_factory=set)

    @classmethod
    def from_env(cls) -> CrashPoints:
        raw = os.environ.get(CRASH_ENV, "")
        return cls({p.strip() for p in raw.split(",") if p.strip()})

    def hit(self, point: str, log: Any = None) -> None:
        if point in self.armed:
            if log is not None:
                log.warning("crash point %s reached: exiting with %d", point, CRASH_EXIT_CODE)
            for handler in getattr(log, "handlers", []) or []:
                handler.flush()
            os._exit(CRASH_EXIT_CODE)


@dataclass
class Context:
    """What executing an action needs about the cluster being reconciled."""

    kube: Kube
    etcd: EtcdClient
    body: dict[str, Any]
    observed: Observed
    crash: CrashPoints
    log: Any

    @property
    def uid(self) -> str:
        return str(self.body["metadata"].get("uid", ""))


class ActionFailed(Exception):
    """The action could not be done now (the next reconcile retries after a back-off)."""


def _any_client_url(ctx: Context) -> str:
    """The leader's client URL when known, else any reachable member's (membership calls go there)."""
    o = ctx.observed
    leader = o.leader
    if leader is not None:
        return builders.client_url(o.spec, o.cluster, o.namespace, leader.key)
    for name, h in sorted(o.health.items()):
        if h.reachable:
            return builders.client_url(o.spec, o.cluster, o.namespace, name)
    raise ActionFailed("no etcd member answers")


def initial_cluster(o: Observed, member: str) -> dict[str, str]:
    """--initial-cluster for a Pod: etcd's member list when known (plus the member), else what we know."""
    names = {m.key for m in o.members or ()} if o.members is not None else set(o.pvcs) | set(o.pods)
    names.add(member)
    return {n: builders.peer_url(o.spec, o.cluster, o.namespace, n) for n in names if n}


async def execute(action: Action, ctx: Context) -> dict[str, Any]:
    """Run `action`; returns status fields the action itself decided (merged into the status write)."""
    o = ctx.observed
    ns, cluster = o.namespace, o.cluster
    spec = o.spec
    k = action.kind
    if k is Kind.ENSURE_OBJECTS:
        await _ensure_objects(ctx)
    elif k is Kind.LATCH:
        assert action.operation is not None
        op = action.operation
        fields: dict[str, Any] = {"operation": {**op.to_status(), "startedAt": now_rfc3339()}}
        if op.type is OpType.BOOTSTRAP and not o.cluster_token:
            fields["clusterToken"] = f"{cluster}-{ctx.uid[:8]}-{secrets.token_hex(4)}"
        await ctx.kube.patch_status(ns, cluster, fields)
        await _event(ctx, "Normal", action.reason or op.type.value, action.message)
        ctx.crash.hit("after-latch", ctx.log)
        return fields
    elif k is Kind.CLEAR:
        await ctx.kube.patch_status(ns, cluster, {"operation": None})
        return {"operation": None}
    elif k is Kind.MEMBER_ADD:
        url = builders.peer_url(spec, cluster, ns, action.member)
        added = await ctx.etcd.member_add(_any_client_url(ctx), url, learner=True)
        await _event(ctx, "Normal", "MemberAdded", f"added learner {action.member} (id {added.id:x}, {url})")
        ctx.crash.hit("after-member-add", ctx.log)
    elif k is Kind.CREATE_PVC:
        await ctx.kube.create(builders.pvc(spec, cluster, ns, ctx.uid, action.member))
        ctx.crash.hit("after-pvc-create", ctx.log)
    elif k is Kind.CREATE_POD:
        token = o.cluster_token or str((ctx.body.get("status") or {}).get("clusterToken") or "")
        if not token:
            raise ActionFailed("no cluster token in status; refusing to create a member Pod")
        if action.initial_state == "new" and (o.cluster_id or o.observed_cluster_id):
            raise ActionFailed("the cluster exists: a Pod with --initial-cluster-state=new is never created")
        body = builders.pod(
            spec, cluster, ns, ctx.uid, action.member, initial_cluster(o, action.member), action.initial_state, token
        )
        if action.initial_state == "new":  # spec.restore: the first member's data dir comes from the snapshot
            body = restoreexec.with_restore(body, ctx.body, o, action.member, token)
        await ctx.kube.create(body)
        await _event(ctx, "Normal", "PodCreated", action.message)
        ctx.crash.hit("after-pod-create", ctx.log)
        if o.operation is not None and o.operation.type is OpType.ROLL:
            ctx.crash.hit("mid-rolling", ctx.log)
    elif k is Kind.PROMOTE:
        ctx.crash.hit("before-promote", ctx.log)
        await ctx.etcd.member_promote(_any_client_url(ctx), action.member_id)
        await _event(ctx, "Normal", "MemberPromoted", f"promoted {action.member} (id {action.member_id:x})")
        ctx.crash.hit("after-promote", ctx.log)
    elif k is Kind.MOVE_LEADER:
        leader = o.leader
        if leader is None:
            raise ActionFailed("no leader to move leadership from")
        await ctx.etcd.move_leader(builders.client_url(spec, cluster, ns, leader.key), action.target_id)
        await _event(ctx, "Normal", "LeaderMoved", action.message)
        ctx.crash.hit("after-leader-move", ctx.log)
    elif k is Kind.MEMBER_REMOVE:
        await ctx.etcd.member_remove(_any_client_url(ctx), action.member_id)
        await _event(ctx, "Normal", "MemberRemoved", action.message)
        ctx.crash.hit("after-member-remove", ctx.log)
    elif k is Kind.DELETE_POD:
        await ctx.kube.delete_pod(ns, action.member)
        await _event(ctx, "Normal", "PodDeleted", action.message)
        ctx.crash.hit("after-pod-delete", ctx.log)
    elif k is Kind.DELETE_PVC:
        await ctx.kube.delete_pvc(ns, action.member)
        await _event(ctx, "Normal", "VolumeDeleted", action.message)
        ctx.crash.hit("after-pvc-delete", ctx.log)
    return {}


async def _ensure_objects(ctx: Context) -> None:
    o = ctx.observed
    ns, cluster, uid = o.namespace, o.cluster, ctx.uid
    for missing in o.missing_objects:
        if missing == "peer-service":
            await ctx.kube.create(builders.peer_svc(cluster, ns, uid))
        elif missing == "client-service":
            await ctx.kube.create(builders.client_svc(cluster, ns, uid))
        elif missing == "pdb":
            existing = await ctx.kube.get_pdb(ns, cluster)
            body = builders.pdb(cluster, ns, uid, o.spec.replicas)
            if existing is None:
                await ctx.kube.create(body)
            else:
                spec = dict(body["spec"])
                # a merge patch must clear the other budget field when switching between the two
                spec.setdefault("maxUnavailable", None)
                spec.setdefault("minAvailable", None)
                await ctx.kube.patch_pdb(ns, cluster, spec)


async def _event(ctx: Context, event_type: str, reason: str, message: str) -> None:
    ctx.log.info("%s: %s", reason, message)
    await ctx.kube.event(ctx.body, event_type, reason, message)
