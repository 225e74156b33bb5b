"""The EtcdCluster CRD: a structural schema that accepts good specs and refuses bad ones with a message.

There is no API server here, so the schema is checked the way one would: example resources are validated
against `openAPIV3Schema` with jsonschema after the schema's defaults are applied, and the structural
rules Kubernetes enforces (types everywhere, no `properties` beside `additionalProperties`, metadata
untouched) are walked explicitly. CEL rules cannot be evaluated without a CEL engine; their presence and
shape (transition rules use `oldSelf`) are checked instead.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

from etcdpy_operator import crd_path


def _crd() -> dict[str, Any]:
    with open(crd_path()) as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


def _schema() -> dict[str, Any]:
    version = _crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill `default`s as the API server does: for absent properties of present objects, recursively."""
    if not isinstance(obj, dict) or schema.get("type") != "object":
        if isinstance(obj, list) and "items" in schema:
            return [_apply_defaults(schema["items"], x) for x in obj]
        return obj
    out = dict(obj)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _apply_defaults(sub, out[key])
    return out


def _resource(spec: dict[str, Any], name: str = "demo") -> dict[str, Any]:
    return {
        "apiVersion": "etcd.etcdpy.io/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def _validate(obj: dict[str, Any]) -> dict[str, Any]:
    schema = _schema()
    full = _apply_defaults(schema, obj)
    jsonschema.Draft7Validator(schema).validate(full)
    return full


def test_names_and_subresources() -> None:
    crd = _crd()
    assert crd["metadata"]["name"] == "etcdclusters.etcd.etcdpy.io"
    assert crd["spec"]["group"] == "etcd.etcdpy.io"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == ("EtcdCluster", "etcdclusters", "etcdcluster")
    assert "etcdc" in names["shortNames"]
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    scale = version["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.replicas"
    assert scale["statusReplicasPath"].startswith(".status.")
    assert scale["labelSelectorPath"] == ".status.selector"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == ".status.readyMembers"
    assert columns["Desired"] == ".spec.replicas"
    assert columns["Leader"] == ".status.leader"
    assert columns["Version"] == ".status.version"
    assert columns["Age"] == ".metadata.creationTimestamp"


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        out += _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


def test_schema_is_structural() -> None:
    schema = _schema()
    assert set(schema["properties"]["metadata"]) == {"type"}, "metadata may only say type: object"
    for path, node in _walk(schema):
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "type" in node, f"{path or '<root>'} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "array":
            assert "items" in node, path
        if "default" in node and node["type"] == "object":
            assert isinstance(node["default"], dict), path
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["rule"] and rule["message"], path


def test_cel_rules_cover_immutable_fields() -> None:
    spec = _schema()["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("self.tls.client" in r and "oldSelf" in r for r in rules)
    assert any("self.tls.peer" in r and "oldSelf" in r for r in rules)
    storage_rules = " ".join(r["rule"] for r in spec["properties"]["storage"]["x-kubernetes-validations"])
    for field in ("storageClassName", "ephemeral", "size"):
        assert f"self.{field} == oldSelf.{field}" in storage_rules
    etcd_rules = spec["properties"]["etcd"]["x-kubernetes-validations"]
    assert "5 * self.heartbeatInterval" in etcd_rules[0]["rule"]


def test_minimal_resource_gets_defaults() -> None:
    full = _validate(_resource({}))
    spec = full["spec"]
    assert spec["replicas"] == 3
    assert spec["storage"] == {"size": "1Gi", "ephemeral": False}
    assert spec["paused"] is False
    assert "version" not in spec  # the operator's own version applies


GOOD = [
    {"replicas": 1},
    {"replicas": 9, "version": "0.2.0", "image": "registry.example/etcdpy:0.2.0"},
    {"replicas": 4, "version": "1.2.3-rc.1"},
    {"storage": {"size": "10Gi", "storageClassName": "fast"}},
    {"storage": {"ephemeral": True}},
    {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 2}}},
    {
        "podTemplate": {
            "labels": {"team": "a"},
            "annotations": {"x": "y"},
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {}},
            "priorityClassName": "high",
        }
    },
    {
        "etcd": {
            "snapshotCount": 5000,
            "quotaBackendBytes": 4294967296,
            "autoCompactionMode": "revision",
            "autoCompactionRetention": "1000",
            "heartbeatInterval": 100,
            "electionTimeout": 1000,
        }
    },
    {"etcd": {"autoCompactionMode": "periodic", "autoCompactionRetention": "1h30m"}},
    {"tls": {"client": {"secretName": "c"}, "peer": {"secretName": "p"}}},
    {"paused": True},
]


@pytest.mark.parametrize("spec", GOOD, ids=[str(i) for i in range(len(GOOD))])
def test_good_specs_pass(spec: dict[str, Any]) -> None:
    _validate(_resource(spec))


BAD = [
    ({"replicas": 0}, "minimum"),
    ({"replicas": 10}, "maximum"),
    ({"replicas": "3"}, "type"),
    ({"version": "latest"}, "pattern"),
    ({"version": "v0.1.0"}, "pattern"),
    ({"storage": {"size": "lots"}}, "pattern"),
    ({"storage": {"ephemeral": "yes"}}, "type"),
    ({"imagePullPolicy": "Sometimes"}, "enum"),
    ({"etcd": {"autoCompactionMode": "daily"}}, "enum"),
    ({"etcd": {"snapshotCount": 0}}, "minimum"),
    ({"etcd": {"heartbeatInterval": 1}}, "minimum"),
    ({"etcd": {"autoCompactionRetention": "1 hour"}}, "pattern"),
    ({"tls": {"client": {}}}, "required"),
    ({"tls": {"peer": {"secretName": ""}}}, "minLength"),
]


@pytest.mark.parametrize("spec,validator", BAD, ids=[str(s) for s, _ in BAD])
def test_bad_specs_refused(spec: dict[str, Any], validator: str) -> None:
    with pytest.raises(jsonschema.ValidationError) as err:
        _validate(_resource(spec))
    assert err.value.validator == validator
