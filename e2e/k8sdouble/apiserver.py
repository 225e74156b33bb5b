"""A small Kubernetes API server double: in-memory objects served over HTTP on 127.0.0.1.

Why our own rather than kmock: kmock 0.8 lacks most of what kopf and the operator rely on
(uid/resourceVersion/generation, 409 and 422 semantics, PUT, selectors, watch resumption,
finalizers, garbage collection, CRD registration and schema validation), and completing it
would mean overriding most of its request handling anyway. This module implements the API
machinery's rules directly: one store, one global resourceVersion, one event history that
watches resume from, discovery that follows CRDs created through the API, and the few
admission behaviours a real cluster has for the kinds the operator uses (Pod graceful
deletion and binding, PVC protection, Service cluster IPs, Secret stringData, Namespace
termination). It is not a controller: nothing here runs Pods (see kubelet.py).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import ipaddress
import json
import random
import string
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import patching, schema, selectors

Obj = dict[str, Any]


def now_iso() -> str:
    """An RFC 3339 timestamp in UTC with second precision, as the API server writes them."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error answered as a Kubernetes `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}


@dataclass
class ResourceType:
    """One served resource: enough to route, discover, validate and scale it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    status: bool = False
    scale: Obj | None = None
    schema: Obj | None = None
    crd: str | None = None  # the CRD object's name when registered from one
    columns: list[Obj] = field(default_factory=list)  # additionalPrinterColumns

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def gr(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


BUILTINS = [
    ResourceType("", "v1", "namespaces", "Namespace", False, "namespace", ["ns"], status=True),
    ResourceType("", "v1", "pods", "Pod", True, "pod", ["po"], status=True),
    ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, "persistentvolumeclaim",
                 ["pvc"], status=True),
    ResourceType("", "v1", "persistentvolumes", "PersistentVolume", False, "persistentvolume", ["pv"], status=True),
    ResourceType("", "v1", "services", "Service", True, "service", ["svc"], status=True),
    ResourceType("", "v1", "endpoints", "Endpoints", True, "endpoints", ["ep"]),
    ResourceType("", "v1", "events", "Event", True, "event", ["ev"]),
    ResourceType("", "v1", "secrets", "Secret", True, "secret"),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, "configmap", ["cm"]),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount", ["sa"]),
    ResourceType("", "v1", "nodes", "Node", False, "node", ["no"], status=True),
    ResourceType("apps", "v1", "deployments", "Deployment", True, "deployment", ["deploy"], status=True),
    ResourceType("apps", "v1", "statefulsets", "StatefulSet", True, "statefulset", ["sts"], status=True),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, "poddisruptionbudget",
                 ["pdb"], status=True),
    ResourceType("events.k8s.io", "v1", "events", "Event", True, "event", ["ev"]),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True, "role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, "rolebinding"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, "clusterrole"),
    ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False,
                 "clusterrolebinding"),
    ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
                 "customresourcedefinition", ["crd", "crds"], status=True),
]

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
HISTORY = 20000  # watch events kept for resumption; older resourceVersions answer 410 Gone


@dataclass
class Watcher:
    """One open watch: what it selects and where its events go."""

    key: tuple[str, str]
    namespace: str | None
    name: str | None
    match: Callable[[Obj], bool]
    queue: asyncio.Queue[Obj | None]


class Store:
    """All objects, the resourceVersion counter, the event history, and the API rules on them."""

    def __init__(self, service_base: str = "127.43.128.0") -> None:
        self.service_base = ipaddress.ip_address(service_base)
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self.rv = 1
        self.history: deque[tuple[int, tuple[str, str], str, Obj, Obj | None]] = deque(maxlen=HISTORY)
        self.watchers: list[Watcher] = []
        self.next_ip = 1
        for rt in BUILTINS:
            self.register(rt)
        for ns in ("default", "kube-system", "kube-public"):
            self.create(self.type("", "v1", "namespaces"), None, {"metadata": {"name": ns}})

    # ---- resource types -------------------------------------------------------------------
    def register(self, rt: ResourceType) -> None:
        self.types[(rt.group, rt.version, rt.plural)] = rt
        self.objects.setdefault(rt.store_key, {})

    def type(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.types.get((group, version, plural))
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return rt

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        for rt in self.types.values():
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        return None

    # ---- reads ------------------------------------------------------------------------------
    def get(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        obj = self.objects[rt.store_key].get((ns or "", name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rt.gr()} "{name}" not found',
                           {"name": name, "group": rt.group, "kind": rt.plural})
        return obj

    def find(self, rt: ResourceType, ns: str | None, name: str) -> Obj | None:
        return self.objects[rt.store_key].get((ns or "", name))

    def list(self, rt: ResourceType, ns: str | None, match: Callable[[Obj], bool]) -> list[Obj]:
        items = [o for (ons, _), o in sorted(self.objects[rt.store_key].items()) if ns is None or ons == ns]
        return [self.view(rt, o) for o in items if match(o)]

    def view(self, rt: ResourceType, obj: Obj) -> Obj:
        """A copy as served at this resource's version (no conversion: the schema is the same)."""
        out = copy.deepcopy(obj)
        out["apiVersion"] = rt.api_version
        return out

    # ---- events -----------------------------------------------------------------------------
    def _bump(self, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def _deliver(self, w: Watcher, kind: str, obj: Obj, old: Obj | None) -> None:
        """Send an event to a watcher, turning selector transitions into ADDED/DELETED as the server does."""
        meta = obj["metadata"]
        if w.namespace is not None and meta.get("namespace", "") != w.namespace:
            return
        if w.name is not None and meta["name"] != w.name:
            return
        now, before = w.match(obj), (old is not None and w.match(old))
        if kind == "MODIFIED" and now and not before:
            kind = "ADDED"
        elif kind == "MODIFIED" and before and not now:
            kind, now = "DELETED", True
        if now:
            w.queue.put_nowait({"type": kind, "object": copy.deepcopy(obj)})

    def watch(self, rt: ResourceType, ns: str | None, name: str | None, match: Callable[[Obj], bool],
              since: str | None) -> Watcher:
        """Open a watch; events after `since` are replayed (410 Gone if they fell out of history)."""
        q: asyncio.Queue[Obj | None] = asyncio.Queue()
        w = Watcher(rt.store_key, ns, name, match, q)
        if since in (None, "", "0"):
            for obj in self.list(rt, ns, lambda o: match(o) and (name is None or o["metadata"]["name"] == name)):
                q.put_nowait({"type": "ADDED", "object": obj})
        else:
            try:
                start = int(since)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"invalid resource version {since!r}") from exc
            oldest = self.history[0][0] if self.history else self.rv
            if len(self.history) == self.history.maxlen and start < oldest:
                q.put_nowait({"type": "ERROR", "object": ApiError(
                    410, "Expired", f"too old resource version: {start} ({oldest})").status()})
                q.put_nowait(None)
            else:
                for rv, key, kind, obj, old in self.history:
                    if rv > start and key == rt.store_key:
                        self._deliver(w, kind, self.view(rt, obj), old)
        self.watchers.append(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        if w in self.watchers:
            self.watchers.remove(w)

    def _emit_filtered(self, rt: ResourceType, kind: str, obj: Obj, old: Obj | None) -> None:
        self.history.append((self.rv, rt.store_key, kind, copy.deepcopy(obj), old))
        for w in list(self.watchers):
            if w.key == rt.store_key:
                self._deliver(w, kind, obj, old)

    # ---- writes -----------------------------------------------------------------------------
    def create(self, rt: ResourceType, ns: str | None, body: Obj, dry_run: bool = False) -> Obj:
        """POST: name/generateName, namespace from the URL, admission defaults, validation, ADDED."""
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {}) or {}
        obj["metadata"] = meta
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
            meta["namespace"] = ns
            nso = self.find(self.types[("", "v1", "namespaces")], None, ns or "")
            if nso is None:
                raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
            if nso["metadata"].get("deletionTimestamp"):
                raise ApiError(403, "Forbidden", f'{rt.plural} "{meta.get("name")}" is forbidden: unable to create '
                                                 f"new content in namespace {ns} because it is being terminated")
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits,
                                                                            k=5))
            else:
                raise ApiError(422, "Invalid", f'{rt.kind} "" is invalid: metadata.name: Required value: name or '
                                               "generateName is required")
        name = meta["name"]
        if self.find(rt, ns, name) is not None:
            raise ApiError(409, "AlreadyExists", f'{rt.gr()} "{name}" already exists',
                           {"name": name, "group": rt.group, "kind": rt.plural})
        for k in ("resourceVersion", "uid", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(k, None)
        if rt.status and rt.crd:
            obj.pop("status", None)
        self._admit(rt, obj, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
        if dry_run:
            return self.view(rt, obj)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.objects[rt.store_key][(ns or "", name)] = obj
        if rt.plural == "customresourcedefinitions":
            self._register_crd(obj)
        self._emit_filtered(rt, "ADDED", obj, None)
        return self.view(rt, obj)

    def _admit(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        """Defaults and checks a real API server's registry and admission plugins apply."""
        if rt.schema is not None:
            schema.apply_defaults(obj, rt.schema)
            pruned = schema.prune(obj, rt.schema)
            obj.clear()
            obj.update(pruned)
            errors = schema.validate(obj, rt.schema, old)
            if errors:
                text = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
                name = obj["metadata"].get("name", "")
                raise ApiError(422, "Invalid", f'{rt.kind}.{rt.group} "{name}" is invalid: {text}',
                               {"name": name, "group": rt.group, "kind": rt.kind,
                                "causes": [{"reason": "FieldValueInvalid", "message": e} for e in errors]})
        hook = getattr(self, f"_admit_{rt.group.replace('.', '_')}_{rt.plural}", None)
        if hook is not None:
            hook(obj, old)

    def _admit__pods(self, obj: Obj, old: Obj | None) -> None:
        spec = obj.setdefault("spec", {})
        if old is None:
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            for c in spec.get("containers") or []:
                c.setdefault("imagePullPolicy", "IfNotPresent")
                c.setdefault("terminationMessagePath", "/dev/termination-log")
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            if not spec.get("containers"):
                raise ApiError(422, "Invalid", f'Pod "{obj["metadata"]["name"]}" is invalid: spec.containers: '
                                               "Required value")

    def _admit__persistentvolumeclaims(self, obj: Obj, old: Obj | None) -> None:
        if old is None:
            fins = obj["metadata"].setdefault("finalizers", [])
            if "kubernetes.io/pvc-protection" not in fins:
                fins.append("kubernetes.io/pvc-protection")
            obj["status"] = {"phase": "Pending"}

    def _admit__services(self, obj: Obj, old: Obj | None) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        if old is not None:
            spec["clusterIP"] = old["spec"].get("clusterIP")
        elif spec.get("clusterIP") != "None":
            spec["clusterIP"] = str(self.service_base + self.next_ip)
            self.next_ip += 1
        if spec.get("clusterIP"):
            spec["clusterIPs"] = [spec["clusterIP"]]
        for p in spec.get("ports") or []:
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
        obj.setdefault("status", {"loadBalancer": {}})

    def _admit__secrets(self, obj: Obj, old: Obj | None) -> None:
        data = obj.setdefault("data", {}) or {}
        obj["data"] = data
        for k, v in (obj.pop("stringData", None) or {}).items():
            data[k] = base64.b64encode(v.encode()).decode()
        obj.setdefault("type", "Opaque")

    def _admit__namespaces(self, obj: Obj, old: Obj | None) -> None:
        if old is None:
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]

    def _register_crd(self, crd: Obj) -> None:
        """Serve the custom resource a CRD declares (what the apiextensions controller does)."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for v in spec.get("versions") or []:
            if not v.get("served", True):
                continue
            subs = v.get("subresources") or {}
            self.register(ResourceType(
                spec["group"], v["name"], names["plural"], names["kind"], spec.get("scope") == "Namespaced",
                names.get("singular", ""), names.get("shortNames") or [], status="status" in subs,
                scale=subs.get("scale"), schema=((v.get("schema") or {}).get("openAPIV3Schema")),
                crd=crd["metadata"]["name"], columns=v.get("additionalPrinterColumns") or []))
        crd["status"] = {
            "acceptedNames": names, "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
            "conditions": [{"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": now_iso()}
                           for t, r, m in (("NamesAccepted", "NoConflicts", "no conflicts found"),
                                           ("Established", "InitialNamesAccepted",
                                            "the initial names have been accepted"))]}

    def _unregister_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        for v in spec.get("versions") or []:
            self.types.pop((spec["group"], v["name"], spec["names"]["plural"]), None)
        key = (spec["group"], spec["names"]["plural"])
        for obj in list(self.objects.get(key, {}).values()):
            self._remove(ResourceType(spec["group"], "", key[1], "", True), obj)
        self.objects.pop(key, None)

    def update(self, rt: ResourceType, ns: str | None, name: str, body: Obj, sub: str | None,
               dry_run: bool = False) -> Obj:
        """PUT: optimistic concurrency on resourceVersion, then the shared update rules."""
        old = self.get(rt, ns, name)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        given = (body.get("metadata") or {}).get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            raise self._conflict(rt, name)
        if (body.get("metadata") or {}).get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        return self._commit(rt, old, copy.deepcopy(body), sub, dry_run)

    def patch(self, rt: ResourceType, ns: str | None, name: str, ctype: str, patch: Any, sub: str | None,
              dry_run: bool = False) -> Obj:
        """PATCH in the three formats; a failed json-patch `test` is 422, a stale resourceVersion 409."""
        old = self.get(rt, ns, name)
        base = self.view(rt, old)
        if sub == "scale":
            return self._patch_scale(rt, old, ctype, patch, dry_run)
        new = self._apply_patch(rt, base, ctype, patch)
        given = (new.get("metadata") or {}).get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            raise self._conflict(rt, name)
        return self._commit(rt, old, new, sub, dry_run)

    def _apply_patch(self, rt: ResourceType, base: Obj, ctype: str, patch: Any) -> Obj:
        try:
            if ctype.startswith("application/json-patch+json"):
                return patching.json_patch(base, patch)
            if ctype.startswith("application/merge-patch+json"):
                return patching.merge_patch(base, patch)
            if ctype.startswith("application/strategic-merge-patch+json"):
                if rt.crd:
                    raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                                   "format - accepted media types include: application/json-patch+json, "
                                   "application/merge-patch+json, application/apply-patch+yaml")
                return patching.strategic_merge(base, patch)
        except patching.PatchError as exc:
            if exc.test_failed:
                raise ApiError(422, "Invalid", str(exc)) from exc
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                                           f"{exc}") from exc
        raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted "
                       f"media types include: application/json-patch+json, application/merge-patch+json, "
                       f"application/strategic-merge-patch+json ({ctype} given)")

    def _conflict(self, rt: ResourceType, name: str) -> ApiError:
        return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.gr()} "{name}": the object has been '
                                         "modified; please apply your changes to the latest version and try again",
                        {"name": name, "group": rt.group, "kind": rt.plural})

    def _commit(self, rt: ResourceType, old: Obj, new: Obj, sub: str | None, dry_run: bool) -> Obj:
        """The update rules shared by PUT and PATCH: subresource isolation, generation, finalizers."""
        if sub == "status":
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif sub is not None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({sub})")
        else:
            if rt.status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            meta = new.setdefault("metadata", {}) or {}
            new["metadata"] = meta
            for k in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation", "generateName"):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
            if old["metadata"].get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
                if added:
                    raise ApiError(422, "Invalid", f'{rt.kind} "{meta["name"]}" is invalid: metadata.finalizers: '
                                                   "Forbidden: no new finalizers can be added if the object is "
                                                   "being deleted")
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if sub is None:
            self._admit(rt, new, old)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return self.view(rt, old)  # a no-op write does not bump the resourceVersion
        ignored = ("metadata", "status") if rt.status else ("metadata",)
        if {k: v for k, v in new.items() if k not in ignored} != {k: v for k, v in old.items() if k not in ignored}:
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if dry_run:
            return self.view(rt, new)
        self._bump(new)
        self.objects[rt.store_key][(new["metadata"].get("namespace", ""), new["metadata"]["name"])] = new
        if rt.plural == "customresourcedefinitions":
            self._register_crd(new)
        self._emit_filtered(rt, "MODIFIED", new, old)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers") and \
                not self._graceful_pending(rt, new):
            self._remove(rt, new)
        return self.view(rt, new)

    def _graceful_pending(self, rt: ResourceType, obj: Obj) -> bool:
        """A Pod on a node in graceful deletion stays until the kubelet confirms (delete with grace 0)."""
        return rt.plural == "pods" and rt.group == "" and bool(obj["metadata"].get("deletionGracePeriodSeconds"))

    # ---- scale subresource --------------------------------------------------------------------
    def _scale_view(self, rt: ResourceType, obj: Obj) -> Obj:
        assert rt.scale is not None

        def at(path: str | None) -> Any:
            cur: Any = obj
            for part in (path or "").strip(".").split("."):
                cur = cur.get(part) if isinstance(cur, dict) else None
            return cur

        meta = obj["metadata"]
        status = {"replicas": at(rt.scale.get("statusReplicasPath")) or 0}
        if rt.scale.get("labelSelectorPath") and at(rt.scale["labelSelectorPath"]) is not None:
            status["selector"] = at(rt.scale["labelSelectorPath"])
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": at(rt.scale.get("specReplicasPath")) or 0}, "status": status}

    def get_scale(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        if rt.scale is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return self._scale_view(rt, self.get(rt, ns, name))

    def _patch_scale(self, rt: ResourceType, old: Obj, ctype: str, patch: Any, dry_run: bool) -> Obj:
        if rt.scale is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        scale = self._apply_patch(ResourceType("autoscaling", "v1", "scale", "Scale", True),
                                  self._scale_view(rt, old), ctype, patch)
        return self.put_scale(rt, old, scale, dry_run)

    def put_scale(self, rt: ResourceType, old: Obj, scale: Obj, dry_run: bool = False) -> Obj:
        assert rt.scale is not None
        given = (scale.get("metadata") or {}).get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            raise self._conflict(rt, old["metadata"]["name"])
        new = copy.deepcopy(old)
        parts = rt.scale["specReplicasPath"].strip(".").split(".")
        cur = new
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = (scale.get("spec") or {}).get("replicas")
        saved = self._commit(rt, old, new, None, dry_run)
        return self._scale_view(rt, saved)

    # ---- deletion ----------------------------------------------------------------------------
    def delete(self, rt: ResourceType, ns: str | None, name: str, options: Obj, dry_run: bool = False) -> Obj:
        """DELETE: preconditions, Pod graceful deletion, finalizers, then removal and garbage collection."""
        obj = self.get(rt, ns, name)
        meta = obj["metadata"]
        pre = options.get("preconditions") or {}
        if (pre.get("uid") and pre["uid"] != meta["uid"]) or \
                (pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]):
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.gr()} "{name}": Precondition '
                                            "failed")
        if dry_run:
            return self.view(rt, obj)
        grace = options.get("gracePeriodSeconds")
        if rt.group == "" and rt.plural == "pods":
            if grace is None:
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            running = obj["spec"].get("nodeName") and obj.get("status", {}).get("phase") not in ("Succeeded",
                                                                                                  "Failed")
            current = meta.get("deletionGracePeriodSeconds")
            if running and grace > 0 and (current is None or grace < current):
                new = copy.deepcopy(obj)
                deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=grace)
                if not meta.get("deletionTimestamp") or grace < (current or grace + 1):
                    new["metadata"]["deletionTimestamp"] = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
                new["metadata"]["deletionGracePeriodSeconds"] = grace
                return self._store_modified(rt, obj, new)
            if running and grace > 0:
                return self.view(rt, obj)
        if rt.plural == "namespaces" and rt.group == "":
            return self._terminate_namespace(rt, obj)
        if meta.get("finalizers") or (options.get("propagationPolicy") == "Foreground"):
            if meta.get("deletionTimestamp") and meta.get("deletionGracePeriodSeconds", 0) == 0:
                return self.view(rt, obj)
            new = copy.deepcopy(obj)
            new["metadata"].setdefault("deletionTimestamp", now_iso())
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if not new["metadata"].get("finalizers"):
                new["metadata"]["finalizers"] = []
                return self._remove(rt, new)
            return self._store_modified(rt, obj, new)
        return self._remove(rt, obj, orphan=options.get("propagationPolicy") == "Orphan")

    def _store_modified(self, rt: ResourceType, old: Obj, new: Obj) -> Obj:
        self._bump(new)
        self.objects[rt.store_key][(new["metadata"].get("namespace", ""), new["metadata"]["name"])] = new
        self._emit_filtered(rt, "MODIFIED", new, old)
        return self.view(rt, new)

    def _remove(self, rt: ResourceType, obj: Obj, orphan: bool = False) -> Obj:
        meta = obj["metadata"]
        if self.objects[rt.store_key].pop((meta.get("namespace", ""), meta["name"]), None) is None:
            return self.view(rt, obj)
        gone = copy.deepcopy(obj)
        self._bump(gone)
        self._emit_filtered(rt, "DELETED", gone, None)
        if rt.plural == "customresourcedefinitions":
            self._unregister_crd(obj)
        if orphan:
            self._orphan(meta["uid"])
        return self.view(rt, gone)

    def _orphan(self, uid: str) -> None:
        for key, objs in self.objects.items():
            for obj in list(objs.values()):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    self._store_modified(self._rt_of(key, obj), obj, new)

    def _rt_of(self, key: tuple[str, str], obj: Obj) -> ResourceType:
        version = obj["apiVersion"].rpartition("/")[2]
        return self.types.get((key[0], version, key[1])) or next(
            rt for rt in self.types.values() if rt.store_key == key)

    def _terminate_namespace(self, rt: ResourceType, obj: Obj) -> Obj:
        """Namespace deletion: Terminating, its content deleted; gone once empty (see collect_garbage)."""
        if obj["metadata"].get("deletionTimestamp"):
            return self.view(rt, obj)
        new = copy.deepcopy(obj)
        new["metadata"]["deletionTimestamp"] = now_iso()
        new["status"] = {"phase": "Terminating"}
        out = self._store_modified(rt, obj, new)
        ns = obj["metadata"]["name"]
        for key, objs in list(self.objects.items()):
            for (ons, oname), o in list(objs.items()):
                if ons == ns and not o["metadata"].get("deletionTimestamp"):
                    try:
                        self.delete(self._rt_of(key, o), ns, oname, {})
                    except ApiError:
                        pass
        return out

    def collect_garbage(self) -> None:
        """The garbage collector and namespace controller: delete dependents whose owners are all gone."""
        uids = {o["metadata"]["uid"] for objs in self.objects.values() for o in objs.values()}
        for key, objs in list(self.objects.items()):
            for (ns, name), obj in list(objs.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if refs and not obj["metadata"].get("deletionTimestamp") and \
                        not any(r.get("uid") in uids for r in refs):
                    try:
                        self.delete(self._rt_of(key, obj), ns or None, name, {"propagationPolicy": "Background"})
                    except ApiError:
                        pass
        nsrt = self.types[("", "v1", "namespaces")]
        for nso in list(self.objects[nsrt.store_key].values()):
            name = nso["metadata"]["name"]
            if nso["metadata"].get("deletionTimestamp") and not any(
                    ons == name for objs in self.objects.values() for (ons, _) in objs):
                self._remove(nsrt, nso)


class ApiServer:
    """The HTTP face of the Store: routing, discovery, list/watch streaming, Status errors."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner: web.AppRunner | None = None
        self.port = 0
        # GET pods/NAME/log: set to the node's reader (the real API server proxies this to the kubelet)
        self.pod_logs: Callable[[str, str, str], str | None] | None = None
        self._gc_task: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._gc_task = asyncio.create_task(self._gc_loop())
        return self.port

    async def stop(self) -> None:
        if self._gc_task:
            self._gc_task.cancel()
        for w in list(self.store.watchers):
            w.queue.put_nowait(None)
        if self.runner:
            await self.runner.cleanup()

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            self.store.collect_garbage()

    # ---- routing ---------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            return web.json_response(exc.status(), status=exc.code)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            err = ApiError(400, "BadRequest", f"error decoding request body: {exc}")
            return web.json_response(err.status(), status=400)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if not parts or parts[0] in ("healthz", "readyz", "livez"):
            return web.Response(text="ok")
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "33", "gitVersion": "v1.33.0-etcdpy-e2e-double",
                                      "platform": "linux/amd64"})
        if parts[0] == "api":
            if len(parts) == 1:
                return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}]})
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            if len(parts) == 1:
                return web.json_response(self._group_list())
            if len(parts) == 2:
                groups = [g for g in self._group_list()["groups"] if g["name"] == parts[1]]
                if not groups:
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                return web.json_response({"kind": "APIGroup", "apiVersion": "v1", **groups[0]})
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return web.json_response(self._resource_list(group, version))
        if not group and len(rest) == 5 and rest[0] == "namespaces" and rest[2] == "pods" and rest[4] == "log":
            return self._pod_log(request, rest[1], rest[3])
        return await self._resource(request, group, version, rest)

    def _pod_log(self, request: web.Request, ns: str, name: str) -> web.Response:
        """`kubectl logs`: the container's newest log from the test node (tailLines honoured)."""
        text = self.pod_logs(ns, name, request.query.get("container", "")) if self.pod_logs else None
        if text is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        tail = request.query.get("tailLines")
        if tail and tail.isdigit():
            text = "".join(text.splitlines(keepends=True)[-int(tail):])
        return web.Response(text=text, content_type="text/plain")

    def _group_list(self) -> Obj:
        groups: dict[str, list[str]] = {}
        for rt in self.store.types.values():
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
             "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}} for g, vs in groups.items()]}

    def _resource_list(self, group: str, version: str) -> Obj:
        resources = []
        for rt in self.store.types.values():
            if rt.group != group or rt.version != version:
                continue
            resources.append({"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": VERBS, "shortNames": rt.short_names})
            subs = (["status"] if rt.status else []) + (["scale"] if rt.scale else [])
            if rt.plural == "pods" and not group:
                subs.append("binding")
            for sub in subs:
                resources.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                                  "kind": "Scale" if sub == "scale" else rt.kind, "verbs": ["get", "patch", "update"]})
        if not resources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group
                else version, "resources": resources}

    async def _resource(self, request: web.Request, group: str, version: str, rest: list[str]) -> web.StreamResponse:
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and (group, version, rest[2]) in self.store.types \
                and not (group == "" and rest[2] in ("status", "finalize")):
            ns, rest = rest[1], rest[2:]
        rt = self.store.type(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if rt.namespaced and ns is None and name is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        q = request.query
        dry_run = "dryRun" in q
        method = request.method
        if name is None:
            if method == "GET":
                return await self._list_or_watch(request, rt, ns)
            if method == "POST":
                return self._json(self.store.create(rt, ns, await request.json(), dry_run), 201)
            if method == "DELETE":
                match = self._matcher(q)
                for obj in self.store.list(rt, ns, match):
                    self.store.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], {})
                return self._json({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                                    f"resource ({method})")
        if sub == "binding" and method == "POST":
            return self._json(self._bind(rt, ns, name, await request.json()), 201)
        if sub == "scale" and method == "GET":
            return self._json(self.store.get_scale(rt, ns, name))
        if sub == "scale" and method == "PUT":
            if rt.scale is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return self._json(self.store.put_scale(rt, self.store.get(rt, ns, name), await request.json(), dry_run))
        if sub not in (None, "status", "scale"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub == "status" and not rt.status:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET":
            obj = self.store.view(rt, self.store.get(rt, ns, name))
            if self._wants_table(request) and sub is None:
                return self._json(self._table(rt, [obj], obj["metadata"]["resourceVersion"]))
            return self._json(obj)
        if method == "PUT":
            return self._json(self.store.update(rt, ns, name, await request.json(), sub, dry_run))
        if method == "PATCH":
            ctype = request.headers.get("Content-Type", "")
            text = await request.text()
            body = __import__("yaml").safe_load(text) if "yaml" in ctype else json.loads(text)
            if "apply-patch" in ctype:  # server-side apply, approximated by a merge patch
                ctype = "application/merge-patch+json"
            return self._json(self.store.patch(rt, ns, name, ctype, body, sub, dry_run))
        if method == "DELETE":
            text = await request.text()
            options = json.loads(text) if text.strip() else {}
            if "gracePeriodSeconds" in q:
                options["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
            if "propagationPolicy" in q:
                options["propagationPolicy"] = q["propagationPolicy"]
            return self._json(self.store.delete(rt, ns, name, options, dry_run))
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method ({method})")

    def _bind(self, rt: ResourceType, ns: str | None, name: str, binding: Obj) -> Obj:
        """pods/binding: what the scheduler posts to put a Pod on a node."""
        pod = self.store.get(rt, ns, name)
        if pod["spec"].get("nodeName"):
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on pods/binding "{name}": pod {name} is '
                                            f"already assigned to node \"{pod['spec']['nodeName']}\"")
        new = copy.deepcopy(pod)
        new["spec"]["nodeName"] = binding["target"]["name"]
        self.store._store_modified(rt, pod, new)
        return {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}, "code": 201}

    @staticmethod
    def _matcher(q: Any) -> Callable[[Obj], bool]:
        try:
            lm = selectors.label_matcher(q.get("labelSelector"))
            fm = selectors.field_matcher(q.get("fieldSelector"))
        except selectors.SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from exc
        return lambda o: lm(o) and fm(o)

    @staticmethod
    def _table(rt: ResourceType, items: list[Obj], rv: str) -> Obj:
        """A meta.k8s.io/v1 Table (what `kubectl get` asks for): Name, the printer columns, or Created At."""
        columns = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
        extra = rt.columns or [{"name": "Created At", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        for c in extra:
            columns.append({"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                            "description": c.get("description", ""), "priority": c.get("priority", 0)})

        def at(obj: Obj, path: str) -> Any:
            cur: Any = obj
            for part in path.strip(".").split("."):
                cur = cur.get(part) if isinstance(cur, dict) else None
            return cur

        def cell(obj: Obj, col: Obj) -> Any:
            value = at(obj, col["jsonPath"])
            if col.get("type") == "date" and isinstance(value, str):  # the server renders dates as ages
                then = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
                secs = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
                return f"{secs}s" if secs < 120 else f"{secs // 60}m" if secs < 7200 else f"{secs // 3600}h"
            return value

        rows = [{"cells": [o["metadata"]["name"], *[cell(o, c) for c in extra]],
                 "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                            "metadata": o["metadata"]}} for o in items]
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
                "columnDefinitions": columns, "rows": rows}

    @staticmethod
    def _wants_table(request: web.Request) -> bool:
        return "as=Table" in request.headers.get("Accept", "")

    @staticmethod
    def _json(obj: Obj, status: int = 200) -> web.Response:
        return web.Response(text=json.dumps(obj), status=status, content_type="application/json")

    async def _list_or_watch(self, request: web.Request, rt: ResourceType, ns: str | None) -> web.StreamResponse:
        q = request.query
        match = self._matcher(q)
        if q.get("watch") not in ("true", "1"):
            items = self.store.list(rt, ns, match)
            if self._wants_table(request):
                return self._json(self._table(rt, items, str(self.store.rv)))
            return self._json({"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                               "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
        name = None
        fs = q.get("fieldSelector") or ""
        if fs.startswith("metadata.name=") and "," not in fs:
            name = fs.split("=", 1)[1].lstrip("=")
        w = self.store.watch(rt, ns, name, match, q.get("resourceVersion"))
        timeout = float(q.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(w.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:
                    break
                if event["type"] != "ERROR":
                    event["object"]["apiVersion"] = rt.api_version
                await resp.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(w)
        try:
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return resp
