"""--experimental-initial-corrupt-check: a restarting member compares its KV hash with its peers'.

etcd's rule (CheckInitialHashKV): before serving, a member that already has data asks
every peer for the hash of its store at the member's revision; a different hash with
the same compact revision means the data disagree, and the member refuses to start.
The consistent case runs against etcd 3.5.1 too; the corrupt case forges one stored
value in etcdpy's own backend, so it runs on etcdpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness import Cluster, Member, MemberStartError, target, wait_until

CHECK = "--experimental-initial-corrupt-check=true"


def _follower(cluster: Cluster) -> Member:
    leader = cluster.leader()
    return next(m for m in cluster.members if m is not leader)


def _write(cluster: Cluster, n: int = 20) -> None:
    for i in range(n):
        cluster.members[0].etcdctl("put", f"k{i}", f"v{i}")


def _converged(cluster: Cluster) -> None:
    """Every member applied the same revision (so a stopped follower holds all of it)."""
    def same() -> bool:
        revs = {m.etcdctl("endpoint", "status")[0]["Status"]["header"]["revision"] for m in cluster.members}
        return len(revs) == 1

    wait_until(same, 30, "all members at the same revision")


def test_consistent_member_passes_the_check(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(size=3)
    _write(cluster)
    _converged(cluster)
    m = _follower(cluster)
    m.stop()
    m.extra_args = [*m.extra_args, CHECK]
    m.start()
    assert m.etcdctl("get", "k7")["kvs"][0]["value"] == "djc="  # base64 "v7"
    log = m.stderr_path.read_text()
    assert "initial corruption checking passed; no corruption" in log


@pytest.mark.skipif(target() != "etcdpy", reason="forges a value in etcdpy's own backend (RocksDB) to corrupt it")
def test_member_with_different_data_refuses_to_start(make_cluster: Callable[..., Cluster]) -> None:
    from etcdpy.mvcc.backend import BUCKET_KEY, Backend, bucket_prefix
    from etcdpy.pb import kv_pb2

    cluster = make_cluster(size=3)
    _write(cluster)
    _converged(cluster)
    m = _follower(cluster)
    m.stop()
    be = Backend(str(m.data_dir / "member" / "snap" / "db"))
    try:
        prefix = bucket_prefix(BUCKET_KEY)
        key, value = next((k, v) for k, v in be.db.items(from_key=prefix) if k.startswith(prefix))
        kv = kv_pb2.KeyValue.FromString(value)
        kv.value = b"silently changed on disk"
        batch = be.batch()
        batch.put(BUCKET_KEY, key[len(prefix):], kv.SerializeToString())
        be.write(batch)
    finally:
        be.close()
    m.extra_args = [*m.extra_args, CHECK]
    with pytest.raises(MemberStartError):
        m.start(timeout=60)
    assert m.proc is not None and m.proc.returncode not in (0, None)
    lines = [line for line in m.stderr_path.read_text().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("etcdpy: "), lines
    assert lines[0].endswith("found data inconsistency with peers"), lines
    # Without the check the same member starts (etcd's default): the flag is what refuses.
    m.extra_args = [a for a in m.extra_args if a != CHECK]
    m.start()
