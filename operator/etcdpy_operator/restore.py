"""Restore into a new cluster (`spec.restore`): the pure part — where the snapshot is, whether it was checked.

Why a gate before the member planner: a cluster that starts from a backup must not create a single Pod or
volume until the snapshot is known to be there and intact, so a missing or damaged backup leaves nothing
half-created. The gate resolves the source (an EtcdBackup or a PVC and file name), has a check Pod read the
whole file (`etcdpy snapshot status`), stores the verdict in `status.restore`, and only then lets the normal
bootstrap run; the bootstrap member's Pod then builds its data dir from the file in an init container
(`etcdpy snapshot restore`: new cluster id from this cluster's fresh token, one-member membership), and the
other members join as learners as for any new cluster.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from etcdpy_operator import GROUP

LABEL_RESTORE_OF = f"{GROUP}/restore-of"  # never LABEL_CLUSTER: member clean-up must not see the check Pod
RESTORE_MOUNT = "/var/lib/etcd-restore"


@dataclass(frozen=True)
class RestoreSpec:
    """spec.restore: an EtcdBackup name, or a PVC and a file on it."""

    backup: str = ""
    claim_name: str = ""
    file_name: str = ""

    @classmethod
    def from_body(cls, spec: dict[str, Any]) -> RestoreSpec | None:
        raw = spec.get("restore")
        if not raw:
            return None
        return cls(
            backup=str(raw.get("backup") or ""),
            claim_name=str(raw.get("claimName") or ""),
            file_name=str(raw.get("fileName") or ""),
        )


@dataclass(frozen=True)
class Source:
    """The resolved snapshot: a file on a PVC."""

    claim: str
    file: str


def resolve(spec: RestoreSpec, backup_obj: dict[str, Any] | None) -> tuple[Source | None, str]:
    """(source, '') or (None, why it cannot be used yet/ever)."""
    if spec.backup:
        if backup_obj is None:
            return None, f"EtcdBackup {spec.backup!r} not found"
        st = backup_obj.get("status") or {}
        if st.get("phase") != "Succeeded":
            return None, f"EtcdBackup {spec.backup!r} has not succeeded (phase {st.get('phase') or 'Pending'})"
        if not st.get("claim") or not st.get("fileName"):
            return None, f"EtcdBackup {spec.backup!r} does not name its file"
        return Source(str(st["claim"]), str(st["fileName"])), ""
    if not spec.claim_name or not spec.file_name:
        return None, "spec.restore needs either backup, or claimName and fileName"
    if "/" in spec.file_name or spec.file_name.startswith("."):
        return None, f"spec.restore.fileName {spec.file_name!r} must be a plain file name on the volume"
    return Source(spec.claim_name, spec.file_name), ""


class GKind(enum.StrEnum):
    PASS = "Pass"  # nothing to gate: let the member planner act
    CHECK = "CreateRestoreCheckPod"
    COLLECT = "CollectRestoreCheck"
    DELETE_CHECK = "DeleteRestoreCheckPod"
    WAIT = "Wait"
    BLOCKED = "Blocked"


@dataclass(frozen=True)
class GateObserved:
    spec: RestoreSpec | None
    status: dict[str, Any]  # status.restore
    fresh: bool  # no cluster id, no member Pods or volumes: nothing was created yet
    source: Source | None
    source_problem: str
    claim_exists: bool
    check_pod_phase: str = ""  # '' when there is no check Pod
    check_pod_deleting: bool = False


@dataclass(frozen=True)
class Gate:
    kind: GKind
    message: str = ""
    reason: str = ""


def plan_gate(o: GateObserved) -> Gate:
    """The restore step before any member exists (see operator/README.md, "Restore")."""
    phase = o.status.get("phase", "")
    if o.spec is None:
        return Gate(GKind.PASS)
    if phase == "Verified":
        if o.check_pod_phase and not o.check_pod_deleting:
            return Gate(GKind.DELETE_CHECK, "deleting the restore check Pod")
        return Gate(GKind.PASS)
    if not o.fresh:
        # members exist already without a verdict (restored by an older operator, or created before
        # spec.restore was set): never gate a running cluster
        return Gate(GKind.PASS)
    if phase == "Failed":
        if o.check_pod_phase and not o.check_pod_deleting:
            return Gate(GKind.DELETE_CHECK, "deleting the restore check Pod")
        return Gate(
            GKind.BLOCKED,
            f"{o.status.get('message', 'the snapshot cannot be restored')}; nothing was created. Delete this "
            "EtcdCluster and create one naming a good backup",
            "RestoreFailed",
        )
    if o.source is None:
        return Gate(GKind.BLOCKED, o.source_problem + "; nothing was created", "RestoreSourceMissing")
    if not o.claim_exists:
        return Gate(GKind.BLOCKED, f"backup volume {o.source.claim!r} not found; nothing was created",
                    "RestoreSourceMissing")
    if not o.check_pod_phase:
        return Gate(GKind.CHECK, f"checking snapshot {o.source.file} on {o.source.claim} before creating members")
    if o.check_pod_phase in ("Succeeded", "Failed"):
        return Gate(GKind.COLLECT, f"restore check finished: {o.check_pod_phase}")
    return Gate(GKind.WAIT, f"checking snapshot {o.source.file} on {o.source.claim}", "RestoreCheck")


def init_container(image: str, pull: str, source: Source, member: str, data_dir: str, peer_url: str, token: str,
                   data_mount: str) -> dict[str, Any]:
    """The bootstrap member's init container: build the data dir from the snapshot unless it exists.

    Why idempotent: init containers run again on every Pod restart; once the member has data (restored or
    grown since) the snapshot must never be applied again.
    """
    path = f"{RESTORE_MOUNT}/{source.file}"
    script = (
        f'if [ -e "{data_dir}/member" ]; then echo "data dir exists: not restoring"; exit 0; fi; '
        f'exec etcdpy snapshot restore "{path}" --name "{member}" --data-dir "{data_dir}" '
        f'--initial-cluster "{member}={peer_url}" --initial-advertise-peer-urls "{peer_url}" '
        f'--initial-cluster-token "{token}" -w json'
    )
    return {
        "name": "restore",
        "image": image,
        "imagePullPolicy": pull,
        "command": ["sh", "-c", script],
        "volumeMounts": [
            {"name": "data", "mountPath": data_mount},
            {"name": "restore-source", "mountPath": RESTORE_MOUNT, "readOnly": True},
        ],
    }
