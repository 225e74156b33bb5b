"""Peer transport (etcdpy.rafthttp): codec, streams, queues, reconnects, snapshots, faults, raft over it.

Every test runs its own event loop with `asyncio.run` under a timeout, binds 127.0.0.1 port 0
only, and stops its transports in `finally` blocks, so nothing outlives a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdpy import errors
from etcdpy.mvcc import KVStore
from etcdpy.pb import peer_pb2, raft_pb2, rpc_pb2
from etcdpy.raft import Config, MemoryStorage, Peer, ProposalDropped, RawNode
from etcdpy.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    StateType,
    unmarshal_conf_change,
)
from etcdpy.rafthttp import (
    ENV_FAULT_FILE,
    CodecError,
    EntryCache,
    PeerUnreachable,
    RemoteMember,
    Transport,
    TransportOptions,
    decode_message,
    decode_message_bytes,
    encode_batch,
    encode_message,
    fetch_members,
)
from etcdpy.pb.wire import uvarint
from etcdpy.rafthttp.common import ERR_MEMBER_REMOVED, METHOD_STREAM

MT = MessageType
U64 = (1 << 64) - 1
IDS = [0x8E9E05C52164694D, 0x91BC3C398FB3C146, 0xFD422379FDA50E48]
FAST = TransportOptions(
    probe_interval=0.05,
    backoff_initial=0.02,
    backoff_max=0.2,
    fault_poll_interval=0.02,
    dial_timeout=2.0,
    server_grace=0.05,
    keepalive_seconds=1.0,
)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    """A port nobody listens on (bound then released; fine for a test's lifetime)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """Collects what a transport hands to its server."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.unreachable: list[int] = []
        self.snapshots: list[tuple[int, bool]] = []
        self.removed: list[int] = []
        self.rtts: list[tuple[int, float]] = []

    def attach(self, t: Transport) -> Transport:
        t.on_message = self.messages.append
        t.report_unreachable = self.unreachable.append
        t.report_snapshot = lambda i, failed: self.snapshots.append((i, failed))
        t.on_removed = self.removed.append
        t.on_rtt = lambda i, s: self.rtts.append((i, s))
        return t


@contextlib.asynccontextmanager
async def mesh(
    n: int, tmp_path: Path | None = None, **kw: Any
) -> AsyncIterator[tuple[list[Transport], list[Recorder]]]:
    """n started transports, each knowing all the others; stopped on exit."""
    ts: list[Transport] = []
    recs: list[Recorder] = []
    kw.setdefault("options", FAST)
    kw.setdefault("fault_file", "")
    try:
        for i in range(n):
            sd = str(tmp_path / f"snap{i}") if tmp_path is not None else None
            t = Transport(IDS[i], ["http://127.0.0.1:0"], cluster_id=0xC1, snapshot_dir=sd, **kw)
            rec = Recorder()
            recs.append(rec)
            ts.append(rec.attach(t))
            await t.start()
        for t in ts:
            for o in ts:
                if o is not t:
                    t.add_peer(o.member_id, o.bound_urls)
        yield ts, recs
    finally:
        await asyncio.gather(*(t.stop() for t in ts), return_exceptions=True)


async def connected(ts: list[Transport]) -> None:
    await wait_until(lambda: all(t.active_peers() == set(t.peer_ids()) for t in ts), what="all streams up")


def app(frm: int, to: int, i: int, payload: int = 64) -> Message:
    return Message(
        MT.APP, to=to, frm=frm, term=3, log_term=3, index=i, commit=i,
        entries=[Entry(3, i + 1, EntryType.NORMAL, bytes([i % 251]) * payload)],
    )


# ---------------------------------------------------------------------------------- codec

entries_st = st.builds(
    Entry,
    term=st.integers(0, U64),
    index=st.integers(0, U64),
    type=st.sampled_from(list(EntryType)),
    data=st.binary(max_size=300),
)
snapshot_st = st.builds(
    Snapshot,
    data=st.binary(max_size=100),
    metadata=st.builds(
        SnapshotMetadata,
        conf_state=st.builds(
            ConfState,
            voters=st.lists(st.integers(1, U64), max_size=5),
            learners=st.lists(st.integers(1, U64), max_size=2),
        ),
        index=st.integers(0, U64),
        term=st.integers(0, U64),
    ),
)
messages_st = st.builds(
    Message,
    type=st.sampled_from(list(MessageType)),
    to=st.integers(0, U64),
    frm=st.integers(0, U64),
    term=st.integers(0, U64),
    log_term=st.integers(0, U64),
    index=st.integers(0, U64),
    entries=st.lists(entries_st, max_size=6),
    commit=st.integers(0, U64),
    snapshot=st.none() | snapshot_st,
    reject=st.booleans(),
    reject_hint=st.integers(0, U64),
    context=st.binary(max_size=40),
)


def reference_pb(m: Message) -> raft_pb2.Message:
    """raftpb.Message built field by field with the protobuf runtime: the codec's yardstick."""
    pm = raft_pb2.Message(
        type=m.type, to=m.to, term=m.term, logTerm=m.log_term, index=m.index, commit=m.commit,
        reject=m.reject, rejectHint=m.reject_hint, context=m.context,
    )
    setattr(pm, "from", m.frm)
    for e in m.entries:
        pm.entries.add(Type=e.type, Term=e.term, Index=e.index, Data=e.data)
    if m.snapshot is not None:
        md = m.snapshot.metadata
        pm.snapshot.data = m.snapshot.data
        pm.snapshot.metadata.index = md.index
        pm.snapshot.metadata.term = md.term
        pm.snapshot.metadata.conf_state.voters.extend(md.conf_state.voters)
        pm.snapshot.metadata.conf_state.learners.extend(md.conf_state.learners)
    return pm


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages_st)
def test_codec_round_trip_and_wire_compatible(m: Message) -> None:
    enc = encode_message(m)
    assert decode_message_bytes(enc) == m
    assert raft_pb2.Message.FromString(enc) == reference_pb(m)
    assert decode_message(reference_pb(m)) == m
    keys = [(e.term, e.index) for e in m.entries if e.term and e.index]
    if len(keys) == len(set(keys)):  # raft never has two different entries with one (term, index)
        cache = EntryCache()
        assert encode_message(m, cache) == enc
        assert encode_message(m, cache) == enc  # second time from the cache


@settings(max_examples=100, deadline=None)
@given(st.lists(messages_st, max_size=5), st.integers(0, U64))
def test_batch_round_trip(ms: list[Message], ping: int) -> None:
    req = peer_pb2.StreamRequest.FromString(encode_batch([encode_message(m) for m in ms], ping=ping))
    assert [decode_message(pm) for pm in req.messages] == ms
    assert req.ping == ping
    assert not req.HasField("header")


@given(st.integers(1, U64))
def test_uvarint_matches_protobuf(v: int) -> None:
    assert raft_pb2.HardState(term=v).SerializeToString() == b"\x08" + uvarint(v)


def test_entry_cache_encodes_once_and_stays_bounded() -> None:
    cache = EntryCache(max_entries=10, max_bytes=1 << 20)
    ents = [Entry(2, i, EntryType.NORMAL, b"v" * 10) for i in range(1, 31)]
    m1 = Message(MT.APP, to=1, frm=2, entries=ents[:5])
    m2 = Message(MT.APP, to=3, frm=2, entries=ents[:5])
    encode_message(m1, cache)
    assert (cache.hits, cache.misses) == (0, 5)
    encode_message(m2, cache)
    assert (cache.hits, cache.misses) == (5, 5)
    encode_message(Message(MT.APP, entries=ents), cache)
    assert len(cache) == 10
    # Forwarded proposals (no term/index) are not unique and never cached.
    encode_message(Message(MT.PROP, entries=[Entry(data=b"a"), Entry(data=b"b")]), cache)
    assert len(cache) == 10
    tiny = EntryCache(max_entries=100, max_bytes=50)
    encode_message(Message(MT.APP, entries=ents), tiny)
    assert len(tiny) <= 2


def test_codec_rejects_unknown_types() -> None:
    pm = raft_pb2.Message(type=raft_pb2.MsgStorageAppend)
    with pytest.raises(CodecError):
        decode_message(pm)
    pm = raft_pb2.Message(type=raft_pb2.MsgApp)
    pm.entries.add(Type=raft_pb2.EntryConfChangeV2)
    with pytest.raises(CodecError):
        decode_message(pm)
    with pytest.raises(CodecError):
        decode_message_bytes(b"\xff\xff\xff")


# ------------------------------------------------------------------------- message streams


def test_two_transports_exchange_batches() -> None:
    async def main() -> None:
        async with mesh(2) as ((a, b), (ra, rb)):
            await connected([a, b])
            sent = [app(a.member_id, b.member_id, i) for i in range(2000)]
            a.send(sent)  # one Ready's worth: must leave in a few batches, in order
            back = [Message(MT.APP_RESP, to=a.member_id, frm=b.member_id, term=3, index=i) for i in range(300)]
            for m in back:
                b.send([m])  # one at a time, as a stream of Readies would
            await wait_until(lambda: len(rb.messages) == 2000 and len(ra.messages) == 300, what="delivery")
            assert rb.messages == sent
            assert ra.messages == back
            st_a = a.peer_status(b.member_id)
            assert st_a is not None
            assert st_a.sent_messages == 2000 and st_a.sent_batches < 20
            assert st_a.dropped_messages == 0 and st_a.queued == 0
            assert b.peer_status(a.member_id).received_messages == 2000  # type: ignore[union-attr]
            await wait_until(lambda: a.rtt(b.member_id) is not None and rb.rtts, what="rtt")
            assert 0 < a.rtt(b.member_id) < 1.0  # type: ignore[operator]
            assert a.active_since(b.member_id) is not None
            assert not ra.unreachable and not rb.unreachable

    run(main())


def test_three_transports_full_mesh() -> None:
    async def main() -> None:
        async with mesh(3) as (ts, recs):
            await connected(ts)
            for t in ts:
                for o in ts:
                    if o is not t:
                        t.send([app(t.member_id, o.member_id, i) for i in range(100)])
            await wait_until(lambda: all(len(r.messages) == 200 for r in recs), what="delivery")
            for t, r in zip(ts, recs):
                for o in ts:
                    if o is not t:
                        got = [m for m in r.messages if m.frm == o.member_id]
                        assert got == [app(o.member_id, t.member_id, i) for i in range(100)]

    run(main())


def test_bounded_queue_drops_and_reports_unreachable() -> None:
    async def main() -> None:
        opts = TransportOptions(queue_messages=8, queue_bytes=10_000, backoff_initial=0.05, backoff_max=0.1)
        dead = f"http://127.0.0.1:{free_port()}"
        async with mesh(1, options=opts) as ((a,), (ra,)):
            a.add_peer(IDS[1], [dead])
            a.send([Message(MT.HEARTBEAT, to=IDS[1], frm=a.member_id, term=1) for _ in range(20)])
            st = a.peer_status(IDS[1])
            assert st is not None and st.queued == 8 and st.dropped_messages == 12
            assert ra.unreachable.count(IDS[1]) >= 12
            # The byte bound: one message larger than what is left is dropped too.
            a.remove_peer(IDS[1])
            a.add_peer(IDS[2], [dead])
            a.send([app(a.member_id, IDS[2], 1, payload=6000), app(a.member_id, IDS[2], 2, payload=6000)])
            st = a.peer_status(IDS[2])
            assert st is not None and st.queued == 1 and st.dropped_messages == 1
            # A dead peer is also reported unreachable while the transport retries.
            n = len(ra.unreachable)
            await wait_until(lambda: len(ra.unreachable) > n + 1, what="retry reports")
            assert a.active_since(IDS[2]) is None

    run(main())


def test_reconnects_after_receiver_restarts() -> None:
    async def main() -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        rb = Recorder()
        b = rb.attach(Transport(IDS[1], [url], options=FAST, fault_file=""))
        await b.start()
        async with mesh(1) as ((a,), (ra,)):
            a.add_peer(b.member_id, [url])
            await wait_until(lambda: a.active_since(b.member_id) is not None, what="first stream")
            first_since = a.active_since(b.member_id)
            a.send([app(a.member_id, b.member_id, 1)])
            await wait_until(lambda: len(rb.messages) == 1, what="first message")
            await b.stop()
            await wait_until(lambda: a.active_since(b.member_id) is None, what="stream loss noticed")
            assert b.member_id in ra.unreachable
            # Sent while the peer is down: kept in the bounded queue, delivered after the restart.
            a.send([app(a.member_id, b.member_id, i) for i in range(2, 12)])
            rb2 = Recorder()
            b2 = rb2.attach(Transport(IDS[1], [url], options=FAST, fault_file=""))
            await b2.start()
            try:
                await wait_until(lambda: len(rb2.messages) == 10, what="delivery after restart")
                assert [m.index for m in rb2.messages] == list(range(2, 12))
                assert a.active_since(b.member_id) is not None
                assert a.active_since(b.member_id) != first_since
            finally:
                await b2.stop()

    run(main())


def test_update_peer_moves_to_new_urls() -> None:
    async def main() -> None:
        async with mesh(2) as ((a, b), (_, rb)):
            a.remove_peer(b.member_id)
            a.add_peer(b.member_id, [f"http://127.0.0.1:{free_port()}"])  # a stale URL first
            a.send([app(a.member_id, b.member_id, 1)])
            await asyncio.sleep(0.2)
            assert not rb.messages and a.active_since(b.member_id) is None
            a.update_peer(b.member_id, b.bound_urls)  # the queued message survives the move
            await wait_until(lambda: len(rb.messages) == 1, what="delivery at the new URL")
            assert a.peer_status(b.member_id).urls == b.bound_urls  # type: ignore[union-attr]

    run(main())


async def raw_stream(target: Transport, header: peer_pb2.PeerHeader, batches: list[list[Message]]) -> grpc.StatusCode:
    """Talk to `target` without a Transport: open a stream, send batches, return the final status."""
    async with grpc.aio.insecure_channel(target.bound_urls[0].removeprefix("http://")) as ch:
        mc = ch.stream_stream(
            METHOD_STREAM, request_serializer=None, response_deserializer=peer_pb2.StreamResponse.FromString
        )
        call = mc()
        await call.write(peer_pb2.StreamRequest(header=header).SerializeToString())
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as e:
            return e.code()
        if first is grpc.aio.EOF:
            return await call.code()
        assert first.accepted
        try:
            for b in batches:
                await call.write(encode_batch([encode_message(m) for m in b], ping=1))
                assert (await call.read()).pong == 1  # the batch was processed
            await call.done_writing()
        except grpc.aio.AioRpcError as e:
            return e.code()
        return await call.code()


def test_receiver_validates_senders_and_messages() -> None:
    async def main() -> None:
        async with mesh(1) as ((b,), (rb,)):
            me = b.member_id
            good = peer_pb2.PeerHeader(from_id=7, to_id=me, cluster_id=0xC1)
            ok = Message(MT.HEARTBEAT, to=me, frm=7, term=1)
            wrong_to = Message(MT.HEARTBEAT, to=99, frm=7, term=1)
            spoofed = Message(MT.HEARTBEAT, to=me, frm=8, term=1)
            assert await raw_stream(b, good, [[wrong_to, ok, spoofed]]) == grpc.StatusCode.OK
            assert rb.messages == [ok]
            assert b.counters.dropped_wrong_target == 1 and b.counters.dropped_wrong_sender == 1
            wrong_member = peer_pb2.PeerHeader(from_id=7, to_id=me + 1, cluster_id=0xC1)
            assert await raw_stream(b, wrong_member, []) == grpc.StatusCode.FAILED_PRECONDITION
            other_cluster = peer_pb2.PeerHeader(from_id=7, to_id=me, cluster_id=0xC2)
            assert await raw_stream(b, other_cluster, []) == grpc.StatusCode.FAILED_PRECONDITION
            b.remove_peer(7)
            assert await raw_stream(b, good, [[ok]]) == grpc.StatusCode.FAILED_PRECONDITION
            assert rb.messages == [ok]

    run(main())


def test_removed_member_is_refused_and_told() -> None:
    async def main() -> None:
        async with mesh(2) as ((a, b), (ra, rb)):
            await connected([a, b])
            b.remove_peer(a.member_id)  # b applied "remove a"
            a.send([app(a.member_id, b.member_id, 1)])
            await wait_until(lambda: ra.removed == [b.member_id], what="removal noticed")
            assert not rb.messages
            assert a.active_since(b.member_id) is None
            err = None
            try:
                await a.lease_renew(b.member_id, 1, timeout=2)
            except Exception as e:  # noqa: BLE001
                err = e
            assert err is not None and ERR_MEMBER_REMOVED in str(err)
            assert ra.removed == [b.member_id]  # reported once

    run(main())


# ------------------------------------------------------------------------------ snapshots


def _fill_store(kv: KVStore, mib: int) -> None:
    rnd = random.Random(1)
    for i in range(mib * 256):
        t = kv.write()
        t.put(b"key/%06d" % i, rnd.randbytes(4096))
        t.end(kv.consistent_index + 1, 2)


def test_snapshot_streams_a_real_backend(tmp_path: Path) -> None:
    src = KVStore(str(tmp_path / "src" / "db"))
    dst = KVStore(str(tmp_path / "dst" / "db"))
    try:
        _fill_store(src, 3)

        async def main() -> None:
            async with mesh(2, tmp_path) as ((a, b), (ra, rb)):
                installed: list[tuple[Message, int]] = []

                async def install(m: Message, path: str) -> None:
                    size = os.path.getsize(path)
                    await asyncio.to_thread(dst.restore_from, path)
                    os.remove(path)
                    installed.append((m, size))

                a.snapshot_source = lambda m: src.open_snapshot()
                b.on_snapshot = install
                meta = SnapshotMetadata(ConfState(voters=[a.member_id, b.member_id]), index=1000, term=4)
                snapshot = Snapshot(b'{"members":[]}', meta)
                snap = Message(MT.SNAP, to=b.member_id, frm=a.member_id, term=4, snapshot=snapshot)
                a.send([snap])
                await wait_until(lambda: ra.snapshots, timeout=20, what="snapshot report")
                assert ra.snapshots == [(b.member_id, False)]
                assert len(installed) == 1
                got, size = installed[0]
                assert got == snap and size > 3 << 20
                assert not os.listdir(b.snapshot_dir)  # no temp files left behind
                assert a.peer_status(b.member_id).snapshots_sent == 1  # type: ignore[union-attr]
                # A member that cannot take snapshots makes the transfer fail, reported as such.
                b.on_snapshot = None
                a.send([snap])
                await wait_until(lambda: len(ra.snapshots) == 2, timeout=20, what="failure report")
                assert ra.snapshots[1] == (b.member_id, True) and b.member_id in ra.unreachable

        run(main(), timeout=60)
        assert dst.hash() == src.hash()
        assert dst.current_rev == src.current_rev
        assert dst.range(b"key/000100", None).kvs == src.range(b"key/000100", None).kvs
    finally:
        src.close()
        dst.close()


# -------------------------------------------------------------------------- fault injection


def test_fault_file_blocks_and_unblocks_traffic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fault_file = tmp_path / "faults.json"
    monkeypatch.setenv(ENV_FAULT_FILE, str(fault_file))

    def write_faults(blocked: list[object]) -> None:
        tmp = tmp_path / "faults.tmp"
        tmp.write_text(json.dumps({"blocked": blocked}))
        os.replace(tmp, fault_file)

    async def main() -> None:
        async with mesh(2, fault_file=None) as ((a, b), (ra, rb)):  # both read $ETCDPY_FAULT_FILE
            await connected([a, b])
            a.send([app(a.member_id, b.member_id, 1)])
            await wait_until(lambda: len(rb.messages) == 1, what="delivery before the fault")
            # Only b's id is listed: a stops talking to b, and b's streams are refused by a.
            write_faults([f"{b.member_id:x}"])
            await wait_until(
                lambda: a.active_since(b.member_id) is None and b.active_since(a.member_id) is None,
                what="both directions cut",
            )
            n_a, n_b = len(ra.messages), len(rb.messages)
            a.send([app(a.member_id, b.member_id, i) for i in range(2, 5)])
            b.send([app(b.member_id, a.member_id, i) for i in range(2, 5)])
            await asyncio.sleep(0.3)
            assert len(ra.messages) == n_a and len(rb.messages) == n_b
            assert b.member_id in ra.unreachable
            with pytest.raises(PeerUnreachable):
                await a.lease_renew(b.member_id, 1, timeout=1)
            snap = Snapshot(b"", SnapshotMetadata(ConfState(voters=[a.member_id]), index=5, term=1))
            a.send([Message(MT.SNAP, to=b.member_id, frm=a.member_id, term=1, snapshot=snap)])
            assert ra.snapshots == [(b.member_id, True)]
            # Healing: traffic flows again in both directions.
            write_faults([])
            await connected([a, b])
            a.send([app(a.member_id, b.member_id, 10)])
            b.send([app(b.member_id, a.member_id, 10)])
            await wait_until(
                lambda: any(m.index == 10 for m in rb.messages) and any(m.index == 10 for m in ra.messages),
                what="delivery after healing",
            )
            # A peer URL works as well as an id; removing the file heals too.
            write_faults([a.bound_urls[0]])
            await wait_until(lambda: b.active_since(a.member_id) is None, what="cut by URL")
            fault_file.unlink()
            await connected([a, b])

    run(main())


def test_set_blocked_in_process(tmp_path: Path) -> None:
    async def main() -> None:
        async with mesh(3) as (ts, recs):
            await connected(ts)
            a, b, c = ts
            a.set_blocked([b.member_id])
            b.set_blocked([a.member_id])
            await wait_until(lambda: a.active_since(b.member_id) is None, what="cut")
            a.send([app(a.member_id, b.member_id, 1), app(a.member_id, c.member_id, 1)])
            await wait_until(lambda: len(recs[2].messages) == 1, what="c still reachable")
            await asyncio.sleep(0.1)
            assert not recs[1].messages
            a.set_blocked()
            b.set_blocked()
            await connected(ts)

    run(main())


# ------------------------------------------------------------------------------ unary RPCs


def test_members_and_lease_forwarding() -> None:
    async def main() -> None:
        async with mesh(2) as ((a, b), _):
            members = [
                RemoteMember(
                    id=IDS[0], name="m0", peer_urls=a.bound_urls, client_urls=["http://c0:2379"], is_learner=False
                ),
                RemoteMember(id=IDS[1], name="m1", peer_urls=b.bound_urls, client_urls=[], is_learner=True),
            ]
            a.members_provider = lambda: (0xC1, members)
            got = await fetch_members([f"http://127.0.0.1:{free_port()}", *a.bound_urls], timeout=1)
            assert got.cluster_id == 0xC1 and got.members == members
            with pytest.raises(PeerUnreachable):
                await fetch_members(b.bound_urls, timeout=1)  # b has no provider yet

            calls: list[tuple[str, int]] = []

            async def renew(lease_id: int) -> int:
                calls.append(("renew", lease_id))
                if lease_id == 7:
                    raise errors.ErrLeaseNotFound()
                return 42

            def ttl(lease_id: int, keys: bool) -> rpc_pb2.LeaseTimeToLiveResponse:
                calls.append(("ttl", lease_id))
                return rpc_pb2.LeaseTimeToLiveResponse(ID=lease_id, TTL=9, grantedTTL=10, keys=[b"k"] if keys else [])

            a.on_lease_renew = renew
            a.on_lease_time_to_live = ttl
            assert await b.lease_renew(a.member_id, 5) == 42
            with pytest.raises(errors.ErrLeaseNotFound):
                await b.lease_renew(a.member_id, 7)
            r = await b.lease_time_to_live(a.member_id, 5, keys=True)
            assert (r.ID, r.TTL, r.grantedTTL, list(r.keys)) == (5, 9, 10, [b"k"])
            assert calls == [("renew", 5), ("renew", 7), ("ttl", 5)]
            with pytest.raises(errors.ErrNotCapable):
                await a.lease_renew(b.member_id, 5)  # b registered no lease handler
            with pytest.raises(PeerUnreachable):
                await b.lease_renew(12345, 5)  # not a peer

    run(main())


# ----------------------------------------------------------------- raft over the transport


class RaftDriver:
    """A minimal raft loop (persist to MemoryStorage, send, apply, advance) over a real Transport."""

    def __init__(self, node_id: int, ids: list[int], transport: Transport) -> None:
        self.id = node_id
        self.t = transport
        self.storage = MemoryStorage()
        cfg = Config(id=node_id, storage=self.storage, election_tick=10, heartbeat_tick=1, rand=random.Random(node_id))
        self.node = RawNode(cfg)
        self.node.bootstrap([Peer(i) for i in ids])
        self.applied: list[bytes] = []
        self.wake = asyncio.Event()
        transport.on_message = self.step
        transport.report_unreachable = self.node.report_unreachable
        transport.report_snapshot = self.node.report_snapshot

    def step(self, m: Message) -> None:
        self.node.step(m)
        self.wake.set()

    def is_leader(self) -> bool:
        return self.node.raft.state == StateType.LEADER

    def propose(self, data: bytes) -> None:
        self.node.propose(data)
        self.wake.set()

    async def run(self, tick: float) -> None:
        ticker = asyncio.create_task(self._tick(tick))
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.node.has_ready():
                    self._handle(self.node.ready())
        finally:
            ticker.cancel()

    def _handle(self, rd: Any) -> None:
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self.storage.apply_snapshot(rd.snapshot)
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        self.t.send(rd.messages)
        for e in rd.committed_entries:
            if e.type == EntryType.CONF_CHANGE:
                self.node.apply_conf_change(unmarshal_conf_change(e.data))
            elif e.data:
                self.applied.append(e.data)
        self.node.advance(rd)

    async def _tick(self, tick: float) -> None:
        while True:
            await asyncio.sleep(tick)
            self.node.tick()
            self.wake.set()


async def propose_all(nodes: list[RaftDriver], datas: list[bytes]) -> None:
    """Propose each value at the current leader, retrying while there is none."""
    for d in datas:
        while True:
            leaders = [n for n in nodes if n.is_leader()]
            if leaders:
                try:
                    leaders[0].propose(d)
                    break
                except ProposalDropped:
                    pass
            await asyncio.sleep(0.01)


@pytest.mark.slow
def test_three_raw_nodes_elect_and_replicate_over_transports() -> None:
    async def main() -> None:
        async with mesh(3) as (ts, _):
            nodes = [RaftDriver(t.member_id, IDS, t) for t in ts]
            loops = [asyncio.create_task(n.run(tick=0.02)) for n in nodes]
            try:
                await wait_until(lambda: sum(n.is_leader() for n in nodes) == 1, timeout=10, what="a leader")
                first = [b"v%d" % i for i in range(300)]
                await propose_all(nodes, first)
                await wait_until(lambda: all(n.applied == first for n in nodes), timeout=15, what="replication")

                # Cut the leader off (both sides told); the other two elect a new leader and go on.
                old = next(n for n in nodes if n.is_leader())
                rest = [n for n in nodes if n is not old]
                old.t.set_blocked([n.id for n in rest])
                for n in rest:
                    n.t.set_blocked([old.id])
                await wait_until(lambda: any(n.is_leader() for n in rest), timeout=10, what="a new leader")
                second = [b"w%d" % i for i in range(50)]
                await propose_all(rest, second)
                await wait_until(lambda: all(n.applied == first + second for n in rest), timeout=15, what="progress")
                assert old.applied == first

                # Heal: the old leader steps down and catches up.
                for n in nodes:
                    n.t.set_blocked()
                await wait_until(lambda: old.applied == first + second, timeout=15, what="catch-up")
                assert sum(n.is_leader() for n in nodes) == 1
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)

    run(main(), timeout=90)
