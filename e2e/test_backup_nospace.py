"""NOSPACE with a small quota under a writing client: the operator compacts, defragments every member
(followers first, the leader last after moving leadership), disarms the alarm, and writes resume."""

from __future__ import annotations

import random
import time
from typing import Any

import grpc
import pytest
from e2ekit import Kube, Writer, summary, t, wait_available, wait_until

pytestmark = [pytest.mark.timeout(1500), pytest.mark.e2e_slow]

QUOTA = 8 * 1024 * 1024


def test_nospace_is_healed(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    kube = operator
    kube.create_etcdcluster(ns, "n", {"replicas": 3, "etcd": {"quotaBackendBytes": QUOTA},
                                      "maintenance": {"keepRevisions": 5}})
    wait_available(kube, ns, "n", 3)
    writer = Writer(kube, ns, "n").start()
    rng = random.Random(8)  # incompressible values: the backend compresses, repeated bytes would not fill it
    t0 = time.monotonic()
    nospace_at = 0.0
    for i in range(2000):
        ep = writer.endpoints()[0]
        try:
            with grpc.insecure_channel(ep) as ch:
                rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=b"/big/%d" % (i % 10), value=rng.randbytes(200 * 1024)), timeout=10)
        except grpc.RpcError as e:
            if "database space exceeded" in (e.details() or ""):  # etcd's ErrGRPCNoSpace
                nospace_at = time.monotonic()
                break
    assert nospace_at, "the quota was never reached"
    fill_s = nospace_at - t0
    acked_at_alarm = len(writer.acked)
    wait_until(lambda: (kube.etcdcluster(ns, "n").get("status") or {}).get("maintenance", {})
               .get("lastNoSpaceHealing"), t(300), "NOSPACE healing to finish")
    healed_s = time.monotonic() - nospace_at
    wait_until(lambda: len(writer.acked) > acked_at_alarm + 5, t(120), "writes to resume")
    resumed_s = time.monotonic() - nospace_at
    writer.stop()
    assert writer.verify() > 0
    events = [e for e in kube.events(ns) if e.involved_object.kind == "EtcdCluster"]
    order = [e.message for e in sorted(events, key=lambda e: e.metadata.creation_timestamp or 0)
             if e.reason in ("Defragmented", "LeaderMoved")]
    reasons = {e.reason for e in events}
    for r in ("NoSpaceHealing", "Compacted", "Defragmented", "LeaderMoved", "NoSpaceDisarmed", "MaintenanceCompleted"):
        assert r in reasons, (r, sorted(reasons), summary(kube, ns, "n"))
    done = kube.etcdcluster(ns, "n")["status"]["maintenance"]["lastNoSpaceHealing"]["done"]
    assert len(done) == 3, done
    wait_available(kube, ns, "n", 3)
    timings["nospace_8MiB"] = {"fill_to_alarm_s": round(fill_s, 1), "alarm_to_healed_s": round(healed_s, 1),
                               "alarm_to_writes_resumed_s": round(resumed_s, 1), "steps": len(order)}
