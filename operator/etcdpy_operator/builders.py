"""Manifests of the objects the operator owns: member Pods and PVCs, the two Services, the PDB.

Why plain dicts built by pure functions: they are what is sent to the API server verbatim, so a unit test
can check every field the test kubelet and a real cluster rely on (see OPERATOR-CONTRACT and README).
"""

from __future__ import annotations

from typing import Any

from etcdpy_operator import GROUP, KIND, VERSION
from etcdpy_operator.model import (
    ANN_SPEC_HASH,
    ANN_STATE,
    ANN_VERSION,
    CLIENT_PORT,
    DATA_DIR,
    DATA_MOUNT,
    LABEL_CLUSTER,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MEMBER,
    LABEL_NAME,
    METRICS_PORT,
    PEER_PORT,
    Spec,
    client_service,
    member_host,
    peer_service,
    quorum,
)

TLS_CLIENT_DIR = "/etc/etcdpy/tls/client"
TLS_PEER_DIR = "/etc/etcdpy/tls/peer"

# spec.etcd field -> etcd flag
ETCD_FLAGS = {
    "snapshotCount": "snapshot-count",
    "quotaBackendBytes": "quota-backend-bytes",
    "autoCompactionMode": "auto-compaction-mode",
    "autoCompactionRetention": "auto-compaction-retention",
    "heartbeatInterval": "heartbeat-interval",
    "electionTimeout": "election-timeout",
}


# The image runs as this non-root user (see the Dockerfile). fsGroup makes the kubelet hand a freshly
# provisioned, root-owned volume to that group, without which etcdpy cannot create its data dir there.
IMAGE_UID = 10001


def pod_security_context() -> dict[str, Any]:
    """Pod-level security context of every Pod the operator creates from the etcdpy image."""
    return {
        "runAsNonRoot": True,
        "runAsUser": IMAGE_UID,
        "runAsGroup": IMAGE_UID,
        "fsGroup": IMAGE_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def cluster_labels(cluster: str) -> dict[str, str]:
    return {
        LABEL_NAME: "etcdpy",
        LABEL_INSTANCE: cluster,
        LABEL_MANAGED_BY: "etcdpy-operator",
        LABEL_CLUSTER: cluster,
    }


def selector(cluster: str) -> dict[str, str]:
    """What selects the member Pods of a cluster (Services, PDB, scale subresource)."""
    return {LABEL_NAME: "etcdpy", LABEL_CLUSTER: cluster}


def selector_string(cluster: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(cluster).items())


def owner_reference(cluster: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": cluster,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(name: str, cluster: str, namespace: str, uid: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": cluster_labels(cluster),
        "ownerReferences": [owner_reference(cluster, uid)],
    }
    meta.update(extra)
    return meta


def peer_url(spec: Spec, cluster: str, namespace: str, member: str) -> str:
    return f"{spec.peer_scheme}://{member_host(cluster, namespace, member)}:{PEER_PORT}"


def client_url(spec: Spec, cluster: str, namespace: str, member: str) -> str:
    return f"{spec.client_scheme}://{member_host(cluster, namespace, member)}:{CLIENT_PORT}"


def pvc(spec: Spec, cluster: str, namespace: str, uid: str, member: str) -> dict[str, Any]:
    """The member's data volume claim (ReadWriteOnce, the spec's size and class)."""
    meta = _meta(member, cluster, namespace, uid)
    meta["labels"] = {**meta["labels"], LABEL_MEMBER: member}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta,
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": spec.storage_size}}},
    }
    if spec.storage_class:
        body["spec"]["storageClassName"] = spec.storage_class
    return body


def member_args(
    spec: Spec,
    cluster: str,
    namespace: str,
    member: str,
    initial_cluster: dict[str, str],
    initial_state: str,
    token: str,
) -> list[str]:
    """etcdpy flags of one member; `initial_cluster` maps member names to peer URLs."""
    args = [
        f"--name={member}",
        f"--data-dir={DATA_DIR}",
        f"--listen-client-urls={spec.client_scheme}://$(POD_IP):{CLIENT_PORT}",
        f"--advertise-client-urls={client_url(spec, cluster, namespace, member)}",
        f"--listen-peer-urls={spec.peer_scheme}://$(POD_IP):{PEER_PORT}",
        f"--initial-advertise-peer-urls={peer_url(spec, cluster, namespace, member)}",
        f"--listen-metrics-urls=http://$(POD_IP):{METRICS_PORT}",
        "--initial-cluster=" + ",".join(f"{n}={u}" for n, u in sorted(initial_cluster.items())),
        f"--initial-cluster-state={initial_state}",
        f"--initial-cluster-token={token}",
    ]
    for field_name, flag in ETCD_FLAGS.items():
        if field_name in spec.etcd and spec.etcd[field_name] is not None:
            args.append(f"--{flag}={spec.etcd[field_name]}")
    if spec.client_tls_secret:
        args += [
            f"--cert-file={TLS_CLIENT_DIR}/tls.crt",
            f"--key-file={TLS_CLIENT_DIR}/tls.key",
            f"--trusted-ca-file={TLS_CLIENT_DIR}/ca.crt",
            "--client-cert-auth=true",
        ]
    if spec.peer_tls_secret:
        args += [
            f"--peer-cert-file={TLS_PEER_DIR}/tls.crt",
            f"--peer-key-file={TLS_PEER_DIR}/tls.key",
            f"--peer-trusted-ca-file={TLS_PEER_DIR}/ca.crt",
            "--peer-client-cert-auth=true",
        ]
    return args


def _default_affinity(cluster: str) -> dict[str, Any]:
    """Soft anti-affinity: spread members over nodes when possible, never block scheduling."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {LABEL_CLUSTER: cluster}},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }


def _env() -> list[dict[str, Any]]:
    def field(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return [
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        # The system resolver sees a new member's DNS record as soon as it exists; gRPC's bundled
        # c-ares resolver may keep a stale answer for a name that appeared after MemberAdd.
        {"name": "GRPC_DNS_RESOLVER", "value": "native"},
    ]


def pod(
    spec: Spec,
    cluster: str,
    namespace: str,
    uid: str,
    member: str,
    initial_cluster: dict[str, str],
    initial_state: str,
    token: str,
) -> dict[str, Any]:
    """A member Pod: stable hostname under the peer Service, readiness on /readyz, no liveness probe."""
    template = spec.pod_template
    labels = {**(template.get("labels") or {}), **cluster_labels(cluster), LABEL_MEMBER: member}
    annotations = {
        **(template.get("annotations") or {}),
        ANN_SPEC_HASH: spec.pod_hash(),
        ANN_VERSION: spec.version,
        ANN_STATE: initial_state,
    }
    mounts: list[dict[str, Any]] = [{"name": "data", "mountPath": DATA_MOUNT}]
    volumes: list[dict[str, Any]] = [
        {"name": "data", "emptyDir": {}}
        if spec.ephemeral
        else {"name": "data", "persistentVolumeClaim": {"claimName": member}}
    ]
    for vol, secret, path in (
        ("tls-client", spec.client_tls_secret, TLS_CLIENT_DIR),
        ("tls-peer", spec.peer_tls_secret, TLS_PEER_DIR),
    ):
        if secret:
            mounts.append({"name": vol, "mountPath": path, "readOnly": True})
            volumes.append({"name": vol, "secret": {"secretName": secret, "defaultMode": 0o400}})
    container: dict[str, Any] = {
        "name": "etcd",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["etcdpy"],
        "args": member_args(spec, cluster, namespace, member, initial_cluster, initial_state, token),
        "env": _env(),
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT},
            {"name": "peer", "containerPort": PEER_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": METRICS_PORT},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.resources:
        container["resources"] = spec.resources
    pod_spec: dict[str, Any] = {
        "hostname": member,
        "subdomain": peer_service(cluster),
        "restartPolicy": "Always",
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": int(template.get("terminationGracePeriodSeconds", 30)),
        "containers": [container],
        "volumes": volumes,
        "affinity": template.get("affinity") or _default_affinity(cluster),
    }
    for key in ("nodeSelector", "tolerations", "priorityClassName"):
        if template.get(key):
            pod_spec[key] = template[key]
    meta = _meta(member, cluster, namespace, uid, annotations=annotations)
    meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def peer_svc(cluster: str, namespace: str, uid: str) -> dict[str, Any]:
    """Headless Service giving every member a DNS name, ready or not (peers must find a starting member)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(peer_service(cluster), cluster, namespace, uid),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector(cluster),
            "ports": [
                {"name": "client", "port": CLIENT_PORT, "targetPort": CLIENT_PORT},
                {"name": "peer", "port": PEER_PORT, "targetPort": PEER_PORT},
            ],
        },
    }


def client_svc(cluster: str, namespace: str, uid: str) -> dict[str, Any]:
    """The Service clients use: ready members only."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(client_service(cluster), cluster, namespace, uid),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(cluster),
            "ports": [{"name": "client", "port": CLIENT_PORT, "targetPort": CLIENT_PORT}],
        },
    }


def pdb_budget(replicas: int) -> dict[str, int]:
    """Voluntary disruptions may take at most the members a quorum can spare (never below quorum)."""
    spare = replicas - quorum(replicas)
    return {"maxUnavailable": spare} if spare > 0 else {"minAvailable": replicas}


def pdb(cluster: str, namespace: str, uid: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(cluster, cluster, namespace, uid),
        "spec": {"selector": {"matchLabels": selector(cluster)}, **pdb_budget(replicas)},
    }
