"""Restore into a new cluster, the I/O side: the gate before the member planner and the init container.

Why the check runs in a Pod: only a Pod can mount the backup volume. It runs `etcdpy snapshot status -w json`,
which reads the whole file (sha256 trailer, every page) — the same check `snapshot restore` makes — so a
damaged file is refused before any member Pod or volume exists.
"""

from __future__ import annotations

import json
from typing import Any

from etcdpy_operator import GROUP, VERSION, builders
from etcdpy_operator.backup import BACKUP_PLURAL
from etcdpy_operator.backupexec import read_pod_log
from etcdpy_operator.kube import Kube, KubeError, now_rfc3339
from etcdpy_operator.model import DATA_DIR, DATA_MOUNT, LABEL_MANAGED_BY, LABEL_NAME, Action, Kind, Observed
from etcdpy_operator.restore import (
    LABEL_RESTORE_OF,
    RESTORE_MOUNT,
    GateObserved,
    GKind,
    RestoreSpec,
    Source,
    init_container,
    plan_gate,
    resolve,
)


def _from_recovery(status: dict[str, Any]) -> RestoreSpec | None:
    """A total-loss recovery asks for a restore of the newest backup through status.restore (source Recovery)."""
    if status.get("source") != "Recovery" or not status.get("claim") or not status.get("fileName"):
        return None
    return RestoreSpec(claim_name=str(status["claim"]), file_name=str(status["fileName"]))


def check_pod_name(cluster: str) -> str:
    return f"{cluster}-restore-check"


def check_pod(o: Observed, uid: str, source: Source) -> dict[str, Any]:
    """A run-once Pod reading the snapshot completely and printing its status as JSON."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": check_pod_name(o.cluster),
            "namespace": o.namespace,
            "labels": {LABEL_NAME: "etcdpy", LABEL_MANAGED_BY: "etcdpy-operator", LABEL_RESTORE_OF: o.cluster},
            "ownerReferences": [builders.owner_reference(o.cluster, uid)],
        },
        "spec": {
            "restartPolicy": "Never",
            "securityContext": builders.pod_security_context(),
            "containers": [{
                "name": "check",
                "image": o.spec.image,
                "imagePullPolicy": o.spec.image_pull_policy,
                "command": ["etcdpy", "snapshot", "status", f"{RESTORE_MOUNT}/{source.file}", "-w", "json"],
                "volumeMounts": [{"name": "restore-source", "mountPath": RESTORE_MOUNT, "readOnly": True}],
            }],
            "volumes": [{"name": "restore-source", "persistentVolumeClaim": {"claimName": source.claim,
                                                                             "readOnly": True}}],
        },
    }


def verdict(log_text: str, phase: str, source: Source) -> dict[str, Any]:
    """status.restore from the check Pod's output: Verified with the revision, or Failed with etcdpy's line."""
    for line in reversed(log_text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if phase == "Succeeded" and isinstance(doc, dict) and "revision" in doc:
            return {"phase": "Verified", "claim": source.claim, "fileName": source.file,
                    "revision": int(doc["revision"]), "size": int(doc.get("totalSize") or 0),
                    "message": f"snapshot {source.file} verified (revision {doc['revision']})"}
    last = log_text.strip().splitlines()[-1:] or ["no output"]
    return {"phase": "Failed", "claim": source.claim, "fileName": source.file,
            "message": f"snapshot {source.file} on {source.claim} cannot be restored: {last[0][:400]}"}


async def gate(kube: Kube, body: dict[str, Any], o: Observed, log: Any) -> Action | None:
    """Run the restore gate; None lets the member planner act, else the Action to report (WAIT/BLOCKED)."""
    status = dict((body.get("status") or {}).get("restore") or {})
    spec = RestoreSpec.from_body(body.get("spec") or {}) or _from_recovery(status)
    if spec is None:
        return None
    ns = o.namespace
    backup_obj = None
    if spec.backup:
        backup_obj = await kube._run(kube.custom.get_namespaced_custom_object, GROUP, VERSION, ns, BACKUP_PLURAL,
                                     spec.backup, missing_ok=True)
    source, problem = resolve(spec, backup_obj)
    claim_exists = False
    if source is not None:
        claim_exists = await kube._run(kube.core.read_namespaced_persistent_volume_claim, source.claim, ns,
                                       missing_ok=True) is not None
    pod = await kube._run(kube.core.read_namespaced_pod, check_pod_name(o.cluster), ns, missing_ok=True)
    go = GateObserved(
        spec=spec, status=status, fresh=not (o.cluster_id or o.observed_cluster_id or o.pods or o.pvcs),
        source=source, source_problem=problem, claim_exists=claim_exists,
        check_pod_phase=((pod or {}).get("status") or {}).get("phase", "Pending") if pod else "",
        check_pod_deleting=bool(pod and pod["metadata"].get("deletionTimestamp")),
    )
    g = plan_gate(go)
    if g.kind is GKind.PASS:
        return None
    if g.kind is GKind.DELETE_CHECK:
        await kube.delete_pod(ns, check_pod_name(o.cluster))
        return None if status.get("phase") == "Verified" else Action(Kind.WAIT, reason="RestoreFailed",
                                                                      message=g.message)
    if g.kind is GKind.CHECK:
        assert source is not None
        await kube.create(check_pod(o, str(body["metadata"].get("uid", "")), source))
        await kube.patch_status(ns, o.cluster, {"restore": {"phase": "Verifying", "claim": source.claim,
                                                            "fileName": source.file, "message": g.message}})
        await kube.event(body, "Normal", "RestoreCheck", g.message)
        return Action(Kind.WAIT, reason="RestoreCheck", message=g.message)
    if g.kind is GKind.COLLECT:
        assert source is not None
        try:
            text = await read_pod_log(kube, ns, check_pod_name(o.cluster), "check", 20)
        except KubeError as e:
            text = str(e)
        result = verdict(text, go.check_pod_phase, source)
        result["checkedAt"] = now_rfc3339()
        await kube.patch_status(ns, o.cluster, {"restore": result})
        ok = result["phase"] == "Verified"
        await kube.event(body, "Normal" if ok else "Warning", "RestoreVerified" if ok else "RestoreFailed",
                         result["message"])
        return Action(Kind.WAIT, reason="RestoreCheck", message=result["message"])
    if g.kind is GKind.BLOCKED:
        return Action(Kind.BLOCKED, reason=g.reason, message=g.message)
    return Action(Kind.WAIT, reason=g.reason or "RestoreCheck", message=g.message)


def with_restore(pod: dict[str, Any], cluster_body: dict[str, Any], o: Observed, member: str, token: str) -> dict[
    str, Any
]:
    """The bootstrap member's Pod of a restored cluster, with the init container that builds its data dir."""
    st = (cluster_body.get("status") or {}).get("restore") or {}
    wanted = (cluster_body.get("spec") or {}).get("restore") or st.get("source") == "Recovery"
    if not wanted or st.get("phase") != "Verified":
        return pod
    source = Source(str(st["claim"]), str(st["fileName"]))
    peer = builders.peer_url(o.spec, o.cluster, o.namespace, member)
    spec = pod["spec"]
    spec["initContainers"] = [
        init_container(o.spec.image, o.spec.image_pull_policy, source, member, DATA_DIR, peer, token, DATA_MOUNT),
        *(spec.get("initContainers") or []),
    ]
    spec["volumes"] = [*spec.get("volumes", []), {"name": "restore-source", "persistentVolumeClaim": {
        "claimName": source.claim, "readOnly": True}}]
    return pod
