"""A leader cut off from its followers by a network partition (iptables, peer traffic only).

While isolated, the old leader must not acknowledge writes nor serve linearizable
reads (clients bound to it get errors or timeouts: recorded as possibly-applied);
the majority elects a new leader and keeps serving; once healed, the old leader
rejoins as a follower. The recorded history must be linearizable and no
acknowledged write may be lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest

from harness import Cluster, Member, wait_until
from linearizability import GET, PUT, History, check_history

from .conftest import ELECTION_TIMEOUT, leader_id, own_id, wait_new_leader, wait_term_above
from .workload import WRITE_KINDS, Workload, assert_same_hash, check_read_back, summarize, wait_converged


def test_partitioned_leader(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3, net=True)
    old = cluster.leader()
    old_status = cluster.status(old)
    assert old_status is not None
    old_id = own_id(old_status)
    majority = [m for m in cluster.members if m is not old]
    # Two clients per member, each staying on its member: the old leader's clients
    # keep hitting it for the whole partition.
    workload = Workload(cluster.members, prefix="/part/", clients=6, keys=8, timeout=1.0, rotate=False)
    with workload:
        workload.wait_progress(150, 30, "before the partition")
        with cluster.partition([old]) as partition:
            assert partition.started is not None
            new, _ = wait_new_leader(cluster, majority, old_id, timeout=10 * ELECTION_TIMEOUT + 10)
            wait_term_above(cluster, new, int(old_status["raftTerm"]), timeout=30)
            elected_at = time.monotonic()
            # The majority serves...
            for m in majority:
                workload.wait_progress(50, 30, f"on {m.name} after the election", endpoint=m.endpoint, since=elected_at)
            # ...and the old leader's clients see failures, not successes.
            workload.wait_progress(
                3, 30, "errors on the isolated member", endpoint=old.endpoint, kinds=(*WRITE_KINDS, GET), ok_only=False
            )
            # Explicit probes on the isolated member: no write, no linearizable read.
            cl = old.grpc()
            for call in (
                lambda: cl.kv.Put(cl.pb.PutRequest(key=b"/part-probe", value=b"x"), timeout=2),
                lambda: cl.kv.Range(cl.pb.RangeRequest(key=b"/part-probe"), timeout=2),
            ):
                with pytest.raises(grpc.RpcError):
                    call()
            # With CheckQuorum the deposed leader steps down by itself.
            wait_until(
                lambda: leader_id(cluster.status(old, timeout=2.0)) != old_id,
                10 * ELECTION_TIMEOUT,
                "the isolated leader to step down",
            )
            _negative_control(cluster, old, new)
        assert partition.healed is not None
        # Healed: one leader for all three, and it is not the old one (its log is
        # behind the new term), and the old leader serves again as a follower.
        final = cluster.leader(timeout=30)
        assert final is not old
        workload.wait_progress(20, 30, "on the old leader after healing", endpoint=old.endpoint, since=partition.healed)
        workload.stop()

    acked_while_isolated = [
        op
        for op in workload.history.ops()
        if op.meta.get("endpoint") == old.endpoint
        and not op.ambiguous
        and op.call >= partition.started
        and op.ret <= partition.healed
    ]
    assert not acked_while_isolated, "the isolated old leader answered:\n" + "\n".join(
        op.describe() for op in acked_while_isolated[:10]
    )
    revision = wait_converged(cluster)
    assert_same_hash(cluster.members, revision)
    summary = check_read_back(workload, final, revision)
    result = check_history(workload.history.ops())
    print(f"new leader {new.name}, final {final.name}; {summary}; {summarize(workload)}")
    assert result.ok, result.explain()


def _negative_control(cluster: Cluster, isolated: Member, leader: Member) -> None:
    """Prove the recording + checker pipeline catches a real stale read.

    A *serializable* read is answered from the member's local state without
    asking the leader, so on the isolated member it misses a write the majority
    has already acknowledged — not linearizable, and the checker must say so.
    (The workload itself only does linearizable reads.)
    """
    history = History()
    key = "/part-control"
    cl = leader.grpc()
    op = history.invoke(0, PUT, key, value="after-partition")
    cl.kv.Put(cl.pb.PutRequest(key=key.encode(), value=b"after-partition"), timeout=5)
    history.ok(op)
    stale = isolated.grpc()
    op = history.invoke(1, GET, key)
    resp = stale.kv.Range(stale.pb.RangeRequest(key=key.encode(), serializable=True), timeout=5)
    history.ok(op, resp.kvs[0].value.decode() if resp.kvs else None)
    assert op.output is None, "the isolated member cannot have seen a write made after the partition"
    assert not history.check().ok, "the checker accepted a stale serializable read from an isolated member"
