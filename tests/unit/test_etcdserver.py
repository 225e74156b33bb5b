"""EtcdServer's write path in-process, with its real Raft core, WAL and MVCC store.

These cover what no client can provoke on demand: back-pressure when the applied
index lags the committed index by more than 5000, and that a restart replays the
WAL without applying anything twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from etcdpy import errors
from etcdpy.auth import AuthInfo
from etcdpy.config import ServerConfig
from etcdpy.pb import raft_internal_pb2, rpc_pb2
from etcdpy.server.etcdserver import EtcdServer
from etcdpy.server.idutil import IdGenerator
from etcdpy.server.wait import Wait, WaitTime


def _cfg(tmp_path: Path, **kw: object) -> ServerConfig:
    return ServerConfig(
        name="solo",
        data_dir=str(tmp_path / "solo.etcd"),
        initial_cluster={"solo": ["http://127.0.0.1:1"]},
        initial_advertise_peer_urls=["http://127.0.0.1:1"],
        listen_peer_urls=["http://127.0.0.1:0"],  # any free port: 2380 may be another member's
        initial_cluster_token="unit",
        **kw,  # type: ignore[arg-type]
    )


async def _started(cfg: ServerConfig) -> EtcdServer:
    s = EtcdServer(cfg)
    await s.start()
    async with asyncio.timeout(10):
        await s.ready.wait()
    return s


def _put(key: bytes, value: bytes = b"v") -> raft_internal_pb2.InternalRaftRequest:
    return raft_internal_pb2.InternalRaftRequest(put=rpc_pb2.PutRequest(key=key, value=value))


def test_too_many_requests_when_apply_lags_commit(tmp_path: Path) -> None:
    async def run() -> None:
        s = await _started(_cfg(tmp_path))
        try:
            s.progress.committed_index = s.progress.applied_index + 5001
            with pytest.raises(errors.ErrTooManyRequests):
                await s.process_internal_raft_request(_put(b"k"))
            s.progress.committed_index = s.progress.applied_index + 5000
            resp = await s.process_internal_raft_request(_put(b"k"))
            assert resp.header.revision == 2
        finally:
            await s.stop()

    asyncio.run(run())


def test_request_too_large_is_refused_before_proposing(tmp_path: Path) -> None:
    async def run() -> None:
        s = await _started(_cfg(tmp_path, max_request_bytes=1024))
        try:
            before = s.progress.applied_index
            with pytest.raises(errors.ErrRequestTooLarge):
                await s.process_internal_raft_request(_put(b"k", b"x" * 2000))
            assert len(s.wait) == 0
            await s.process_internal_raft_request(_put(b"k", b"x" * 100))
            assert s.progress.applied_index == before + 1
        finally:
            await s.stop()

    asyncio.run(run())


def test_restart_replays_without_applying_twice(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)

    async def first() -> int:
        s = await _started(cfg)
        try:
            for i in range(50):
                await s.process_internal_raft_request(_put(b"k%d" % (i % 5), b"%d" % i))
            assert s.kv is not None
            return s.kv.current_rev
        finally:
            await s.stop()

    async def second(rev: int) -> None:
        s = await _started(cfg)
        try:
            assert s.kv is not None
            # The publish entry of this start is the only new entry; no put was applied again.
            assert s.kv.current_rev == rev
            r = s.applier.range(rpc_pb2.RangeRequest(key=b"k0"))  # type: ignore[union-attr]
            assert r.kvs[0].version == 10 and r.kvs[0].value == b"45"
            resp = await s.process_internal_raft_request(_put(b"k0", b"new"))
            assert resp.header.revision == rev + 1
        finally:
            await s.stop()

    rev = asyncio.run(first())
    assert rev == 51
    asyncio.run(second(rev))


def test_snapshot_count_takes_snapshots_and_restart_uses_them(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, snapshot_count=20, snapshot_catchup_entries=5)

    async def first() -> None:
        s = await _started(cfg)
        try:
            for i in range(100):
                await s.process_internal_raft_request(_put(b"s%d" % i))
            for _ in range(200):
                if s.progress.snapshot_index > 0:
                    break
                await asyncio.sleep(0.01)
            assert s.progress.snapshot_index > 20
        finally:
            await s.stop()

    async def second() -> None:
        s = await _started(cfg)
        try:
            assert s.progress.snapshot_index > 20
            r = s.applier.range(rpc_pb2.RangeRequest(key=b"s", range_end=b"t", count_only=True))  # type: ignore[union-attr]
            assert r.count == 100
            assert [m.name for m in s.cluster.members.values()] == ["solo"]
        finally:
            await s.stop()

    asyncio.run(first())
    assert list((tmp_path / "solo.etcd" / "member" / "snap").glob("*.snap"))
    asyncio.run(second())


def test_wait_registry_and_applied_wait() -> None:
    async def run() -> None:
        w = Wait()
        fut = w.register(7)
        with pytest.raises(KeyError):
            w.register(7)
        w.trigger(7, "done")
        assert await fut == "done" and len(w) == 0
        wt = WaitTime()
        a, b = wt.wait(5), wt.wait(10)
        wt.trigger(6)
        assert a.done() and not b.done()
        assert wt.wait(3).done()
        wt.fail_all(errors.ErrStopped())
        with pytest.raises(errors.ErrStopped):
            await b

    asyncio.run(run())


def test_request_ids_are_unique_and_carry_the_member() -> None:
    g = IdGenerator(0xABCD1234, now_ms=1_700_000_000_000)
    ids = [g.next() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(i >> 48 == 0x1234 for i in ids)
    later = IdGenerator(0xABCD1234, now_ms=1_700_000_001_000)
    assert later.next() > ids[-1] - (1 << 40)


def test_raft_loop_does_not_wait_for_apply(tmp_path: Path) -> None:
    """Committed entries go to the apply task through a queue: raft commits on while apply is held."""

    async def run() -> None:
        s = await _started(_cfg(tmp_path))
        gate = asyncio.Event()
        real_apply = s.apply_entries

        async def held_apply(entries: list[object]) -> None:
            await gate.wait()
            await real_apply(entries)  # type: ignore[arg-type]

        try:
            assert s.raft is not None
            s.apply_entries = held_apply  # type: ignore[method-assign]
            applied = s.progress.applied_index
            puts = [asyncio.create_task(s.process_internal_raft_request(_put(b"k%d" % i))) for i in range(3)]
            async with asyncio.timeout(10):
                while s.progress.committed_index < applied + 3:
                    await asyncio.sleep(0.01)
            assert s.progress.applied_index == applied, "applied while the apply task was held"
            assert s.raft.apply_backlog >= 1
            gate.set()
            async with asyncio.timeout(10):
                await asyncio.gather(*puts)
            assert s.progress.applied_index >= applied + 3 and s.raft.apply_backlog == 0
        finally:
            gate.set()
            await s.stop()

    asyncio.run(run())


def test_abandoned_applied_waits_are_removed() -> None:
    """A wait for an index never reached (e.g. a forged token's) must not stay registered."""

    async def run() -> None:
        wt = WaitTime()
        for _ in range(100):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.001):
                    await wt.wait(1 << 62)
        assert len(wt) <= 1
        ok = wt.wait(5)
        wt.trigger(5)
        assert ok.done() and len(wt) == 0

    asyncio.run(run())


def test_forged_token_index_is_refused_without_a_lasting_wait(tmp_path: Path) -> None:
    """A token whose index was never committed: refused after one ReadIndex round, nothing left waiting."""
    from etcdpy.api.auth import auth_info_from_metadata

    async def run() -> None:
        s = await _started(_cfg(tmp_path))
        try:
            assert s.auth_store is not None
            s.auth_store._enabled = True  # only the token check is exercised here
            forged = [("token", "abcdefghijklmnop.%d" % (1 << 40))]
            async with asyncio.timeout(s.cfg.request_timeout / 2):
                with pytest.raises(errors.ErrInvalidAuthToken):
                    await auth_info_from_metadata(s, forged)
            assert len(s.applied_wait) == 0
        finally:
            await s.stop()

    asyncio.run(run())


def test_cancelled_member_change_leaves_no_wait_behind(tmp_path: Path) -> None:
    """propose-and-wait for a conf change: a caller that goes away is unregistered (as for requests)."""
    from etcdpy.server import reconfig

    async def run() -> None:
        s = await _started(_cfg(tmp_path))
        gate = asyncio.Event()
        real_apply = s.apply_entries

        async def held_apply(entries: list[object]) -> None:
            await gate.wait()
            await real_apply(entries)  # type: ignore[arg-type]

        try:
            s.apply_entries = held_apply  # type: ignore[method-assign]
            task = asyncio.create_task(reconfig.add_member(s, ["http://127.0.0.1:2"], is_learner=True))
            async with asyncio.timeout(10):
                while len(s.wait) == 0:
                    await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert len(s.wait) == 0
        finally:
            gate.set()
            await s.stop()

    asyncio.run(run())


def test_failed_snapshot_is_not_retried_on_every_apply_pass(tmp_path: Path) -> None:
    """A raft snapshot that fails is tried again after another snapshot-count entries; finished tasks are dropped."""

    async def run() -> None:
        s = await _started(_cfg(tmp_path, snapshot_count=20))
        attempts = 0

        async def failing(*_args: object, **_kw: object) -> None:
            nonlocal attempts
            attempts += 1
            raise OSError("disk full (test)")

        try:
            assert s.raft is not None
            s.raft.create_snapshot = failing  # type: ignore[method-assign]
            tasks_before = len(s._tasks)
            for i in range(70):  # one apply pass each
                await s.process_internal_raft_request(_put(b"f%d" % i))
            await asyncio.sleep(0.05)
            # Without the back-off every pass after the first 20 entries tried again (~50 attempts).
            assert 1 <= attempts <= 3, attempts
            assert len(s._tasks) <= tasks_before, "finished snapshot tasks stay in the task list"
        finally:
            await s.stop()

    asyncio.run(run())


def test_linearizable_reads_share_a_round_and_a_cancelled_reader_cancels_only_itself(tmp_path: Path) -> None:
    """Reads arriving together wait on one ReadIndex round, each on its own future: one reader
    cancelled (a client gone) leaves the others waiting, and they all see a write applied
    before they asked. Stopping the member fails whoever still waits with ErrStopped."""

    async def run() -> None:
        s = await _started(_cfg(tmp_path))
        stopped = False
        try:
            await s.process_internal_raft_request(_put(b"k", b"1"))
            readers = [asyncio.ensure_future(s.linearizable_read_notify()) for _ in range(5)]
            readers[2].cancel()
            async with asyncio.timeout(10):
                done = await asyncio.gather(*readers, return_exceptions=True)
            assert isinstance(done[2], asyncio.CancelledError)
            assert [d for i, d in enumerate(done) if i != 2] == [None] * 4
            # A round in flight when the member stops: its readers get ErrStopped, none hangs.
            late = s.linearizable_read_notify()
            await s.stop()
            stopped = True
            with pytest.raises(errors.ErrStopped):
                async with asyncio.timeout(10):
                    await late
            with pytest.raises(errors.ErrStopped):
                s.linearizable_read_notify()
        finally:
            if not stopped:
                await s.stop()

    asyncio.run(run())


def test_members_draw_their_own_election_timeouts(tmp_path: Path) -> None:
    # The raft core takes its randomness from its config; with the core's default seed every
    # member drew the same randomized election timeouts, and followers that lost a leader at the
    # same heartbeat kept splitting the vote (a 9 s election in test_kill_leader_under_load).
    from etcdpy.raft.storage import MemoryStorage

    draws = []
    for name in ("a", "b"):
        server = EtcdServer(_cfg(tmp_path / name))
        rand = server._raft_config(MemoryStorage(), 0).rand
        draws.append([rand.randrange(10) for _ in range(30)])
    assert draws[0] != draws[1]  # equal by chance with probability 10**-30


def _logged(s: EtcdServer) -> raft_internal_pb2.InternalRaftRequest:
    """The newest entry of the member's raft log, decoded."""
    assert s.raft is not None
    storage = s.raft.storage
    last = storage.last_index()
    return raft_internal_pb2.InternalRaftRequest.FromString(storage.entries(last, last + 1)[0].data)


def test_writes_given_their_received_bytes_log_those_bytes(tmp_path: Path) -> None:
    """Put, DeleteRange and Txn with `wire`: the entry holds the client's bytes (an unknown
    field the client sent stays in it), the id and caller are in its header, and the
    answers are those of the same requests without `wire`."""

    async def run() -> None:
        s = await _started(_cfg(tmp_path))
        try:
            put = rpc_pb2.PutRequest(key=b"a", value=b"1")
            unknown = b"\xf8\x3f\x01"  # field 1023, varint 1: no such field in PutRequest
            resp = await s.put(put, None, put.SerializeToString() + unknown)
            assert resp.header.revision == 2
            logged = _logged(s)
            assert logged.put.SerializeToString() == put.SerializeToString() + unknown
            assert logged.header.ID != 0 and logged.header.username == ""

            txn = rpc_pb2.TxnRequest(
                compare=[rpc_pb2.Compare(key=b"a", target=rpc_pb2.Compare.MOD, mod_revision=2)],
                success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"b", value=b"2"))],
            )
            answer = await s.txn(txn, AuthInfo("alice", 7), False, txn.SerializeToString())
            assert answer.succeeded and answer.header.revision == 3
            logged = _logged(s)
            assert logged.txn == txn
            assert (logged.header.username, logged.header.auth_revision) == ("alice", 7)

            dr = rpc_pb2.DeleteRangeRequest(key=b"a", range_end=b"c")
            assert (await s.delete_range(dr, None, dr.SerializeToString())).deleted == 2
            assert _logged(s).delete_range == dr
        finally:
            await s.stop()

    asyncio.run(run())


def test_received_bytes_obey_the_request_size_limit(tmp_path: Path) -> None:
    async def run() -> None:
        s = await _started(_cfg(tmp_path, max_request_bytes=1024))
        try:
            big = rpc_pb2.PutRequest(key=b"k", value=b"x" * 2000)
            with pytest.raises(errors.ErrRequestTooLarge):
                s.put(big, None, big.SerializeToString())
            assert len(s.wait) == 0
        finally:
            await s.stop()

    asyncio.run(run())


def test_near_the_quota_a_write_with_its_bytes_is_judged_by_its_cost(tmp_path: Path) -> None:
    """Close to --quota-backend-bytes the quota has to look at the request: the write takes
    the way that builds it, and one that does not fit gets etcd's NOSPACE."""

    async def run() -> None:
        s = await _started(_cfg(tmp_path, quota_backend_bytes=1))
        try:
            put = rpc_pb2.PutRequest(key=b"k", value=b"v")
            with pytest.raises(errors.ErrGRPCNoSpace):
                await s.put(put, None, put.SerializeToString())
        finally:
            await s.stop()

    asyncio.run(run())
