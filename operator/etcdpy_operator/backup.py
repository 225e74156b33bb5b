"""Scheduled and on-demand backups of an EtcdCluster: the pure part (schedule, names, retention, planning).

Why a separate pure module: a backup is a small state machine that must survive an operator restart
(the backup in flight is latched in `status.backup.inFlight` before its Pod exists) and must never
overlap another one. Keeping every decision in functions of plain values lets the unit tests walk that
machine through crashes, failures and clock jumps without a cluster. The I/O lives in `backupexec.py`;
the Pod that writes the file runs `etcdpy_operator.agent`.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from dataclasses import dataclass, field
from typing import Any

from etcdpy_operator import GROUP

BACKUP_PLURAL = "etcdbackups"
BACKUP_KIND = "EtcdBackup"
LABEL_BACKUP_OF = f"{GROUP}/backup-of"  # never LABEL_CLUSTER: member orphan clean-up must not see these
LABEL_BACKUP_POD = f"{GROUP}/backup-pod"
BACKUP_MOUNT = "/var/lib/etcd-backups"
POD_TIMEOUT = dt.timedelta(minutes=15)
RETRY_BASE = dt.timedelta(seconds=10)
RETRY_MAX = dt.timedelta(minutes=10)
MAX_RETRIES = 5
COND_BACKUP_READY = "BackupReady"

UTC = dt.UTC


# ---------------------------------------------------------------- time helpers


def parse_time(text: str | None) -> dt.datetime | None:
    """An RFC 3339 UTC time as written by the operator, or None."""
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def fmt_time(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DAYS_RE = re.compile(r"^(\d+)d(.*)$")


def parse_duration(text: str) -> dt.timedelta:
    """A Go duration ('90s', '1h30m', etcd's own parser) optionally led by whole days ('7d', '1d12h')."""
    import argparse

    from etcdpy.cli import _duration

    raw = (text or "").strip()
    days, rest = 0, raw
    m = _DAYS_RE.match(raw)
    if m:
        days, rest = int(m.group(1)), m.group(2)
    try:
        seconds = _duration(rest) if rest else 0.0
    except argparse.ArgumentTypeError:
        raise ValueError(f"invalid duration {text!r}") from None
    if not raw or seconds < 0 or (rest and rest.lstrip("+-") != rest):
        raise ValueError(f"invalid duration {text!r}")
    return dt.timedelta(days=days, seconds=seconds)


# ---------------------------------------------------------------- cron


_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


@dataclass(frozen=True)
class Schedule:
    """A 5-field cron expression (UTC) or '@every <duration>' (robfig/cron's extension, for short periods)."""

    text: str
    every: dt.timedelta | None = None
    sets: tuple[frozenset[int], ...] = ()
    dom_star: bool = True
    dow_star: bool = True

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Parse or raise ValueError with a message naming the bad part."""
        raw = (text or "").strip()
        if raw.startswith("@every"):
            every = parse_duration(raw[len("@every") :].strip())
            if every < dt.timedelta(seconds=1):
                raise ValueError(f"schedule {raw!r}: @every needs at least 1s")
            return cls(raw, every=every)
        expr = _MACROS.get(raw, raw)
        parts = expr.split()
        if len(parts) != 5:
            raise ValueError(f"schedule {raw!r}: expected 5 fields (minute hour day-of-month month day-of-week)")
        sets = tuple(_cron_field(p, lo, hi, raw) for p, (lo, hi) in zip(parts, _FIELDS, strict=True))
        dow = frozenset(0 if d == 7 else d for d in sets[4])
        return cls(raw, sets=(*sets[:4], dow), dom_star=parts[2] == "*", dow_star=parts[4] == "*")

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first scheduled instant strictly after `t` (whole minutes for cron)."""
        if self.every is not None:
            return t + self.every
        minutes, hours, doms, months, dows = self.sets
        c = (t.astimezone(UTC) + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
        limit = c + dt.timedelta(days=366 * 5)
        while c < limit:
            if c.month not in months:
                c = (c.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(c, doms, dows):
                c = c.replace(hour=0, minute=0) + dt.timedelta(days=1)
                continue
            if c.hour not in hours:
                c = c.replace(minute=0) + dt.timedelta(hours=1)
                continue
            if c.minute not in minutes:
                c += dt.timedelta(minutes=1)
                continue
            return c
        raise ValueError(f"schedule {self.text!r} never fires")

    def _day_matches(self, c: dt.datetime, doms: frozenset[int], dows: frozenset[int]) -> bool:
        """cron's rule: when both day fields are restricted, either one matching is enough."""
        dom_ok = c.day in doms
        dow_ok = (c.isoweekday() % 7) in dows
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok


def _cron_field(part: str, lo: int, hi: int, raw: str) -> frozenset[int]:
    out: set[int] = set()
    for item in part.split(","):
        step = 1
        if "/" in item:
            item, step_text = item.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"schedule {raw!r}: bad step in {part!r}")
            step = int(step_text)
        if item == "*":
            a, b = lo, hi
        elif "-" in item:
            a_text, b_text = item.split("-", 1)
            if not (a_text.isdigit() and b_text.isdigit()):
                raise ValueError(f"schedule {raw!r}: bad range {item!r}")
            a, b = int(a_text), int(b_text)
        elif item.isdigit():
            a = int(item)
            b = hi if step > 1 else a
        else:
            raise ValueError(f"schedule {raw!r}: bad field {part!r}")
        if a < lo or b > hi or a > b:
            raise ValueError(f"schedule {raw!r}: {item!r} outside {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


# ---------------------------------------------------------------- spec


@dataclass(frozen=True)
class BackupSpec:
    """spec.backup of an EtcdCluster, defaults filled in."""

    schedule: str = ""
    max_count: int = 0  # 0: no limit by count
    max_age: str = ""  # '' : no limit by age
    claim_name: str = ""  # an existing PVC
    template_size: str = "1Gi"  # else a PVC <cluster>-backups made from this template
    template_class: str | None = None
    suspend: bool = False

    @classmethod
    def from_body(cls, spec: dict[str, Any]) -> BackupSpec | None:
        raw = spec.get("backup")
        if not raw:
            return None
        retention = raw.get("retention") or {}
        volume = raw.get("volume") or {}
        template = volume.get("claimTemplate") or {}
        return cls(
            schedule=str(raw.get("schedule") or ""),
            max_count=int(retention.get("maxCount") or 0),
            max_age=str(retention.get("maxAge") or ""),
            claim_name=str(volume.get("claimName") or ""),
            template_size=str(template.get("size") or "1Gi"),
            template_class=template.get("storageClassName"),
            suspend=bool(raw.get("suspend", False)),
        )

    def claim(self, cluster: str) -> str:
        """The PVC backups are written to."""
        return self.claim_name or f"{cluster}-backups"

    @property
    def owns_claim(self) -> bool:
        """The operator creates (and owns) the backup PVC only when it comes from the template."""
        return not self.claim_name

    def problem(self) -> str:
        """Why the spec cannot be acted on ('' when it can); the CRD schema catches most of this."""
        if self.schedule:
            try:
                Schedule.parse(self.schedule)
            except ValueError as e:
                return str(e)
        if self.max_age:
            try:
                parse_duration(self.max_age)
            except ValueError as e:
                return f"spec.backup.retention.maxAge: {e}"
        return ""


# ---------------------------------------------------------------- names and retention


_NAME_RE = re.compile(r"^(?P<cluster>.+)-(?P<stamp>\d{8}T\d{6}Z)-r(?P<rev>\d+)\.db$")


def backup_file_name(cluster: str, taken_at: dt.datetime, revision: int) -> str:
    """`<cluster>-<UTC time>-r<revision>.db`: sorts by time, says what it holds."""
    return f"{cluster}-{taken_at.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-r{revision}.db"


def parse_backup_file_name(cluster: str, name: str) -> tuple[dt.datetime, int] | None:
    """(time, revision) of one of this cluster's backup files, None for anything else."""
    m = _NAME_RE.match(name)
    if not m or m.group("cluster") != cluster:
        return None
    taken = dt.datetime.strptime(m.group("stamp"), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return taken, int(m.group("rev"))


@dataclass(frozen=True)
class StoredBackup:
    """One verified backup file on the volume (the metadata file exists only for verified ones)."""

    name: str
    taken_at: dt.datetime
    scheduled: bool = True  # on-demand backups are never pruned by the schedule's retention


def prune_victims(
    stored: list[StoredBackup], newest: str, now: dt.datetime, max_count: int, max_age: dt.timedelta | None
) -> list[str]:
    """Scheduled backups retention removes, given that `newest` was just verified.

    Why anchored on `newest`: nothing is ever pruned unless a newer verified backup exists, so a run of
    failing backups can never age the last good one away. The newest is always kept, whatever the limits.
    """
    fresh = next((s for s in stored if s.name == newest), None)
    if fresh is None:
        return []
    older = sorted(
        (s for s in stored if s.scheduled and s.name != newest and s.taken_at <= fresh.taken_at),
        key=lambda s: (s.taken_at, s.name),
        reverse=True,
    )
    victims: list[str] = []
    kept = 1 if fresh.scheduled else 0
    for s in older:
        too_many = max_count > 0 and kept >= max_count
        too_old = max_age is not None and now - s.taken_at > max_age
        if too_many or too_old:
            victims.append(s.name)
        else:
            kept += 1
    return victims


# ---------------------------------------------------------------- state machine


class Trigger(enum.StrEnum):
    SCHEDULED = "Scheduled"
    ON_DEMAND = "OnDemand"


@dataclass(frozen=True)
class InFlight:
    """The backup under way, latched in status.backup.inFlight before its Pod is created."""

    pod: str
    trigger: Trigger
    started_at: str
    scheduled_for: str = ""
    request: str = ""  # the EtcdBackup it serves (on demand)
    member: str = ""
    attempt: int = 1

    @classmethod
    def from_status(cls, raw: dict[str, Any] | None) -> InFlight | None:
        if not raw or not raw.get("pod"):
            return None
        try:
            trigger = Trigger(raw.get("trigger", "Scheduled"))
        except ValueError:
            trigger = Trigger.SCHEDULED
        return cls(
            pod=str(raw["pod"]),
            trigger=trigger,
            started_at=str(raw.get("startedAt", "")),
            scheduled_for=str(raw.get("scheduledFor", "")),
            request=str(raw.get("request", "")),
            member=str(raw.get("member", "")),
            attempt=int(raw.get("attempt", 1)),
        )

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pod": self.pod,
            "trigger": self.trigger.value,
            "startedAt": self.started_at,
            "attempt": self.attempt,
        }
        if self.scheduled_for:
            out["scheduledFor"] = self.scheduled_for
        if self.request:
            out["request"] = self.request
        if self.member:
            out["member"] = self.member
        return out


@dataclass(frozen=True)
class BackupStatus:
    """status.backup: what the schedule needs across operator restarts."""

    in_flight: InFlight | None = None
    next_scheduled: str = ""
    last_successful: dict[str, Any] | None = None
    last_failure: dict[str, Any] | None = None
    failures: int = 0  # consecutive failures of scheduled backups
    retry_at: str = ""

    @classmethod
    def from_status(cls, raw: dict[str, Any] | None) -> BackupStatus:
        raw = raw or {}
        return cls(
            in_flight=InFlight.from_status(raw.get("inFlight")),
            next_scheduled=str(raw.get("nextScheduledTime") or ""),
            last_successful=raw.get("lastSuccessfulBackup"),
            last_failure=raw.get("lastFailure"),
            failures=int(raw.get("consecutiveFailures") or 0),
            retry_at=str(raw.get("retryAt") or ""),
        )


@dataclass(frozen=True)
class BackupPodObs:
    """The part of a backup Pod the planner looks at."""

    name: str
    phase: str = "Pending"  # Pending | Running | Succeeded | Failed
    deleting: bool = False
    member: str = ""


@dataclass(frozen=True)
class BackupObserved:
    """Everything one backup decision depends on."""

    cluster: str
    now: dt.datetime
    spec: BackupSpec | None
    status: BackupStatus
    healthy_members: tuple[str, ...] = ()  # healthy members, preferred first (followers before the leader)
    claim_exists: bool = True
    claim_bound: bool = True
    pods: dict[str, BackupPodObs] = field(default_factory=dict)  # every backup Pod of this cluster
    requests: tuple[str, ...] = ()  # EtcdBackups of this cluster still Pending, oldest first
    cluster_ready: bool = True  # the cluster is bootstrapped (has a cluster id)


class BKind(enum.StrEnum):
    CREATE_CLAIM = "CreateBackupVolume"
    SET_NEXT = "SetNextBackupTime"
    LATCH = "LatchBackup"
    CREATE_POD = "CreateBackupPod"
    COLLECT = "CollectBackup"  # read the finished Pod's result, record success or failure
    FAIL = "FailBackup"  # record a failure without a result (no member, timeout, Pod gone)
    SKIP = "SkipBackup"  # a due backup that cannot start: record the failure and schedule a retry
    DELETE_POD = "DeleteBackupPod"
    REJECT = "RejectBackupRequest"  # an EtcdBackup that cannot be served (no spec.backup volume, ...)
    WAIT = "Wait"
    NOOP = "Noop"


@dataclass(frozen=True)
class BackupAction:
    kind: BKind
    in_flight: InFlight | None = None
    pod: str = ""
    member: str = ""
    next_scheduled: str = ""
    request: str = ""
    message: str = ""

    @property
    def acts(self) -> bool:
        return self.kind not in (BKind.WAIT, BKind.NOOP)


def pod_name(cluster: str, started: dt.datetime, trigger: Trigger) -> str:
    """Deterministic from the latch, so a restarted operator finds (or creates) the same Pod."""
    kind = "s" if trigger is Trigger.SCHEDULED else "o"
    return f"{cluster}-backup-{kind}{started.astimezone(UTC).strftime('%Y%m%d%H%M%S')}"


def retry_delay(failures: int) -> dt.timedelta:
    """Exponential back-off for a failed scheduled backup: 10 s, 20 s, 40 s ... at most 10 min."""
    return min(RETRY_BASE * (2 ** max(failures - 1, 0)), RETRY_MAX)


def plan_backup(o: BackupObserved) -> BackupAction:
    """The one next backup step for a cluster (see operator/README.md, "Backups")."""
    st = o.status
    if st.in_flight is not None:
        return _continue(o, st.in_flight)
    leftover = _leftover_pod(o)
    if leftover is not None:
        return leftover
    spec = o.spec
    if spec is None:
        if o.requests:
            return BackupAction(
                BKind.REJECT, request=o.requests[0], message="the cluster has no spec.backup volume to write to"
            )
        return BackupAction(BKind.NOOP)
    problem = spec.problem()
    if problem:
        return BackupAction(BKind.WAIT, message=problem)
    if spec.owns_claim and not o.claim_exists:
        return BackupAction(BKind.CREATE_CLAIM, message=f"creating backup volume {spec.claim(o.cluster)}")
    if spec.schedule and not spec.suspend and not st.next_scheduled:
        first = Schedule.parse(spec.schedule).next_after(o.now)
        return BackupAction(BKind.SET_NEXT, next_scheduled=fmt_time(first), message=f"first backup at {fmt_time(first)}")
    if not o.cluster_ready:
        return BackupAction(BKind.WAIT, message="the cluster is not bootstrapped yet")
    due = _due_slot(o)
    if due is not None:
        if not o.healthy_members:
            return BackupAction(
                BKind.SKIP, next_scheduled=due, message="no healthy member to take a backup from; will retry"
            )
        return _latch(o, Trigger.SCHEDULED, f"starting the backup scheduled for {due}", due, "", st.failures + 1)
    if o.requests:
        if not o.healthy_members:
            return BackupAction(BKind.WAIT, request=o.requests[0], message="waiting for a healthy member")
        return _latch(o, Trigger.ON_DEMAND, f"starting on-demand backup {o.requests[0]}", "", o.requests[0], 1)
    return BackupAction(BKind.NOOP)


def _latch(o: BackupObserved, trigger: Trigger, message: str, slot: str, request: str, attempt: int) -> BackupAction:
    pod = pod_name(o.cluster, o.now, trigger)
    f = InFlight(pod, trigger, fmt_time(o.now), scheduled_for=slot, request=request, attempt=attempt)
    return BackupAction(BKind.LATCH, in_flight=f, message=message)


def _due_slot(o: BackupObserved) -> str | None:
    """The schedule slot (or retry) that is due now, as stored text; None when nothing is due."""
    spec, st = o.spec, o.status
    if spec is None or not spec.schedule or spec.suspend:
        return None
    if st.failures and st.retry_at:
        retry = parse_time(st.retry_at)
        if retry is not None and o.now >= retry and st.failures < MAX_RETRIES:
            return st.last_failure.get("scheduledFor", st.retry_at) if st.last_failure else st.retry_at
    nxt = parse_time(st.next_scheduled)
    if nxt is not None and o.now >= nxt:
        return st.next_scheduled
    return None


def _leftover_pod(o: BackupObserved) -> BackupAction | None:
    """A finished backup's Pod (its result already recorded) is deleted; one at a time."""
    for name, pod in sorted(o.pods.items()):
        if not pod.deleting:
            return BackupAction(BKind.DELETE_POD, pod=name, message=f"deleting finished backup Pod {name}")
    return None


def _continue(o: BackupObserved, f: InFlight) -> BackupAction:
    pod = o.pods.get(f.pod)
    started = parse_time(f.started_at) or o.now
    if pod is None:
        if f.member:  # created before and now gone without a result: it failed
            return BackupAction(BKind.FAIL, in_flight=f, message=f"backup Pod {f.pod} disappeared before finishing")
        if not o.healthy_members:
            return BackupAction(BKind.FAIL, in_flight=f, message="no healthy member to take the backup from")
        return BackupAction(
            BKind.CREATE_POD,
            in_flight=f,
            pod=f.pod,
            member=o.healthy_members[0],
            message=f"backup Pod {f.pod} saves a snapshot from {o.healthy_members[0]}",
        )
    if pod.phase in ("Succeeded", "Failed"):
        return BackupAction(BKind.COLLECT, in_flight=f, pod=f.pod, message=f"backup Pod {f.pod} finished: {pod.phase}")
    if pod.deleting:
        return BackupAction(BKind.WAIT, in_flight=f, message=f"waiting for backup Pod {f.pod} to go")
    if o.now - started > POD_TIMEOUT:
        return BackupAction(
            BKind.FAIL, in_flight=f, pod=f.pod, message=f"backup Pod {f.pod} did not finish in {POD_TIMEOUT}"
        )
    return BackupAction(BKind.WAIT, in_flight=f, message=f"backup {f.pod} in progress")


def after_success(o: BackupObserved, f: InFlight) -> dict[str, Any]:
    """status.backup fields once `f` succeeded (the next slot strictly after now: missed slots are not replayed)."""
    fields: dict[str, Any] = {"inFlight": None}
    if f.trigger is Trigger.SCHEDULED:
        fields.update(consecutiveFailures=0, retryAt=None, nextScheduledTime=_next_text(o))
    return fields


def after_failure(o: BackupObserved, f: InFlight | None, scheduled_for: str, message: str) -> dict[str, Any]:
    """status.backup fields once a scheduled (or on-demand) backup failed: back off and retry scheduled ones."""
    fields: dict[str, Any] = {"inFlight": None}
    if f is not None and f.trigger is Trigger.ON_DEMAND:
        return fields
    failures = o.status.failures + 1
    fields.update(
        consecutiveFailures=failures,
        lastFailure={"time": fmt_time(o.now), "scheduledFor": scheduled_for, "message": message[:500]},
        nextScheduledTime=_next_text(o),
    )
    fields["retryAt"] = fmt_time(o.now + retry_delay(failures)) if failures < MAX_RETRIES else None
    return fields


def _next_text(o: BackupObserved) -> str | None:
    if o.spec is None or not o.spec.schedule or o.spec.problem():
        return None
    return fmt_time(Schedule.parse(o.spec.schedule).next_after(o.now))


def backup_condition(st: dict[str, Any], spec: BackupSpec | None, now: str, previous: dict[str, Any] | None) -> dict[
    str, Any
] | None:
    """The BackupReady condition from status.backup (None when backups are not configured)."""
    if spec is None:
        return None
    last = st.get("lastSuccessfulBackup") or {}
    failures = int(st.get("consecutiveFailures") or 0)
    problem = spec.problem()
    if problem:
        status, reason, message = "False", "InvalidBackupSpec", problem
    elif failures:
        fail = st.get("lastFailure") or {}
        status, reason = "False", "BackupFailed"
        message = f"{failures} consecutive backup failure(s); last: {fail.get('message', '')}"
    elif last:
        status, reason = "True", "BackupSucceeded"
        message = f"last backup {last.get('name')} (revision {last.get('revision')}) at {last.get('time')}"
    else:
        status, reason, message = "False", "NoBackupYet", "no backup taken yet"
    changed = previous is None or previous.get("status") != status
    return {
        "type": COND_BACKUP_READY,
        "status": status,
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": now if changed else previous.get("lastTransitionTime", now) if previous else now,
    }
