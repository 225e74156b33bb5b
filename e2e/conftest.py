"""Fixtures of the end-to-end suite: which Kubernetes, a namespace per scenario, the operator.

`--kubeconfig PATH` (or `E2E_KUBECONFIG`) runs the same scenarios against a real cluster where the
operator and its CRD are installed; without it every session starts the API double and test node.
Measured durations go to `E2E_RESULTS` (default `<tmp>/e2e-results.json`) and are printed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2ekit import CRD_DIR, DoubleKube, Kube, RealKube

_NS_KEY = pytest.StashKey[list[str]]()
_KUBE_KEY = pytest.StashKey[Kube]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--kubeconfig", default=os.environ.get("E2E_KUBECONFIG"),
                     help="run the e2e scenarios against this real cluster instead of the API double")


def results_path() -> Path:
    return Path(os.environ.get("E2E_RESULTS") or Path(tempfile.gettempdir()) / "e2e-results.json")


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[Kube]:
    """The Kubernetes API under test: a real cluster if a kubeconfig is given, else the double."""
    path = request.config.getoption("--kubeconfig")
    # Our own directory, not pytest's basetemp: concurrent sessions of the same user rotate those away,
    # and the pod logs and volumes are what a failure is diagnosed from. Removed when the session passed.
    state = Path(tempfile.mkdtemp(prefix="etcdpy-e2e-"))
    k: Kube = RealKube(Path(path)) if path else DoubleKube(state)
    request.config.stash[_KUBE_KEY] = k
    failed_before = request.session.testsfailed
    try:
        yield k
    finally:
        del request.config.stash[_KUBE_KEY]
        k.close()
        if request.session.testsfailed == failed_before:
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"\ne2e state kept for diagnosis: {state}")


@pytest.fixture
def double(kube: Kube) -> Kube:
    """Tests of the double and the test node themselves; meaningless against a real cluster."""
    if not kube.is_double:
        pytest.skip("tests the API double and the test node")
    return kube


@pytest.fixture
def ns(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted (with everything in it) afterwards."""
    name = kube.create_namespace()
    request.node.stash[_NS_KEY] = [name]
    yield name
    kube.stop_operator()
    kube.delete_namespace(name)


@pytest.fixture
def operator(kube: Kube, ns: str) -> Kube:
    """CRDs applied and the operator watching `ns` (started here on the double)."""
    if kube.is_double:
        if not CRD_DIR.is_dir() or not (CRD_DIR.parent / "__main__.py").exists():
            pytest.skip("the operator (operator/etcdpy_operator/__main__.py) is not on this branch yet")
        kube.apply_crds()
        kube.start_operator(ns)
    return kube


@pytest.fixture(scope="session")
def timings(request: pytest.FixtureRequest) -> Iterator[dict[str, dict[str, Any]]]:
    """Scenario name -> measured durations (seconds); written to E2E_RESULTS and printed."""
    data: dict[str, dict[str, Any]] = {}
    yield data
    if data:
        path = results_path()
        old = json.loads(path.read_text()) if path.exists() else {}
        for k, v in data.items():
            old.setdefault(k, {}).update(v)
        old["_meta"] = {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                        "target": "cluster" if request.config.getoption("--kubeconfig") else "double"}
        path.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
        print(f"\ne2e timings ({path}):\n{json.dumps(data, indent=2, sort_keys=True)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    kube = item.config.stash.get(_KUBE_KEY, None)
    if report.failed and kube is not None:
        for name in item.stash.get(_NS_KEY, []):
            report.sections.append((f"e2e diagnostics ({name})", kube.diagnostics(name)))
