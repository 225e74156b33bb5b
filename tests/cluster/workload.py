"""Concurrent client load for the cluster tests, recorded for the linearizability checker.

Why a separate module: the leader-kill and partition tests need the same thing —
several client threads issuing puts, linearizable gets, deletes and CAS txns
over all members while a fault happens, with every outcome classified as
acknowledged, definitely failed, or ambiguous — and the same after-the-fact
checks: linearizability (tests/linearizability.py), durability and no phantom
or duplicated writes (the full event history read back with a watch from
revision 1), and identical stores on every member (HashKV at one revision).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from harness import Cluster, GrpcClient, Member, wait_until
from linearizability import CAS, DELETE, GET, PUT, History, Op

WRITE_KINDS = (PUT, DELETE, CAS)

# Definitely not applied: the server refused before proposing (validation, quota,
# auth) — an etcd server never puts a request into the log and then answers these.
_DEFINITE_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.NOT_FOUND,
}


def classify(err: grpc.RpcError) -> str:
    """``"fail"`` when the request certainly had no effect, else ``"info"`` (ambiguous).

    An UNAVAILABLE "failed to connect" comes from a channel that has no connection:
    the request never left this process. Everything else that is not a definite
    refusal (timeouts, "request timed out", "leader changed", a connection reset
    mid-call) may have been — or may still be — applied. Misclassifying an applied
    request as failed would not hide bugs: `check_read_back` flags any failed
    write that shows up in the store.
    """
    code = err.code()
    if code in _DEFINITE_CODES:
        return "fail"
    details = (err.details() or "").lower()
    if code == grpc.StatusCode.UNAVAILABLE and ("failed to connect" in details or "connection refused" in details):
        return "fail"
    return "info"


def prefix_end(prefix: bytes) -> bytes:
    """range_end covering every key that starts with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass
class Workload:
    """Client threads over a cluster's members, recording into one `History`.

    ``rotate``: on an unavailable/timeout error a thread moves to the next endpoint
    (what etcd's client balancer does), so a dead member does not stall it;
    without it each thread stays on its member, so errors on an isolated member
    keep being recorded.
    """

    members: Sequence[Member]
    prefix: str = "/lin/"
    clients: int = 6
    keys: int = 8
    timeout: float = 1.0
    rotate: bool = True
    seed: int | None = None
    history: History = field(default_factory=History)
    failed: list[Op] = field(default_factory=list)  # definitely failed writes (must never appear)
    stats: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, ok|fail|info) -> n
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _errors: list[BaseException] = field(default_factory=list)

    def key(self, i: int) -> str:
        return f"{self.prefix}k{i:02d}"

    def start(self) -> "Workload":
        seed = self.seed if self.seed is not None else random.SystemRandom().randrange(1 << 30)
        self.seed = seed
        endpoints = [m.endpoint for m in self.members]
        for c in range(self.clients):
            t = threading.Thread(target=self._run, args=(c, endpoints, random.Random(seed * 1000 + c)), daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self, join_timeout: float = 30.0) -> None:
        """Stop issuing operations and wait for in-flight ones (bounded by their timeout)."""
        self._stop.set()
        for t in self._threads:
            t.join(join_timeout)
            assert not t.is_alive(), "a workload client thread hung"
        if self._errors:
            raise AssertionError(f"workload client crashed: {self._errors[0]!r}") from self._errors[0]

    def __enter__(self) -> "Workload":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    # -- counting (for "wait until progress" polls)

    def count(
        self,
        endpoint: str | None = None,
        kinds: Sequence[str] = WRITE_KINDS,
        since: float | None = None,
        ok_only: bool = True,
    ) -> int:
        """Completed operations matching the filters (acknowledged ones unless ``ok_only=False``)."""
        n = 0
        for op in self.history.ops():
            if op.kind not in kinds or (ok_only and op.ambiguous):
                continue
            if endpoint is not None and op.meta.get("endpoint") != endpoint:
                continue
            if since is not None and op.call < since:
                continue
            n += 1
        return n

    def wait_progress(self, n: int, timeout: float, what: str, **filters: Any) -> None:
        """Poll until at least ``n`` more matching operations have been acknowledged."""
        base = self.count(**filters)
        wait_until(lambda: self.count(**filters) >= base + n, timeout, f"{n} acknowledged ops ({what})", interval=0.05)

    # -- the client loop

    def _run(self, client: int, endpoints: list[str], rng: random.Random) -> None:
        channels: dict[str, GrpcClient] = {}
        idx = client % len(endpoints)
        seen: dict[str, str | None] = {}
        seq = 0
        try:
            while not self._stop.is_set():
                endpoint = endpoints[idx]
                if endpoint not in channels:
                    channels[endpoint] = _client(endpoint)
                seq += 1
                outcome = self._one(client, seq, channels[endpoint], endpoint, rng, seen)
                if outcome != "ok" and self.rotate:
                    idx = (idx + 1) % len(endpoints)
        except BaseException as exc:  # noqa: BLE001 - surfaced by stop()
            self._errors.append(exc)
        finally:
            for ch in channels.values():
                ch.close()

    def _one(
        self,
        client: int,
        seq: int,
        cl: GrpcClient,
        endpoint: str,
        rng: random.Random,
        seen: dict[str, str | None],
    ) -> str:
        pb = cl.pb
        key = self.key(rng.randrange(self.keys))
        bkey = key.encode()
        value = f"{client}-{seq}"
        roll = rng.random()
        hist = self.history
        if roll < 0.35:
            op = hist.invoke(client, PUT, key, value=value, endpoint=endpoint)
            call = lambda: cl.kv.Put(pb.PutRequest(key=bkey, value=value.encode()), timeout=self.timeout)  # noqa: E731
        elif roll < 0.70:
            op = hist.invoke(client, GET, key, endpoint=endpoint)
            call = lambda: cl.kv.Range(pb.RangeRequest(key=bkey), timeout=self.timeout)  # noqa: E731
        elif roll < 0.80:
            op = hist.invoke(client, DELETE, key, endpoint=endpoint)
            call = lambda: cl.kv.DeleteRange(pb.DeleteRangeRequest(key=bkey), timeout=self.timeout)  # noqa: E731
        else:
            expected = seen.get(key)
            if expected is None:
                compare = pb.Compare(key=bkey, target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)
            else:
                compare = pb.Compare(
                    key=bkey, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=expected.encode()
                )
            txn = pb.TxnRequest(
                compare=[compare],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=bkey, value=value.encode()))],
            )
            op = hist.invoke(client, CAS, key, value=value, expected=expected, endpoint=endpoint)
            call = lambda: cl.kv.Txn(txn, timeout=self.timeout)  # noqa: E731
        try:
            resp = call()
        except grpc.RpcError as err:
            verdict = classify(err)
            if verdict == "fail":
                hist.fail(op, error=f"{err.code().name}: {err.details()}")
                if op.kind in WRITE_KINDS:
                    with self._lock:
                        self.failed.append(op)
            else:
                hist.info(op, error=f"{err.code().name}: {err.details()}")
            with self._lock:
                self.stats[(endpoint, verdict)] += 1
            return verdict
        rev = resp.header.revision
        if op.kind == PUT:
            hist.ok(op, None, rev=rev)
            seen[key] = value
        elif op.kind == GET:
            out = resp.kvs[0].value.decode() if resp.kvs else None
            hist.ok(op, out, rev=rev)
            seen[key] = out
        elif op.kind == DELETE:
            hist.ok(op, int(resp.deleted), rev=rev)
            seen[key] = None
        else:
            hist.ok(op, bool(resp.succeeded), rev=rev)
            if resp.succeeded:
                seen[key] = value
        with self._lock:
            self.stats[(endpoint, "ok")] += 1
        return "ok"


def _client(endpoint: str) -> GrpcClient:
    """A client whose channel reconnects quickly once a dead member is back.

    gRPC's default reconnect backoff grows to minutes; a restarted or healed member
    must be usable again within the test's deadlines.
    """
    cl = GrpcClient(endpoint)
    cl.channel.close()
    cl.channel = grpc.insecure_channel(
        endpoint,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ],
    )
    return cl


# --------------------------------------------------------------------------- after-the-fact checks


def wait_converged(cluster: Cluster, members: Sequence[Member] | None = None, timeout: float = 30.0) -> int:
    """Wait until every member applied the same revision (serializable reads); return it.

    Why: followers apply asynchronously; comparing stores before they caught up
    would report a difference that is only lag.
    """
    group = list(members or cluster.members)

    def same() -> int | None:
        revs = set()
        for m in group:
            cl = m.grpc()
            resp = cl.kv.Range(cl.pb.RangeRequest(key=b"/__converge_probe__", serializable=True), timeout=5)
            revs.add(resp.header.revision)
        # A linearizable read through the first member pins "latest" before comparing.
        cl = group[0].grpc()
        latest = cl.kv.Range(cl.pb.RangeRequest(key=b"/__converge_probe__"), timeout=5).header.revision
        return latest if revs == {latest} else None

    return wait_until(same, timeout, "all members at the same revision")


def assert_same_hash(members: Sequence[Member], revision: int) -> None:
    """HashKV at one revision must be identical on every member (no divergent state)."""
    hashes = {}
    for m in members:
        cl = m.grpc()
        resp = cl.maintenance.HashKV(cl.pb.HashKVRequest(revision=revision), timeout=10)
        hashes[m.name] = resp.hash
    assert len(set(hashes.values())) == 1, f"members disagree on HashKV at revision {revision}: {hashes}"


def read_events(member: Member, prefix: str | None, until_revision: int, timeout: float = 60.0) -> list[Any]:
    """Every event under ``prefix`` (None: the whole keyspace) from revision 1 through ``until_revision``, via one watch."""
    cl = GrpcClient(member.endpoint)
    pb = cl.pb
    done = threading.Event()
    key, end = (prefix.encode(), prefix_end(prefix.encode())) if prefix else (b"\0", b"\0")

    def requests() -> Any:
        yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=end, start_revision=1))
        done.wait(timeout)

    events: list[Any] = []
    stream = cl.watch.Watch(requests(), timeout=timeout)
    try:
        if until_revision <= 1:
            return events
        for resp in stream:
            assert not resp.canceled, f"watch canceled: {resp.cancel_reason} (compacted to {resp.compact_revision})"
            events.extend(resp.events)
            if events and events[-1].kv.mod_revision >= until_revision:
                break
    finally:
        done.set()
        stream.cancel()
        cl.close()
    return events


def check_read_back(workload: Workload, member: Member, until_revision: int) -> dict[str, int]:
    """The full write history in the store agrees with what clients were told.

    - every acknowledged put and successful CAS is there, at the revision its
      response reported, with its value (zero acknowledged writes lost);
    - every acknowledged delete that deleted something is a DELETE at its revision;
    - every stored value was written by some recorded operation, at most once
      (no phantom and no duplicated writes), and never by a definitely-failed one;
    - revisions 2..until_revision are contiguous across the whole keyspace (every
      write in these tests touches one key, so each revision is exactly one event).
    """
    all_events = read_events(member, None, until_revision)
    mvccpb = member.grpc().mvccpb
    seen_revs: set[int] = set()
    by_rev: dict[int, Any] = {}
    for ev in all_events:
        rev = ev.kv.mod_revision
        assert rev not in seen_revs, f"two events at revision {rev}"
        seen_revs.add(rev)
        if ev.kv.key.decode(errors="replace").startswith(workload.prefix):
            by_rev[rev] = ev
    events = list(by_rev.values())
    assert sorted(seen_revs) == list(range(2, until_revision + 1)), (
        f"event revisions are not exactly 2..{until_revision}: "
        f"missing {sorted(set(range(2, until_revision + 1)) - seen_revs)[:20]}"
    )
    writers: dict[tuple[str, str], Op] = {}
    for op in workload.history.ops():
        if op.kind in (PUT, CAS):
            writers[(op.key, op.value or "")] = op
    failed = {(op.key, op.value or "") for op in workload.failed if op.kind in (PUT, CAS)}
    stored: Counter[tuple[str, str]] = Counter()
    for rev, ev in by_rev.items():
        if ev.type == mvccpb.Event.PUT:
            kv = (ev.kv.key.decode(), ev.kv.value.decode())
            stored[kv] += 1
            assert kv not in failed, f"a write reported as definitely failed was applied at revision {rev}: {kv}"
            assert kv in writers, f"phantom write at revision {rev}: {kv} was never issued"
    dup = [kv for kv, n in stored.items() if n > 1]
    assert not dup, f"writes applied more than once: {dup[:10]}"
    acked = 0
    for op in workload.history.ops():
        if op.ambiguous:
            continue
        rev = op.meta.get("rev")
        if op.kind == PUT or (op.kind == CAS and op.output):
            acked += 1
            ev = by_rev.get(rev)
            assert ev is not None and ev.type == mvccpb.Event.PUT, f"acknowledged write lost: {op.describe()}"
            assert (ev.kv.key.decode(), ev.kv.value.decode()) == (op.key, op.value), (
                f"revision {rev} holds {ev.kv.key!r}={ev.kv.value!r}, but the client was told it wrote "
                f"{op.describe()}"
            )
        elif op.kind == DELETE and op.output:
            acked += 1
            ev = by_rev.get(rev)
            assert ev is not None and ev.type == mvccpb.Event.DELETE and ev.kv.key.decode() == op.key, (
                f"acknowledged delete lost: {op.describe()}"
            )
    return {"events": len(events), "acknowledged_writes": acked}


def summarize(workload: Workload) -> str:
    """One line of per-endpoint outcome counts, for test output."""
    parts = []
    for (endpoint, verdict), n in sorted(workload.stats.items()):
        parts.append(f"{endpoint} {verdict}={n}")
    return ", ".join(parts)
