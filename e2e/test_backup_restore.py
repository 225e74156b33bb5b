"""Restore into a new cluster from a backup, compared key by key with the source at the backup's revision;
a missing backup and a damaged file are refused before anything is created.

The source holds 100k keys (written in batches) plus the checked writer's; the time and size of the on-demand
backup and the time from `kubectl apply` of the restored cluster to 3 Available members are measured.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from e2ekit import Kube, Writer, summary, t, wait_available, wait_until

from etcdpy_operator import GROUP, VERSION

pytestmark = [pytest.mark.timeout(1800), pytest.mark.e2e_slow]

KEYS = 100_000


def _stub(kube: Kube, ns: str, cluster: str) -> tuple[Any, Any, grpc.Channel]:
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    ep = Writer(kube, ns, cluster).endpoints()[0]
    ch = grpc.insecure_channel(ep, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
    return rpc_pb2, rpc_pb2_grpc.KVStub(ch), ch


def _fill(kube: Kube, ns: str, cluster: str, n: int) -> None:
    pb, kv, ch = _stub(kube, ns, cluster)
    with ch:
        for start in range(0, n, 128):  # etcd: at most 128 operations per txn
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"/bulk/%07d" % i, value=b"v%07d" % i))
                   for i in range(start, min(start + 128, n))]
            kv.Txn(pb.TxnRequest(success=ops), timeout=60)


def _dump(kube: Kube, ns: str, cluster: str, revision: int = 0) -> tuple[int, dict[bytes, tuple[Any, ...]]]:
    """(header revision, key -> (value, create, mod, version, lease)) of the whole keyspace, at `revision`."""
    pb, kv, ch = _stub(kube, ns, cluster)
    with ch:
        r = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0", revision=revision), timeout=120)
    return r.header.revision, {k.key: (k.value, k.create_revision, k.mod_revision, k.version, k.lease) for k in r.kvs}


def _backup(kube: Kube, ns: str, cluster: str, name: str) -> dict[str, Any]:
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "etcdbackups", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "EtcdBackup", "metadata": {"name": name},
        "spec": {"clusterName": cluster}})

    def done() -> dict[str, Any] | None:
        s = kube.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "etcdbackups", name).get("status") or {}
        return s if s.get("phase") in ("Succeeded", "Failed") else None

    res: dict[str, Any] = wait_until(done, t(300), f"EtcdBackup {name}")
    assert res["phase"] == "Succeeded", res
    return res


def _nothing_created(kube: Kube, ns: str, cluster: str) -> bool:
    sel = f"etcd.etcdpy.io/cluster={cluster}"
    return (not kube.core.list_namespaced_pod(ns, label_selector=sel).items
            and not kube.core.list_namespaced_persistent_volume_claim(ns, label_selector=sel).items)


def test_restore_into_a_new_cluster(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    kube = operator
    kube.create_etcdcluster(ns, "src", {"replicas": 1, "backup": {}})
    wait_available(kube, ns, "src", 1)
    t0 = time.monotonic()
    _fill(kube, ns, "src", KEYS)
    fill_s = time.monotonic() - t0
    writer = Writer(kube, ns, "src").start()
    time.sleep(2)
    t0 = time.monotonic()
    res = _backup(kube, ns, "src", "snap")
    backup_s = time.monotonic() - t0
    writer.stop()
    assert writer.verify() > 0
    rev = int(res["revision"])
    _, want = _dump(kube, ns, "src", rev)
    assert len(want) >= KEYS

    t0 = time.monotonic()
    kube.create_etcdcluster(ns, "dst", {"replicas": 3, "restore": {"backup": "snap"}})
    wait_available(kube, ns, "dst", 3, timeout=t(600))
    restore_s = time.monotonic() - t0
    head, got = _dump(kube, ns, "dst")
    assert head == rev, (head, rev)
    assert got.keys() == want.keys(), (len(got), len(want))
    assert got == want, "a key's value, revisions, version or lease differ after restore"
    src_id = kube.etcdcluster(ns, "src")["status"]["clusterID"]
    dst_st = kube.etcdcluster(ns, "dst")["status"]
    assert dst_st["clusterID"] and dst_st["clusterID"] != src_id, "a restored cluster has a new cluster id"
    assert dst_st["restore"]["phase"] == "Verified" and dst_st["restore"]["revision"] == rev
    assert not kube.core.list_namespaced_pod(ns, label_selector=f"{GROUP}/restore-of=dst").items or wait_until(
        lambda: not kube.core.list_namespaced_pod(ns, label_selector=f"{GROUP}/restore-of=dst").items, t(60),
        "the check Pod to go")
    # the restored cluster takes writes
    after = Writer(kube, ns, "dst", prefix="/after/").start()
    time.sleep(3)
    assert after.verify() > 0
    timings["backup_restore_100k"] = {
        "keys": len(want), "fill_s": round(fill_s, 1), "backup_s": round(backup_s, 1),
        "backup_agent_s": res.get("seconds"), "backup_bytes": res.get("size"),
        "apply_to_3_available_s": round(restore_s, 1),
    }

    # refusals: nothing is created
    kube.create_etcdcluster(ns, "nope", {"replicas": 3, "restore": {"backup": "missing"}})
    wait_until(lambda: (kube.condition(ns, "nope", "Degraded") or {}).get("reason") == "RestoreSourceMissing",
               t(60), "RestoreSourceMissing")
    if kube.is_double:
        d = kube.volume_dir(ns, res["claim"])  # type: ignore[attr-defined]
        data = bytearray((d / res["fileName"]).read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
        (d / "damaged.db").write_bytes(bytes(data))
        kube.create_etcdcluster(ns, "bad", {"replicas": 1, "restore": {"claimName": res["claim"],
                                                                        "fileName": "damaged.db"}})
        wait_until(lambda: (kube.etcdcluster(ns, "bad").get("status") or {}).get("restore", {}).get("phase")
                   == "Failed", t(120), "the damaged snapshot to be refused")
        wait_until(lambda: (kube.condition(ns, "bad", "Degraded") or {}).get("reason") == "RestoreFailed",
                   t(60), "RestoreFailed")
        assert _nothing_created(kube, ns, "bad"), summary(kube, ns, "bad")
    assert _nothing_created(kube, ns, "nope"), summary(kube, ns, "nope")
