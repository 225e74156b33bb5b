"""Fixtures and helpers shared by the multi-member cluster tests.

Why module-scoped `cluster3`: the read-only checks (member list, endpoint status,
health) do not disturb a cluster, so they share one; every test that changes
membership, kills or partitions members builds its own with `make_cluster`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from harness import Cluster, Member, wait_until

# etcd's defaults (--heartbeat-interval=100, --election-timeout=1000 ms), which the
# tests keep: a shared 2-core machine makes shorter timeouts flap.
ELECTION_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One 3-member cluster shared by a module's read-only tests."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster3"), size=3)
    cluster.start()
    yield cluster
    cluster.release()


def leader_id(status: dict[str, Any] | None) -> int:
    """The leader a member reports (0 = none known, or the member did not answer)."""
    return int(status.get("leader", 0)) if status else 0


def own_id(status: dict[str, Any]) -> int:
    return int(status["header"]["member_id"])


def wait_new_leader(cluster: Cluster, among: Sequence[Member], not_id: int, timeout: float) -> tuple[Member, dict[str, Any]]:
    """Poll endpoint status of ``among`` until they all name one leader other than ``not_id``.

    Returns the leader and its status. Why poll every member: one member naming a
    leader is not an election result; agreement of the group is.
    """

    def agreed() -> tuple[Member, dict[str, Any]] | None:
        statuses = [cluster.status(m, timeout=2.0) for m in among]
        if any(s is None for s in statuses):
            return None
        ids = {leader_id(s) for s in statuses}
        if len(ids) != 1:
            return None
        lid = ids.pop()
        if lid in (0, not_id):
            return None
        for m, s in zip(among, statuses):
            if s is not None and own_id(s) == lid:
                return m, s
        return None

    return wait_until(agreed, timeout, f"a new leader among {[m.name for m in among]}", interval=0.1)


def wait_term_above(cluster: Cluster, member: Member, term: int, timeout: float) -> None:
    """Poll ``member``'s status until its ``raftTerm`` exceeds ``term``.

    Why poll after the election instead of reading the term once: etcd reports the
    term of the last *applied* entry (``EtcdServer.Term``), so a member that already
    names its new leader can still show the old term until the new leader's first
    entry is committed and applied. Seeing the higher term proves a new term began and
    its leader committed in it.
    """

    def above() -> bool:
        status = cluster.status(member, timeout=2.0)
        return status is not None and int(status["raftTerm"]) > term

    wait_until(above, timeout, f"{member.name} to report a term above {term}", interval=0.1)
