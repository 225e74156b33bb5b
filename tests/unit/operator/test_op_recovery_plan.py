"""Quorum-loss recovery planning (etcdpy_operator.recovery): never while a quorum answers; resumable steps."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from etcdpy_operator.model import EtcdMember, MemberHealth, Observed, PodObs, PvcObs, Spec
from etcdpy_operator.recovery import (
    RecoveryObserved,
    RecoveryPodObs,
    RecoverySpec,
    RKind,
    plan_recovery,
    quorum_lost,
    survivor,
)

NOW = dt.datetime(2026, 12, 3, 10, 0, 0, tzinfo=dt.UTC)
NAMES = ("c-0", "c-1", "c-2")
MEMBERS = tuple(EtcdMember(i + 1, n, (f"http://{n}.c-peers.ns.svc:2380",), (f"http://{n}:2379",))
                for i, n in enumerate(NAMES))


def observed(answering: dict[str, int], leader: int = 0, members: tuple[EtcdMember, ...] | None = MEMBERS,
             pods: tuple[str, ...] = NAMES, pvcs: tuple[str, ...] = NAMES) -> Observed:
    health = {n: MemberHealth(True, member_id=NAMES.index(n) + 1, leader_id=leader, raft_index=idx)
              for n, idx in answering.items()}
    return Observed("c", "ns", 1, Spec(replicas=3), cluster_id="abc", members=members, health=health,
                    leader_id=leader, pods={p: PodObs(p, "Running", ready=p in answering) for p in pods},
                    pvcs={p: PvcObs(p, "Bound") for p in pvcs})


def rec(o: Observed, status: dict[str, Any] | None = None, mode: str = "Automatic",
        pods: dict[str, RecoveryPodObs] | None = None, now: dt.datetime = NOW) -> RecoveryObserved:
    rp = pods if pods is not None else {p: RecoveryPodObs(p, ready=True) for p in o.pods}
    return RecoveryObserved(o, RecoverySpec(mode=mode, timeout="60s"), status or {}, rp, now)


def test_quorum_lost_only_when_a_majority_does_not_answer() -> None:
    assert quorum_lost(observed({"c-0": 5, "c-1": 5, "c-2": 5}, leader=1)) == (False, "")
    assert quorum_lost(observed({"c-0": 5, "c-1": 5}))[0] is False  # two of three answer: electing, not lost
    lost, why = quorum_lost(observed({"c-1": 7}))
    assert lost and "2 of 3 voters lost (c-0, c-2)" in why
    assert quorum_lost(observed({}, members=None))[0] is False  # nothing answers: not this path
    assert survivor(observed({"c-0": 5, "c-2": 9})) == "c-2"
    assert survivor(observed({"c-0": 9, "c-2": 9})) == "c-0"


LOST = observed({"c-1": 7})
SINCE = {"quorumLostSince": "2026-12-03T09:58:00Z"}
OP = {"operation": {"survivor": "c-1", "step": "ForceNewCluster", "startedAt": "2026-12-03T09:59:00Z"}}
ALONE = observed({"c-1": 9}, leader=2, members=(MEMBERS[1],), pods=("c-1",), pvcs=("c-1",))


@pytest.mark.parametrize(
    ("name", "r", "kind", "member"),
    [
        ("healthy", rec(observed({"c-0": 1, "c-1": 1, "c-2": 1}, leader=1)), RKind.PASS, ""),
        ("quorum back", rec(observed({"c-0": 1, "c-1": 1}), SINCE), RKind.CLEAR_MARK, ""),
        ("lost: mark", rec(LOST), RKind.MARK_LOST, ""),
        ("lost, manual", rec(LOST, SINCE, mode="Manual"), RKind.REPORT, "c-1"),
        ("lost, within timeout", rec(LOST, {"quorumLostSince": "2026-12-03T09:59:30Z"}), RKind.WAIT, ""),
        ("lost, timeout passed", rec(LOST, SINCE), RKind.LATCH, "c-1"),
        ("step 1: lost Pods go", rec(LOST, OP), RKind.DELETE_POD, "c-0"),
        ("step 1: lost volumes go", rec(observed({"c-1": 7}, pods=("c-1",)), OP), RKind.DELETE_PVC, "c-0"),
        ("step 2: stop the survivor", rec(observed({"c-1": 7}, pods=("c-1",), pvcs=("c-1",)), OP),
         RKind.DELETE_POD, "c-1"),
        ("step 2: force Pod", rec(observed({}, members=None, pods=(), pvcs=("c-1",)), OP, pods={}),
         RKind.CREATE_FORCE_POD, "c-1"),
        ("step 2: waiting", rec(observed({"c-1": 7}, pods=("c-1",), pvcs=("c-1",)), OP,
                                pods={"c-1": RecoveryPodObs("c-1", force=True)}), RKind.WAIT, "c-1"),
        ("step 3: latch restart", rec(ALONE, OP, pods={"c-1": RecoveryPodObs("c-1", force=True, ready=True)}),
         RKind.LATCH_RESTART, "c-1"),
        ("step 3: stop force Pod", rec(ALONE, {"operation": {**OP["operation"], "step": "Restarting"}},
                                       pods={"c-1": RecoveryPodObs("c-1", force=True, ready=True)}),
         RKind.DELETE_POD, "c-1"),
        ("step 3: plain Pod", rec(ALONE, {"operation": {**OP["operation"], "step": "Restarting"}}, pods={}),
         RKind.CREATE_POD, "c-1"),
        ("done", rec(ALONE, {"operation": {**OP["operation"], "step": "Restarting"}},
                     pods={"c-1": RecoveryPodObs("c-1", ready=True)}), RKind.CLEAR, "c-1"),
    ],
)
def test_plan_recovery(name: str, r: RecoveryObserved, kind: RKind, member: str) -> None:
    a = plan_recovery(r)
    assert (a.kind, a.member) == (kind, member), (name, a)


def test_manual_report_names_the_field_to_set() -> None:
    a = plan_recovery(rec(LOST, SINCE, mode="Manual"))
    assert "spec.recovery.mode: Automatic" in a.message and "c-1" in a.message


def test_latch_records_the_survivor_once() -> None:
    a = plan_recovery(rec(LOST, SINCE))
    assert a.operation is not None and a.operation["survivor"] == "c-1" and a.operation["raftIndex"] == 7
    # once latched, a different member answering better does not change the survivor
    b = plan_recovery(rec(observed({"c-0": 99}, pods=("c-0", "c-1")), OP))
    assert (b.kind, b.member) == (RKind.DELETE_POD, "c-0")


BACKUP = {"name": "c-20261203T095000Z-r77.db", "claim": "c-backups", "revision": 77, "time": "t"}
GONE = observed({}, members=None, pods=(), pvcs=())


def test_total_loss_manual_names_the_newest_backup() -> None:
    assert plan_recovery(RecoveryObserved(GONE, RecoverySpec(), {}, {}, NOW, BACKUP)).kind is RKind.MARK_LOST
    a = plan_recovery(RecoveryObserved(GONE, RecoverySpec(mode="Manual"), SINCE, {}, NOW, BACKUP))
    assert a.kind is RKind.REPORT and a.reason == "ClusterLost" and "fileName: c-20261203T095000Z-r77.db" in a.message
    b = plan_recovery(RecoveryObserved(GONE, RecoverySpec(mode="Automatic"), SINCE, {}, NOW, None))
    assert b.kind is RKind.REPORT and "no verified backup" in b.message
    # a volume left: not a total loss (its Pod may come back)
    assert plan_recovery(rec(observed({}, members=None, pods=(), pvcs=("c-1",)), pods={})).kind is RKind.PASS


def test_total_loss_automatic_restores_the_newest_backup() -> None:
    a = plan_recovery(RecoveryObserved(GONE, RecoverySpec(mode="Automatic"), SINCE, {}, NOW, BACKUP))
    assert a.kind is RKind.LATCH and a.operation is not None
    assert a.operation["type"] == "Restore" and a.operation["fileName"] == BACKUP["name"]
    st = {"operation": a.operation}
    left = observed({}, members=None, pods=("c-0",), pvcs=())
    assert plan_recovery(RecoveryObserved(left, RecoverySpec(mode="Automatic"), st, {"c-0": RecoveryPodObs("c-0")},
                                          NOW, BACKUP)).kind is RKind.DELETE_POD
    assert plan_recovery(RecoveryObserved(GONE, RecoverySpec(mode="Automatic"), st, {}, NOW, BACKUP)).kind is RKind.RESET
