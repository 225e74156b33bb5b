"""The API double and the test node, checked on their own (no operator).

Why: every scenario trusts these two to behave like a cluster; each rule the operator (or kopf)
depends on is pinned here with the `kubernetes` client over HTTP, and the node is shown to run a
real etcdpy member whose data survives its Pod.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from e2ekit import MERGE, DoubleKube, wait_until
from kubernetes.client.rest import ApiException

SAMPLE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.e2e.example.com"},
    "spec": {"group": "e2e.example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                                    "statusReplicasPath": ".status.replicas"}},
                           "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                               "spec": {"type": "object", "properties": {
                                   "replicas": {"type": "integer", "minimum": 1, "maximum": 9, "default": 3},
                                   "mode": {"type": "string", "enum": ["a", "b"]},
                                   "name": {"type": "string", "x-kubernetes-validations": [
                                       {"rule": "self == oldSelf", "message": "name is immutable"}]}}},
                               "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}


def _raw(kube: DoubleKube, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
    """A plain HTTP call (what kubectl or kopf send), raising ApiException as the client would."""
    req = urllib.request.Request(kube.api.configuration.host + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": ctype, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as err:
        raise ApiException(status=err.code, reason=err.read().decode()) from err
    if "watch=" in path:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def test_api_rules(double: DoubleKube, ns: str) -> None:
    """uid/resourceVersion/generation, 409/422, status isolation, finalizers, GC, selectors, CRDs."""
    kube = double
    kube.ext.create_custom_resource_definition(SAMPLE_CRD)
    base = f"/apis/e2e.example.com/v1/namespaces/{ns}/widgets"
    w = kube.custom.create_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", {
        "apiVersion": "e2e.example.com/v1", "kind": "Widget", "metadata": {"generateName": "w-"},
        "spec": {"name": "x", "unknown": 1}, "status": {"ignored": True}})
    meta = w["metadata"]
    assert meta["name"].startswith("w-") and len(meta["name"]) == 7
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1 and meta["creationTimestamp"]
    assert meta["namespace"] == ns and w["spec"] == {"name": "x", "replicas": 3} and "status" not in w
    name = meta["name"]

    # schema: refused with the API server's wording; immutability rule; enum
    with pytest.raises(ApiException) as exc:
        kube.custom.patch_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", name,
                                                   {"spec": {"replicas": 12}}, _content_type=MERGE)
    assert exc.value.status == 422
    assert "spec.replicas: Invalid value: 12: spec.replicas in body should be less than or equal to 9" in \
        json.loads(exc.value.body)["message"]
    with pytest.raises(ApiException) as exc:
        kube.custom.patch_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", name,
                                                   {"spec": {"name": "y"}}, _content_type=MERGE)
    assert exc.value.status == 422 and "name is immutable" in json.loads(exc.value.body)["message"]

    # generation moves with spec only; status only through /status
    w2 = kube.custom.patch_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", name,
                                                    {"spec": {"replicas": 5}, "status": {"replicas": 9}},
                                                    _content_type=MERGE)
    assert w2["metadata"]["generation"] == 2 and "status" not in w2
    w3 = kube.custom.patch_namespaced_custom_object_status("e2e.example.com", "v1", ns, "widgets", name,
                                                           {"spec": {"replicas": 1}, "status": {"replicas": 4}},
                                                           _content_type=MERGE)
    assert w3["metadata"]["generation"] == 2 and w3["spec"]["replicas"] == 5 and w3["status"] == {"replicas": 4}
    scale = _raw(kube, "GET", f"{base}/{name}/scale")
    assert scale["spec"]["replicas"] == 5 and scale["status"]["replicas"] == 4

    # optimistic concurrency: a stale resourceVersion is 409, a failed json-patch test is 422
    stale = dict(w3, metadata={**w3["metadata"], "resourceVersion": meta["resourceVersion"]})
    with pytest.raises(ApiException) as exc:
        kube.custom.replace_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", name, stale)
    assert exc.value.status == 409
    with pytest.raises(ApiException) as exc:
        _raw(kube, "PATCH", f"{base}/{name}", [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
                                               {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}],
             "application/json-patch+json")
    assert exc.value.status == 422 and "testing value /metadata/resourceVersion failed" in exc.value.reason

    # finalizers hold a deleted object; removing the last one removes it; owned objects follow
    kube.custom.patch_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", name,
                                               {"metadata": {"finalizers": ["e2e/hold"]}}, _content_type=MERGE)
    kube.core.create_namespaced_config_map(ns, {"metadata": {"name": "owned", "labels": {"a": "b"}, "ownerReferences": [
        {"apiVersion": "e2e.example.com/v1", "kind": "Widget", "name": name, "uid": meta["uid"],
         "controller": True}]}})
    kube.core.create_namespaced_config_map(ns, {"metadata": {"name": "free", "labels": {"a": "c"}}})
    assert [c.metadata.name for c in kube.core.list_namespaced_config_map(ns, label_selector="a in (b)").items] == \
        ["owned"]
    assert [c.metadata.name for c in kube.core.list_namespaced_config_map(
        ns, field_selector="metadata.name!=owned").items] == ["free"]
    kube.custom.delete_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", name)
    held = kube.custom.get_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", name)
    assert held["metadata"]["deletionTimestamp"]
    kube.custom.patch_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", name,
                                               {"metadata": {"finalizers": None}}, _content_type=MERGE)
    with pytest.raises(ApiException) as exc:
        kube.custom.get_namespaced_custom_object("e2e.example.com", "v1", ns, "widgets", name)
    assert exc.value.status == 404
    wait_until(lambda: [c.metadata.name for c in kube.core.list_namespaced_config_map(ns).items] == ["free"], 10,
               "garbage collection of the owned ConfigMap")
    kube.ext.delete_custom_resource_definition("widgets.e2e.example.com")


def test_watch_resumes_and_filters(double: DoubleKube, ns: str) -> None:
    """A watch from a resourceVersion replays what followed, filtered by label, as JSON lines."""
    kube = double
    lst = kube.core.list_namespaced_config_map(ns)
    for i in range(3):
        kube.core.create_namespaced_config_map(ns, {"metadata": {"name": f"c{i}", "labels": {"n": str(i % 2)}}})
    events = _raw(kube, "GET", f"/api/v1/namespaces/{ns}/configmaps?watch=1&labelSelector=n%3D0&timeoutSeconds=1"
                               f"&resourceVersion={lst.metadata.resource_version}")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "c0"), ("ADDED", "c2")]


def test_pod_runs_etcdpy_and_its_volume_survives(double: DoubleKube, ns: str) -> None:
    """A Pod running etcdpy on a PVC: Ready from its probe, restarted after a kill, data kept across Pods."""
    import grpc
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    kube = double
    kube.core.create_namespaced_service(ns, {"metadata": {"name": "peers"}, "spec": {
        "clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "m"},
        "ports": [{"name": "peer", "port": 2380}]}})
    kube.core.create_namespaced_service(ns, {"metadata": {"name": "client"}, "spec": {
        "selector": {"app": "m"}, "ports": [{"name": "client", "port": 2379}]}})
    kube.core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "m0"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})

    def pod_body() -> dict[str, Any]:
        peer = "http://$(POD_NAME).peers.$(POD_NAMESPACE).svc.cluster.local:2380"
        return {"metadata": {"name": "m0", "labels": {"app": "m"}}, "spec": {
            "hostname": "m0", "subdomain": "peers", "terminationGracePeriodSeconds": 10,
            "containers": [{"name": "etcd", "image": "etcdpy:test", "command": ["etcdpy"], "args": [
                "--name=$(POD_NAME)", "--data-dir=/var/lib/etcd/data",
                "--listen-client-urls=http://$(POD_IP):2379", "--listen-peer-urls=http://$(POD_IP):2380",
                "--listen-metrics-urls=http://$(POD_IP):2381",
                "--advertise-client-urls=http://$(POD_NAME).peers.$(POD_NAMESPACE).svc:2379",
                f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=$(POD_NAME)={peer}"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"name": "metrics", "containerPort": 2381}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 1},
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/etcd"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "m0"}}]}}

    def ready_pod() -> Any:
        p = kube.core.read_namespaced_pod("m0", ns)
        return p if kube.pod_ready(p) else None

    kube.core.create_namespaced_pod(ns, pod_body())
    pod = wait_until(ready_pod, 60, "the etcdpy pod to be Ready")
    assert kube.core.read_namespaced_persistent_volume_claim("m0", ns).status.phase == "Bound"
    hosts = (kube.state / "hosts").read_text()
    assert f"{pod.status.pod_ip} m0.peers.{ns}.svc.cluster.local" in hosts
    svc_ip = kube.core.read_namespaced_service("client", ns).spec.cluster_ip

    def kv(endpoint: str) -> Any:
        return rpc_pb2_grpc.KVStub(grpc.insecure_channel(endpoint))

    kv(f"{pod.status.pod_ip}:2379").Put(rpc_pb2.PutRequest(key=b"k", value=b"v1"), timeout=5)
    got = kv(f"{svc_ip}:2379").Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)  # through the Service proxy
    assert got.kvs[0].value == b"v1"

    # a node-level kill: the kubelet restarts the container (restartPolicy Always) on the same volume
    kube.kill_pod_process(ns, "m0")
    wait_until(lambda: kube.core.read_namespaced_pod("m0", ns).status.container_statuses[0].restart_count == 1, 60,
               "the container to be restarted")
    pod = wait_until(ready_pod, 60, "Ready after the restart")
    st = pod.status.container_statuses[0]
    assert st.last_state.terminated.exit_code == 137 and st.state.running

    # graceful deletion: the object stays until the process is gone; the claim is protected meanwhile
    kube.core.delete_namespaced_pod("m0", ns)
    kube.core.delete_namespaced_persistent_volume_claim("m0", ns)
    volume = kube.volume_dir(ns, "m0")
    wait_until(lambda: not kube.core.list_namespaced_pod(ns).items, 30, "the pod to be gone")
    kube.core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": "keep"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    wait_until(lambda: not kube.core.list_namespaced_persistent_volume_claim(ns, field_selector="metadata.name=m0")
               .items, 30, "the deleted claim to go once unused")
    wait_until(lambda: not volume.exists(), 10, "the volume directory to be reclaimed")

    # a pod on a new claim starts empty; deleted and recreated on that claim, it finds its data
    body = pod_body()
    body["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "keep"
    kube.core.create_namespaced_pod(ns, body)
    pod = wait_until(ready_pod, 60, "a pod on the new claim")
    kv(f"{pod.status.pod_ip}:2379").Put(rpc_pb2.PutRequest(key=b"k", value=b"v2"), timeout=5)
    kube.core.delete_namespaced_pod("m0", ns)
    wait_until(lambda: not kube.core.list_namespaced_pod(ns).items, 30, "the pod to be gone")
    kube.core.create_namespaced_pod(ns, body)
    pod = wait_until(ready_pod, 60, "the recreated pod on the same claim")
    got = kv(f"{pod.status.pod_ip}:2379").Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)
    assert got.kvs[0].value == b"v2", "the data written before the pod was deleted survived on its volume"
    reasons = {e.reason for e in kube.core.list_namespaced_event(ns).items}
    assert {"Scheduled", "Started", "Killing"} <= reasons


def test_crash_loop_back_off(double: DoubleKube, ns: str) -> None:
    """A failing container is restarted with the kubelet's back-off and reported as CrashLoopBackOff."""
    kube = double
    kube.core.create_namespaced_pod(ns, {"metadata": {"name": "bad"}, "spec": {"containers": [
        {"name": "c", "image": "x", "command": ["sh", "-c", "echo $(MSG); exit 3"],
         "env": [{"name": "MSG", "value": "hello"}]}]}})

    def backing_off() -> Any:
        st = kube.core.read_namespaced_pod("bad", ns).status.container_statuses
        return st and st[0].state.waiting and st[0].state.waiting.reason == "CrashLoopBackOff" and st[0]
    st = wait_until(backing_off, 30, "CrashLoopBackOff")
    assert st.last_state.terminated.exit_code == 3
    started = time.monotonic()
    kube.core.delete_namespaced_pod("bad", ns)
    wait_until(lambda: not kube.core.list_namespaced_pod(ns).items, 30, "the pod to be deleted during back-off")
    assert time.monotonic() - started < 30
