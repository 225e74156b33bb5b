"""NOSPACE self-healing and scheduled defragmentation (`spec.maintenance`): the pure planning part.

Why one latched operation with followers first and the leader last: defragmenting a member blocks it while
its backend is rewritten; doing followers one at a time keeps a quorum serving, and moving leadership off the
leader before its turn keeps writes flowing. The operation (`status.maintenance.operation`: type, step, the
members done) is written before its first step, so a restarted operator continues where it stopped and never
defragments two members at once.

NOSPACE healing: compact away history older than `keepRevisions` revisions, defragment every member (that is
what gives the space back), then disarm the NOSPACE alarm. Scheduled defragmentation: the same ordering,
without compaction or disarm, started only while every member is healthy.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from etcdpy_operator.backup import Schedule, fmt_time, parse_time
from etcdpy_operator.model import Observed

DEFAULT_KEEP_REVISIONS = 1000


@dataclass(frozen=True)
class MaintenanceSpec:
    heal_nospace: bool = True
    keep_revisions: int = DEFAULT_KEEP_REVISIONS
    defrag_schedule: str = ""

    @classmethod
    def from_body(cls, spec: dict[str, Any]) -> MaintenanceSpec:
        raw = spec.get("maintenance") or {}
        return cls(
            heal_nospace=bool(raw.get("noSpaceHealing", True)),
            keep_revisions=int(raw.get("keepRevisions", DEFAULT_KEEP_REVISIONS)),
            defrag_schedule=str(raw.get("defragSchedule") or ""),
        )


class MKind(enum.StrEnum):
    PASS = "Pass"
    SET_NEXT = "SetNextDefragTime"
    LATCH = "LatchMaintenance"
    COMPACT = "Compact"
    DEFRAG = "Defragment"
    MOVE_LEADER = "MoveLeader"
    DISARM = "DisarmNoSpace"
    CLEAR = "ClearMaintenance"
    WAIT = "Wait"


@dataclass(frozen=True)
class MaintObserved:
    o: Observed
    spec: MaintenanceSpec
    status: dict[str, Any]  # status.maintenance
    nospace: bool  # a NOSPACE alarm is active
    revision: int  # current revision (0 when unknown)
    now: dt.datetime


@dataclass(frozen=True)
class MaintAction:
    kind: MKind
    member: str = ""
    target_id: int = 0
    revision: int = 0
    operation: dict[str, Any] | None = None
    next_defrag: str = ""
    message: str = ""


def _all_healthy(o: Observed) -> bool:
    return bool(o.members) and o.leader is not None and all(o.is_healthy(m.key) for m in o.members or ())


def plan_maintenance(m: MaintObserved) -> MaintAction:
    """The one maintenance step (see module docstring); PASS leaves the reconcile to the member planner."""
    op = m.status.get("operation")
    if op:
        return _continue(m, op)
    o = m.o
    if m.nospace and m.spec.heal_nospace:
        if o.operation is not None or o.leader is None:
            return MaintAction(MKind.PASS, message="NOSPACE: waiting for a leader and no membership change in flight")
        return MaintAction(
            MKind.LATCH,
            operation={"type": "NoSpace", "step": "Compact", "done": [], "startedAt": fmt_time(m.now)},
            message="NOSPACE alarm: compacting, defragmenting every member (leader last), then disarming",
        )
    if m.spec.defrag_schedule:
        try:
            sched = Schedule.parse(m.spec.defrag_schedule)
        except ValueError:
            return MaintAction(MKind.PASS)
        nxt = parse_time(m.status.get("nextDefragTime"))
        if nxt is None:
            return MaintAction(MKind.SET_NEXT, next_defrag=fmt_time(sched.next_after(m.now)))
        if m.now >= nxt and o.operation is None and _all_healthy(o):
            return MaintAction(
                MKind.LATCH,
                operation={"type": "Defrag", "step": "Defrag", "done": [], "startedAt": fmt_time(m.now)},
                next_defrag=fmt_time(sched.next_after(m.now)),
                message="scheduled defragmentation: followers first, the leader last",
            )
    return MaintAction(MKind.PASS)


def _continue(m: MaintObserved, op: dict[str, Any]) -> MaintAction:
    o = m.o
    if o.members is None or o.leader is None:
        return MaintAction(MKind.WAIT, message=f"{op.get('type')}: waiting for a leader")
    if op.get("step") == "Compact":
        target = m.revision - m.spec.keep_revisions
        nxt = {**op, "step": "Defrag"}
        if target <= 0:
            return MaintAction(MKind.LATCH, operation=nxt, message="nothing to compact; defragmenting")
        return MaintAction(MKind.COMPACT, revision=target, operation=nxt,
                           message=f"compacting up to revision {target} (keeping {m.spec.keep_revisions})")
    done = set(op.get("done") or [])
    todo = sorted((x for x in o.members or () if x.key not in done and x.started),
                  key=lambda x: (x.id == o.leader_id, x.key))
    if todo:
        nxt_m = todo[0]
        if not o.health_of(nxt_m.key).reachable:
            return MaintAction(MKind.WAIT, member=nxt_m.key, message=f"waiting for {nxt_m.key} to answer")
        if op.get("type") == "Defrag" and not _all_healthy(o):
            return MaintAction(MKind.WAIT, message="scheduled defragmentation paused: not every member is healthy")
        if nxt_m.id == o.leader_id and len(o.voters()) > 1:
            targets = [x for x in o.voters() if x.key in done and o.health_of(x.key).reachable] or [
                x for x in o.voters() if x.id != o.leader_id and o.health_of(x.key).reachable
            ]
            if not targets:
                return MaintAction(MKind.WAIT, member=nxt_m.key, message="no follower to move leadership to")
            return MaintAction(MKind.MOVE_LEADER, member=nxt_m.key, target_id=targets[0].id,
                               message=f"moving leadership from {nxt_m.key} to {targets[0].key} before defragmenting it")
        return MaintAction(MKind.DEFRAG, member=nxt_m.key, operation={**op, "done": sorted(done | {nxt_m.key})},
                           message=f"defragmenting {nxt_m.key}")
    if op.get("type") == "NoSpace" and m.nospace:
        return MaintAction(MKind.DISARM, message="disarming the NOSPACE alarm")
    return MaintAction(MKind.CLEAR, message=f"{op.get('type')} done on {', '.join(sorted(done))}")
