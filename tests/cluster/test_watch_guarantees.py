"""Watch guarantees across a leader crash: ordered, unique, reliable, resumable.

Two watchers follow one prefix while clients keep writing to it: one through a follower (its
stream should survive the crash), one through the leader (its stream breaks when the leader is
killed -9; it resumes on another member from its last seen revision + 1, as etcd's client does).
At the end each watcher's recorded events must be exactly the store's history of the prefix
(read back with a watch from revision 1): strictly increasing revisions, no gap, no duplicate;
and every acknowledged write is seen exactly once, at the revision its response named.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from harness import Cluster, current_revision, wait_until
from linearizability import CAS, DELETE, PUT

from .conftest import ELECTION_TIMEOUT, own_id, wait_new_leader
from .workload import WRITE_KINDS, Workload, _client, prefix_end, read_events, wait_converged

PREFIX = "/wg/"
Event = tuple[int, bytes, int, bytes]  # (mod_revision, key, type, value)
PUT_EVENT, DELETE_EVENT = 0, 1  # mvccpb.Event.EventType


def as_tuple(ev: Any) -> Event:
    return (ev.kv.mod_revision, ev.kv.key, ev.type, ev.kv.value)


class ResumingWatcher:
    """A prefix watcher that, when its stream breaks, resumes on the next endpoint from last seen + 1.

    Why a thread and our own resume loop: this is the client behaviour the guarantees are
    about (etcd's clientv3 does the same), and it lets the test see how often it happened.
    """

    def __init__(self, name: str, endpoints: Sequence[str], start_rev: int) -> None:
        self.name = name
        self.endpoints = list(endpoints)
        self.events: list[Event] = []
        self.last_rev = start_rev - 1
        self.breaks: list[str] = []  # why each stream ended (before stop)
        self.created = threading.Event()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watcher-{name}", daemon=True)

    def start(self) -> ResumingWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.cancel()
        self._thread.join(30)
        assert not self._thread.is_alive(), f"watcher {self.name} hung"

    def _run(self) -> None:
        idx = 0
        while not self._stop.is_set():
            endpoint = self.endpoints[idx % len(self.endpoints)]
            why = self._watch_once(endpoint)
            if self._stop.is_set():
                return
            self.breaks.append(f"{endpoint}: {why}")
            idx += 1
            self._stop.wait(0.1)  # retry pacing against a dead endpoint, not synchronisation

    def _watch_once(self, endpoint: str) -> str:
        """One stream from last_rev + 1 until it ends; returns why it ended."""
        cl = _client(endpoint)
        pb = cl.pb
        key = PREFIX.encode()
        req = pb.WatchRequest(
            create_request=pb.WatchCreateRequest(key=key, range_end=prefix_end(key), start_revision=self.last_rev + 1)
        )
        stream_done = threading.Event()

        def requests() -> Iterator[Any]:
            yield req
            while not (self._stop.is_set() or stream_done.is_set()):
                stream_done.wait(0.5)

        try:
            self._stream = cl.watch.Watch(requests())
            for resp in self._stream:
                if resp.canceled:
                    return f"canceled: {resp.cancel_reason}"
                if resp.created:
                    self.created.set()
                for ev in resp.events:
                    t = as_tuple(ev)
                    self.events.append(t)
                    self.last_rev = t[0]
            return "stream ended"
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
        finally:
            stream_done.set()
            cl.close()


def expected_events(workload: Workload) -> list[Event]:
    """The events every acknowledged write that changed something must produce."""
    out = []
    for op in workload.history.ops():
        if op.kind not in WRITE_KINDS or op.ambiguous:
            continue
        rev = op.meta["rev"]
        key = op.key.encode()
        if op.kind == PUT or (op.kind == CAS and op.output):
            out.append((rev, key, PUT_EVENT, (op.value or "").encode()))
        elif op.kind == DELETE and op.output:
            out.append((rev, key, DELETE_EVENT, b""))
    return out


def check_watcher(w: ResumingWatcher, store: list[Event], acked: list[Event]) -> None:
    revs = [e[0] for e in w.events]
    dups = [r for r, n in Counter(revs).items() if n > 1]
    assert not dups, f"{w.name}: duplicated revisions {dups[:20]}"
    assert all(a < b for a, b in zip(revs, revs[1:])), f"{w.name}: revisions not strictly increasing"
    missing = sorted(set(store) - set(w.events))
    extra = sorted(set(w.events) - set(store))
    assert not missing, f"{w.name}: gap, {len(missing)} store events never seen, first {missing[:5]}"
    assert not extra, f"{w.name}: {len(extra)} events not in the store's history, first {extra[:5]}"
    assert w.events == store
    seen = Counter(w.events)
    unseen = [e for e in acked if seen[e] != 1]
    assert not unseen, f"{w.name}: acknowledged writes not seen exactly once: {unseen[:5]}"


def test_watch_guarantees_across_leader_kill(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    leader = cluster.leader()
    leader_status = cluster.status(leader)
    assert leader_status is not None
    followers = [m for m in cluster.members if m is not leader]
    start_rev = current_revision(leader) + 1
    via_follower = ResumingWatcher("via-follower", [m.endpoint for m in followers], start_rev).start()
    via_leader = ResumingWatcher(
        "via-leader", [leader.endpoint, *(m.endpoint for m in followers)], start_rev
    ).start()
    watchers = [via_follower, via_leader]
    try:
        for w in watchers:
            assert w.created.wait(10), f"watcher {w.name} not created"
        workload = Workload(cluster.members, prefix=PREFIX, clients=4, keys=8, timeout=2.0, rotate=True)
        with workload:
            workload.wait_progress(150, 30, "before the crash")
            leader.kill(signal.SIGKILL)
            killed_at = time.monotonic()
            wait_new_leader(cluster, followers, own_id(leader_status), timeout=6 * ELECTION_TIMEOUT + 10)
            workload.wait_progress(150, 30, "after the new leader was elected", since=killed_at)
            workload.stop()
        final = wait_converged(cluster, followers)
        for w in watchers:
            wait_until(lambda w=w: w.last_rev >= final, 30, f"watcher {w.name} to reach revision {final}")
    finally:
        for w in watchers:
            w.stop()
    assert via_leader.breaks, "the stream through the killed leader never broke"
    store = [as_tuple(e) for e in read_events(followers[0], PREFIX, final) if e.kv.mod_revision >= start_rev]
    assert store and store[-1][0] == final
    acked = expected_events(workload)
    assert acked, "no acknowledged writes"
    for w in watchers:
        check_watcher(w, store, acked)
    print(
        f"{len(store)} events from rev {start_rev} to {final}; {len(acked)} acknowledged writes; "
        f"breaks: {[(w.name, w.breaks) for w in watchers]}"
    )
