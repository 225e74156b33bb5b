"""NOSPACE healing and scheduled defragmentation planning: compact, followers first, leader moved then last."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from etcdpy_operator.maintenance import MaintenanceSpec, MaintObserved, MKind, plan_maintenance
from etcdpy_operator.model import EtcdMember, MemberHealth, Observed, Operation, OpType, PodObs, Spec

NOW = dt.datetime(2026, 12, 3, 10, 0, 0, tzinfo=dt.UTC)
NAMES = ("c-0", "c-1", "c-2")
MEMBERS = tuple(EtcdMember(i + 1, n, (f"http://{n}:2380",), (f"http://{n}:2379",)) for i, n in enumerate(NAMES))


def observed(leader: int = 1, unhealthy: tuple[str, ...] = (), operation: Operation | None = None) -> Observed:
    health = {n: MemberHealth(True, member_id=i + 1, leader_id=leader, errors=("x",) if n in unhealthy else ())
              for i, n in enumerate(NAMES)}
    return Observed("c", "ns", 1, Spec(), cluster_id="a", members=MEMBERS, members_from_leader=True, health=health,
                    leader_id=leader, pods={n: PodObs(n, "Running", ready=True) for n in NAMES}, operation=operation)


def maint(status: dict[str, Any] | None = None, nospace: bool = False, o: Observed | None = None,
          spec: MaintenanceSpec | None = None, revision: int = 5000, now: dt.datetime = NOW) -> MaintObserved:
    return MaintObserved(o or observed(), spec or MaintenanceSpec(), status or {}, nospace, revision, now)


def op(step: str, done: list[str], kind: str = "NoSpace") -> dict[str, Any]:
    return {"operation": {"type": kind, "step": step, "done": done, "startedAt": "x"}}


@pytest.mark.parametrize(
    ("name", "m", "kind", "member"),
    [
        ("nothing", maint(), MKind.PASS, ""),
        ("nospace: latch", maint(nospace=True), MKind.LATCH, ""),
        ("nospace, healing off", maint(nospace=True, spec=MaintenanceSpec(heal_nospace=False)), MKind.PASS, ""),
        ("nospace during a membership change", maint(nospace=True, o=observed(
            operation=Operation(OpType.ADD, "c-3"))), MKind.PASS, ""),
        ("compact", maint(op("Compact", []), nospace=True), MKind.COMPACT, ""),
        ("first follower", maint(op("Defrag", []), nospace=True), MKind.DEFRAG, "c-1"),
        ("second follower", maint(op("Defrag", ["c-1"]), nospace=True), MKind.DEFRAG, "c-2"),
        ("leader moved first", maint(op("Defrag", ["c-1", "c-2"]), nospace=True), MKind.MOVE_LEADER, "c-0"),
        ("old leader last", maint(op("Defrag", ["c-1", "c-2"]), nospace=True, o=observed(leader=2)),
         MKind.DEFRAG, "c-0"),
        ("disarm", maint(op("Defrag", list(NAMES)), nospace=True), MKind.DISARM, ""),
        ("clear", maint(op("Defrag", list(NAMES))), MKind.CLEAR, ""),
        ("no leader", maint(op("Defrag", []), o=observed(leader=0)), MKind.WAIT, ""),
        ("schedule stored", maint(spec=MaintenanceSpec(defrag_schedule="@daily")), MKind.SET_NEXT, ""),
        ("schedule due", maint({"nextDefragTime": "2026-12-03T09:00:00Z"},
                               spec=MaintenanceSpec(defrag_schedule="@daily")), MKind.LATCH, ""),
        ("schedule due, a member unhealthy", maint({"nextDefragTime": "2026-12-03T09:00:00Z"},
                                                   spec=MaintenanceSpec(defrag_schedule="@daily"),
                                                   o=observed(unhealthy=("c-2",))), MKind.PASS, ""),
        ("scheduled defrag pauses when unhealthy", maint(op("Defrag", [], "Defrag"), o=observed(unhealthy=("c-2",))),
         MKind.WAIT, ""),
    ],
)
def test_plan_maintenance(name: str, m: MaintObserved, kind: MKind, member: str) -> None:
    a = plan_maintenance(m)
    assert (a.kind, a.member) == (kind, member), (name, a)


def test_compaction_keeps_the_configured_history() -> None:
    a = plan_maintenance(maint(op("Compact", []), nospace=True, spec=MaintenanceSpec(keep_revisions=300)))
    assert a.revision == 4700 and a.operation is not None and a.operation["step"] == "Defrag"
    b = plan_maintenance(maint(op("Compact", []), nospace=True, revision=100))
    assert b.kind is MKind.LATCH and b.operation is not None and b.operation["step"] == "Defrag"


def test_leader_goes_to_a_defragmented_follower() -> None:
    a = plan_maintenance(maint(op("Defrag", ["c-1", "c-2"]), nospace=True))
    assert a.target_id in (2, 3)
    d = plan_maintenance(maint(op("Defrag", ["c-1"]), nospace=True))
    assert d.operation is not None and d.operation["done"] == ["c-1", "c-2"]
