"""The Helm chart, the plain manifests and the example EtcdClusters, checked offline.

There is no API server here, so each object is checked the way one would check it: `helm lint --strict`,
`helm template` with the default and the non-default values (charts/etcdpy-operator/ci/), every rendered
built-in object validated by `kubernetes-validate --strict` (unknown fields refused), every EtcdCluster
validated with jsonschema against the CRD's openAPIV3Schema (unknown fields refused, as kubectl's strict
field validation does), bad values refused by values.schema.json with a message naming the value, and
the generated copies (chart CRDs, manifests/) in sync with their sources.
helm, kubectl and kubernetes-validate come from scripts/k8s-tools (a PyPI wheel, cached privately).
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "etcdpy-operator"
CRD = ROOT / "operator" / "etcdpy_operator" / "crds" / "etcdclusters.yaml"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUE_SETS = [None, *CI_VALUES]
VALUE_IDS = ["default", *(p.stem for p in CI_VALUES)]


@pytest.fixture(scope="session")
def tools() -> Path:
    """The bin directory with helm, kubectl and kubernetes-validate (skip, saying why, if unobtainable)."""
    p = subprocess.run([str(ROOT / "scripts" / "k8s-tools")], check=False, capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        pytest.skip(f"helm/kubectl/kubernetes-validate could not be fetched from PyPI: {p.stderr.strip()[-500:]}")
    return Path(p.stdout.strip())


def helm(tools: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the cached helm."""
    p = subprocess.run([str(tools / "helm"), *args], check=False, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def render(tools: Path, values: Path | None = None, *sets: str, crds: bool = False) -> list[dict[str, Any]]:
    """The objects `helm template` renders in namespace etcdpy-system."""
    args = ["template", "etcdpy-operator", str(CHART), "--namespace", "etcdpy-system"]
    if values:
        args += ["-f", str(values)]
    for s in sets:
        args += ["--set", s]
    if crds:
        args.append("--include-crds")
    return [d for d in yaml.safe_load_all(helm(tools, *args).stdout) if d]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rendered objects of one kind."""
    return [d for d in docs if d["kind"] == kind]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever the API server would drop them.

    Why: a structural schema prunes unknown fields silently, and `kubectl apply` (strict field
    validation) refuses them; jsonschema would accept them, so every object schema with `properties`
    and no preserve-unknown-fields gets `additionalProperties: false`.
    """
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(out)
    return out


def crd_validator(path: Path) -> Any:
    """A jsonschema validator for whole objects of a CRD, built from its v1alpha1 schema."""
    crd = yaml.safe_load(path.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"].update({
        "apiVersion": {"const": f"{crd['spec']['group']}/v1alpha1"},
        "kind": {"const": crd["spec"]["names"]["kind"]},
        "metadata": {"type": "object", "required": ["name"]},
    })
    schema.setdefault("required", [])
    schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata"})
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="session")
def cluster_validator() -> Any:
    """The validator of EtcdCluster objects."""
    return crd_validator(CRD)


@pytest.fixture(scope="session")
def validators() -> dict[str, Any]:
    """A validator per kind of every CRD the operator ships."""
    return {yaml.safe_load(p.read_text())["spec"]["names"]["kind"]: crd_validator(p)
            for p in sorted(CRD.parent.glob("*.yaml"))}


# --- lint and render -------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_helm_lint_strict(tools: Path, values: Path | None) -> None:
    p = helm(tools, "lint", "--strict", str(CHART), "--namespace", "etcdpy-system",
             *(["-f", str(values)] if values else []))
    assert "0 chart(s) failed" in p.stdout, p.stdout + p.stderr


def test_chart_packages_with_its_schema_and_crds(tools: Path, tmp_path: Path) -> None:
    """`helm package` works and the archive carries values.schema.json and every CRD."""
    import tarfile

    helm(tools, "package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("etcdpy-operator-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    wanted = {"etcdpy-operator/values.schema.json", "etcdpy-operator/templates/NOTES.txt"}
    wanted |= {f"etcdpy-operator/crds/{p.name}" for p in (CHART / "crds").glob("*.yaml")}
    assert wanted <= names, sorted(wanted - names)


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_rendered_objects_validate_strictly(tools: Path, values: Path | None, tmp_path: Path) -> None:
    docs = render(tools, values, crds=True)
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    p = subprocess.run([str(tools / "kubernetes-validate"), "--strict", str(out)], check=False,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    builtin = [d for d in docs if d["kind"] not in ("EtcdCluster", "ServiceMonitor", "KopfPeering",
                                                     "ClusterKopfPeering")]
    assert p.stdout.count(" passed for resource ") == len(builtin), p.stdout


def test_kubernetes_validate_refuses_an_unknown_field(tools: Path, tmp_path: Path) -> None:
    """The validation above is not vacuous: a Deployment with a misspelt field fails it."""
    docs = render(tools)
    deployment = kinds(docs, "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    out = tmp_path / "bad.yaml"
    out.write_text(yaml.safe_dump(deployment))
    p = subprocess.run([str(tools / "kubernetes-validate"), "--strict", str(out)], check=False,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "imagePullPolicyy" in p.stdout + p.stderr, p.stdout + p.stderr


def test_default_render_runs_one_standalone_operator_everywhere(tools: Path) -> None:
    docs = render(tools)
    (deployment,) = kinds(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"] == f"etcdpy:{version}"
    assert container["command"] == ["etcdpy-operator"]
    assert "--all-namespaces" in container["args"]
    assert not any(a.startswith("--peering") for a in container["args"])
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert {e["name"]: e.get("value") for e in container["env"]}["ETCDPY_IMAGE_REPOSITORY"] == "etcdpy"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert [r["kind"] for r in docs if r["kind"].endswith("Role")] == ["ClusterRole"]
    assert not kinds(docs, "ServiceMonitor") and not kinds(docs, "EtcdCluster")


def test_non_default_render_uses_the_values(tools: Path, cluster_validator: Any) -> None:
    values = CHART / "ci" / "namespaced-values.yaml"
    docs = render(tools, values)
    (container,) = kinds(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/platform/etcdpy:0.1.0"
    assert "--namespace=etcdpy-system" in container["args"] and "--namespace=team-a" in container["args"]
    assert "--all-namespaces" not in container["args"]
    assert "--peering=etcdpy-operator" in container["args"]
    assert "--log-level=debug" in container["args"]
    assert sorted(r["metadata"]["namespace"] for r in kinds(docs, "Role")) == ["etcdpy-system", "team-a"]
    assert sorted(p["metadata"]["namespace"] for p in kinds(docs, "KopfPeering")) == ["etcdpy-system", "team-a"]
    assert len(kinds(docs, "ServiceMonitor")) == 1
    (cluster,) = kinds(docs, "EtcdCluster")
    assert cluster["spec"]["replicas"] == 5
    errors = [e.message for e in cluster_validator.iter_errors(cluster)]
    assert not errors, errors


def test_operator_flags_are_ones_the_operator_documents(tools: Path) -> None:
    """Every flag the Deployment passes is in operator/README.md's flag table (the contract)."""
    readme = (ROOT / "operator" / "README.md").read_text()
    documented = set(re.findall(r"^\| `(--[a-z-]+)", readme, flags=re.MULTILINE))
    documented |= set(re.findall(r"/ `(--[a-z-]+)`", readme))
    for values in VALUE_SETS:
        (container,) = kinds(render(tools, values), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
        used = {a.split("=")[0] for a in container["args"]}
        assert used <= documented, f"not in operator/README.md: {sorted(used - documented)}"


# --- RBAC --------------------------------------------------------------------------------------------


def rules_of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """All rules of the rendered roles of one kind."""
    return [r for role in kinds(docs, kind) for r in role["rules"]]


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_rbac_has_no_wildcards_and_only_reads_secrets(tools: Path, values: Path | None) -> None:
    docs = render(tools, values)
    rules = rules_of(docs, "ClusterRole") + rules_of(docs, "Role")
    assert rules
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"], rule


def test_namespace_scope_keeps_only_read_access_cluster_wide(tools: Path) -> None:
    docs = render(tools, CHART / "ci" / "namespaced-values.yaml")
    for rule in rules_of(docs, "ClusterRole"):
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    verbs = {res: set(r["verbs"]) for r in rules_of(docs, "Role") for res in r["resources"]}
    assert {"create", "delete"} <= verbs["pods"] and {"create", "delete"} <= verbs["persistentvolumeclaims"]
    assert "patch" in verbs["etcdclusters/status"] and "patch" in verbs["kopfpeerings"]


# --- values.schema.json ------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "message"), [
    ("replicaCount=two", "at '/replicaCount': got string, want integer"),
    ("replicaCount=0", "/replicaCount"),
    ("colour=blue", "additional properties 'colour' not allowed"),
    ("image.registry=x", "additional properties 'registry' not allowed"),
    ("logLevel=loud", "at '/logLevel': value must be one of"),
    ("rbac.scope=galaxy", "at '/rbac/scope': value must be one of 'cluster', 'namespace'"),
    ("metrics.port=99999", "/metrics/port"),
    ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
    ("rbac.create=maybe", "/rbac/create"),
    ("cluster.spec.replicas=12", "at '/cluster/spec/replicas': maximum: got 12, want 9"),
    ("cluster.spec.storage.sizee=1Gi", "at '/cluster/spec/storage': additional properties 'sizee' not allowed"),
    ("cluster.spec.etcd.autoCompactionMode=daily", "/cluster/spec/etcd/autoCompactionMode"),
])
def test_values_schema_refuses_bad_values(tools: Path, setting: str, message: str) -> None:
    p = helm(tools, "template", "x", str(CHART), "--set", setting, check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr


def test_namespace_scope_without_namespaces_is_refused(tools: Path) -> None:
    p = helm(tools, "template", "x", str(CHART), "--set", "rbac.scope=namespace", check=False)
    assert p.returncode != 0 and "rbac.scope=namespace needs watchNamespaces" in p.stderr, p.stderr


# --- custom resources against the CRD ----------------------------------------------------------------

EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_resources_match_the_crd(path: Path, validators: dict[str, Any]) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        assert doc["kind"] in validators, f"{doc['kind']} is not a kind of the operator's CRDs"
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validators[doc["kind"]].iter_errors(doc)]
        assert not errors, errors


def test_examples_cover_backups(validators: dict[str, Any]) -> None:
    """A scheduled-backup cluster and an on-demand backup of it are among the examples."""
    docs = [d for p in EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d]
    scheduled = [d for d in docs if d["kind"] == "EtcdCluster" and (d["spec"].get("backup") or {}).get("schedule")]
    assert scheduled
    if "EtcdBackup" in validators:
        names = {d["metadata"]["name"] for d in scheduled}
        backups = {d["metadata"]["name"] for d in docs if d["kind"] == "EtcdBackup" and d["spec"]["clusterName"] in names}
        assert backups
        restores = [d for d in docs if d["kind"] == "EtcdCluster" and "restore" in d["spec"]]
        assert restores and all(d["spec"]["restore"].get("backup") in backups for d in restores)


@pytest.mark.parametrize(("change", "where"), [
    (lambda s: s.update(replicas=10), "replicas"),
    (lambda s: s.update(replica=3), "replica"),
    (lambda s: s.setdefault("storage", {}).update(size="lots"), "size"),
    (lambda s: s.setdefault("etcd", {}).update(autoCompactionMode="daily"), "autoCompactionMode"),
])
def test_crd_validation_refuses_bad_examples(change: Any, where: str, cluster_validator: Any) -> None:
    """The example check is not vacuous: the same validator refuses broken copies of an example."""
    doc = yaml.safe_load((ROOT / "manifests" / "examples" / "etcdcluster-3.yaml").read_text())
    change(doc["spec"])
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in cluster_validator.iter_errors(doc)]
    assert any(where in e for e in errors), errors


# --- generated copies --------------------------------------------------------------------------------


def test_chart_crds_and_manifests_are_in_sync(tools: Path) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-manifests"), "--check"], check=False, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, "run scripts/gen-manifests:\n" + p.stdout[-3000:] + p.stderr


def test_plain_manifests_validate_strictly(tools: Path) -> None:
    """What `kubectl apply -f manifests/` sends: every object valid for Kubernetes, namespace first."""
    files = sorted((ROOT / "manifests").glob("*.yaml"))
    p = subprocess.run([str(tools / "kubernetes-validate"), "--strict", *map(str, files)], check=False,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    assert p.stdout.count(" passed for resource ") == len(docs), p.stdout
    namespaced = [d for d in docs if d["metadata"].get("namespace")]
    assert namespaced and all(d["metadata"]["namespace"] == "etcdpy-system" for d in namespaced)
    kinds_in_order = [d["kind"] for d in docs]
    assert kinds_in_order.index("Namespace") < min(i for i, d in enumerate(docs) if d["metadata"].get("namespace"))
    assert not any("helm.sh/chart" in (d["metadata"].get("labels") or {}) for d in docs)


def test_every_operator_crd_is_in_the_chart_and_manifests() -> None:
    manifest_crds = {d["metadata"]["name"] for d in yaml.safe_load_all((ROOT / "manifests" / "00-crds.yaml").read_text())
                     if d}
    for src in sorted(CRD.parent.glob("*.yaml")):
        name = yaml.safe_load(src.read_text())["metadata"]["name"]
        assert (CHART / "crds" / src.name).is_file()
        assert name in manifest_crds


def test_chart_version_follows_the_package() -> None:
    """The Deployment's default image tag is the chart's appVersion, which must be the package's version."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version


VERBS = {"create": "create", "list": "list", "read": "get", "get": "get", "patch": "patch", "delete": "delete",
         "replace": "update"}


def operator_api_calls() -> set[tuple[str, str]]:
    """(resource, verb) of every namespaced Kubernetes client call in the operator's source.

    Why from the source: the chart's RBAC is written by hand; this ties it to what the operator really
    calls, so a new call without a matching rule fails here rather than with 403 in a user's cluster.
    """
    calls: set[tuple[str, str]] = set()
    pattern = re.compile(r"\.(create|list|read|get|patch|delete|replace)_namespaced_([a-z_]+)")
    for src in (ROOT / "operator" / "etcdpy_operator").glob("*.py"):
        for verb, kind in pattern.findall(src.read_text()):
            if kind.startswith("custom_object"):
                resource = "etcdclusters/status" if kind.endswith("_status") else "etcdclusters"
            elif kind == "pod_log":
                resource = "pods/log"
            else:
                resource = kind.replace("_", "") + "s"
            calls.add((resource, VERBS[verb]))
    return calls


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_rbac_grants_every_call_the_operator_makes(tools: Path, values: Path | None) -> None:
    calls = operator_api_calls()
    if not calls:
        pytest.skip("no Kubernetes client calls in operator/etcdpy_operator yet")
    docs = render(tools, values)
    kind = "Role" if kinds(docs, "Role") else "ClusterRole"
    for role in kinds(docs, kind):
        granted = {(res, verb) for r in role["rules"] for res in r["resources"] for verb in r["verbs"]}
        assert calls <= granted, f"{kind} {role['metadata']} lacks {sorted(calls - granted)}"


def test_backup_validation_refuses_a_backup_without_its_cluster(validators: dict[str, Any]) -> None:
    if "EtcdBackup" not in validators:
        pytest.skip("no EtcdBackup CRD yet")
    doc = yaml.safe_load((ROOT / "manifests" / "examples" / "etcdbackup-on-demand.yaml").read_text())
    doc["spec"] = {"cluster": "prod"}
    messages = [e.message for e in validators["EtcdBackup"].iter_errors(doc)]
    assert any("clusterName" in m for m in messages) and any("cluster" in m for m in messages), messages
