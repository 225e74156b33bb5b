"""A member far behind catches up by receiving a snapshot, not the (compacted) log.

With ``--snapshot-count=1000`` the leader snapshots every 1000 applied entries and
then compacts its raft log, keeping 5000 entries for slow followers (etcd 3.4's
SnapshotCatchUpEntries). A follower stopped before > 7000 writes is therefore
behind the leader's first log index when it returns: the only way back is a
snapshot of the whole store. The test is target-neutral about *how* (it checks
that the member serves everything afterwards); against real etcd it also checks
the leader's log says it sent a database snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from harness import Cluster, GrpcClient, Member, wait_until

from .workload import assert_same_hash, prefix_end, wait_converged

WRITES = 7200
PREFIX = b"/snap/"


def _write_all(leader: Member) -> None:
    """WRITES puts (each its own raft entry) from 4 threads."""
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        cl = GrpcClient(leader.endpoint)
        try:
            for i in range(w, WRITES, 4):
                cl.kv.Put(cl.pb.PutRequest(key=PREFIX + b"%05d" % i, value=b"v%05d" % i + b"." * 64), timeout=10)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            cl.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "writer hung"
    assert not errors, errors[0]


def _all_kvs(m: Member) -> list[tuple[bytes, bytes, int]]:
    cl = m.grpc()
    resp = cl.kv.Range(cl.pb.RangeRequest(key=PREFIX, range_end=prefix_end(PREFIX), serializable=True), timeout=30)
    return [(kv.key, kv.value, kv.mod_revision) for kv in resp.kvs]


def test_far_behind_member_catches_up_by_snapshot(make_cluster: Callable[..., Cluster], test_target: str) -> None:
    cluster = make_cluster(3, extra_args=["--snapshot-count=1000"])
    leader = cluster.leader()
    behind = next(m for m in cluster.members if m is not leader)
    behind.stop()
    _write_all(leader)
    status = cluster.status(leader)
    assert status is not None and status["raftIndex"] > WRITES

    behind.start()
    cl = behind.grpc()
    wait_until(
        lambda: cl.kv.Range(
            cl.pb.RangeRequest(key=PREFIX, range_end=prefix_end(PREFIX), count_only=True, serializable=True), timeout=5
        ).count
        == WRITES,
        60,
        "the restarted member to hold every key (serializable reads on it)",
    )
    revision = wait_converged(cluster)
    expected = _all_kvs(leader)
    assert len(expected) == WRITES
    assert _all_kvs(behind) == expected, "the caught-up member's data differs from the leader's"
    assert_same_hash(cluster.members, revision)
    # The received database is installed (etcd renames it into place), not left behind as a
    # second full copy of the store.
    wait_until(
        lambda: not list((behind.data_dir / "member" / "snap").glob("*.snap.db")),
        30,
        "the received <index>.snap.db to be gone once installed",
    )

    if test_target == "etcd":
        log = leader.stderr_path.read_text(errors="replace")
        assert '"msg":"sent database snapshot"' in log, "etcd's leader should have sent a snapshot"
        assert '"msg":"applied snapshot"' in behind.stderr_path.read_text(errors="replace")
