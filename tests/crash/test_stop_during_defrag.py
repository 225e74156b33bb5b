"""SIGTERM while a defragmentation runs: a graceful stop, the data intact.

Defragmentation runs on a worker thread. Closing the store under it used to raise
rocksdict's "Already borrowed" and kill the member mid-shutdown; the backend's owner now
waits for worker-thread users before closing. Target-neutral assertions: the exit code is
the one a normal SIGTERM gives on the same target, and after a restart every key is there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from harness import Cluster, GrpcClient, wait_until

KEYS = 40_000
BATCH = 100


def _fill(endpoint: str) -> None:
    cl = GrpcClient(endpoint)
    try:
        for first in range(0, KEYS, BATCH):
            ops = [
                cl.pb.RequestOp(request_put=cl.pb.PutRequest(key=b"/defrag/%06d" % i, value=b"v" * 3000))
                for i in range(first, first + BATCH)
            ]
            cl.kv.Txn(cl.pb.TxnRequest(success=ops), timeout=30)
        for first in range(0, KEYS, 2 * BATCH):  # deleted data for the defrag to drop
            req = cl.pb.DeleteRangeRequest(key=b"/defrag/%06d" % first, range_end=b"/defrag/%06d" % (first + BATCH))
            cl.kv.DeleteRange(req, timeout=30)
    finally:
        cl.close()


def _count(endpoint: str) -> int:
    cl = GrpcClient(endpoint)
    try:
        return int(
            cl.kv.Range(cl.pb.RangeRequest(key=b"/defrag/", range_end=b"/defrag0", count_only=True), timeout=10).count
        )
    finally:
        cl.close()


def test_sigterm_during_defrag_is_graceful(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(1)
    m = cluster.members[0]
    normal_rc = m.stop()
    m.start()
    _fill(m.endpoint)
    expected = _count(m.endpoint)
    assert expected == KEYS // 2

    done = threading.Event()

    def defrag() -> None:
        cl = GrpcClient(m.endpoint)
        try:
            cl.maintenance.Defragment(cl.pb.DefragmentRequest(), timeout=60)
        except Exception:  # noqa: BLE001 - the member is being stopped under it
            pass
        finally:
            cl.close()
            done.set()

    t = threading.Thread(target=defrag)
    t.start()
    time.sleep(0.05)  # the defrag is under way (it takes a good fraction of a second here)
    rc = m.stop()
    t.join(30)
    assert rc == normal_rc, f"exit code {rc} after SIGTERM during defrag, {normal_rc} normally\n{m.log_tail()}"
    log = m.stderr_path.read_text(errors="replace")
    assert "Already borrowed" not in log and "Traceback" not in log, m.log_tail()
    m.start()
    wait_until(lambda: _count(m.endpoint) == expected, 30, "every key after the restart")
