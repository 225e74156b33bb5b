"""The no-stall scenario: whole-store operations on a big store while a prober watches Raft.

Shared by `test_no_stall.py` (asserts) and `bench/nostall.py` (prints etcd vs etcdpy).

A 3-member cluster is filled with `keys` keys x `versions` versions (Txn batches from
many client threads), then each operation runs while a prober thread does a
linearizable get through a member the operation does not target, every 50 ms:

* ``compact``: one physical Compact at the current revision, on the leader;
* ``range``: one unpaginated linearizable Range of everything, on the leader;
* ``hashkv``: HashKV on every member, one after another;
* ``defrag``: Defragment of a follower (not the probed one);
* ``catchup``: that follower is removed, a new (empty) member is added and started;
  the leader's raft log is compacted (``--snapshot-count``), so it catches up by a
  snapshot of the whole store; the operation ends when it serves every key.

What is measured per operation: its duration, the slowest probe (a probe that fails
counts as infinitely slow) and the raft terms of the members before and after.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness import Cluster, GrpcClient, Member, wait_until

PREFIX = b"/nostall/"
PROBE_KEY = b"/nostall-probe"
PROBE_INTERVAL = 0.05
TXN_OPS = 64  # below etcd's default --max-txn-ops (128); 500k puts make ~7800 raft entries
FILL_THREADS = 8
SNAPSHOT_COUNT = 1000  # raft snapshots (and log compaction) every 1000 entries, on both targets
SERVER_ARGS = [f"--snapshot-count={SNAPSHOT_COUNT}"]
OPERATIONS = ("compact", "range", "hashkv", "defrag", "catchup")


@dataclass
class OpResult:
    """One operation: how long it took, the slowest probe meanwhile, and the terms around it."""

    name: str
    seconds: float = 0.0
    worst_probe: float = 0.0
    probes: int = 0
    failed_probes: int = 0
    terms_before: dict[str, int] = field(default_factory=dict)
    terms_after: dict[str, int] = field(default_factory=dict)
    detail: str = ""

    @property
    def term_changed(self) -> bool:
        common = set(self.terms_before) & set(self.terms_after)
        return any(self.terms_before[n] != self.terms_after[n] for n in common) or len(
            set(self.terms_after.values())
        ) > 1


def key(i: int) -> bytes:
    return PREFIX + b"%08d" % i


def fill(cluster: Cluster, keys: int, versions: int, seed: int) -> float:
    """Write every key `versions` times in Txns of TXN_OPS puts from FILL_THREADS threads; returns seconds.

    Versions are written round by round (all keys once, then again), so every key ends
    with exactly `versions` revisions, spread over the whole revision range.
    """
    endpoints = [m.endpoint for m in cluster.members]
    rng = random.Random(seed)
    batches = [(v, start) for v in range(versions) for start in range(0, keys, TXN_OPS)]
    lock = threading.Lock()
    errors: list[BaseException] = []
    cursor = [0]
    start_t = time.monotonic()

    def worker(w: int) -> None:
        cl = GrpcClient(endpoints[w % len(endpoints)])
        value_pad = bytes(rng.randrange(97, 123) for _ in range(16))
        try:
            while True:
                with lock:
                    if cursor[0] >= len(batches) or errors:
                        return
                    v, first = batches[cursor[0]]
                    cursor[0] += 1
                ops = [
                    cl.pb.RequestOp(request_put=cl.pb.PutRequest(key=key(i), value=b"%d." % v + value_pad))
                    for i in range(first, min(first + TXN_OPS, keys))
                ]
                for attempt in range(5):
                    try:
                        cl.kv.Txn(cl.pb.TxnRequest(success=ops), timeout=30)
                        break
                    except Exception:
                        if attempt == 4:
                            raise
                        time.sleep(0.5)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
        finally:
            cl.close()

    # Rounds must not overlap much (a key's versions would interleave), but order within
    # a round does not matter: each batch is one txn; a later round's batch of the same
    # keys is taken only after every earlier batch was handed out.
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(FILL_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
        assert not t.is_alive(), "fill worker hung"
    if errors:
        raise errors[0]
    return time.monotonic() - start_t


class Prober:
    """A thread doing a linearizable get of PROBE_KEY through one member every PROBE_INTERVAL.

    Each probe's latency is recorded against the wall clock, so the slowest probe during
    any window can be asked for later. A failed probe is recorded as infinitely slow.
    """

    def __init__(self, member: Member, timeout: float = 10.0) -> None:
        self.member = member
        self.timeout = timeout
        self.samples: list[tuple[float, float, float]] = []  # (start, end, latency)
        self.terms: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="prober")

    def start(self) -> Prober:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def _run(self) -> None:
        cl = GrpcClient(self.member.endpoint)
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    resp = cl.kv.Range(cl.pb.RangeRequest(key=PROBE_KEY), timeout=self.timeout)
                    latency = time.monotonic() - t0
                    self.terms.add(resp.header.raft_term)
                except Exception:  # noqa: BLE001 - a failed probe counts as infinitely slow
                    latency = math.inf
                t1 = time.monotonic()
                self.samples.append((t0, t1, latency))
                self._stop.wait(max(0.0, PROBE_INTERVAL - (t1 - t0)))
        finally:
            cl.close()

    def window(self, start: float, end: float) -> list[float]:
        """Latencies of the probes that overlapped [start, end]."""
        return [lat for (s, e, lat) in list(self.samples) if e >= start and s <= end]

    def wait_next(self) -> None:
        """Block until one more probe has finished (so a window's last probe is recorded)."""
        n = len(self.samples)
        wait_until(lambda: len(self.samples) > n, 30, "the next probe")


def terms(cluster: Cluster, members: list[Member]) -> dict[str, int]:
    out = {}
    for m in members:
        st = cluster.status(m, timeout=10.0)
        if st is not None:
            out[m.name] = int(st["raftTerm"])
    return out


def roles(cluster: Cluster) -> tuple[Member, Member, Member]:
    """(leader, probed follower, operated follower)."""
    leader = cluster.leader(timeout=30)
    followers = [m for m in cluster.members if m is not leader]
    return leader, followers[0], followers[1]


def run_operation(
    cluster: Cluster, prober: Prober, name: str, action: Callable[[], str]
) -> OpResult:
    res = OpResult(name)
    watched = [m for m in cluster.members if m.running()]
    res.terms_before = terms(cluster, watched)
    prober.wait_next()
    t0 = time.monotonic()
    res.detail = action()
    t1 = time.monotonic()
    prober.wait_next()
    res.seconds = t1 - t0
    window = prober.window(t0, t1)
    res.probes = len(window)
    res.failed_probes = sum(1 for x in window if x == math.inf)
    res.worst_probe = max(window, default=0.0)
    res.terms_after = terms(cluster, [m for m in cluster.members if m.running()])
    return res


def scenario(cluster: Cluster, keys: int, versions: int, seed: int, log: Callable[[str], Any] = print) -> list[OpResult]:
    """Fill, then run every operation under the prober; returns one OpResult per operation."""
    fill_s = fill(cluster, keys, versions, seed)
    leader, probed, other = roles(cluster)
    log(f"filled {keys} keys x {versions} versions in {fill_s:.1f} s; leader {leader.name}, "
        f"probe via {probed.name}, operations on {other.name}")
    lc = GrpcClient(leader.endpoint)
    lc.kv.Put(lc.pb.PutRequest(key=PROBE_KEY, value=b"probe"), timeout=30)
    prober = Prober(probed).start()
    results: list[OpResult] = []
    try:
        def compact() -> str:
            rev = lc.kv.Range(lc.pb.RangeRequest(key=PROBE_KEY), timeout=30).header.revision
            lc.kv.Compact(lc.pb.CompactionRequest(revision=rev, physical=True), timeout=120)
            return f"at revision {rev}"

        def range_all() -> str:
            resp = lc.kv.Range(lc.pb.RangeRequest(key=PREFIX, range_end=PREFIX[:-1] + b"0"), timeout=120)
            assert len(resp.kvs) == keys, f"range returned {len(resp.kvs)} of {keys} keys"
            return f"{len(resp.kvs)} keys"

        def hashkv() -> str:
            hashes = []
            for m in cluster.members:
                cl = m.grpc()
                hashes.append(cl.maintenance.HashKV(cl.pb.HashKVRequest(revision=0), timeout=120).hash)
            return f"{len(hashes)} members"

        def defrag() -> str:
            cl = other.grpc()
            cl.maintenance.Defragment(cl.pb.DefragmentRequest(), timeout=300)
            return other.name

        def catchup() -> str:
            cluster.remove_member(other)
            other.stop()
            newcomer = cluster.add_member(start=False)
            newcomer.spawn()
            cl = GrpcClient(newcomer.endpoint)
            try:
                wait_until(
                    lambda: _serializable_count(cl) == keys, 300, f"{newcomer.name} to hold every key"
                )
            finally:
                cl.close()
            return f"{newcomer.name} caught up"

        for name, action in (
            ("compact", compact), ("range", range_all), ("hashkv", hashkv), ("defrag", defrag), ("catchup", catchup)
        ):
            res = run_operation(cluster, prober, name, action)
            log(f"{name}: {res.seconds:.2f} s, worst probe {res.worst_probe * 1000:.0f} ms over {res.probes} "
                f"probes ({res.failed_probes} failed), terms {res.terms_before} -> {res.terms_after}; {res.detail}")
            results.append(res)
    finally:
        prober.stop()
        lc.close()
    return results


def _serializable_count(cl: GrpcClient) -> int:
    try:
        resp = cl.kv.Range(
            cl.pb.RangeRequest(key=PREFIX, range_end=PREFIX[:-1] + b"0", count_only=True, serializable=True), timeout=5
        )
    except Exception:  # noqa: BLE001 - not up yet
        return -1
    return int(resp.count)
