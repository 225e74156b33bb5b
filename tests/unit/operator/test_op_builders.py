"""Pod, PVC, Service and PDB manifests: the fields the contract, the test kubelet and Kubernetes rely on."""

from __future__ import annotations

from dataclasses import replace

import pytest
from etcdpy_operator import builders
from etcdpy_operator.model import (
    ANN_SPEC_HASH,
    ANN_STATE,
    LABEL_CLUSTER,
    LABEL_MEMBER,
    Spec,
)

SPEC = Spec(replicas=3, version="0.1.0", image="etcdpy:0.1.0")
IC = {"demo-0": "http://demo-0.demo-peers.ns.svc:2380", "demo-1": "http://demo-1.demo-peers.ns.svc:2380"}


def _pod(spec: Spec = SPEC, state: str = "existing") -> dict:
    return builders.pod(spec, "demo", "ns", "uid-1", "demo-1", IC, state, "tok-1")


def _args(pod: dict) -> dict[str, str]:
    out = {}
    for a in pod["spec"]["containers"][0]["args"]:
        k, _, v = a.partition("=")
        out[k] = v
    return out


def test_pod_identity_and_dns() -> None:
    pod = _pod()
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "demo-1" and meta["namespace"] == "ns"
    assert meta["labels"][LABEL_MEMBER] == "demo-1" and meta["labels"][LABEL_CLUSTER] == "demo"
    assert meta["labels"]["app.kubernetes.io/name"] == "etcdpy"
    assert meta["labels"]["app.kubernetes.io/instance"] == "demo"
    (owner,) = meta["ownerReferences"]
    assert owner["controller"] is True and owner["uid"] == "uid-1" and owner["kind"] == "EtcdCluster"
    assert spec["hostname"] == "demo-1" and spec["subdomain"] == "demo-peers"
    assert spec["restartPolicy"] == "Always"
    assert spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]


def test_pod_container_flags() -> None:
    pod = _pod()
    (c,) = pod["spec"]["containers"]
    assert c["name"] == "etcd" and c["command"] == ["etcdpy"] and c["image"] == "etcdpy:0.1.0"
    args = _args(pod)
    assert args["--name"] == "demo-1"
    assert args["--listen-client-urls"] == "http://$(POD_IP):2379"
    assert args["--listen-peer-urls"] == "http://$(POD_IP):2380"
    assert args["--listen-metrics-urls"] == "http://$(POD_IP):2381"
    assert args["--advertise-client-urls"] == "http://demo-1.demo-peers.ns.svc:2379"
    assert args["--initial-advertise-peer-urls"] == "http://demo-1.demo-peers.ns.svc:2380"
    assert args["--initial-cluster"] == ",".join(f"{k}={v}" for k, v in sorted(IC.items()))
    assert args["--initial-cluster-state"] == "existing"
    assert args["--initial-cluster-token"] == "tok-1"
    assert args["--data-dir"].startswith("/var/lib/etcd")
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP"}
    assert {"name": "GRPC_DNS_RESOLVER", "value": "native"} in c["env"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 2381}
    assert "livenessProbe" not in c
    assert pod["metadata"]["annotations"][ANN_STATE] == "existing"
    assert pod["metadata"]["annotations"][ANN_SPEC_HASH] == SPEC.pod_hash()


def test_pod_volumes() -> None:
    pod = _pod()
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "demo-1"}
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["data"] == "/var/lib/etcd"
    eph = builders.pod(replace(SPEC, ephemeral=True), "demo", "ns", "u", "demo-1", IC, "existing", "t")
    assert {v["name"]: v for v in eph["spec"]["volumes"]}["data"] == {"name": "data", "emptyDir": {}}


def test_pod_etcd_settings_and_tls() -> None:
    spec = replace(
        SPEC,
        etcd={"snapshotCount": 500, "heartbeatInterval": 50, "electionTimeout": 500, "autoCompactionMode": "revision",
              "autoCompactionRetention": "100", "quotaBackendBytes": 1024},
        client_tls_secret="cli",
        peer_tls_secret="peer",
    )
    pod = _pod(spec)
    args = _args(pod)
    assert args["--snapshot-count"] == "500" and args["--heartbeat-interval"] == "50"
    assert args["--election-timeout"] == "500" and args["--auto-compaction-mode"] == "revision"
    assert args["--auto-compaction-retention"] == "100" and args["--quota-backend-bytes"] == "1024"
    assert args["--listen-client-urls"].startswith("https://") and args["--listen-peer-urls"].startswith("https://")
    assert args["--advertise-client-urls"].startswith("https://")
    assert args["--cert-file"] == "/etc/etcdpy/tls/client/tls.crt"
    assert args["--trusted-ca-file"] == "/etc/etcdpy/tls/client/ca.crt" and args["--client-cert-auth"] == "true"
    assert args["--peer-key-file"] == "/etc/etcdpy/tls/peer/tls.key" and args["--peer-client-cert-auth"] == "true"
    assert args["--listen-metrics-urls"].startswith("http://")  # probes stay plain HTTP
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["tls-client"]["secret"]["secretName"] == "cli"
    assert vols["tls-peer"]["secret"]["secretName"] == "peer"
    assert spec.pod_hash() != SPEC.pod_hash()


def test_pod_overrides() -> None:
    spec = replace(
        SPEC,
        pod_template={
            "labels": {"team": "a", LABEL_CLUSTER: "evil"},
            "annotations": {"x": "y"},
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {"x": 1}},
            "priorityClassName": "high",
            "terminationGracePeriodSeconds": 60,
        },
        resources={"requests": {"cpu": "100m"}},
    )
    pod = _pod(spec)
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["metadata"]["labels"][LABEL_CLUSTER] == "demo"  # ours win over overrides
    assert pod["metadata"]["annotations"]["x"] == "y"
    s = pod["spec"]
    assert s["nodeSelector"] == {"disk": "ssd"} and s["tolerations"][0]["key"] == "k"
    assert s["affinity"] == {"nodeAffinity": {"x": 1}} and s["priorityClassName"] == "high"
    assert s["terminationGracePeriodSeconds"] == 60
    assert s["containers"][0]["resources"] == {"requests": {"cpu": "100m"}}


def test_pvc() -> None:
    body = builders.pvc(replace(SPEC, storage_size="5Gi", storage_class="fast"), "demo", "ns", "u", "demo-2")
    assert body["metadata"]["name"] == "demo-2" and body["metadata"]["labels"][LABEL_MEMBER] == "demo-2"
    assert body["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert body["spec"]["storageClassName"] == "fast" and body["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in builders.pvc(SPEC, "demo", "ns", "u", "demo-2")["spec"]


def test_services() -> None:
    peer = builders.peer_svc("demo", "ns", "u")
    assert peer["metadata"]["name"] == "demo-peers"
    assert peer["spec"]["clusterIP"] == "None" and peer["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in peer["spec"]["ports"]} == {2379, 2380}
    client = builders.client_svc("demo", "ns", "u")
    assert client["metadata"]["name"] == "demo-client"
    assert client["spec"]["selector"] == peer["spec"]["selector"] == builders.selector("demo")


@pytest.mark.parametrize(
    "replicas,budget",
    [(1, {"minAvailable": 1}), (2, {"minAvailable": 2}), (3, {"maxUnavailable": 1}), (4, {"maxUnavailable": 1}),
     (5, {"maxUnavailable": 2}), (9, {"maxUnavailable": 4})],
)
def test_pdb_keeps_quorum(replicas: int, budget: dict[str, int]) -> None:
    body = builders.pdb("demo", "ns", "u", replicas)
    assert body["apiVersion"] == "policy/v1"
    assert body["spec"]["selector"]["matchLabels"] == builders.selector("demo")
    assert {k: v for k, v in body["spec"].items() if k != "selector"} == budget


def test_member_pod_runs_as_the_image_user_and_owns_its_volume() -> None:
    """A freshly provisioned volume is root-owned: without fsGroup the image's non-root user cannot
    create its data dir there (seen with podman and a root-owned volume)."""
    ctx = _pod()["spec"]["securityContext"]
    uid = _dockerfile_uid()
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == uid and ctx["fsGroup"] == uid


def _dockerfile_uid() -> int:
    """The USER of the image's final stage, so the operator and the Dockerfile cannot drift apart."""
    from pathlib import Path

    dockerfile = Path(__file__).resolve().parents[3] / "Dockerfile"
    users = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
    return int(users[-1].split(":")[0])
