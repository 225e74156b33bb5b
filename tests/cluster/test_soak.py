"""Longer fault runs (``-m soak``): many leader crashes and partitions under one recorded load.

Same checks as the default tests — linearizable history, no acknowledged write
lost, identical stores — but over several fault cycles, where bugs that need a
second election or a member rejoining twice (stale state carried across terms,
a snapshot after a partition...) get their chance.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import pytest

from harness import Cluster
from linearizability import check_history

from .conftest import ELECTION_TIMEOUT, own_id, wait_new_leader
from .workload import Workload, assert_same_hash, check_read_back, summarize, wait_converged

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1200)]
CYCLES = 6


def test_soak_repeated_leader_kills(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3, extra_args=["--snapshot-count=2000"])
    workload = Workload(cluster.members, prefix="/soak-kill/", clients=6, keys=12, timeout=2.0, rotate=True)
    with workload:
        for cycle in range(CYCLES):
            workload.wait_progress(300, 60, f"cycle {cycle} before the crash")
            leader = cluster.leader(timeout=30)
            status = cluster.status(leader)
            assert status is not None
            sig = signal.SIGKILL if cycle % 2 == 0 else signal.SIGTERM
            leader.kill(sig)
            killed = time.monotonic()
            wait_new_leader(cluster, [m for m in cluster.members if m is not leader], own_id(status), 10 * ELECTION_TIMEOUT)
            workload.wait_progress(300, 60, f"cycle {cycle} after the election", since=killed)
            leader.start()
        workload.stop()
    revision = wait_converged(cluster)
    assert_same_hash(cluster.members, revision)
    summary = check_read_back(workload, cluster.leader(), revision)
    result = check_history(workload.history.ops())
    print(f"{summary}; {summarize(workload)}")
    assert result.ok, result.explain()


def test_soak_random_partitions(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3, net=True)
    rng = random.Random(random.getrandbits(64))  # from the per-test seed (tests/conftest.py)
    workload = Workload(cluster.members, prefix="/soak-part/", clients=6, keys=12, timeout=1.0, rotate=False)
    with workload:
        for cycle in range(CYCLES):
            workload.wait_progress(300, 60, f"cycle {cycle} before the partition")
            leader = cluster.leader(timeout=30)
            victim = leader if cycle % 2 == 0 else rng.choice(cluster.members)
            majority = [m for m in cluster.members if m is not victim]
            with cluster.partition([victim]):
                if victim is leader:
                    status = cluster.status(leader)
                    assert status is not None
                    wait_new_leader(cluster, majority, own_id(status), 10 * ELECTION_TIMEOUT + 10)
                workload.wait_progress(200, 60, f"cycle {cycle} during the partition")
            workload.wait_progress(100, 60, f"cycle {cycle} after healing", endpoint=victim.endpoint)
        workload.stop()
    revision = wait_converged(cluster)
    assert_same_hash(cluster.members, revision)
    summary = check_read_back(workload, cluster.leader(timeout=30), revision)
    result = check_history(workload.history.ops())
    print(f"{summary}; {summarize(workload)}")
    assert result.ok, result.explain()
