"""The status written after each reconcile tells the truth, also when etcd does not answer."""

from __future__ import annotations

from dataclasses import replace

from etcdpy_operator.model import Action, Kind, Operation, OpType
from etcdpy_operator.planner import plan
from etcdpy_operator.status import build
from test_op_planner import BOOT, SPEC, world

NOW = "2026-01-01T00:00:00Z"


def _cond(status: dict, ctype: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_healthy_cluster() -> None:
    o = world()
    st = build(o, plan(o), {}, NOW)
    assert st["phase"] == "Running" and st["leader"] == "c-0"
    assert st["readyMembers"] == 3 and st["desiredMembers"] == 3 and st["currentMembers"] == 3
    assert st["learnerMembers"] == 0 and st["operation"] is None
    assert _cond(st, "Available")["status"] == "True"
    assert _cond(st, "Degraded")["status"] == "False"
    assert _cond(st, "Progressing")["status"] == "False"
    assert {m["name"] for m in st["members"]} == {"c-0", "c-1", "c-2"}
    assert all(m["ready"] and m["healthy"] and m["id"] for m in st["members"])
    assert st["lastSuccessfulReconcileTime"] == NOW
    assert st["selector"] == "app.kubernetes.io/name=etcdpy,etcd.etcdpy.io/cluster=c"


def test_etcd_unreachable_is_not_frozen() -> None:
    """No member answers: Degraded with the reason, members reported not ready, nothing stays 'good'."""
    o = replace(world(etcd=False), etcd_error="no member answers (connection refused)")
    previous = {"readyMembers": 3, "leader": "c-0", "currentMembers": 3}
    st = build(o, plan(o), previous, NOW)
    assert st["phase"] == "Degraded" and st["leader"] == "" and st["readyMembers"] == 0
    avail, degraded = _cond(st, "Available"), _cond(st, "Degraded")
    assert avail["status"] == "False" and avail["reason"] == "EtcdUnreachable"
    assert degraded["status"] == "True" and "connection refused" in degraded["message"]
    assert {m["name"] for m in st["members"]} == {"c-0", "c-1", "c-2"}
    assert not any(m["ready"] for m in st["members"])


def test_blocked_change_is_a_condition() -> None:
    o = world(spec=replace(SPEC, version="0.0.1"))
    action = plan(o)
    st = build(o, action, {}, NOW)
    degraded = _cond(st, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "VersionChangeRefused"
    assert "downgrade" in degraded["message"]


def test_operation_and_phase() -> None:
    o = world(spec=replace(SPEC, replicas=5))
    latch = plan(o)
    st = build(o, latch, {}, NOW)
    assert latch.kind is Kind.LATCH and st["phase"] == "Scaling"
    assert st["operation"]["type"] == "AddMember" and st["operation"]["member"] == "c-3"
    assert _cond(st, "Progressing")["status"] == "True"
    o = world("", "", pods="", pvcs="", etcd=False, cluster_id="", op=BOOT)
    assert build(o, plan(o), {}, NOW)["phase"] == "Creating"
    o = world(op=Operation(OpType.ROLL, member="c-1"))
    assert build(o, Action(Kind.WAIT), {}, NOW)["phase"] == "Rolling"


def test_transition_time_kept_while_unchanged() -> None:
    o = world()
    first = build(o, plan(o), {}, "2026-01-01T00:00:00Z")
    second = build(o, plan(o), first, "2026-01-01T00:05:00Z")
    assert _cond(second, "Available")["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_even_members_warned() -> None:
    o = world("c-0 c-1 c-2 c-3", spec=replace(SPEC, replicas=4))
    st = build(o, plan(o), {}, NOW)
    assert _cond(st, "EvenMembers")["status"] == "True"
