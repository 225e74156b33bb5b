"""Leader crash under load: a new leader is elected quickly, writes continue, nothing is lost.

Clients run over every member (rotating away from a dead endpoint, as etcd's
client does) and record every operation; after the crash the recorded history
must be linearizable, every acknowledged write must be in the store at the
revision its response named, and all members — including the crashed leader,
restarted — must end with identical stores.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from harness import Cluster
from linearizability import check_history

from .conftest import ELECTION_TIMEOUT, own_id, wait_new_leader, wait_term_above
from .workload import Workload, assert_same_hash, check_read_back, summarize, wait_converged

# "Within a few election timeouts": followers notice after one timeout, randomised
# campaigns take up to another; the rest is slack for a loaded 2-core machine.
ELECTION_DEADLINE = 6 * ELECTION_TIMEOUT


def test_kill_leader_under_load(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    old = cluster.leader()
    old_status = cluster.status(old)
    assert old_status is not None
    workload = Workload(cluster.members, prefix="/kill/", clients=6, keys=8, timeout=2.0, rotate=True)
    with workload:
        workload.wait_progress(200, 30, "before the crash")
        old.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        survivors = [m for m in cluster.members if m is not old]
        new, _ = wait_new_leader(cluster, survivors, own_id(old_status), timeout=ELECTION_DEADLINE + 10)
        elected_after = time.monotonic() - killed_at
        assert elected_after <= ELECTION_DEADLINE, f"new leader only after {elected_after:.1f}s"
        wait_term_above(cluster, new, int(old_status["raftTerm"]), timeout=30)
        workload.wait_progress(200, 30, "after the new leader was elected", since=killed_at)
        workload.stop()

    old.start()
    revision = wait_converged(cluster)
    assert_same_hash(cluster.members, revision)
    summary = check_read_back(workload, new, revision)
    result = check_history(workload.history.ops())
    print(f"elected {new.name} after {elected_after:.2f}s; {summary}; {summarize(workload)}")
    assert result.ok, result.explain()
