"""Decide the one next step for a cluster from what was observed: a pure function, no I/O.

Why one step per reconcile: every step is re-decided from fresh observations, so a crash between two
steps (or a spec edit) never leaves the operator acting on a stale plan. The operation in flight is the
only intent carried between reconciles, and it lives in `status.operation`, written (latched) before its
first step. Continuing an operation therefore only needs the operation and what is observed now.
"""

from __future__ import annotations

from etcdpy_operator.model import (
    Action,
    EtcdMember,
    Kind,
    MemberHealth,
    Observed,
    Operation,
    OpType,
    member_name,
    member_ordinal,
    parse_version,
    quorum,
)

CATCH_UP_RATIO = 0.9  # a learner within 90% of the leader's index may be promoted (etcd's rule)


def plan(o: Observed) -> Action:
    """The next action for the observed cluster (see operator/README.md, "How a reconcile works")."""
    if o.spec.paused:
        return Action(Kind.WAIT, reason="Paused", message="spec.paused is true: observing only")
    if o.tls_error:
        return Action(Kind.BLOCKED, reason="TLSSecretInvalid", message=o.tls_error)
    refusal = version_refusal(o)
    if refusal:
        return Action(Kind.BLOCKED, reason="VersionChangeRefused", message=refusal)
    if o.missing_objects:
        return Action(
            Kind.ENSURE_OBJECTS, reason="EnsureObjects", message=f"creating/updating {', '.join(o.missing_objects)}"
        )
    if o.operation is not None:
        return _continue(o, o.operation)
    return _idle(o)


# ---------------------------------------------------------------- guards


def version_refusal(o: Observed) -> str:
    """Why spec.version cannot be rolled out now ('' when it can): no downgrade, one minor step up."""
    target = parse_version(o.spec.version)
    if target is None:
        return f"spec.version {o.spec.version!r} is not a release version"
    running = [v for v in (parse_version(p.version) for p in o.pods.values()) if v is not None]
    if not running:
        return ""
    lowest, highest = min(running), max(running)
    if target[0] != lowest[0] or target[0] != highest[0]:
        return f"cannot change the major version ({_fmt(lowest)} running, {o.spec.version} asked)"
    if target[:2] < highest[:2]:
        return f"downgrade refused: {_fmt(highest)} is running, {o.spec.version} asked"
    if target[1] > lowest[1] + 1:
        return f"upgrade from {_fmt(lowest)} to {o.spec.version} skips a minor version; go one minor version at a time"
    return ""


def _fmt(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


def removal_safe(o: Observed, m: EtcdMember) -> bool:
    """Removing `m` leaves at least a quorum of healthy voters among the voters that remain."""
    if m.is_learner:
        return True
    remaining = len(o.voters()) - 1
    return remaining >= 1 and len(o.healthy_voters(excluding=m.key)) >= quorum(remaining)


def replace_safe(o: Observed, m: EtcdMember) -> bool:
    """The voters other than `m` hold a quorum of the full size on their own (the rest holds quorum)."""
    if m.is_learner:
        return True
    return len(o.healthy_voters(excluding=m.key)) >= quorum(len(o.voters()))


def restart_safe(o: Observed, m: EtcdMember) -> bool:
    """Taking `m` down for a moment keeps a quorum; a one-voter cluster accepts the short outage."""
    voters = o.voters()
    if m.is_learner or len(voters) <= 1:
        return True
    return len(o.healthy_voters(excluding=m.key)) >= quorum(len(voters))


def caught_up(member: MemberHealth, leader: MemberHealth) -> bool:
    """The learner applied (almost) as much of the log as the leader committed."""
    return member.reachable and leader.reachable and member.raft_applied_index >= CATCH_UP_RATIO * leader.raft_index


def _transferee(o: Observed, leaving: str) -> EtcdMember | None:
    """A healthy voter other than `leaving` to move leadership to (the lowest ordinal for determinism)."""
    healthy = o.healthy_voters(excluding=leaving)
    return min(healthy, key=lambda m: m.key) if healthy else None


def _leader_health(o: Observed) -> MemberHealth:
    leader = o.leader
    return o.health_of(leader.key) if leader else MemberHealth(reachable=False)


def _no_etcd(o: Observed) -> Action:
    return Action(Kind.WAIT, reason="EtcdUnreachable", message=o.etcd_error or "etcd's member list cannot be read")


def _no_leader() -> Action:
    return Action(Kind.WAIT, reason="NoLeader", message="the cluster has no leader; waiting")


def _quorum_guard(what: str) -> Action:
    return Action(Kind.BLOCKED, reason="QuorumGuard", message=f"{what} would leave fewer healthy voters than a quorum")


def _move_leader_or_block(o: Observed, m: EtcdMember, why: str) -> Action:
    target = _transferee(o, m.key)
    if target is None:
        return _quorum_guard(f"{why} (no healthy voter to take over leadership)")
    return Action(
        Kind.MOVE_LEADER,
        member=m.key,
        member_id=m.id,
        target_id=target.id,
        reason="MoveLeader",
        message=f"moving leadership from {m.key} to {target.key} before {why}",
    )


# ---------------------------------------------------------------- operations in flight


def _continue(o: Observed, op: Operation) -> Action:
    if op.type is OpType.BOOTSTRAP:
        return _bootstrap(o, op)
    if op.type is OpType.ADD:
        return _add(o, op)
    if op.type is OpType.REMOVE:
        return _remove(o, op)
    if op.type is OpType.REPLACE:
        return _replace(o, op)
    return _roll(o, op)


def _bootstrap(o: Observed, op: Operation) -> Action:
    """First member alone with `new`; once its cluster id is stored, restart it as `existing`.

    The restart makes sure no Pod spec says `new` once the cluster exists, so even a wiped volume
    under that Pod can never bootstrap a second cluster (it fails to join instead and is replaced).
    """
    m = op.member
    if not o.spec.ephemeral and m not in o.pvcs:
        return Action(Kind.CREATE_PVC, member=m, reason="Bootstrap", message=f"creating the volume of {m}")
    pod = o.pods.get(m)
    if pod is None:
        state = "existing" if o.cluster_id else "new"
        return Action(
            Kind.CREATE_POD,
            member=m,
            initial_state=state,
            reason="Bootstrap",
            message=f"creating the first member {m} (--initial-cluster-state={state})",
        )
    if pod.deleting:
        return Action(Kind.WAIT, member=m, reason="Bootstrap", message=f"waiting for Pod {m} to go")
    if not o.cluster_id:
        return Action(Kind.WAIT, member=m, reason="Bootstrap", message=f"waiting for the first member {m} to answer")
    if pod.initial_state == "new" and not o.spec.ephemeral:
        return Action(
            Kind.DELETE_POD,
            member=m,
            reason="Bootstrap",
            message=f"restarting {m} with --initial-cluster-state=existing now that the cluster exists",
        )
    if pod.ready and o.is_healthy(m):
        return Action(Kind.CLEAR, member=m, reason="Bootstrapped", message=f"cluster bootstrapped with {m}")
    return Action(Kind.WAIT, member=m, reason="Bootstrap", message=f"waiting for {m} to become ready")


def _add(o: Observed, op: Operation) -> Action:
    """MemberAdd as learner -> PVC -> Pod (existing) -> caught up -> MemberPromote -> ready."""
    if o.members is None:
        return _no_etcd(o)
    m = op.member
    em = o.member(m)
    if em is None:
        if op.type is OpType.ADD and len(o.members) >= o.spec.replicas:
            return Action(Kind.CLEAR, member=m, reason="AddAbandoned", message=f"{m} is no longer needed")
        if not o.members_from_leader:
            return Action(Kind.WAIT, member=m, reason="NoLeader", message="member list not read from the leader")
        cleanup = _cleanup(o, m)
        if cleanup is not None:
            return cleanup
        if o.leader is None:
            return _no_leader()
        return Action(Kind.MEMBER_ADD, member=m, reason="MemberAdd", message=f"adding {m} as a learner")
    if not o.spec.ephemeral and m not in o.pvcs:
        return Action(Kind.CREATE_PVC, member=m, reason="AddMember", message=f"creating the volume of {m}")
    pod = o.pods.get(m)
    if pod is None:
        return Action(Kind.CREATE_POD, member=m, reason="AddMember", message=f"creating Pod {m} to join the cluster")
    if pod.deleting:
        return Action(Kind.WAIT, member=m, reason="AddMember", message=f"waiting for Pod {m} to go")
    if em.is_learner:
        if pod.crash_looping:
            new = member_name(o.cluster, o.next_ordinal())
            return Action(
                Kind.LATCH,
                member=new,
                operation=Operation(OpType.REPLACE, member=new, replaces=m, generation=o.generation),
                reason="ReplaceMember",
                message=f"learner {m} is crash-looping ({pod.message or 'no message'}); replacing it with {new}",
            )
        health = o.health_of(m)
        if not health.reachable:
            return Action(Kind.WAIT, member=m, reason="AddMember", message=f"waiting for learner {m} to start")
        if o.leader is None:
            return _no_leader()
        if not caught_up(health, _leader_health(o)):
            return Action(Kind.WAIT, member=m, reason="AddMember", message=f"waiting for learner {m} to catch up")
        return Action(Kind.PROMOTE, member=m, member_id=em.id, reason="MemberPromote", message=f"promoting {m}")
    if pod.ready and o.is_healthy(m):
        return Action(Kind.CLEAR, member=m, reason="MemberAdded", message=f"{m} is a ready voter")
    return Action(Kind.WAIT, member=m, reason="AddMember", message=f"waiting for {m} to become ready")


def _cleanup(o: Observed, m: str) -> Action | None:
    """Delete what is left of a member etcd no longer knows: the Pod first, then the volume."""
    pod = o.pods.get(m)
    if pod is not None:
        if pod.deleting:
            return Action(Kind.WAIT, member=m, reason="DeletePod", message=f"waiting for Pod {m} to go")
        return Action(Kind.DELETE_POD, member=m, reason="DeletePod", message=f"deleting Pod {m}")
    pvc = o.pvcs.get(m)
    if pvc is not None and not pvc.deleting:
        return Action(Kind.DELETE_PVC, member=m, reason="DeletePVC", message=f"deleting volume {m}")
    return None


def _remove(o: Observed, op: Operation) -> Action:
    """Move leadership away if needed -> MemberRemove -> delete Pod -> delete PVC."""
    if o.members is None:
        return _no_etcd(o)
    m = op.member
    em = o.member(m)
    if em is not None:
        if o.leader is None:
            return _no_leader()
        if em.id == o.leader_id:
            return _move_leader_or_block(o, em, f"removing {m}")
        if not removal_safe(o, em):
            return _quorum_guard(f"removing {m}")
        return Action(Kind.MEMBER_REMOVE, member=m, member_id=em.id, reason="MemberRemove", message=f"removing {m}")
    cleanup = _cleanup(o, m)
    if cleanup is not None:
        return cleanup
    return Action(Kind.CLEAR, member=m, reason="MemberRemoved", message=f"{m} removed")


def _replace(o: Observed, op: Operation) -> Action:
    """Remove the lost member (only while the rest holds quorum), clean it up, then add its successor."""
    if o.members is None:
        return _no_etcd(o)
    old = o.member(op.replaces)
    if old is not None:
        if o.leader is None:
            return _no_leader()
        if old.id == o.leader_id:
            return _move_leader_or_block(o, old, f"replacing {old.key}")
        if not replace_safe(o, old):
            return _quorum_guard(f"replacing {old.key}")
        return Action(
            Kind.MEMBER_REMOVE,
            member=old.key,
            member_id=old.id,
            reason="MemberRemove",
            message=f"removing lost member {old.key} (to be replaced by {op.member})",
        )
    cleanup = _cleanup(o, op.replaces)
    if cleanup is not None:
        return cleanup
    return _add(o, op)


def _roll(o: Observed, op: Operation) -> Action:
    """Move leadership away if needed -> delete the Pod -> re-create it from the current spec -> ready."""
    if o.members is None:
        return _no_etcd(o)
    m = op.member
    em = o.member(m)
    if em is None:
        return Action(Kind.CLEAR, member=m, reason="RollAborted", message=f"{m} is no longer a member")
    pod = o.pods.get(m)
    if pod is None:
        if not o.spec.ephemeral and m not in o.pvcs:
            return Action(Kind.CLEAR, member=m, reason="RollAborted", message=f"the volume of {m} is gone")
        return Action(Kind.CREATE_POD, member=m, reason="RollMember", message=f"re-creating Pod {m} from the new spec")
    if pod.deleting:
        return Action(Kind.WAIT, member=m, reason="RollMember", message=f"waiting for Pod {m} to go")
    if pod.spec_hash != o.spec.pod_hash():
        if o.leader is None:
            return _no_leader()
        if em.id == o.leader_id and len(o.voters()) > 1:
            return _move_leader_or_block(o, em, f"restarting {m}")
        if not restart_safe(o, em):
            return _quorum_guard(f"restarting {m}")
        return Action(Kind.DELETE_POD, member=m, reason="RollMember", message=f"restarting {m} with the new spec")
    if pod.ready and o.is_healthy(m) and caught_up(o.health_of(m), _leader_health(o)):
        return Action(Kind.CLEAR, member=m, reason="MemberRolled", message=f"{m} runs the new spec")
    if pod.crash_looping:
        return Action(
            Kind.BLOCKED,
            member=m,
            reason="RollStuck",
            message=f"{m} crash-loops with the new spec ({pod.message or 'no message'}); fix the spec",
        )
    return Action(Kind.WAIT, member=m, reason="RollMember", message=f"waiting for {m} to become ready")


# ---------------------------------------------------------------- nothing in flight


def _latch(o: Observed, op: Operation, reason: str, message: str) -> Action:
    return Action(Kind.LATCH, member=op.member, operation=op, reason=reason, message=message)


def member_lost(o: Observed, m: EtcdMember) -> str:
    """Why a started member's data is gone or unusable ('' when it is not): it must be replaced."""
    pod = o.pods.get(m.key)
    if o.spec.ephemeral:
        if pod is None:
            return "its Pod (and with it the emptyDir data) is gone"
    else:
        pvc = o.pvcs.get(m.key)
        if pvc is None:
            return "its volume is gone"
        if pvc.deleting:
            return "its volume is being deleted"
    health = o.health_of(m.key)
    leader = _leader_health(o)
    if (
        pod is not None
        and not pod.ready
        and not m.is_learner
        and health.reachable
        and health.raft_applied_index == 0
        and health.raft_index == 0
        and leader.raft_index > 0
        and o.leader is not None
        and o.leader.key != m.key
    ):
        # A started member restarted with its data has a committed index from its WAL at once; none at
        # all (committed and applied 0) means its data directory was emptied under it.
        return "it restarted with an empty data directory (applied index 0)"
    if pod is not None and pod.crash_looping and not health.reachable:
        same_spec_ok = any(
            p.spec_hash == pod.spec_hash and o.is_healthy(name) for name, p in o.pods.items() if name != m.key
        )
        if same_spec_ok:
            return f"its Pod crash-loops ({pod.message or 'no message'}) while members with the same spec run"
    return ""


def _scale_down_victim(o: Observed) -> EtcdMember:
    """Learners first, then unhealthy voters, then followers (newest first), the leader last."""

    def rank(m: EtcdMember) -> tuple[int, int]:
        if m.is_learner:
            group = 0
        elif not o.is_healthy(m.key):
            group = 1
        elif m.id != o.leader_id:
            group = 2
        else:
            group = 3
        return (group, -(member_ordinal(o.cluster, m.key) or 0))

    return min(o.members or (), key=rank)


def _idle(o: Observed) -> Action:
    if o.members is None:
        return _idle_without_etcd(o)
    names = {m.key for m in o.members}
    if o.members_from_leader:
        for name, pod in sorted(o.pods.items()):
            if name not in names and not pod.deleting:
                return Action(Kind.DELETE_POD, member=name, reason="Orphan", message=f"Pod {name} is not a member")
        for name, pvc in sorted(o.pvcs.items()):
            if name not in names and name not in o.pods and not pvc.deleting:
                return Action(Kind.DELETE_PVC, member=name, reason="Orphan", message=f"volume {name} is not a member")
    if not o.spec.ephemeral:
        for m in o.members:
            if m.started and m.key not in o.pods and m.key in o.pvcs and not o.pvcs[m.key].deleting:
                return Action(
                    Kind.CREATE_POD, member=m.key, reason="PodLost", message=f"re-creating Pod {m.key} on its volume"
                )
    if len(o.members) > o.spec.replicas:
        if o.leader is None:
            return _no_leader()
        victim = _scale_down_victim(o)
        if not removal_safe(o, victim):
            return _quorum_guard(f"removing {victim.key}")
        return _latch(
            o,
            Operation(OpType.REMOVE, member=victim.key, member_id=victim.id, generation=o.generation),
            "ScaleDown",
            f"scaling down from {len(o.members)} to {o.spec.replicas}: removing {victim.key}",
        )
    for m in o.members:
        if m.is_learner or not m.started:
            return _latch(
                o,
                Operation(OpType.ADD, member=m.key, generation=o.generation),
                "AddMember",
                f"finishing the addition of {m.key}",
            )
    for m in sorted(o.members, key=lambda m: m.key):
        why = member_lost(o, m)
        if why:
            return _replace_latch(o, m, why)
    if len(o.members) < o.spec.replicas:
        if o.leader is None:
            return _no_leader()
        new = member_name(o.cluster, o.next_ordinal())
        return _latch(
            o,
            Operation(OpType.ADD, member=new, generation=o.generation),
            "ScaleUp",
            f"scaling up from {len(o.members)} to {o.spec.replicas}: adding {new}",
        )
    return _roll_next(o)


def _replace_latch(o: Observed, m: EtcdMember, why: str) -> Action:
    if o.leader is None:
        return _no_leader()
    if not replace_safe(o, m):
        return _quorum_guard(f"replacing {m.key} ({why})")
    new = member_name(o.cluster, o.next_ordinal())
    return _latch(
        o,
        Operation(OpType.REPLACE, member=new, replaces=m.key, member_id=m.id, generation=o.generation),
        "ReplaceMember",
        f"replacing {m.key} by {new}: {why}",
    )


def _roll_next(o: Observed) -> Action:
    """The next member whose Pod runs an old spec: unready followers, then followers, the leader last."""
    desired = o.spec.pod_hash()
    stale = [m for m in o.members or () if (p := o.pods.get(m.key)) is not None and p.spec_hash != desired]
    if not stale:
        return Action(Kind.NOOP, reason="Stable", message="the cluster matches its spec")
    if o.leader is None:
        return _no_leader()

    def rank(m: EtcdMember) -> tuple[int, int, str]:
        pod = o.pods[m.key]
        return (m.id == o.leader_id, pod.ready, m.key)

    m = min(stale, key=rank)
    if o.spec.ephemeral:
        return _replace_latch(o, m, "spec changed and an ephemeral member cannot restart with its data")
    if not restart_safe(o, m):
        return _quorum_guard(f"restarting {m.key}")
    return _latch(
        o,
        Operation(OpType.ROLL, member=m.key, member_id=m.id, target_hash=desired, generation=o.generation),
        "RollMember",
        f"rolling {m.key} to the new spec",
    )


def _idle_without_etcd(o: Observed) -> Action:
    """etcd does not answer: bootstrap a cluster that never existed, restore missing Pods, else wait."""
    if not o.cluster_id and not o.pods and not o.pvcs:
        first = member_name(o.cluster, o.next_ordinal())
        return _latch(
            o,
            Operation(OpType.BOOTSTRAP, member=first, generation=o.generation),
            "Bootstrap",
            f"bootstrapping the cluster with {first}",
        )
    if not o.spec.ephemeral:
        for name, pvc in sorted(o.pvcs.items()):
            if name not in o.pods and not pvc.deleting:
                return Action(
                    Kind.CREATE_POD, member=name, reason="PodLost", message=f"re-creating Pod {name} on its volume"
                )
    elif o.cluster_id and not o.pods:
        return Action(
            Kind.BLOCKED,
            reason="ClusterLost",
            message="every ephemeral member is gone with its data; restore from a backup",
        )
    return _no_etcd(o)
