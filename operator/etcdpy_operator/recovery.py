"""Quorum-loss recovery (`spec.recovery`): the pure part — when a majority is lost, and the steps back.

Why a gate before the member planner: without a quorum the member planner can only wait (every membership
change needs a leader), and while a recovery is under way it must not act at all (it would re-create the
survivor's Pod without `--force-new-cluster`, or clean up members mid-way). The gate decides from the
observation and from `status.recovery` alone, so a restarted operator resumes at the step it left.

Steps of an automatic recovery, latched in `status.recovery.operation` (survivor chosen once, at the latch):
1. delete the Pod and the volume of every member other than the survivor (their data belongs to the lost
   cluster and must never rejoin it);
2. restart the survivor with `--force-new-cluster` (annotated Pod): etcd keeps its data and cluster id and
   commits the removal of every other member;
3. once it leads a one-member cluster, latch step `Restarting`, then restart it without the flag (a later
   restart with the flag would throw out members added since);
4. once it is Ready and healthy, clear the operation; the member planner then adds the missing members back
   one at a time as learners (an ordinary scale-up).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from etcdpy_operator import GROUP
from etcdpy_operator.backup import fmt_time, parse_duration, parse_time
from etcdpy_operator.model import Observed, quorum

ANN_FORCE = f"{GROUP}/force-new-cluster"
DEFAULT_TIMEOUT = "60s"


@dataclass(frozen=True)
class RecoverySpec:
    mode: str = "Manual"  # Manual | Automatic
    timeout: str = DEFAULT_TIMEOUT  # quorumLossTimeout

    @classmethod
    def from_body(cls, spec: dict[str, Any]) -> RecoverySpec:
        raw = spec.get("recovery") or {}
        return cls(mode=str(raw.get("mode") or "Manual"), timeout=str(raw.get("quorumLossTimeout") or DEFAULT_TIMEOUT))

    def timeout_delta(self) -> dt.timedelta:
        try:
            return parse_duration(self.timeout)
        except ValueError:
            return parse_duration(DEFAULT_TIMEOUT)


def quorum_lost(o: Observed) -> tuple[bool, str]:
    """(True, why) when a majority of the voters does not answer; never True while a quorum answers."""
    if o.members is None or not o.cluster_id:
        return False, ""  # nothing answers at all (total loss) or never bootstrapped: not handled here
    if o.leader is not None and o.health_of(o.leader.key).reachable:
        return False, ""
    voters = o.voters()
    answering = [m.key for m in voters if o.health_of(m.key).reachable]
    if len(answering) >= quorum(len(voters)):
        return False, ""  # a quorum answers: it may be electing; never act
    lost = sorted(m.key for m in voters if m.key not in answering)
    return True, f"{len(lost)} of {len(voters)} voters lost ({', '.join(lost)}); answering: {', '.join(answering) or 'none'}"


def total_loss(o: Observed) -> str:
    """Why no member's data can survive ('' when some might): no member answers and no volume is left."""
    if o.members is not None or not o.cluster_id:
        return ""
    if o.spec.ephemeral:
        return "every ephemeral member is gone with its data" if not o.pods else ""
    if o.pvcs:
        return ""
    return "no member answers and every member volume is gone"


def _total_loss_advice(r: RecoveryObserved, why: str) -> str:
    """The one thing to do after a total loss: a new cluster restored from the newest verified backup."""
    b = r.last_backup or {}
    if not b.get("name"):
        return f"{why}; there is no verified backup of this cluster to restore from"
    return (
        f"{why}; restore the newest verified backup into a new EtcdCluster with spec.restore: "
        f"{{claimName: {b.get('claim')}, fileName: {b.get('name')}}} (revision {b.get('revision')}, taken {b.get('time')})"
    )


def survivor(o: Observed) -> str:
    """The answering voter with the highest raft index (ties: the lowest name): it holds the most of the log."""
    cands = [m.key for m in o.voters() if o.health_of(m.key).reachable]
    if not cands:
        return ""
    return max(cands, key=lambda n: (o.health_of(n).raft_index, [-ord(c) for c in n]))


class RKind(enum.StrEnum):
    PASS = "Pass"
    MARK_LOST = "MarkQuorumLost"  # store quorumLostSince
    CLEAR_MARK = "ClearQuorumLost"
    REPORT = "ReportQuorumLost"  # Manual: a condition naming the field to set
    LATCH = "LatchRecovery"
    DELETE_POD = "DeletePod"
    DELETE_PVC = "DeletePVC"
    CREATE_FORCE_POD = "CreateForceNewClusterPod"
    LATCH_RESTART = "LatchRestart"
    CREATE_POD = "CreatePod"
    CLEAR = "ClearRecovery"
    RESET = "ResetForRestore"  # total loss: forget the cluster id, let the restore gate and bootstrap run
    WAIT = "Wait"


@dataclass(frozen=True)
class RecoveryPodObs:
    name: str
    force: bool = False  # carries the force-new-cluster annotation
    deleting: bool = False
    ready: bool = False


@dataclass(frozen=True)
class RecoveryObserved:
    o: Observed
    spec: RecoverySpec
    status: dict[str, Any]  # status.recovery
    pods: dict[str, RecoveryPodObs]
    now: dt.datetime
    last_backup: dict[str, Any] | None = None  # status.backup.lastSuccessfulBackup


@dataclass(frozen=True)
class RecoveryAction:
    kind: RKind
    member: str = ""
    message: str = ""
    operation: dict[str, Any] | None = None
    reason: str = ""


def plan_recovery(r: RecoveryObserved) -> RecoveryAction:
    """The one recovery step (see module docstring); PASS lets the member planner act."""
    op = r.status.get("operation")
    if op:
        return _continue(r, op)
    total = total_loss(r.o)
    lost, why = (True, total) if total else quorum_lost(r.o)
    since = r.status.get("quorumLostSince")
    if not lost:
        return RecoveryAction(RKind.CLEAR_MARK) if since else RecoveryAction(RKind.PASS)
    if not since:
        return RecoveryAction(RKind.MARK_LOST, message=f"quorum lost: {why}")
    started = parse_time(since) or r.now
    if r.now - started < r.spec.timeout_delta():
        return RecoveryAction(RKind.WAIT, message=f"quorum lost since {since} ({why}); acting after {r.spec.timeout}")
    if total:
        b = r.last_backup or {}
        if r.spec.mode != "Automatic" or not b.get("name"):
            return RecoveryAction(RKind.REPORT, message=_total_loss_advice(r, total), reason="ClusterLost")
        return RecoveryAction(
            RKind.LATCH,
            operation={"type": "Restore", "step": "Restore", "claim": b.get("claim"), "fileName": b.get("name"),
                       "revision": b.get("revision"), "startedAt": fmt_time(r.now)},
            message=f"{total}: re-creating the cluster from the newest verified backup {b.get('name')} "
            f"(revision {b.get('revision')}); writes after that revision are lost",
        )
    best = survivor(r.o)
    if r.spec.mode != "Automatic":
        return RecoveryAction(
            RKind.REPORT,
            member=best,
            message=f"quorum lost since {since}: {why}. Set spec.recovery.mode: Automatic to let the operator "
            f"restart {best} (highest raft index {r.o.health_of(best).raft_index}) with --force-new-cluster "
            "and re-add the others; writes not on that member are lost",
        )
    return RecoveryAction(
        RKind.LATCH,
        member=best,
        operation={"survivor": best, "step": "ForceNewCluster", "startedAt": fmt_time(r.now),
                   "raftIndex": r.o.health_of(best).raft_index},
        message=f"quorum lost since {since} ({why}): recovering from {best} "
        f"(raft index {r.o.health_of(best).raft_index}) with --force-new-cluster",
    )


def _continue(r: RecoveryObserved, op: dict[str, Any]) -> RecoveryAction:
    o = r.o
    if op.get("type") == "Restore":
        for name in sorted(set(o.pods) | set(r.pods)):
            if not (r.pods.get(name) or RecoveryPodObs(name)).deleting:
                return RecoveryAction(RKind.DELETE_POD, member=name, message=f"deleting {name} of the lost cluster")
        return RecoveryAction(RKind.RESET, operation=op,
                              message=f"starting a new incarnation from backup {op.get('fileName')}")
    s = str(op.get("survivor", ""))
    for name in sorted(set(o.pods) | set(r.pods)):
        if name != s and not (r.pods.get(name) or RecoveryPodObs(name)).deleting:
            return RecoveryAction(RKind.DELETE_POD, member=name, message=f"deleting {name}: it belongs to the lost quorum")
    for name, pvc in sorted(o.pvcs.items()):
        if name != s and not pvc.deleting:
            return RecoveryAction(RKind.DELETE_PVC, member=name, message=f"deleting the volume of lost member {name}")
    pod = r.pods.get(s)
    alone = o.members is not None and [m.key for m in o.members] == [s] and o.leader is not None
    healthy = o.is_healthy(s)
    if op.get("step") == "ForceNewCluster":
        if pod is None:
            return RecoveryAction(RKind.CREATE_FORCE_POD, member=s, message=f"restarting {s} with --force-new-cluster")
        if pod.deleting:
            return RecoveryAction(RKind.WAIT, member=s, message=f"waiting for Pod {s} to go")
        if not pod.force:
            return RecoveryAction(RKind.DELETE_POD, member=s, message=f"stopping {s} to restart it with --force-new-cluster")
        if alone and healthy:
            return RecoveryAction(
                RKind.LATCH_RESTART, member=s, operation={**op, "step": "Restarting"},
                message=f"{s} leads a one-member cluster; restarting it without --force-new-cluster",
            )
        return RecoveryAction(RKind.WAIT, member=s, message=f"waiting for {s} to lead a one-member cluster")
    if pod is None:
        return RecoveryAction(RKind.CREATE_POD, member=s, message=f"re-creating {s} without --force-new-cluster")
    if pod.deleting:
        return RecoveryAction(RKind.WAIT, member=s, message=f"waiting for Pod {s} to go")
    if pod.force:
        return RecoveryAction(RKind.DELETE_POD, member=s, message=f"restarting {s} without --force-new-cluster")
    if pod.ready and healthy:
        return RecoveryAction(RKind.CLEAR, member=s, message=f"recovered on {s}; the other members are added back as learners")
    return RecoveryAction(RKind.WAIT, member=s, message=f"waiting for {s} to become ready")
