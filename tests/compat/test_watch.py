"""Watch: etcdctl watch (plain, --rev, --prefix, --prev-kv, interactive) and gRPC streams
(many watchers per stream, client watch ids, filters, fragments, progress, compaction,
resume), checked against etcd's watch guarantees: ordered, unique, atomic, reliable,
resumable, bookmarkable.

Every test passes against real etcd 3.5.1 (ETCDPY_TEST_TARGET=etcd). Waiting is always
a deadline on the next response or output line, never a sleep. Where a test must show that
*nothing* arrives (a cancelled or unknown watcher), it sends a progress request and checks
that the progress response comes first: responses on a stream are ordered.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from harness import GrpcClient, Member, current_revision, etcdctl_binary, kv_json

TIMEOUT = 10.0
COMPACTED = "etcdserver: mvcc: required revision has been compacted"


# --------------------------------------------------------------------------- helpers


class WatchClient:
    """One bidirectional Watch stream: requests go in through a queue, responses come out of one.

    Why threads: the harness's gRPC client is synchronous; a reader thread turns the
    response iterator into a queue the test can wait on with a deadline.
    """

    def __init__(self, client: GrpcClient, metadata: tuple[tuple[str, str], ...] | None = None) -> None:
        self.pb = client.pb
        self._requests: queue.Queue[Any] = queue.Queue()
        self._responses: queue.Queue[Any] = queue.Queue()
        self._stashed: list[Any] = []  # responses read past while looking for a `created`
        self.reading = threading.Event()  # cleared: the client stops reading (a slow consumer)
        self.reading.set()
        self.call = client.watch.Watch(self._request_iter(), metadata=metadata)
        threading.Thread(target=self._read, daemon=True).start()

    def _request_iter(self) -> Iterator[Any]:
        while True:
            req = self._requests.get()
            if req is None:
                return
            yield req

    def _read(self) -> None:
        try:
            for resp in self.call:
                self._responses.put(resp)
                self.reading.wait()
        except grpc.RpcError as e:
            self._responses.put(e)
        self._responses.put(None)

    def create(self, key: bytes, range_end: bytes = b"", **kw: Any) -> None:
        self._requests.put(self.pb.WatchRequest(create_request=self.pb.WatchCreateRequest(key=key, range_end=range_end, **kw)))

    def cancel(self, watch_id: int) -> None:
        self._requests.put(self.pb.WatchRequest(cancel_request=self.pb.WatchCancelRequest(watch_id=watch_id)))

    def request_progress(self) -> None:
        self._requests.put(self.pb.WatchRequest(progress_request=self.pb.WatchProgressRequest()))

    def next(self, timeout: float = TIMEOUT) -> Any:
        """The next response; fails the test if none arrives before the deadline."""
        if self._stashed:
            return self._stashed.pop(0)
        try:
            resp = self._responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch response within {timeout}s") from None
        if isinstance(resp, Exception):
            raise resp
        assert resp is not None, "the watch stream ended"
        return resp

    def created(self, key: bytes, range_end: bytes = b"", **kw: Any) -> Any:
        """Create a watcher and return its `created` response.

        Events of other watchers on the stream may come first; they are kept for `next`.
        """
        self.create(key, range_end, **kw)
        stash = self._stashed
        self._stashed = []
        try:
            while True:
                resp = self.next()
                if resp.created:
                    return resp
                stash.append(resp)
        finally:
            self._stashed = stash + self._stashed

    def events(self, n: int, timeout: float = TIMEOUT) -> list[tuple[int, Any]]:
        """The next `n` events as (watch_id, event), across responses."""
        out: list[tuple[int, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            resp = self.next(max(0.01, deadline - time.monotonic()))
            assert not resp.created and not resp.canceled, resp
            out += [(resp.watch_id, ev) for ev in resp.events]
        assert len(out) == n, out
        return out

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()


@pytest.fixture
def watch(client: GrpcClient) -> Iterator[Callable[..., WatchClient]]:
    opened: list[WatchClient] = []

    def open_stream(metadata: tuple[tuple[str, str], ...] | None = None, on: GrpcClient | None = None) -> WatchClient:
        w = WatchClient(on or client, metadata)
        opened.append(w)
        return w

    yield open_stream
    for w in opened:
        w.close()


class EtcdctlWatch:
    """`etcdctl watch ...` as a long-running process whose stdout lines are read with deadlines."""

    def __init__(self, member: Member, *args: str, stdin: bool = False) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))}
        env["ETCDCTL_API"] = "3"
        self.proc = subprocess.Popen(
            [etcdctl_binary(), f"--endpoints={member.endpoint}", "watch", *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def lines(self, n: int, timeout: float = TIMEOUT) -> list[str]:
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"etcdctl printed {out!r}, expected {n} lines") from None
            if line is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"etcdctl exited after {out!r}; stderr: {err}")
            out.append(line)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def etcdctl_watch() -> Iterator[Callable[..., EtcdctlWatch]]:
    started: list[EtcdctlWatch] = []

    def start(member: Member, *args: str, stdin: bool = False) -> EtcdctlWatch:
        w = EtcdctlWatch(member, *args, stdin=stdin)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def put(client: GrpcClient, key: bytes, value: bytes = b"v") -> int:
    return int(client.kv.Put(client.pb.PutRequest(key=key, value=value), timeout=TIMEOUT).header.revision)


def delete(client: GrpcClient, key: bytes, range_end: bytes = b"") -> int:
    return int(client.kv.DeleteRange(client.pb.DeleteRangeRequest(key=key, range_end=range_end), timeout=TIMEOUT).header.revision)


def txn_put(client: GrpcClient, items: list[tuple[bytes, bytes]]) -> int:
    pb = client.pb
    ops = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=v)) for k, v in items]
    return int(client.kv.Txn(pb.TxnRequest(success=ops), timeout=TIMEOUT).header.revision)


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def ev_tuple(ev: Any) -> tuple[str, bytes, bytes, int]:
    return ("DELETE" if ev.type == 1 else "PUT", ev.kv.key, ev.kv.value, ev.kv.mod_revision)


def assert_header(h: Any, revision: int) -> None:
    assert h.cluster_id and h.member_id and h.raft_term, h
    assert h.revision == revision, h


# --------------------------------------------------------------------------- etcdctl


def test_etcdctl_watch_prints_puts_and_deletes(member: Member, client: GrpcClient, prefix: str, etcdctl_watch: Any) -> None:
    key = f"{prefix}k"
    # --rev=next revision: no race with the writes below, whenever the watch is established.
    w = etcdctl_watch(member, key, f"--rev={current_revision(member) + 1}")
    put(client, key.encode(), b"v1")
    put(client, f"{prefix}other".encode(), b"x")
    put(client, key.encode(), b"v2")
    delete(client, key.encode())
    assert w.lines(9) == ["PUT", key, "v1", "PUT", key, "v2", "DELETE", key, ""]


def test_etcdctl_watch_prefix_json(member: Member, client: GrpcClient, prefix: str, etcdctl_watch: Any) -> None:
    start = current_revision(member) + 1
    w = etcdctl_watch(member, prefix, "--prefix", f"--rev={start}", "-w", "json")
    r1 = put(client, f"{prefix}a".encode(), b"1")
    put(client, b"/elsewhere" + prefix.encode(), b"no")
    r2 = put(client, f"{prefix}b".encode(), b"2")
    # Whether the watch was already synced or still replaying when the puts landed decides
    # how events are grouped into responses; the events themselves are fixed.
    docs: list[dict[str, Any]] = []
    while sum(len(d["Events"]) for d in docs) < 2:
        docs += [json.loads(line) for line in w.lines(1)]
    assert [e for d in docs for e in d["Events"]] == [
        {"kv": kv_json(f"{prefix}a", "1", r1, r1, 1)},
        {"kv": kv_json(f"{prefix}b", "2", r2, r2, 1)},
    ]
    assert docs[-1]["Header"]["revision"] == r2
    assert all(not d["Canceled"] and not d["Created"] and d["CompactRevision"] == 0 for d in docs)


def test_etcdctl_watch_rev_replays_history_then_follows(
    member: Member, client: GrpcClient, prefix: str, etcdctl_watch: Any
) -> None:
    key = f"{prefix}h"
    r1 = put(client, key.encode(), b"old1")
    put(client, key.encode(), b"old2")
    w = etcdctl_watch(member, key, f"--rev={r1}")
    assert w.lines(6) == ["PUT", key, "old1", "PUT", key, "old2"]
    put(client, key.encode(), b"new")
    assert w.lines(3) == ["PUT", key, "new"]


def test_etcdctl_watch_prev_kv(member: Member, client: GrpcClient, prefix: str, etcdctl_watch: Any) -> None:
    key = f"{prefix}p"
    put(client, key.encode(), b"before")
    w = etcdctl_watch(member, key, "--prev-kv", f"--rev={current_revision(member) + 1}")
    put(client, key.encode(), b"after")
    delete(client, key.encode())
    put(client, key.encode(), b"again")  # a creation has no previous value
    # Each event: type, then the previous key/value when there is one, then the key/value.
    assert w.lines(13) == [
        "PUT", key, "before", key, "after",
        "DELETE", key, "after", key, "",
        "PUT", key, "again",
    ]


def test_etcdctl_watch_keeps_retrying_when_its_member_stops(fresh_member: Member, etcdctl_watch: Any) -> None:
    """A stopping member ends its watch streams so that clientv3 retries instead of giving up.

    etcd's clients take Unavailable as "try again" (and resume from the last revision they
    saw); other codes end the watch with "watch is canceled by the server". grpc-go of
    etcdctl 3.5's age reports Unknown for streams of a connection closed after a GOAWAY, so
    a server that says GOAWAY before closing makes etcdctl exit here; etcd does not.
    """
    m = fresh_member
    w = etcdctl_watch(m, "/stop/", "--prefix", f"--rev={current_revision(m) + 1}")
    m.etcdctl("put", "/stop/a", "1")
    assert w.lines(3) == ["PUT", "/stop/a", "1"]
    m.stop()
    time.sleep(3)  # etcdctl gives up at once when it does; a retrying one keeps running
    assert w.proc.poll() is None, w.proc.stderr.read() if w.proc.stderr else ""


def test_etcdctl_watch_compacted_revision_is_refused(fresh_member: Member) -> None:
    m = fresh_member
    for v in ("1", "2", "3"):
        m.etcdctl("put", "c", v)
    m.etcdctl("compaction", "3", json=False)
    proc = m.etcdctl("watch", "c", "--rev=2", json=False, check=False)
    assert proc.returncode != 0
    assert f"watch was canceled ({COMPACTED})" in proc.stdout + proc.stderr


def test_etcdctl_interactive_watch_and_progress(
    member: Member, client: GrpcClient, prefix: str, etcdctl_watch: Any
) -> None:
    key = f"{prefix}i"
    r1 = put(client, key.encode(), b"x")
    w = etcdctl_watch(member, "-i", stdin=True)
    w.send(f"watch {key} --rev={r1}")
    assert w.lines(3) == ["PUT", key, "x"]
    put(client, key.encode(), b"y")
    assert w.lines(3) == ["PUT", key, "y"]
    w.send("progress")
    assert w.lines(1) == [f"progress notify: {current_revision(member)}"]
    w.send(f"watch {prefix} --prefix --rev={current_revision(member) + 1}")
    put(client, f"{prefix}j".encode(), b"z")
    assert w.lines(3) == ["PUT", f"{prefix}j", "z"]


# --------------------------------------------------------------------------- gRPC streams


def test_many_watchers_on_one_stream(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    w = watch()
    rev = current_revision_of(client)
    c_key = w.created(p + b"k")
    c_prefix = w.created(p, prefix_end(p))
    c_from = w.created(p + b"m", b"\x00")  # every key >= p+"m"
    assert [c.watch_id for c in (c_key, c_prefix, c_from)] == [c_key.watch_id, c_key.watch_id + 1, c_key.watch_id + 2]
    for c in (c_key, c_prefix, c_from):
        assert_header(c.header, rev)
    r1 = put(client, p + b"k")
    r2 = put(client, p + b"z")
    got = w.events(4)
    routed = sorted((wid, ev.kv.key, ev.kv.mod_revision) for wid, ev in got)
    assert routed == sorted([
        (c_key.watch_id, p + b"k", r1),
        (c_prefix.watch_id, p + b"k", r1),
        (c_prefix.watch_id, p + b"z", r2),
        (c_from.watch_id, p + b"z", r2),
    ])
    # Per watcher, in revision order.
    assert [ev.kv.mod_revision for wid, ev in got if wid == c_prefix.watch_id] == [r1, r2]


def current_revision_of(client: GrpcClient) -> int:
    return int(client.kv.Range(client.pb.RangeRequest(key=b"/__watch_probe__"), timeout=TIMEOUT).header.revision)


def test_auto_watch_ids_start_at_zero_per_stream(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    for _ in range(2):
        w = watch()
        assert [w.created(p + b"%d" % i).watch_id for i in range(3)] == [0, 1, 2]


def test_client_watch_ids_and_duplicates(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    w = watch()
    rev = current_revision_of(client)
    assert w.created(p + b"a", watch_id=7).watch_id == 7
    dup = w.created(p + b"b", watch_id=7)
    assert (dup.watch_id, dup.canceled, dup.cancel_reason) == (-1, True, "mvcc: duplicate watch ID provided on the WatchStream")
    assert_header(dup.header, rev)
    assert w.created(p + b"c").watch_id == 0  # automatic ids skip nothing below 7
    bad = w.created(p + b"z", p + b"a")
    assert (bad.watch_id, bad.canceled, bad.cancel_reason) == (-1, True, "mvcc: watcher range is empty")
    r = put(client, p + b"a")
    (wid, ev), = w.events(1)
    assert (wid, ev.kv.mod_revision) == (7, r)
    # A cancelled id can be used again.
    w.cancel(7)
    canceled = w.next()
    assert (canceled.watch_id, canceled.canceled, canceled.created) == (7, True, False)
    assert_header(canceled.header, r)
    assert w.created(p + b"b", watch_id=7).watch_id == 7


def test_cancel_stops_events_and_unknown_cancel_is_silent(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    w = watch()
    wid = w.created(p + b"k").watch_id
    w.cancel(wid)
    assert w.next().canceled
    w.cancel(12345)  # no such watcher: etcd answers nothing
    put(client, p + b"k")
    w.request_progress()
    resp = w.next()  # the progress response is the next thing on the stream: no event, no cancel
    assert (resp.watch_id, list(resp.events), resp.canceled) == (-1, [], False)
    assert_header(resp.header, current_revision_of(client))


def test_filters(client: GrpcClient, prefix: str, watch: Any) -> None:
    pb = client.pb
    p = prefix.encode()
    w = watch()
    noput = w.created(p, prefix_end(p), filters=[pb.WatchCreateRequest.NOPUT]).watch_id
    nodel = w.created(p, prefix_end(p), filters=[pb.WatchCreateRequest.NODELETE]).watch_id
    rp = put(client, p + b"f")
    rd = delete(client, p + b"f")
    got = sorted((wid, ev_tuple(ev)) for wid, ev in w.events(2))
    assert got == sorted([(nodel, ("PUT", p + b"f", b"v", rp)), (noput, ("DELETE", p + b"f", b"", rd))])


def test_prev_kv(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    r0 = put(client, p + b"k", b"first")
    w = watch()
    w.created(p + b"k", prev_kv=True)
    put(client, p + b"k", b"second")
    delete(client, p + b"k")
    put(client, p + b"k", b"third")
    (_, upd), (_, dele), (_, cre) = w.events(3)
    assert (upd.prev_kv.value, upd.prev_kv.mod_revision, upd.prev_kv.create_revision) == (b"first", r0, r0)
    assert dele.prev_kv.value == b"second" and dele.kv.value == b""
    assert not cre.HasField("prev_kv")


def test_empty_key_means_the_zero_byte_key(client: GrpcClient, watch: Any) -> None:
    w = watch()
    w.created(b"")
    r = put(client, b"\x00", b"zero")
    (_, ev), = w.events(1)
    assert (ev.kv.key, ev.kv.mod_revision) == (b"\x00", r)
    delete(client, b"\x00")


def test_txn_events_are_atomic_and_in_order(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    w = watch()
    wid = w.created(p, prefix_end(p)).watch_id
    rev = txn_put(client, [(p + b"c", b"1"), (p + b"a", b"2"), (p + b"b", b"3")])
    resp = w.next()
    assert resp.watch_id == wid
    assert [ev_tuple(e) for e in resp.events] == [
        ("PUT", p + b"c", b"1", rev), ("PUT", p + b"a", b"2", rev), ("PUT", p + b"b", b"3", rev),
    ]
    assert_header(resp.header, rev)


def test_ordered_and_unique_across_many_writes(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    w = watch()
    start = current_revision_of(client) + 1
    live = w.created(p, prefix_end(p)).watch_id
    revs = [put(client, p + b"%d" % (i % 5), b"%d" % i) for i in range(40)]
    # A second watcher on the same stream replays the same history from the start.
    replay = w.created(p, prefix_end(p), start_revision=start).watch_id
    got = w.events(80)
    for wid in (live, replay):
        seen = [ev.kv.mod_revision for i, ev in got if i == wid]
        assert seen == revs, wid  # every revision once, in order


def test_resume_from_last_revision(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    w = watch()
    w.created(p, prefix_end(p))
    first = [put(client, p + b"r", b"%d" % i) for i in range(3)]
    got = w.events(3)
    last = got[-1][1].kv.mod_revision
    assert last == first[-1]
    w.close()
    missed = [put(client, p + b"r", b"late%d" % i) for i in range(3)]
    w2 = watch()
    w2.created(p, prefix_end(p), start_revision=last + 1)
    assert [ev.kv.mod_revision for _, ev in w2.events(3)] == missed
    w2.request_progress()
    assert w2.next().watch_id == -1  # nothing more, nothing twice


def test_progress_request_is_a_bookmark(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    w = watch()
    wid = w.created(p, prefix_end(p)).watch_id
    revs = [put(client, p + b"b", b"%d" % i) for i in range(5)]
    w.request_progress()
    seen: list[int] = []
    while True:
        resp = w.next()
        if not resp.events:
            break
        assert resp.watch_id == wid
        seen += [e.kv.mod_revision for e in resp.events]
    # Every event up to the progress revision came before it.
    assert (resp.watch_id, resp.created, resp.canceled) == (-1, False, False)
    assert_header(resp.header, revs[-1])
    assert seen == revs


def test_start_revision_below_compaction_is_canceled(fresh_client: GrpcClient, watch: Any) -> None:
    c = fresh_client
    revs = [put(c, b"c", b"%d" % i) for i in range(4)]
    c.kv.Compact(c.pb.CompactionRequest(revision=revs[2], physical=True), timeout=TIMEOUT)
    w = watch(on=c)
    created = w.created(b"c", start_revision=revs[0])
    assert not created.canceled
    assert_header(created.header, revs[-1])
    gone = w.next()
    assert (gone.watch_id, gone.canceled, gone.compact_revision, list(gone.events)) == (
        created.watch_id, True, revs[2], [],
    )
    # From the compaction revision on, history is still there.
    ok = w.created(b"c", start_revision=revs[2]).watch_id
    got = w.events(2)
    assert [(wid, ev.kv.mod_revision) for wid, ev in got] == [(ok, revs[2]), (ok, revs[3])]


def test_fragmented_large_txn(fresh_member: Member, fresh_client: GrpcClient, watch: Any) -> None:
    """A txn whose events (with prev_kv) exceed the response limit (--max-request-bytes plus
    gRPC overhead, 2 MiB by default) arrives in fragments when the watcher asked for them."""
    c = fresh_client
    big = 350 * 1024
    keys = [b"big/%d" % i for i in range(4)]
    txn_put(c, [(k, b"a" * big) for k in keys])
    w = watch(on=c)
    frag = w.created(b"big/", b"big0", prev_kv=True, fragment=True).watch_id
    whole = w.created(b"big/", b"big0", prev_kv=True).watch_id
    rev = txn_put(c, [(k, b"b" * big) for k in keys])
    parts: dict[int, list[Any]] = {frag: [], whole: []}
    while not (parts[frag] and not parts[frag][-1].fragment and parts[whole]):
        resp = w.next()
        parts[resp.watch_id].append(resp)
    assert len(parts[frag]) >= 2
    assert [r.fragment for r in parts[frag]] == [True] * (len(parts[frag]) - 1) + [False]
    for r in parts[frag]:
        assert r.ByteSize() < 2 * 1024 * 1024
        assert_header(r.header, rev)
    joined = [e for r in parts[frag] for e in r.events]
    assert [(e.kv.key, e.kv.mod_revision, len(e.kv.value), len(e.prev_kv.value)) for e in joined] == [
        (k, rev, big, big) for k in keys
    ]
    (single,) = parts[whole]
    assert not single.fragment and list(single.events) == joined


def test_periodic_progress_notify(make_cluster: Any, watch: Any) -> None:
    m = make_cluster(1, extra_args=["--experimental-watch-progress-notify-interval=200ms"]).members[0]
    c = m.grpc()
    w = watch(on=c)
    wid = w.created(b"pn", progress_notify=True).watch_id
    quiet = w.created(b"quiet").watch_id  # did not ask: never notified
    rev = put(c, b"other")
    resp = w.next()
    assert (resp.watch_id, list(resp.events)) == (wid, [])
    assert_header(resp.header, rev)
    assert resp.watch_id != quiet


def test_slow_reader_loses_nothing(client: GrpcClient, prefix: str, watch: Any) -> None:
    """A client that stops reading while megabytes of events pile up (gRPC flow control
    pushes back on the server) still gets every event exactly once, in order, after it
    resumes; meanwhile writes and other streams go on."""
    p = prefix.encode()
    slow = watch()
    slow.created(p, prefix_end(p))
    fast = watch()
    fast.created(p, prefix_end(p))
    slow.reading.clear()
    revs = [put(client, p + b"%d" % (i % 7), b"x" * 25_000) for i in range(400)]
    assert [ev.kv.mod_revision for _, ev in fast.events(400, timeout=60)] == revs
    slow.reading.set()
    assert [ev.kv.mod_revision for _, ev in slow.events(400, timeout=60)] == revs


def test_lease_revoke_notifies_deletes_in_one_response(client: GrpcClient, prefix: str, watch: Any) -> None:
    pb = client.pb
    p = prefix.encode()
    lease = client.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=TIMEOUT).ID
    for k in (b"l1", b"l2"):
        client.kv.Put(pb.PutRequest(key=p + k, value=b"v", lease=lease), timeout=TIMEOUT)
    w = watch()
    w.created(p, prefix_end(p))
    rev = int(client.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease), timeout=TIMEOUT).header.revision)
    resp = w.next()
    assert sorted(ev_tuple(e) for e in resp.events) == [("DELETE", p + b"l1", b"", rev), ("DELETE", p + b"l2", b"", rev)]


def test_hasleader_metadata_on_a_healthy_member(client: GrpcClient, prefix: str, watch: Any) -> None:
    p = prefix.encode()
    w = watch(metadata=(("hasleader", "true"),))
    w.created(p + b"l")
    r = put(client, p + b"l")
    (_, ev), = w.events(1)
    assert ev.kv.mod_revision == r
