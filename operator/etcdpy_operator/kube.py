"""The operator's Kubernetes API adapter: the few reads and writes a reconcile needs, as plain dicts.

Why the official client with `_preload_content=False`: responses stay the API's own JSON (camelCase, the
same shape the builders produce and the tests compare), and the blocking client runs in a worker thread
so the kopf event loop never waits on the network.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from etcdpy_operator import GROUP, KIND, PLURAL, VERSION
from etcdpy_operator.model import LABEL_CLUSTER


class KubeError(Exception):
    """An API call failed for a reason other than the expected 404/409."""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config when running in a Pod, else $KUBECONFIG / ~/.kube/config."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)
    return client.ApiClient()


class Kube:
    """Reads and writes of one operator process; safe to share between clusters (stateless)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    async def _run(self, fn: Callable[..., Any], *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """Call the blocking client in a thread; JSON body as a dict, None for an allowed 404/409."""

        def call() -> Any:
            resp = fn(*args, _preload_content=False, _request_timeout=15, **kwargs)
            data = resp.data
            return json.loads(data) if data else {}

        try:
            return await asyncio.to_thread(call)
        except ApiException as e:
            if missing_ok and e.status in (404, 409):
                return None
            raise KubeError(f"{fn.__name__}: {e.status} {e.reason}: {(e.body or '')[:300]!s}") from e
        except OSError as e:
            raise KubeError(f"{fn.__name__}: {e}") from e

    # -- reads

    async def get_cluster(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._run(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, missing_ok=True
        )
        return result

    async def _list_owned(self, fn: Callable[..., Any], namespace: str, cluster: str) -> list[dict[str, Any]]:
        body = await self._run(fn, namespace, label_selector=f"{LABEL_CLUSTER}={cluster}")
        items = body.get("items") or []
        # Filter again: a selector-blind API (or a proxy) must not make us adopt foreign objects.
        return [i for i in items if (i.get("metadata", {}).get("labels") or {}).get(LABEL_CLUSTER) == cluster]

    async def list_pods(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return await self._list_owned(self.core.list_namespaced_pod, namespace, cluster)

    async def list_pvcs(self, namespace: str, cluster: str) -> list[dict[str, Any]]:
        return await self._list_owned(self.core.list_namespaced_persistent_volume_claim, namespace, cluster)

    async def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._run(
            self.core.read_namespaced_service, name, namespace, missing_ok=True
        )
        return result

    async def get_pdb(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._run(
            self.policy.read_namespaced_pod_disruption_budget, name, namespace, missing_ok=True
        )
        return result

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        body = await self._run(self.core.read_namespaced_secret, name, namespace, missing_ok=True)
        if body is None:
            return None
        return {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}

    # -- writes (idempotent: an existing object on create, a missing one on delete are fine)

    async def create(self, body: dict[str, Any]) -> None:
        ns = body["metadata"]["namespace"]
        kind = body["kind"]
        fns: dict[str, Callable[..., Any]] = {
            "Pod": self.core.create_namespaced_pod,
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim,
            "Service": self.core.create_namespaced_service,
            "PodDisruptionBudget": self.policy.create_namespaced_pod_disruption_budget,
        }
        await self._run(fns[kind], ns, body, missing_ok=True, _content_type="application/json")

    async def patch_pdb(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        await self._run(self.policy.patch_namespaced_pod_disruption_budget, name, namespace, {"spec": spec})

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self._run(self.core.delete_namespaced_pod, name, namespace, missing_ok=True)

    async def delete_pvc(self, namespace: str, name: str) -> None:
        await self._run(self.core.delete_namespaced_persistent_volume_claim, name, namespace, missing_ok=True)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """JSON merge patch of the status subresource (None values delete fields)."""
        await self._run(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
        )

    async def event(self, cluster: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on the EtcdCluster; failing to post one never fails a reconcile."""
        meta = cluster["metadata"]
        stamp = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": "etcdpy-operator"},
            "reportingComponent": "etcdpy-operator",
            "reportingInstance": "etcdpy-operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self._run(self.core.create_namespaced_event, meta["namespace"], body, _content_type="application/json")
        except KubeError:
            pass
