"""The operator's vocabulary: the parsed spec, the observed state, the operation in flight and actions.

Why plain frozen dataclasses: the planner is a pure function of these, so a unit test can build any
situation (including the state a crash leaves behind) in a few lines, and nothing here talks to the network.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from etcdpy_operator import GROUP

DATA_MOUNT = "/var/lib/etcd"
DATA_DIR = f"{DATA_MOUNT}/data"
CLIENT_PORT = 2379
PEER_PORT = 2380
METRICS_PORT = 2381

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_CLUSTER = f"{GROUP}/cluster"
LABEL_MEMBER = f"{GROUP}/member"
ANN_SPEC_HASH = f"{GROUP}/spec-hash"
ANN_VERSION = f"{GROUP}/version"
ANN_STATE = f"{GROUP}/initial-cluster-state"

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?$")


def quorum(voters: int) -> int:
    """Votes a raft group of `voters` needs to commit."""
    return voters // 2 + 1


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of an etcdpy release string, or None when it is not one."""
    m = _VERSION_RE.match(text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def member_name(cluster: str, ordinal: int) -> str:
    """Member (= Pod = PVC) name; ordinals only grow so a name never names two volumes."""
    return f"{cluster}-{ordinal}"


def member_ordinal(cluster: str, name: str) -> int | None:
    """The ordinal in a member name of this cluster, or None for a foreign name."""
    prefix = f"{cluster}-"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return None


def peer_service(cluster: str) -> str:
    return f"{cluster}-peers"


def client_service(cluster: str) -> str:
    return f"{cluster}-client"


def member_host(cluster: str, namespace: str, member: str) -> str:
    """A member's stable DNS name through the headless peer Service (cluster-domain independent)."""
    return f"{member}.{peer_service(cluster)}.{namespace}.svc"


def name_from_peer_url(url: str) -> str:
    """The member name a peer URL was built from (first DNS label), to recognise unstarted members."""
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host.split(".", 1)[0]


@dataclass(frozen=True)
class Spec:
    """The Pod-shaping and sizing part of an EtcdCluster spec, with defaults filled in."""

    replicas: int = 3
    version: str = "0.1.0"
    image: str = "etcdpy:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    storage_size: str = "1Gi"
    storage_class: str | None = None
    ephemeral: bool = False
    resources: dict[str, Any] = field(default_factory=dict)
    pod_template: dict[str, Any] = field(default_factory=dict)
    etcd: dict[str, Any] = field(default_factory=dict)
    client_tls_secret: str | None = None
    peer_tls_secret: str | None = None
    paused: bool = False

    @classmethod
    def from_body(cls, spec: dict[str, Any], default_version: str, repository: str) -> Spec:
        """Parse a (possibly partial) spec; the API server normally filled the schema defaults already."""
        version = spec.get("version") or default_version
        storage = spec.get("storage") or {}
        tls = spec.get("tls") or {}
        return cls(
            replicas=int(spec.get("replicas", 3)),
            version=version,
            image=spec.get("image") or f"{repository}:{version}",
            image_pull_policy=spec.get("imagePullPolicy", "IfNotPresent"),
            storage_size=str(storage.get("size", "1Gi")),
            storage_class=storage.get("storageClassName"),
            ephemeral=bool(storage.get("ephemeral", False)),
            resources=dict(spec.get("resources") or {}),
            pod_template=dict(spec.get("podTemplate") or {}),
            etcd=dict(spec.get("etcd") or {}),
            client_tls_secret=(tls.get("client") or {}).get("secretName"),
            peer_tls_secret=(tls.get("peer") or {}).get("secretName"),
            paused=bool(spec.get("paused", False)),
        )

    @property
    def client_scheme(self) -> str:
        return "https" if self.client_tls_secret else "http"

    @property
    def peer_scheme(self) -> str:
        return "https" if self.peer_tls_secret else "http"

    def pod_hash(self) -> str:
        """Hash of everything that shapes a member Pod: a Pod with another hash must be rolled."""
        shaping = {
            "image": self.image,
            "version": self.version,
            "pull": self.image_pull_policy,
            "resources": self.resources,
            "podTemplate": self.pod_template,
            "etcd": self.etcd,
            "tls": [self.client_tls_secret, self.peer_tls_secret],
        }
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


class OpType(enum.StrEnum):
    BOOTSTRAP = "Bootstrap"
    ADD = "AddMember"
    REMOVE = "RemoveMember"
    REPLACE = "ReplaceMember"
    ROLL = "RollMember"


@dataclass(frozen=True)
class Operation:
    """The step in flight, as stored in status.operation (latched before the step starts)."""

    type: OpType
    member: str
    member_id: int = 0
    replaces: str = ""
    target_hash: str = ""
    generation: int = 0
    started_at: str = ""

    @classmethod
    def from_status(cls, raw: dict[str, Any] | None) -> Operation | None:
        if not raw or not raw.get("type") or not raw.get("member"):
            return None
        try:
            op_type = OpType(raw["type"])
        except ValueError:
            return None
        return cls(
            type=op_type,
            member=raw["member"],
            member_id=int(raw.get("memberID") or "0", 16),
            replaces=raw.get("replaces", ""),
            target_hash=raw.get("targetHash", ""),
            generation=int(raw.get("generation", 0)),
            started_at=raw.get("startedAt", ""),
        )

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type.value, "member": self.member, "generation": self.generation}
        if self.member_id:
            out["memberID"] = f"{self.member_id:x}"
        if self.replaces:
            out["replaces"] = self.replaces
        if self.target_hash:
            out["targetHash"] = self.target_hash
        if self.started_at:
            out["startedAt"] = self.started_at
        return out


@dataclass(frozen=True)
class EtcdMember:
    """One entry of etcd's member list."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    @property
    def started(self) -> bool:
        """Published its name and client URLs: it has run with data at least once."""
        return bool(self.name) and bool(self.client_urls)

    @property
    def key(self) -> str:
        """The member name, also for an unstarted member (derived from the peer URL we built)."""
        return self.name or (name_from_peer_url(self.peer_urls[0]) if self.peer_urls else "")


@dataclass(frozen=True)
class MemberHealth:
    """A member's own answer to Maintenance.Status (None fields when it did not answer)."""

    reachable: bool
    member_id: int = 0
    leader_id: int = 0
    raft_index: int = 0
    raft_applied_index: int = 0
    db_size: int = 0
    version: str = ""
    is_learner: bool = False
    errors: tuple[str, ...] = ()
    error: str = ""

    @property
    def healthy(self) -> bool:
        return self.reachable and not self.errors and self.leader_id != 0


@dataclass(frozen=True)
class PodObs:
    """The part of a member Pod the planner looks at."""

    name: str
    phase: str = "Pending"
    ready: bool = False
    deleting: bool = False
    spec_hash: str = ""
    version: str = ""
    initial_state: str = "existing"
    restarts: int = 0
    crash_looping: bool = False
    message: str = ""


@dataclass(frozen=True)
class PvcObs:
    name: str
    phase: str = "Pending"
    deleting: bool = False


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile saw. `members is None` means etcd's member list could not be read."""

    cluster: str
    namespace: str
    generation: int
    spec: Spec
    operation: Operation | None = None
    cluster_id: str = ""  # as recorded in status (decisions rely on what is stored, not just seen)
    observed_cluster_id: str = ""  # as etcd reported it in this reconcile
    cluster_token: str = ""
    members: tuple[EtcdMember, ...] | None = None
    members_from_leader: bool = False
    health: dict[str, MemberHealth] = field(default_factory=dict)
    leader_id: int = 0
    pods: dict[str, PodObs] = field(default_factory=dict)
    pvcs: dict[str, PvcObs] = field(default_factory=dict)
    missing_objects: tuple[str, ...] = ()  # peer-service, client-service, pdb (absent or outdated)
    tls_error: str = ""
    etcd_error: str = ""

    def member(self, name: str) -> EtcdMember | None:
        for m in self.members or ():
            if m.key == name:
                return m
        return None

    def member_by_id(self, member_id: int) -> EtcdMember | None:
        for m in self.members or ():
            if m.id == member_id:
                return m
        return None

    @property
    def leader(self) -> EtcdMember | None:
        return self.member_by_id(self.leader_id) if self.leader_id else None

    def health_of(self, name: str) -> MemberHealth:
        return self.health.get(name, MemberHealth(reachable=False))

    def is_healthy(self, name: str) -> bool:
        """Answers Status with a leader and no errors, and its Pod is not crash-looping."""
        pod = self.pods.get(name)
        return self.health_of(name).healthy and not (pod is not None and pod.crash_looping)

    def voters(self) -> list[EtcdMember]:
        return [m for m in self.members or () if not m.is_learner]

    def healthy_voters(self, excluding: str = "") -> list[EtcdMember]:
        return [m for m in self.voters() if m.key != excluding and self.is_healthy(m.key)]

    def next_ordinal(self) -> int:
        """One past the largest member ordinal seen anywhere, so names are never reused."""
        names = [m.key for m in self.members or ()] + list(self.pods) + list(self.pvcs)
        if self.operation is not None:
            names += [self.operation.member, self.operation.replaces]
        ordinals = [o for o in (member_ordinal(self.cluster, n) for n in names if n) if o is not None]
        return max(ordinals, default=-1) + 1


class Kind(enum.StrEnum):
    """What one reconcile does. Acting kinds change the world; WAIT/BLOCKED/NOOP only report."""

    ENSURE_OBJECTS = "EnsureObjects"
    LATCH = "Latch"
    CLEAR = "Clear"
    MEMBER_ADD = "MemberAdd"
    CREATE_PVC = "CreatePVC"
    CREATE_POD = "CreatePod"
    PROMOTE = "MemberPromote"
    MOVE_LEADER = "MoveLeader"
    MEMBER_REMOVE = "MemberRemove"
    DELETE_POD = "DeletePod"
    DELETE_PVC = "DeletePVC"
    WAIT = "Wait"
    BLOCKED = "Blocked"
    NOOP = "Noop"


@dataclass(frozen=True)
class Action:
    """One next step. `reason` is a CamelCase word for conditions/events, `message` the sentence."""

    kind: Kind
    member: str = ""
    member_id: int = 0
    target_id: int = 0
    operation: Operation | None = None
    initial_state: str = "existing"
    reason: str = ""
    message: str = ""

    @property
    def acts(self) -> bool:
        return self.kind not in (Kind.WAIT, Kind.BLOCKED, Kind.NOOP)
