"""One reconcile (observe, plan, execute, write status) and the per-cluster loop that repeats it.

Why a loop per cluster instead of reacting to each event: every decision is taken from a fresh
observation anyway, and one coroutine per cluster guarantees that two reconciles of the same cluster
never overlap. Spec changes wake the loop early.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field, replace
from typing import Any

from etcdpy_operator import backupexec, maintenanceexec, planner, recoveryexec, restoreexec
from etcdpy_operator import status as status_mod
from etcdpy_operator.etcd import EtcdClient, EtcdError
from etcdpy_operator.executor import ActionFailed, Context, CrashPoints, execute
from etcdpy_operator.kube import Kube, KubeError, now_rfc3339
from etcdpy_operator.metrics import Metrics
from etcdpy_operator.model import Action, Kind
from etcdpy_operator.observe import Settings, observe

MAX_BACKOFF = 30.0


@dataclass
class Runtime:
    """What every cluster's loop shares: adapters, settings, metrics, crash points, wake-up events."""

    kube: Kube
    settings: Settings
    metrics: Metrics
    crash: CrashPoints
    interval: float = 5.0
    wakers: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    backup_metrics: Any = None  # backupexec.BackupMetrics, made on first use on metrics.registry

    def waker(self, namespace: str, name: str) -> asyncio.Event:
        return self.wakers.setdefault((namespace, name), asyncio.Event())

    def wake(self, namespace: str, name: str) -> None:
        self.waker(namespace, name).set()


@dataclass(frozen=True)
class Outcome:
    action: Action | None  # None: the cluster is gone or being deleted
    error: str = ""


async def reconcile_once(rt: Runtime, namespace: str, name: str, log: Any) -> Outcome:
    """Observe, decide one action, execute it, write the status. Raises KubeError when the API is down."""
    body = await rt.kube.get_cluster(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return Outcome(None)
    observed, tls = await observe(rt.kube, body, rt.settings)
    action, rec_fields = await _gates(rt, body, observed, tls, log)
    if action.kind is Kind.CLEAR:
        # Finishing one step of a longer change (a roll, a multi-member scale): latch the next step in
        # the same write, so status never shows "no operation" while the change is still under way.
        idle = replace(observed, operation=None)
        following = planner.plan(idle)
        if following.kind is Kind.LATCH:
            log.info("%s %s: %s", action.kind.value, action.member, action.message)
            observed, action = idle, following
    error, fields = "", {}
    if action.acts:
        log.info("%s %s: %s", action.kind.value, action.member or "-", action.message)
        ctx = Context(rt.kube, EtcdClient(tls, rt.settings.etcd_timeout), body, observed, rt.crash, log)
        try:
            fields = await execute(action, ctx)
        except (ActionFailed, EtcdError, KubeError) as e:
            error = f"{action.kind.value} {action.member}: {e}"
            log.warning("action failed: %s", error)
            await rt.kube.event(body, "Warning", "ActionFailed", error)
    elif action.kind is Kind.BLOCKED:
        log.warning("blocked (%s): %s", action.reason, action.message)
        if _degraded_reason(body) != action.reason:  # one Event per refusal, not one per reconcile
            await rt.kube.event(body, "Warning", action.reason, action.message)
    shown = action if not error else Action(Kind.WAIT, reason="ReconcileError", message=error)
    fields = {**rec_fields, **fields}
    previous = dict(body.get("status") or {})
    previous.update(fields)
    new_status = status_mod.build(observed, shown, previous, now_rfc3339(), error=error)
    if error and action.kind is Kind.LATCH:
        new_status["operation"] = previous.get("operation")
    for key in ("operation", "clusterToken", "clusterID"):  # clusterID: reset by a total-loss restore
        if key in fields:
            new_status[key] = fields[key]
    new_status["conditions"] = await _backups(rt, body, observed, new_status.get("conditions") or [], log)
    await rt.kube.patch_status(namespace, name, new_status)
    rt.metrics.record(namespace, name, new_status, action.kind.value if action.acts else "", not error)
    return Outcome(action, error)


async def _gates(
    rt: Runtime, body: dict[str, Any], observed: Any, tls: Any, log: Any
) -> tuple[Action, dict[str, Any]]:
    """spec.restore's gate, quorum-loss recovery, NOSPACE healing/defragmentation, then the member planner."""
    if observed.spec.paused:
        return planner.plan(observed), {}
    gated = await restoreexec.gate(rt.kube, body, observed, log)
    if gated is not None:
        return gated, {}
    if rt.backup_metrics is None:
        rt.backup_metrics = backupexec.BackupMetrics(rt.metrics.registry)
    rec = await recoveryexec.gate(rt.kube, body, observed, log, rt.crash, rt.backup_metrics)
    if rec.action is not None and not rec.soft:
        return rec.action, rec.fields or {}
    client = EtcdClient(tls, rt.settings.etcd_timeout)
    maint = await maintenanceexec.gate(rt.kube, body, observed, client, log, rt.backup_metrics)
    if maint is not None:
        return maint, rec.fields or {}
    action = planner.plan(observed)
    if rec.action is not None and not action.acts:
        return rec.action, rec.fields or {}
    return action, rec.fields or {}


async def _backups(rt: Runtime, body: dict[str, Any], observed: Any, conditions: list[Any], log: Any) -> list[Any]:
    """One backup step (backupexec.py) after the member step; its failures never fail the reconcile."""
    previous = [c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") == "BackupReady"]
    if observed.spec.paused:
        return backupexec.merge_condition(conditions, previous[0] if previous else None)
    if rt.backup_metrics is None:
        rt.backup_metrics = backupexec.BackupMetrics(rt.metrics.registry)
    try:
        step = backupexec.BackupStep(rt.kube, body, observed, rt.backup_metrics, log, rt.crash)
        cond = await step.run(datetime.datetime.now(datetime.UTC))
    except KubeError as e:
        log.warning("backup step failed: %s", e)
        cond = previous[0] if previous else None
    return backupexec.merge_condition(conditions, cond)


def _degraded_reason(body: dict[str, Any]) -> str:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Degraded" and c.get("status") == "True":
            return str(c.get("reason", ""))
    return ""


async def run_cluster(rt: Runtime, namespace: str, name: str, stopped: Any, log: Any) -> None:
    """Reconcile until the cluster is deleted or the operator stops; back off on failures."""
    backoff = 1.0
    waker = rt.waker(namespace, name)
    while not stopped:
        waker.clear()
        try:
            outcome = await reconcile_once(rt, namespace, name, log)
        except (KubeError, EtcdError, OSError) as e:
            log.warning("reconcile failed, retrying in %.0fs: %s", backoff, e)
            rt.metrics.record(namespace, name, None, "", False)
            delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
        else:
            if outcome.action is None:
                rt.metrics.forget(namespace, name)
                return
            if outcome.error:
                delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            else:
                backoff = 1.0
                delay = _delay(outcome.action, rt.interval)
        await _sleep(waker, stopped, delay)


def _delay(action: Action, interval: float) -> float:
    """Straight on after an action, soon while something is in flight, else the idle interval."""
    if action.acts:
        return 0.2
    if action.kind is Kind.WAIT or action.reason not in ("Stable", ""):
        return 1.0
    return interval


async def _sleep(waker: asyncio.Event, stopped: Any, delay: float) -> None:
    """Sleep `delay` seconds, or less when woken (spec change) or stopped (deletion, shutdown)."""
    tasks = {asyncio.ensure_future(waker.wait()), asyncio.ensure_future(stopped.wait())}
    try:
        await asyncio.wait(tasks, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
