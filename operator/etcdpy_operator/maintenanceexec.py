"""NOSPACE healing and scheduled defragmentation, the I/O side: alarms, compaction, defrag, leader moves."""

from __future__ import annotations

import datetime as dt
from typing import Any

from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

from etcdpy_operator import builders
from etcdpy_operator.etcd import EtcdClient, EtcdError
from etcdpy_operator.kube import Kube, now_rfc3339
from etcdpy_operator.maintenance import MaintAction, MaintenanceSpec, MaintObserved, MKind, plan_maintenance
from etcdpy_operator.model import Action, Kind, Observed


async def _alarms_and_revision(client: EtcdClient, url: str) -> tuple[bool, int]:
    """(a NOSPACE alarm is active, the current revision) as one member sees them."""
    alarms = await client._call(url, rpc_pb2_grpc.MaintenanceStub, "Alarm",
                                rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET))
    nospace = any(a.alarm == rpc_pb2.NOSPACE for a in alarms.alarms)
    st = await client._call(url, rpc_pb2_grpc.MaintenanceStub, "Status", rpc_pb2.StatusRequest())
    return nospace, int(st.header.revision)


def _url(o: Observed, member: str) -> str:
    return builders.client_url(o.spec, o.cluster, o.namespace, member)


async def gate(kube: Kube, body: dict[str, Any], o: Observed, client: EtcdClient, log: Any,
               metrics: Any) -> Action | None:
    """One maintenance step; None lets the member planner act. Only steps with an operation in flight gate."""
    spec = MaintenanceSpec.from_body(body.get("spec") or {})
    status = dict((body.get("status") or {}).get("maintenance") or {})
    if not status.get("operation") and not spec.heal_nospace and not spec.defrag_schedule:
        return None
    asked = [n for n, h in sorted(o.health.items(), key=lambda x: x[1].member_id != o.leader_id) if h.reachable]
    if not asked:
        return None
    try:
        nospace, revision = await _alarms_and_revision(client, _url(o, asked[0]))
    except EtcdError as e:
        log.warning("maintenance: cannot read alarms from %s: %s", asked[0], e)
        return None
    m = MaintObserved(o, spec, status, nospace, revision, dt.datetime.now(dt.UTC))
    a = plan_maintenance(m)
    if a.kind is MKind.PASS:
        return None
    if a.kind is not MKind.WAIT:
        log.info("maintenance %s %s: %s", a.kind.value, a.member or "-", a.message)
        if metrics is not None:
            metrics.recovery_steps.labels(o.namespace, o.cluster, a.kind.value).inc()
    try:
        await _execute(kube, body, o, client, a)
    except EtcdError as e:
        msg = f"{a.kind.value} {a.member}: {e}"
        await kube.event(body, "Warning", "MaintenanceStepFailed", msg)
        return Action(Kind.WAIT, reason="MaintenanceRetry", message=msg)
    if a.kind is MKind.SET_NEXT:
        return None
    return Action(Kind.WAIT, member=a.member, reason="Maintenance", message=a.message)


async def _patch(kube: Kube, o: Observed, fields: dict[str, Any]) -> None:
    await kube.patch_status(o.namespace, o.cluster, {"maintenance": fields})


async def _execute(kube: Kube, body: dict[str, Any], o: Observed, client: EtcdClient, a: MaintAction) -> None:
    leader = o.leader
    leader_url = _url(o, leader.key) if leader is not None else ""
    k = a.kind
    if k is MKind.SET_NEXT:
        await _patch(kube, o, {"nextDefragTime": a.next_defrag})
    elif k is MKind.LATCH:
        fields: dict[str, Any] = {"operation": a.operation}
        if a.next_defrag:
            fields["nextDefragTime"] = a.next_defrag
        await _patch(kube, o, fields)
        reason = "NoSpaceHealing" if (a.operation or {}).get("type") == "NoSpace" else "DefragStarted"
        await kube.event(body, "Warning" if reason == "NoSpaceHealing" else "Normal", reason, a.message)
    elif k is MKind.COMPACT:
        await client._call(leader_url, rpc_pb2_grpc.KVStub, "Compact",
                           rpc_pb2.CompactionRequest(revision=a.revision, physical=True), timeout=120)
        await _patch(kube, o, {"operation": a.operation})
        await kube.event(body, "Normal", "Compacted", a.message)
    elif k is MKind.MOVE_LEADER:
        await client.move_leader(leader_url, a.target_id)
        await kube.event(body, "Normal", "LeaderMoved", a.message)
    elif k is MKind.DEFRAG:
        await client._call(_url(o, a.member), rpc_pb2_grpc.MaintenanceStub, "Defragment",
                           rpc_pb2.DefragmentRequest(), timeout=300)
        await _patch(kube, o, {"operation": a.operation})
        await kube.event(body, "Normal", "Defragmented", a.message)
    elif k is MKind.DISARM:
        # as `etcdctl alarm disarm`: deactivate each member's NOSPACE alarm by its member id
        got = await client._call(leader_url, rpc_pb2_grpc.MaintenanceStub, "Alarm",
                                 rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET))
        for alarm in got.alarms:
            if alarm.alarm == rpc_pb2.NOSPACE:
                await client._call(leader_url, rpc_pb2_grpc.MaintenanceStub, "Alarm", rpc_pb2.AlarmRequest(
                    action=rpc_pb2.AlarmRequest.DEACTIVATE, memberID=alarm.memberID, alarm=rpc_pb2.NOSPACE))
        await kube.event(body, "Normal", "NoSpaceDisarmed", a.message)
    elif k is MKind.CLEAR:
        op = (body.get("status") or {}).get("maintenance", {}).get("operation") or {}
        key = "lastNoSpaceHealing" if op.get("type") == "NoSpace" else "lastDefrag"
        await _patch(kube, o, {"operation": None, key: {**op, "completedAt": now_rfc3339()}})
        await kube.event(body, "Normal", "MaintenanceCompleted", a.message)
