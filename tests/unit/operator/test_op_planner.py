"""The planner, table-driven: observed state -> the one next action.

Every crash point of the operator leaves a state that is one of these rows (named after the crash point),
so "the operator resumes" reduces to "the planner picks the next step from that state". Every quorum guard
has a row where it holds and one where it blocks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from etcdpy_operator.model import (
    Action,
    EtcdMember,
    Kind,
    MemberHealth,
    Observed,
    Operation,
    OpType,
    PodObs,
    PvcObs,
    Spec,
)
from etcdpy_operator.planner import plan

C = "c"
SPEC = Spec(replicas=3, version="0.1.0", image="etcdpy:0.1.0")
HASH = SPEC.pod_hash()


def mid(name: str) -> int:
    return 0x100 + int(name.rsplit("-", 1)[1])


def world(
    members: str = "c-0 c-1 c-2",
    leader: str = "c-0",
    *,
    unhealthy: str = "",
    pods: str | None = None,
    pvcs: str | None = None,
    pod: dict[str, dict[str, Any]] | None = None,
    spec: Spec = SPEC,
    op: Operation | None = None,
    etcd: bool = True,
    from_leader: bool = True,
    cluster_id: str = "abc",
    index: dict[str, int] | None = None,
    missing: tuple[str, ...] = (),
    tls_error: str = "",
) -> Observed:
    """A cluster in a given state. Member tokens: `c-1` voter, `c-1*` learner, `c-1?` unstarted learner."""
    ems: list[EtcdMember] = []
    for tok in members.split():
        name = tok.rstrip("*?")
        started = not tok.endswith("?")
        ems.append(
            EtcdMember(
                id=mid(name),
                name=name if started else "",
                peer_urls=(f"http://{name}.c-peers.ns.svc:2380",),
                client_urls=(f"http://{name}.c-peers.ns.svc:2379",) if started else (),
                is_learner=tok.endswith(("*", "?")),
            )
        )
    names = [m.key for m in ems]
    pod_names = names if pods is None else pods.split()
    pvc_names = names if pvcs is None else pvcs.split()
    bad = set(unhealthy.split())
    pod_over = pod or {}
    pods_obs = {
        n: PodObs(
            **{
                "name": n,
                "phase": "Running",
                "ready": n not in bad,
                "spec_hash": HASH,
                "version": "0.1.0",
                **pod_over.get(n, {}),
            }
        )
        for n in pod_names
    }
    leader_id = mid(leader) if leader else 0
    idx = index or {}
    health = {
        n: MemberHealth(
            reachable=True,
            member_id=mid(n),
            leader_id=leader_id,
            raft_index=idx.get(n, 100),
            raft_applied_index=idx.get(n, 100),
        )
        for n in names
        if n in pods_obs and n not in bad
    }
    return Observed(
        cluster=C,
        namespace="ns",
        generation=1,
        spec=spec,
        operation=op,
        cluster_id=cluster_id,
        cluster_token="tok",
        members=tuple(ems) if etcd else None,
        members_from_leader=from_leader and etcd and bool(leader),
        health=health if etcd else {},
        leader_id=leader_id if etcd else 0,
        pods=pods_obs,
        pvcs={n: PvcObs(name=n, phase="Bound") for n in pvc_names},
        missing_objects=missing,
        tls_error=tls_error,
    )


def op(t: OpType, member: str, **kw: Any) -> Operation:
    return Operation(t, member=member, generation=1, **kw)


BOOT = op(OpType.BOOTSTRAP, "c-0")
ADD3 = op(OpType.ADD, "c-3")
REPLACE1 = op(OpType.REPLACE, "c-3", replaces="c-1")
CRASHLOOP = {"crash_looping": True, "ready": False, "restarts": 5, "message": "exit 1: corrupt wal"}
S1 = replace(SPEC, replicas=1)
S5 = replace(SPEC, replicas=5)
S2 = replace(SPEC, replicas=2)
V02 = replace(SPEC, version="0.2.0", image="etcdpy:0.2.0")

# (id, observed, kind, member, extra checks on the action)
CASES: list[tuple[str, Observed, Kind, str, dict[str, Any]]] = [
    # -- bootstrap
    ("fresh-cluster-bootstraps",
     world("", "", pods="", pvcs="", etcd=False, cluster_id=""), Kind.LATCH, "c-0", {"op": OpType.BOOTSTRAP}),
    ("after-latch:bootstrap-creates-pvc",
     world("", "", pods="", pvcs="", etcd=False, cluster_id="", op=BOOT), Kind.CREATE_PVC, "c-0", {}),
    ("after-pvc-create:bootstrap-pod-new",
     world("", "", pods="", pvcs="c-0", etcd=False, cluster_id="", op=BOOT), Kind.CREATE_POD, "c-0",
     {"initial_state": "new"}),
    ("after-pod-create:bootstrap-waits-for-answer",
     world("", "", pods="c-0", pvcs="c-0", etcd=False, cluster_id="", op=BOOT), Kind.WAIT, "c-0", {}),
    ("bootstrap-restarts-first-pod-as-existing",
     world("c-0", "c-0", op=BOOT, pod={"c-0": {"initial_state": "new"}}), Kind.DELETE_POD, "c-0", {}),
    ("after-pod-delete:bootstrap-recreates-existing",
     world("c-0", "", pods="", etcd=False, op=BOOT), Kind.CREATE_POD, "c-0", {"initial_state": "existing"}),
    ("bootstrap-done", world("c-0", "c-0", op=BOOT), Kind.CLEAR, "c-0", {}),
    ("never-bootstrap-over-existing-volumes",
     world("", "", pods="", pvcs="c-0", etcd=False, cluster_id=""), Kind.CREATE_POD, "c-0",
     {"initial_state": "existing"}),
    ("never-bootstrap-when-cluster-id-known",
     world("", "", pods="", pvcs="", etcd=False, cluster_id="abc"), Kind.WAIT, "", {"reason": "EtcdUnreachable"}),
    # -- steady, paused, objects, bad input
    ("steady", world(), Kind.NOOP, "", {}),
    ("paused", world(spec=replace(SPEC, paused=True), pods=""), Kind.WAIT, "", {"reason": "Paused"}),
    ("objects-missing", world(missing=("pdb",)), Kind.ENSURE_OBJECTS, "", {}),
    ("tls-secret-missing", world(tls_error="client TLS Secret 'x' not found"), Kind.BLOCKED, "",
     {"reason": "TLSSecretInvalid"}),
    ("version-downgrade-refused", world(spec=replace(SPEC, version="0.0.9")), Kind.BLOCKED, "",
     {"reason": "VersionChangeRefused"}),
    ("version-minor-skip-refused", world(spec=replace(SPEC, version="0.3.0")), Kind.BLOCKED, "",
     {"reason": "VersionChangeRefused"}),
    ("version-major-refused", world(spec=replace(SPEC, version="1.1.0")), Kind.BLOCKED, "",
     {"reason": "VersionChangeRefused"}),
    ("version-one-minor-up-rolls-a-follower", world(spec=V02), Kind.LATCH, "c-1", {"op": OpType.ROLL}),
    # -- scale up
    ("scale-up-latches", world("c-0", spec=S5), Kind.LATCH, "c-1", {"op": OpType.ADD}),
    ("scale-up-needs-leader", world("c-0 c-1 c-2", "", spec=S5), Kind.WAIT, "", {"reason": "NoLeader"}),
    ("after-latch:add-member", world(op=ADD3, spec=S5), Kind.MEMBER_ADD, "c-3", {}),
    ("add-abandoned-when-spec-shrank-before-member-add", world(op=ADD3), Kind.CLEAR, "c-3", {}),
    ("add-finished-when-spec-shrank-after-member-add", world("c-0 c-1 c-2 c-3?", op=ADD3, pods="c-0 c-1 c-2",
                                                             pvcs="c-0 c-1 c-2"), Kind.CREATE_PVC, "c-3", {}),
    ("add-waits-for-leader-list", world(op=ADD3, spec=S5, from_leader=False), Kind.WAIT, "c-3", {}),
    ("after-member-add:create-pvc", world("c-0 c-1 c-2 c-3?", op=ADD3, pods="c-0 c-1 c-2", pvcs="c-0 c-1 c-2",
                                          spec=S5), Kind.CREATE_PVC, "c-3", {}),
    ("after-pvc-create:create-pod", world("c-0 c-1 c-2 c-3?", op=ADD3, pods="c-0 c-1 c-2", spec=S5),
     Kind.CREATE_POD, "c-3", {"initial_state": "existing"}),
    ("after-pod-create:learner-starting", world("c-0 c-1 c-2 c-3?", op=ADD3, unhealthy="c-3", spec=S5),
     Kind.WAIT, "c-3", {}),
    ("learner-catching-up", world("c-0 c-1 c-2 c-3*", op=ADD3, spec=S5, index={"c-0": 1000, "c-3": 10}),
     Kind.WAIT, "c-3", {}),
    ("before-promote:learner-caught-up", world("c-0 c-1 c-2 c-3*", op=ADD3, spec=S5), Kind.PROMOTE, "c-3",
     {"member_id": mid("c-3")}),
    ("after-promote:clear", world("c-0 c-1 c-2 c-3", op=ADD3, spec=S5), Kind.CLEAR, "c-3", {}),
    ("voter-not-ready-yet", world("c-0 c-1 c-2 c-3", op=ADD3, spec=S5, pod={"c-3": {"ready": False}}),
     Kind.WAIT, "c-3", {}),
    ("learner-without-operation-is-finished", world("c-0 c-1 c-2 c-3*", spec=S5), Kind.LATCH, "c-3",
     {"op": OpType.ADD}),
    ("crash-looping-learner-replaced", world("c-0 c-1 c-2 c-3*", op=ADD3, spec=S5, pod={"c-3": CRASHLOOP},
                                             unhealthy="c-3"), Kind.LATCH, "c-4", {"op": OpType.REPLACE}),
    # -- scale down
    ("scale-down-removes-newest-follower", world(spec=S2), Kind.LATCH, "c-2", {"op": OpType.REMOVE}),
    ("scale-down-removes-unhealthy-first", world(spec=S2, unhealthy="c-1"), Kind.LATCH, "c-1",
     {"op": OpType.REMOVE}),
    ("scale-down-removes-learner-first", world("c-0 c-1 c-2 c-3*", spec=S2), Kind.LATCH, "c-3",
     {"op": OpType.REMOVE}),
    ("scale-down-leader-last", world("c-0 c-1", "c-1", spec=S1), Kind.LATCH, "c-0", {"op": OpType.REMOVE}),
    ("remove-leader-moves-leadership", world("c-0 c-1", "c-1", spec=S1, op=op(OpType.REMOVE, "c-1")),
     Kind.MOVE_LEADER, "c-1", {"target_id": mid("c-0")}),
    ("quorum-guard-blocks-scale-down", world("c-0 c-1 c-2 c-3", spec=S2, unhealthy="c-1 c-2"),
     Kind.LATCH, "c-2", {"op": OpType.REMOVE}),
    ("quorum-guard-blocks-healthy-removal", world("c-0 c-1 c-2", spec=S2, op=op(OpType.REMOVE, "c-2"),
                                                  unhealthy="c-1"), Kind.BLOCKED, "", {"reason": "QuorumGuard"}),
    ("quorum-guard-allows-unhealthy-removal", world("c-0 c-1 c-2", spec=S2, op=op(OpType.REMOVE, "c-1"),
                                                    unhealthy="c-1"), Kind.MEMBER_REMOVE, "c-1", {}),
    ("after-member-remove:delete-pod", world("c-0 c-1", spec=S2, op=op(OpType.REMOVE, "c-2"),
                                             pods="c-0 c-1 c-2", pvcs="c-0 c-1 c-2"), Kind.DELETE_POD, "c-2", {}),
    ("pod-deleting-waits", world("c-0 c-1", spec=S2, op=op(OpType.REMOVE, "c-2"), pods="c-0 c-1 c-2",
                                 pod={"c-2": {"deleting": True}}), Kind.WAIT, "c-2", {}),
    ("after-pod-delete:delete-pvc", world("c-0 c-1", spec=S2, op=op(OpType.REMOVE, "c-2"),
                                          pvcs="c-0 c-1 c-2"), Kind.DELETE_PVC, "c-2", {}),
    ("after-pvc-delete:clear", world("c-0 c-1", spec=S2, op=op(OpType.REMOVE, "c-2")), Kind.CLEAR, "c-2", {}),
    ("remove-waits-without-etcd", world(spec=S2, op=op(OpType.REMOVE, "c-2"), etcd=False), Kind.WAIT, "",
     {"reason": "EtcdUnreachable"}),
    # -- replacement
    ("pod-lost-recreated-on-volume", world(pods="c-0 c-1"), Kind.CREATE_POD, "c-2", {"initial_state": "existing"}),
    ("all-pods-lost-etcd-silent", world(pods="", etcd=False), Kind.CREATE_POD, "c-0", {}),
    ("volume-lost-replaced", world(pvcs="c-0 c-1"), Kind.LATCH, "c-3",
     {"op": OpType.REPLACE, "replaces": "c-2"}),
    ("empty-data-dir-member-replaced", replace(world(pod={"c-1": {"ready": False}}),
                                               health={**world().health, "c-1": MemberHealth(
                                                   reachable=True, member_id=mid("c-1"), leader_id=mid("c-0"))}),
     Kind.LATCH, "c-3", {"op": OpType.REPLACE, "replaces": "c-1"}),
    ("restarting-member-with-data-not-replaced", world(pod={"c-1": {"ready": False}}), Kind.NOOP, "", {}),
    ("crash-looping-member-replaced", world(pod={"c-1": CRASHLOOP}, unhealthy="c-1"), Kind.LATCH, "c-3",
     {"op": OpType.REPLACE, "replaces": "c-1"}),
    ("all-crash-looping-not-replaced", world(pod={n: CRASHLOOP for n in ("c-0", "c-1", "c-2")},
                                             unhealthy="c-0 c-1 c-2"), Kind.NOOP, "", {}),
    ("replace-quorum-guard", world(pvcs="c-0 c-1", unhealthy="c-1"), Kind.BLOCKED, "", {"reason": "QuorumGuard"}),
    ("single-member-volume-lost-blocks", world("c-0", spec=S1, pvcs=""), Kind.BLOCKED, "",
     {"reason": "QuorumGuard"}),
    ("after-latch:replace-removes-old", world(op=REPLACE1, unhealthy="c-1"), Kind.MEMBER_REMOVE, "c-1",
     {"member_id": mid("c-1")}),
    ("after-member-remove:replace-deletes-old-pod", world("c-0 c-2", op=REPLACE1, pods="c-0 c-1 c-2"),
     Kind.DELETE_POD, "c-1", {}),
    ("replace-deletes-old-volume", world("c-0 c-2", op=REPLACE1, pvcs="c-0 c-1 c-2"), Kind.DELETE_PVC, "c-1", {}),
    ("replace-adds-successor", world("c-0 c-2", op=REPLACE1), Kind.MEMBER_ADD, "c-3", {}),
    ("replace-continues-like-add", world("c-0 c-2 c-3*", op=REPLACE1), Kind.PROMOTE, "c-3", {}),
    ("ephemeral-pod-gone-replaced", world(spec=replace(SPEC, ephemeral=True), pods="c-0 c-1", pvcs=""),
     Kind.LATCH, "c-3", {"op": OpType.REPLACE}),
    ("orphan-pod-deleted", world(pods="c-0 c-1 c-2 c-9"), Kind.DELETE_POD, "c-9", {}),
    ("orphan-volume-deleted", world(pvcs="c-0 c-1 c-2 c-9"), Kind.DELETE_PVC, "c-9", {}),
    ("no-orphan-gc-without-leader-list", world(pods="c-0 c-1 c-2 c-9", from_leader=False, leader=""),
     Kind.NOOP, "", {}),
    # -- rolling
    ("roll-follower-first", world(spec=V02), Kind.LATCH, "c-1", {"op": OpType.ROLL}),
    ("roll-unready-follower-first", world(spec=V02, pod={"c-1": {"ready": False}}), Kind.LATCH, "c-1",
     {"op": OpType.ROLL}),
    ("roll-leader-last", world(spec=V02, pod={"c-1": {"spec_hash": V02.pod_hash()},
                                              "c-2": {"spec_hash": V02.pod_hash()}}), Kind.LATCH, "c-0",
     {"op": OpType.ROLL}),
    ("roll-leader-moves-leadership", world(spec=V02, op=op(OpType.ROLL, "c-0")), Kind.MOVE_LEADER, "c-0", {}),
    ("after-latch:roll-deletes-pod", world(spec=V02, op=op(OpType.ROLL, "c-2")), Kind.DELETE_POD, "c-2", {}),
    ("roll-quorum-guard", world(spec=V02, op=op(OpType.ROLL, "c-2"), unhealthy="c-1"), Kind.BLOCKED, "",
     {"reason": "QuorumGuard"}),
    ("after-pod-delete:roll-recreates", world(spec=V02, op=op(OpType.ROLL, "c-2"), pods="c-0 c-1"),
     Kind.CREATE_POD, "c-2", {}),
    ("mid-rolling:new-pod-not-ready", world(spec=V02, op=op(OpType.ROLL, "c-2"),
                                            pod={"c-2": {"spec_hash": V02.pod_hash(), "ready": False}}),
     Kind.WAIT, "c-2", {}),
    ("roll-member-done", world(spec=V02, op=op(OpType.ROLL, "c-2"), pod={"c-2": {"spec_hash": V02.pod_hash()}}),
     Kind.CLEAR, "c-2", {}),
    ("roll-stuck-on-crash-loop", world(spec=V02, op=op(OpType.ROLL, "c-2"), unhealthy="c-2",
                                       pod={"c-2": {**CRASHLOOP, "spec_hash": V02.pod_hash()}}),
     Kind.BLOCKED, "c-2", {"reason": "RollStuck"}),
    ("single-member-roll-allowed", world("c-0", spec=replace(V02, replicas=1), op=op(OpType.ROLL, "c-0")),
     Kind.DELETE_POD, "c-0", {}),
    ("ephemeral-roll-replaces", world(spec=replace(V02, ephemeral=True), pvcs=""), Kind.LATCH, "c-3",
     {"op": OpType.REPLACE, "replaces": "c-1"}),
    # -- etcd unreachable
    ("etcd-unreachable-waits", world(etcd=False), Kind.WAIT, "", {"reason": "EtcdUnreachable"}),
    ("add-waits-without-etcd", world(op=ADD3, etcd=False), Kind.WAIT, "", {"reason": "EtcdUnreachable"}),
]


@pytest.mark.parametrize("observed,kind,member,extra", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan(observed: Observed, kind: Kind, member: str, extra: dict[str, Any]) -> None:
    action = plan(observed)
    assert action.kind is kind, action
    if member:
        assert action.member == member, action
    for key, want in extra.items():
        if key == "op":
            assert action.operation is not None and action.operation.type is want, action
        elif key == "replaces":
            assert action.operation is not None and action.operation.replaces == want, action
        else:
            assert getattr(action, key) == want, action


def test_volume_deleting_is_replaced() -> None:
    o = world()
    o = replace(o, pvcs={**o.pvcs, "c-1": PvcObs(name="c-1", deleting=True)})
    action = plan(o)
    assert action.kind is Kind.LATCH and action.operation is not None
    assert action.operation.type is OpType.REPLACE and action.operation.replaces == "c-1"


def test_quorum_guard_blocks_latch_of_scale_down() -> None:
    """4 voters, 2 unhealthy: removing an unhealthy one leaves 2 healthy of 3 (quorum 2) -> allowed;
    removing a healthy one when only 2 of 4 are healthy would leave 1 of 3 -> refused."""
    allowed = plan(world("c-0 c-1 c-2 c-3", spec=S2, unhealthy="c-1 c-2"))
    assert allowed.kind is Kind.LATCH and allowed.member in ("c-1", "c-2")
    refused = plan(world("c-0 c-1 c-2", spec=S2, op=op(OpType.REMOVE, "c-0"), leader="c-2", unhealthy="c-1"))
    assert refused.kind is Kind.BLOCKED and refused.reason == "QuorumGuard"


def test_names_never_reused() -> None:
    """A replacement after c-5 was seen only as a leftover PVC still gets c-6."""
    o = world(pvcs="c-0 c-1 c-5")
    action = plan(o)
    assert isinstance(action, Action)
    assert o.next_ordinal() == 6


def test_new_state_only_before_cluster_id() -> None:
    """Whatever the state, a CreatePod action says `new` only while no cluster id was ever recorded."""
    for _, observed, *_ in CASES:
        action = plan(observed)
        if action.kind is Kind.CREATE_POD and action.initial_state == "new":
            assert not observed.cluster_id
