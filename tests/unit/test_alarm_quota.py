"""The quota's request costs and the alarm hook of the applier, on a real KV store.

Why: an alarm must be applied exactly once (it commits with the consistent index),
survive a reopen, and gate the same requests on every member; the quota's costs
decide which requests are refused before proposing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from etcdpy import errors
from etcdpy.lease import Lessor
from etcdpy.mvcc import KVStore
from etcdpy.mvcc.backend import BUCKET_ALARM
from etcdpy.pb import raft_internal_pb2 as rip
from etcdpy.pb import rpc_pb2 as pb
from etcdpy.server.alarm import CORRUPT, NOSPACE, AlarmApplier, AlarmStore, alarm_string
from etcdpy.server.apply import Applier
from etcdpy.server.quota import COST_BOUND_PER_BYTE, REQUEST_ENVELOPE_BYTES, BackendQuota, cost

AR = pb.AlarmRequest


def _put(key: bytes = b"k", value: bytes = b"v") -> rip.InternalRaftRequest:
    return rip.InternalRaftRequest(put=pb.PutRequest(key=key, value=value))


def _txn(success: list[pb.RequestOp], failure: list[pb.RequestOp] = ()) -> rip.InternalRaftRequest:  # type: ignore[assignment]
    return rip.InternalRaftRequest(txn=pb.TxnRequest(success=success, failure=list(failure)))


def _op_put(key: bytes, value: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def _alarm(action: int, member: int, alarm: int) -> rip.InternalRaftRequest:
    return rip.InternalRaftRequest(alarm=AR(action=action, memberID=member, alarm=alarm))


# ---------------------------------------------------------------------------- quota


def test_costs_follow_etcd() -> None:
    assert cost(_put(b"key", b"x" * 100)) == 256 + 3 + 100
    assert cost(rip.InternalRaftRequest(lease_grant=pb.LeaseGrantRequest(TTL=5))) == 64
    assert cost(rip.InternalRaftRequest(delete_range=pb.DeleteRangeRequest(key=b"k"))) == 0
    assert cost(_txn([pb.RequestOp(request_range=pb.RangeRequest(key=b"k"))])) == 0
    # the costlier branch counts; nested txns do not
    assert cost(_txn([_op_put(b"a"), _op_put(b"b", b"12")], [_op_put(b"c", b"x" * 10)])) == max(2 * 256 + 4, 256 + 11)
    nested = pb.RequestOp(request_txn=pb.TxnRequest(success=[_op_put(b"n", b"v" * 1000)]))
    assert cost(_txn([nested])) == 0


def test_no_request_costs_more_than_the_bound_the_quota_skips_by() -> None:
    """`available` skips computing the cost when size + bound x encoded size fits; the bound must hold."""
    import random

    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng = random.Random(seed)

    def blob(n: int) -> bytes:
        return bytes(rng.randrange(256) for _ in range(n))

    requests = [
        rip.InternalRaftRequest(lease_grant=pb.LeaseGrantRequest()),
        rip.InternalRaftRequest(lease_grant=pb.LeaseGrantRequest(TTL=5, ID=7)),
        _put(b"", b""),
        _put(b"k", b""),
        _txn([_op_put(b"") for _ in range(64)]),
        _txn([], [_op_put(b"") for _ in range(3)]),
    ]
    for _ in range(300):
        ops = [_op_put(blob(rng.randrange(0, 8)), blob(rng.randrange(0, 40))) for _ in range(rng.randrange(0, 6))]
        more = [_op_put(blob(rng.randrange(0, 3))) for _ in range(rng.randrange(0, 6))]
        requests.append(_txn(ops, more))
        requests.append(_put(blob(rng.randrange(0, 10)), blob(rng.randrange(0, 300))))
    for req in requests:
        assert cost(req) <= COST_BOUND_PER_BYTE * req.ByteSize(), req


def test_quota_available_and_size_cache() -> None:
    now = [0.0]
    size = [1000]
    q = BackendQuota(lambda: size[0], 2000, clock=lambda: now[0])
    assert q.available(_put(b"k", b"x" * 700))  # 1000 + 957 < 2000
    assert not q.available(_put(b"k", b"x" * 800))  # 1000 + 1059 >= 2000
    size[0] = 5000
    assert q.available(_put(b"k", b"x"))  # the size measured 0 s ago still holds
    now[0] = 0.2
    assert not q.available(_put(b"k", b"x"))
    assert q.available(_txn([pb.RequestOp(request_range=pb.RangeRequest(key=b"k"))]))  # free: always passes
    size[0] = 10
    assert not q.available(_put(), measure=False)  # the apply step reuses the last measure
    q.invalidate()
    assert q.available(_put())
    assert BackendQuota(lambda: 0, 0).max_bytes == 2 * 1024**3


def test_quota_far_below_its_limit_does_not_look_at_the_request() -> None:
    """With --max-request-bytes known, a size far enough below the quota passes any request unread;
    closer to the quota, the request's own cost decides again."""

    class Unreadable:
        def ByteSize(self) -> int:  # noqa: N802 - protobuf's name
            raise AssertionError("the request was looked at")

    envelope = COST_BOUND_PER_BYTE * (1000 + REQUEST_ENVELOPE_BYTES)
    far = BackendQuota(lambda: 5000, 5000 + envelope + 1, max_request_bytes=1000)
    assert far.available(Unreadable())  # type: ignore[arg-type]
    near = BackendQuota(lambda: 5000, 5000 + envelope, max_request_bytes=1000)
    with pytest.raises(AssertionError, match="looked at"):
        near.available(Unreadable())  # type: ignore[arg-type]
    assert near.available(_put(b"k", b"x"))
    tight = BackendQuota(lambda: 5000, 5300, max_request_bytes=1000)
    assert not tight.available(_put(b"k", b"x" * 100))  # 5000 + 256 + 101 >= 5300


# ---------------------------------------------------------------------------- alarm applier


class World:
    def __init__(self, path: Path, quota: BackendQuota | None = None) -> None:
        self.kv = KVStore(str(path))
        self.applier = Applier(self.kv, Lessor(5))
        self.alarms = AlarmStore(self.kv)
        self.applier.alarm = AlarmApplier(self.kv, self.alarms, quota, self.applier.apply)
        self.index = self.kv.consistent_index

    def apply(self, req: rip.InternalRaftRequest):  # type: ignore[no-untyped-def]
        self.index += 1
        return self.applier.apply(req, self.index, 1)

    def close(self) -> None:
        self.kv.close()


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    w = World(tmp_path / "db")
    yield w
    w.close()


def test_alarm_is_stored_with_the_consistent_index(world: World, tmp_path: Path) -> None:
    res = world.apply(_alarm(AR.ACTIVATE, 7, NOSPACE))
    assert res.err is None and [(a.memberID, a.alarm) for a in res.resp.alarms] == [(7, NOSPACE)]
    assert world.kv.consistent_index == 1 and world.kv.current_rev == 1  # no revision for an alarm
    stored = [pb.AlarmMember.FromString(k) for k, v in world.kv.backend.iterate(BUCKET_ALARM)]
    assert [(a.memberID, a.alarm) for a in stored] == [(7, NOSPACE)]
    world.close()
    again = World(tmp_path / "db")
    try:
        assert [(a.memberID, a.alarm) for a in again.alarms.get()] == [(7, NOSPACE)]
        assert again.apply(_put()).err.message == "etcdserver: mvcc: database space exceeded"
        res = again.apply(_alarm(AR.DEACTIVATE, 7, NOSPACE))
        assert [(a.memberID, a.alarm) for a in res.resp.alarms] == [(7, NOSPACE)]
        assert list(again.kv.backend.iterate(BUCKET_ALARM)) == []
        assert again.apply(_put()).err is None
    finally:
        again.close()


def test_get_lists_by_type_in_a_stable_order(world: World) -> None:
    for member, alarm in [(9, NOSPACE), (3, CORRUPT), (3, NOSPACE)]:
        world.apply(_alarm(AR.ACTIVATE, member, alarm))
    def get(alarm: int) -> list[tuple[int, int]]:
        return [(a.memberID, a.alarm) for a in world.apply(_alarm(AR.GET, 0, alarm)).resp.alarms]
    assert get(pb.NONE) == [(3, NOSPACE), (9, NOSPACE), (3, CORRUPT)]
    assert get(CORRUPT) == [(3, CORRUPT)]
    assert world.apply(_alarm(AR.ACTIVATE, 1, pb.NONE)).resp.alarms == []  # etcd 3.5: nothing to raise
    assert world.apply(_alarm(AR.DEACTIVATE, 1, NOSPACE)).resp.alarms == []


def test_nospace_gate(world: World) -> None:
    world.apply(_put(b"a"))
    world.apply(_alarm(AR.ACTIVATE, 1, NOSPACE))
    rev = world.kv.current_rev
    nospace = "etcdserver: mvcc: database space exceeded"
    for req in (
        _put(),
        _txn([], [_op_put(b"x")]),
        rip.InternalRaftRequest(lease_grant=pb.LeaseGrantRequest(ID=5, TTL=60)),
    ):
        before = world.kv.consistent_index
        res = world.apply(req)
        assert isinstance(res.err, errors.ErrGRPCNoSpace) and res.err.message == nospace
        assert world.kv.consistent_index == before + 1  # refused entries are still applied entries
    assert world.kv.current_rev == rev
    assert world.apply(rip.InternalRaftRequest(delete_range=pb.DeleteRangeRequest(key=b"a"))).err is None
    nested = pb.RequestOp(request_txn=pb.TxnRequest(success=[_op_put(b"n")]))
    assert world.apply(_txn([nested])).err is None
    assert world.apply(rip.InternalRaftRequest(compaction=pb.CompactionRequest(revision=2))).err is None


def test_corrupt_gate(world: World) -> None:
    world.apply(_alarm(AR.ACTIVATE, 1, CORRUPT))
    for req in (
        _put(),
        rip.InternalRaftRequest(delete_range=pb.DeleteRangeRequest(key=b"a")),
        _txn([pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))]),
        rip.InternalRaftRequest(compaction=pb.CompactionRequest(revision=1)),
        rip.InternalRaftRequest(lease_revoke=pb.LeaseRevokeRequest(ID=1)),
    ):
        res = world.apply(req)
        assert isinstance(res.err, errors.ErrCorrupt), req


def test_over_quota_write_is_applied_but_answered_nospace(tmp_path: Path) -> None:
    """etcd's quotaApplierV3: the write is in the store, its proposer hears "no space", no alarm."""
    q = BackendQuota(lambda: 10_000, 10_000)
    q.size()
    w = World(tmp_path / "db", q)
    try:
        res = w.apply(_put(b"k", b"v"))
        assert isinstance(res.err, errors.ErrGRPCNoSpace)
        assert [e.kv.key for e in res.events] == [b"k"]
        assert w.kv.range(b"k", None).kvs[0].value == b"v"
        assert w.alarms.get() == []
    finally:
        w.close()


def test_the_applier_skips_the_gate_only_while_the_gate_has_nothing_to_say(tmp_path: Path) -> None:
    """`passes_kv_writes` is the applier's shortcut past the gate: true only with no alarm, the
    alarms in sync with the store and the quota holding any request; otherwise the gate decides."""
    size = [0]
    limit = COST_BOUND_PER_BYTE * (1000 + REQUEST_ENVELOPE_BYTES) + 10_000  # far enough below at size 0
    q = BackendQuota(lambda: size[0], limit, max_request_bytes=1000)
    q.size()
    w = World(tmp_path / "db", q)
    gate = w.applier.alarm
    assert gate is not None
    try:
        assert gate.passes_kv_writes() and q.surely_fits()
        assert w.apply(_put(b"k", b"v")).err is None
        size[0] = limit  # the quota is reached: the gate must see the next write
        q.invalidate()
        q.size()
        assert not q.surely_fits() and not gate.passes_kv_writes()
        assert isinstance(w.apply(_put(b"k", b"v2")).err, errors.ErrGRPCNoSpace)
        size[0] = 0
        q.invalidate()
        q.size()
        assert gate.passes_kv_writes()
        w.apply(_alarm(AR.ACTIVATE, 1, NOSPACE))
        assert not gate.passes_kv_writes()
        assert isinstance(w.apply(_txn([_op_put(b"x")])).err, errors.ErrGRPCNoSpace)
        w.apply(_alarm(AR.DEACTIVATE, 1, NOSPACE))
        assert gate.passes_kv_writes() and w.apply(_txn([_op_put(b"x")])).err is None
    finally:
        w.close()


def test_alarm_string_is_gos_text_format() -> None:
    assert alarm_string(pb.AlarmMember(memberID=42, alarm=NOSPACE)) == "memberID:42 alarm:NOSPACE "
    assert alarm_string(pb.AlarmMember(memberID=42, alarm=pb.NONE)) == "memberID:42 "
    assert alarm_string(pb.AlarmMember(alarm=CORRUPT)) == "alarm:CORRUPT "


def test_alarms_follow_a_store_replaced_by_a_snapshot(tmp_path: Path) -> None:
    """A follower installing the leader's snapshot must see the leader's alarms at once."""
    leader, follower = World(tmp_path / "leader"), World(tmp_path / "follower")
    try:
        leader.apply(_alarm(AR.ACTIVATE, 1, NOSPACE))
        leader.kv.snapshot_to(str(tmp_path / "snap"))
        assert follower.apply(_put()).err is None
        follower.kv.restore_from(str(tmp_path / "snap"))
        assert isinstance(follower.apply(_put()).err, errors.ErrGRPCNoSpace)
        assert [(a.memberID, a.alarm) for a in follower.alarms.get()] == [(1, NOSPACE)]
    finally:
        leader.close()
        follower.close()


def test_corruption_check_compares_only_comparable_hashes() -> None:
    from etcdpy.server.maintenance import MemberHash, find_corrupt_members

    me = MemberHash(1, revision=10, compact_revision=5, hash=111)
    peers = [
        MemberHash(2, 10, 5, 111),  # agrees
        MemberHash(3, 10, 5, 222),  # same point in history, different data: corrupt
        MemberHash(4, 11, 5, 333),  # another revision: not comparable
        MemberHash(5, 10, 6, 444),  # another compaction: not comparable
        MemberHash(1, 10, 5, 999),  # ourselves
    ]
    assert find_corrupt_members(me, peers) == [3]
