"""Shared pytest fixtures: server processes for the compat/crash/cluster suites.

Why two kinds of member fixtures: starting a server costs about a second (more for
etcdpy on a busy machine), so read-mostly tests share one session member and isolate
themselves by key prefix (`prefix`); tests that depend on the global revision history
(compaction, from-key scans, exact revision numbers, server flags) get a fresh member.

On failure, the log tails of every member the test used are attached to the report.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Cluster, GrpcClient, Member, NetworkFaults, pb_available, reference_versions, target  # noqa: E402

_MEMBERS_KEY = pytest.StashKey[list[Member]]()
_CLUSTERS_KEY = pytest.StashKey[list[Cluster]]()
_FAILED_KEY = pytest.StashKey[bool]()


def _track(request: pytest.FixtureRequest, *members: Member) -> None:
    """Remember which members a test used, so their logs show up if it fails."""
    node = request.node
    node.stash.setdefault(_MEMBERS_KEY, []).extend(members)


def track_cluster(request: pytest.FixtureRequest, cluster: Cluster) -> None:
    """Remember a cluster: members added (or removed) later also get their logs reported."""
    request.node.stash.setdefault(_CLUSTERS_KEY, []).append(cluster)


def _reported_members(item: pytest.Item) -> list[Member]:
    seen: list[Member] = []
    clusters = item.stash.get(_CLUSTERS_KEY, [])
    for m in [*item.stash.get(_MEMBERS_KEY, []), *(x for c in clusters for x in [*c.members, *c.removed])]:
        if all(m is not s for s in seen):
            seen.append(m)
    return seen


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.stash[_FAILED_KEY] = True
        for m in _reported_members(item):
            report.sections.append((f"{target()} member {m.name} ({m.endpoint}) logs", m.log_tail(80)))


# One seed per session (ETCDPY_TEST_SEED repeats a run's random choices); each test seeds the
# global `random` from it and its own id, so a test's choices do not depend on which ran before.
SEED = int(os.environ.get("ETCDPY_TEST_SEED") or random.SystemRandom().randrange(1 << 32))


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"etcdpy test target: {target()}", reference_versions(),
            f"random seed: {SEED} (ETCDPY_TEST_SEED={SEED} repeats this run's random choices)"]


@pytest.fixture(autouse=True)
def _seeded_random(request: pytest.FixtureRequest) -> None:
    """Seed `random` for this test from the session seed (ports use SystemRandom: never repeated)."""
    random.seed(f"{SEED}:{request.node.nodeid}")


@pytest.fixture(scope="session")
def test_target() -> str:
    """"etcd" or "etcdpy"."""
    return target()


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One single-member cluster for the whole session (read-mostly tests)."""
    cluster = Cluster(tmp_path_factory.mktemp("shared"), size=1)
    cluster.start()
    yield cluster
    cluster.release()


@pytest.fixture
def member(shared_cluster: Cluster, request: pytest.FixtureRequest) -> Member:
    """The shared member; restarted (same data) if an earlier test left it dead.

    Tests using it must only touch keys under their `prefix` and must not assume
    absolute revision numbers (other tests have written before them).
    """
    m = shared_cluster.members[0]
    if not m.running():
        m.start()
    _track(request, m)
    return m


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A unique key prefix for this test, so tests on the shared member never collide."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:40]
    return f"/t/{name}/{uuid.uuid4().hex[:8]}/"


@pytest.fixture(scope="session")
def _network_faults_session() -> Iterator[NetworkFaults]:
    """The session's iptables/cgroup partition machinery (probed lazily, cleaned at the end).

    Not probed here: sessions that never partition anything must not touch iptables.
    """
    faults = NetworkFaults()
    yield faults
    if faults._probed:
        faults.close()


@pytest.fixture
def network_faults(_network_faults_session: NetworkFaults) -> NetworkFaults:
    """Partition support, or a skip saying why it is unavailable (not root, no iptables, ...).

    The first use in a session probes iptables end to end and removes rules and
    cgroups left behind by earlier runs that died.
    """
    reason = _network_faults_session.unavailable_reason()
    if reason is not None:
        pytest.skip(f"network partitions unavailable: {reason}")
    return _network_faults_session


@pytest.fixture
def make_cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Callable[..., Cluster]]:
    """Factory for fresh clusters with custom size/flags; all are torn down after the test.

    ``net=True`` enrolls the members for `Cluster.partition` (skips the test when
    partitions are unavailable here).
    """
    made: list[Cluster] = []

    def make(size: int = 1, extra_args: tuple[str, ...] | list[str] = (), net: bool = False) -> Cluster:
        faults = request.getfixturevalue("network_faults") if net else None
        cluster = Cluster(tmp_path_factory.mktemp("cluster"), size=size, extra_args=extra_args, net=faults)
        made.append(cluster)
        track_cluster(request, cluster)
        try:
            cluster.start()
        finally:
            _track(request, *cluster.members)
        return cluster

    yield make
    for cluster in made:
        cluster.release()
    if not request.node.stash.get(_FAILED_KEY, False):
        # A passing test's member data goes now (each member preallocates a 64 MB WAL segment,
        # so the suites would otherwise leave tens of GB behind); a failing one's stays to look at.
        for cluster in made:
            shutil.rmtree(cluster.base_dir, ignore_errors=True)


@pytest.fixture
def fresh_member(make_cluster: Callable[..., Cluster]) -> Member:
    """A brand-new single member: revision 1, empty keyspace, nothing compacted."""
    return make_cluster(1).members[0]


def _grpc_or_skip(m: Member) -> GrpcClient:
    if not pb_available():
        pytest.skip("etcdpy.pb.rpc_pb2_grpc not generated yet")
    return m.grpc()


@pytest.fixture
def client(member: Member) -> GrpcClient:
    """gRPC client for the shared member."""
    return _grpc_or_skip(member)


@pytest.fixture
def fresh_client(fresh_member: Member) -> GrpcClient:
    """gRPC client for a fresh member."""
    return _grpc_or_skip(fresh_member)
