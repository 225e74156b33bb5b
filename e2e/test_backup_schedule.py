"""Backups by the operator: a fast schedule with retention pruning, an on-demand EtcdBackup, a failure.

Each backup is a real Pod from the cluster's image running `python -m etcdpy_operator.agent backup`, which
streams a real member's snapshot onto the backup volume. The files on the volume are read back here: every
verified one has its metadata file, its sha256 and revision match what status and the EtcdBackup say, and
retention removed exactly the older scheduled ones. Timings are measured, never asserted.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from e2ekit import Kube, Writer, summary, t, wait_available, wait_until
from etcdpy_operator import GROUP, VERSION

pytestmark = pytest.mark.timeout(1500)


def _backup_status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return dict((kube.etcdcluster(ns, name).get("status") or {}).get("backup") or {})


def _files(kube: Kube, ns: str, claim: str, cluster: str) -> list[str]:
    """Verified backups (a .db with its .json) of `cluster` on the backup volume (double only)."""
    d: Path = kube.volume_dir(ns, claim)  # type: ignore[attr-defined]
    return sorted(p.name for p in d.glob(f"{cluster}-*.db") if (d / (p.name + ".json")).exists())


def _check_file(kube: Kube, ns: str, claim: str, name: str, revision: int) -> dict[str, Any]:
    """The file is a valid etcd snapshot at `revision` whose sha256 matches its metadata."""
    from etcdpy.etcdutl.snapshot_file import inspect

    d: Path = kube.volume_dir(ns, claim)  # type: ignore[attr-defined]
    meta = json.loads((d / (name + ".json")).read_text())
    info = inspect(str(d / name), verify_checksum=True, require_checksum=True)
    assert info.revision == revision == meta["revision"], (info, meta)
    data = (d / name).read_bytes()
    assert hashlib.sha256(data[:-32]).hexdigest() == meta["sha256"] == data[-32:].hex(), meta
    assert meta["size"] == len(data)
    return meta


def _reasons(kube: Kube, ns: str) -> list[str]:
    return [e.reason for e in kube.events(ns) if e.involved_object.kind == "EtcdCluster"]


def test_scheduled_backups_retention_and_on_demand(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    """`@every 15s`, keep 2: three backups verified, only the two newest stay; then an EtcdBackup on demand."""
    kube = operator
    spec = {"replicas": 1, "backup": {"schedule": "@every 15s", "retention": {"maxCount": 2}}}
    kube.create_etcdcluster(ns, "b", spec)
    writer = Writer(kube, ns, "b").start()
    wait_available(kube, ns, "b", 1)
    claim = "b-backups"
    seen: list[str] = []
    started = time.monotonic()

    def three_backups() -> bool:
        last = (_backup_status(kube, ns, "b").get("lastSuccessfulBackup") or {}).get("name")
        if last and last not in seen:
            seen.append(last)
        return len(seen) >= 3

    wait_until(three_backups, t(240), "three scheduled backups")
    took = time.monotonic() - started
    st = _backup_status(kube, ns, "b")
    assert st.get("nextScheduledTime") and not st.get("inFlight") and not st.get("consecutiveFailures"), st
    cond = kube.condition(ns, "b", "BackupReady")
    assert cond and cond["status"] == "True", cond
    if kube.is_double:
        wait_until(lambda: len(_files(kube, ns, claim, "b")) == 2, t(30), "retention to leave two backups")
        files = _files(kube, ns, claim, "b")
        assert seen[0] not in files and seen[-1] in files, (seen, files)
        last = st["lastSuccessfulBackup"]
        meta = _check_file(kube, ns, claim, last["name"], last["revision"])
        assert meta["trigger"] == "Scheduled" and meta["member"] == "b-0"
    assert _reasons(kube, ns).count("BackupSucceeded") >= 3
    wait_until(lambda: not kube.core.list_namespaced_pod(ns, label_selector=f"{GROUP}/backup-of=b").items
               or len(kube.core.list_namespaced_pod(ns, label_selector=f"{GROUP}/backup-of=b").items) <= 1,
               t(30), "finished backup Pods to be deleted")

    # on demand
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "etcdbackups", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EtcdBackup", "metadata": {"name": "now"},
        "spec": {"clusterName": "b"}})
    t0 = time.monotonic()

    def done() -> dict[str, Any] | None:
        s = kube.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "etcdbackups", "now").get("status") or {}
        return s if s.get("phase") in ("Succeeded", "Failed") else None

    res = wait_until(done, t(120), "the on-demand backup")
    assert res["phase"] == "Succeeded", (res, summary(kube, ns, "b"))
    if kube.is_double:
        meta = _check_file(kube, ns, res["claim"], res["fileName"], res["revision"])
        assert meta["trigger"] == "OnDemand" and meta["request"] == "now"
        assert res["sha256"] == meta["sha256"]
    assert writer.verify() > 0
    timings["backup_schedule"] = {"three_scheduled_backups_s": round(took, 1),
                                  "on_demand_backup_s": round(time.monotonic() - t0, 1),
                                  "on_demand_backup_bytes": res.get("size")}


@pytest.mark.e2e_slow
def test_failing_backup_is_reported_and_retried(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    """The only member frozen when a backup is due: BackupFailed, BackupReady False; thawed: the retry succeeds."""
    kube = operator
    if not kube.is_double:
        pytest.skip("freezes a member process (test node only)")
    kube.create_etcdcluster(ns, "f", {"replicas": 1, "backup": {"schedule": "@every 20s"}})
    wait_available(kube, ns, "f", 1)
    wait_until(lambda: _backup_status(kube, ns, "f").get("nextScheduledTime"), t(60), "the schedule to be stored")
    kube.freeze_pod(ns, "f-0")
    t0 = time.monotonic()
    try:
        wait_until(lambda: int(_backup_status(kube, ns, "f").get("consecutiveFailures") or 0) >= 1, t(180),
                   "a failed backup to be recorded")
        cond = kube.condition(ns, "f", "BackupReady")
        assert cond and cond["status"] == "False" and cond["reason"] == "BackupFailed", cond
        assert "BackupFailed" in _reasons(kube, ns)
        assert _backup_status(kube, ns, "f").get("retryAt")
    finally:
        kube.thaw_pod(ns, "f-0")
    wait_until(lambda: (_backup_status(kube, ns, "f").get("lastSuccessfulBackup") or {}).get("name")
               and not _backup_status(kube, ns, "f").get("consecutiveFailures"), t(240), "a retry to succeed")
    cond = kube.condition(ns, "f", "BackupReady")
    assert cond and cond["status"] == "True", cond
    timings["backup_failure"] = {"failure_to_success_s": round(time.monotonic() - t0, 1)}


@pytest.mark.e2e_slow
@pytest.mark.parametrize("point", ["after-backup-latch", "after-backup-pod-create"])
def test_operator_killed_mid_backup(point: str, operator: Kube, ns: str) -> None:
    """Killed right after latching a backup or creating its Pod, a fresh operator finishes that same backup:
    one Pod for the slot, never two backup Pods at once, the backup verified."""
    kube = operator
    if not kube.is_double:
        pytest.skip("crash points need the operator process under the suite's control")
    kube.create_etcdcluster(ns, "k", {"replicas": 1, "backup": {"schedule": "@every 20s"}})
    wait_available(kube, ns, "k", 1)
    kube.start_operator(ns, {"ETCDPY_OPERATOR_CRASH_AT": point})
    code = wait_until(kube.operator_exited, t(180), f"the operator to crash at {point}")
    assert code == 86, f"the operator exited with {code}, not at {point}"
    latched = _backup_status(kube, ns, "k").get("inFlight") or {}
    assert latched.get("pod"), latched
    kube.start_operator(ns)
    seen_pods: set[str] = set()

    def finished() -> bool:
        pods = kube.core.list_namespaced_pod(ns, label_selector=f"{GROUP}/backup-of=k").items
        live = [p for p in pods if p.status.phase in ("Pending", "Running")]
        assert len(live) <= 1, [p.metadata.name for p in live]
        seen_pods.update(p.metadata.name for p in pods)
        last = _backup_status(kube, ns, "k").get("lastSuccessfulBackup") or {}
        return bool(last.get("name"))

    wait_until(finished, t(180), "the latched backup to finish")
    assert latched["pod"] in seen_pods or not seen_pods, (latched, seen_pods)
    assert not _backup_status(kube, ns, "k").get("consecutiveFailures")
