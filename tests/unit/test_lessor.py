"""Tests for etcdpy.lease: the lessor on a fake clock, its apply path on a real store, and its async side.

The expectations follow etcd's lessor.go and what etcd 3.4.23 answers (see
tests/compat/test_lease.py for the same behaviours checked on real processes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdpy import errors
from etcdpy.lease import (
    BUCKET_LEASE,
    FOREVER_SECONDS,
    MAX_LEASE_TTL,
    ExpiredLeaseRevoker,
    LeaseExpired,
    Lessor,
    NotPrimary,
    min_lease_ttl,
    renew_on_primary,
)
from etcdpy.lease import persist
from etcdpy.mvcc import Batch, KVStore
from etcdpy.pb import kv_pb2, raft_internal_pb2, rpc_pb2
from etcdpy.server.apply import Applier, ApplyResult

MIN_TTL = 2


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lessor(clock: FakeClock) -> Lessor:
    return Lessor(MIN_TTL, clock=clock)


def grant(le: Lessor, lease_id: int, ttl: int) -> int:
    return le.grant(lease_id, ttl, Batch()).ttl


# ---------------------------------------------------------------------- minimum TTL and grant checks


def test_min_ttl_is_ceil_of_one_and_a_half_election_timeouts() -> None:
    assert min_lease_ttl(10, 100) == 2  # etcd defaults: 1.5 s -> 2 s
    assert min_lease_ttl(5, 100) == 1  # 7 ticks (integer 3*5/2) * 100 ms = 0.7 s -> 1 s
    assert min_lease_ttl(10, 500) == 8  # 7.5 s -> 8 s
    assert min_lease_ttl(50, 100) == 8  # 7.5 s -> 8 s


def test_grant_raises_short_ttls_to_the_minimum_and_reports_it(lessor: Lessor) -> None:
    # etcd 3.4.23: grant TTL 1, 0 and -5 all answer TTL 2.
    assert grant(lessor, 1, 1) == 2
    assert grant(lessor, 2, 0) == 2
    assert grant(lessor, 3, -5) == 2
    assert grant(lessor, 4, 100) == 100
    assert lessor.lookup(1).ttl == 2  # type: ignore[union-attr]


def test_grant_errors_in_etcds_order(lessor: Lessor) -> None:
    with pytest.raises(errors.ErrLeaseNotFound):
        grant(lessor, 0, 10)
    assert grant(lessor, 7, MAX_LEASE_TTL) == MAX_LEASE_TTL
    with pytest.raises(errors.ErrLeaseTTLTooLarge):
        grant(lessor, 8, MAX_LEASE_TTL + 1)
    with pytest.raises(errors.ErrLeaseTTLTooLarge):  # TTL is checked before existence
        grant(lessor, 7, MAX_LEASE_TTL + 1)
    with pytest.raises(errors.ErrLeaseExist):
        grant(lessor, 7, 10)
    assert len(lessor) == 1


def test_negative_ids_are_ordinary_ids(lessor: Lessor) -> None:
    grant(lessor, -3, 10)
    assert lessor.lookup(-3) is not None


# ---------------------------------------------------------------------- primary vs secondary


def test_secondary_never_expires_and_cannot_renew(lessor: Lessor, clock: FakeClock) -> None:
    grant(lessor, 1, 5)
    clock.advance(1e6)
    assert lessor.remaining(lessor.lookup(1)) == FOREVER_SECONDS  # type: ignore[arg-type]
    assert lessor.find_expired(100) == []
    with pytest.raises(NotPrimary):
        lessor.renew(1)


def test_primary_grant_gets_a_deadline_and_expires(lessor: Lessor, clock: FakeClock) -> None:
    lessor.promote(0.0)
    grant(lessor, 1, 5)
    lease = lessor.lookup(1)
    assert lease is not None and lessor.remaining(lease) == 5
    clock.advance(4.5)
    assert lessor.time_to_live(lease) == 0  # 0.5 s left truncates to 0, as Go's int64(Seconds())
    assert lessor.find_expired(100) == []
    clock.advance(0.5)
    assert [le.id for le in lessor.find_expired(100)] == [1]


def test_time_to_live_truncates_toward_zero(lessor: Lessor, clock: FakeClock) -> None:
    lessor.promote(0.0)
    grant(lessor, 1, 100)
    lease = lessor.lookup(1)
    assert lease is not None
    clock.advance(0.25)
    assert lessor.time_to_live(lease) == 99  # etcd: 99.75 s -> 99
    clock.advance(101.0)
    assert lessor.time_to_live(lease) == -1  # past the deadline: -1.25 -> -1


def test_renew_gives_a_fresh_full_ttl(lessor: Lessor, clock: FakeClock) -> None:
    lessor.promote(0.0)
    grant(lessor, 1, 10)
    clock.advance(9)
    assert lessor.renew(1) == 10
    clock.advance(9)
    assert lessor.find_expired(10) == []
    clock.advance(1)
    assert [le.id for le in lessor.find_expired(10)] == [1]


def test_renew_unknown_and_expired(lessor: Lessor, clock: FakeClock) -> None:
    lessor.promote(0.0)
    with pytest.raises(errors.ErrLeaseNotFound):
        lessor.renew(42)
    grant(lessor, 1, 3)
    clock.advance(3)
    with pytest.raises(LeaseExpired):  # a keep-alive must not revive a lease being revoked
        lessor.renew(1)


def test_promote_extends_every_lease_and_demote_suspends(lessor: Lessor, clock: FakeClock) -> None:
    grant(lessor, 1, 10)
    grant(lessor, 2, 20)
    clock.advance(100)
    lessor.promote(1.0)  # etcd extends by one election timeout
    assert [lessor.remaining(le) for le in lessor.leases()] == [11.0, 21.0]
    clock.advance(5)
    lessor.demote()
    assert not lessor.is_primary
    clock.advance(1000)
    assert lessor.find_expired(10) == []
    assert all(lessor.remaining(le) == FOREVER_SECONDS for le in lessor.leases())
    lessor.promote(1.0)  # a fresh full TTL again, not what was left before the demotion
    assert [lessor.remaining(le) for le in lessor.leases()] == [11.0, 21.0]


def test_checkpointed_remaining_ttl_is_used_by_the_next_promotion(lessor: Lessor) -> None:
    grant(lessor, 1, 100)
    lessor.checkpoint(1, 30)
    lessor.checkpoint(999, 30)  # unknown ids are ignored
    lessor.promote(0.0)
    assert lessor.remaining(lessor.lookup(1)) == 30  # type: ignore[arg-type]
    assert lessor.renew(1) == 100


def test_promote_spreads_a_pile_of_simultaneous_expiries(clock: FakeClock) -> None:
    le = Lessor(MIN_TTL, clock=clock, revoke_rate=8)  # target: 6 expiries per second
    for i in range(1, 21):
        grant(le, i, 10)
    le.promote(0.0)
    remaining = sorted(le.remaining(x) for x in le.leases())
    assert remaining[:6] == [10.0] * 6
    assert remaining[-1] > 11.0  # the 20th lands more than a second later
    per_second: dict[int, int] = {}
    for r in remaining:
        per_second[int(r)] = per_second.get(int(r), 0) + 1
    assert max(per_second.values()) <= 7


def test_find_expired_is_rate_limited_and_holds_back_what_it_returned(clock: FakeClock) -> None:
    le = Lessor(MIN_TTL, clock=clock, expired_retry_interval=3.0)
    le.promote(0.0)
    for i in range(1, 6):
        grant(le, i, 2)
    clock.advance(2)
    first = le.find_expired(3)
    assert [x.id for x in first] == [1, 2, 3]
    assert [x.id for x in le.find_expired(10)] == [4, 5]
    assert le.find_expired(10) == []  # handed out: not again before the retry interval
    clock.advance(3)
    assert sorted(x.id for x in le.find_expired(10)) == [1, 2, 3, 4, 5]  # still not revoked: retried


def test_leases_are_listed_soonest_deadline_first(lessor: Lessor) -> None:
    lessor.promote(0.0)
    grant(lessor, 3, 30)
    grant(lessor, 1, 100)
    grant(lessor, 2, 10)
    assert [le.id for le in lessor.leases()] == [2, 3, 1]


def test_waiters_wake_on_promote_demote_and_revoke(lessor: Lessor, tmp_path: Path) -> None:
    woken: list[str] = []
    lessor.add_waiter(lambda: woken.append("a"))
    lessor.promote(0.0)
    lessor.add_waiter(lambda: woken.append("b"))
    lessor.demote()
    assert woken == ["a", "b"]
    lessor.add_waiter(lambda: woken.append("c"))
    store = KVStore(str(tmp_path / "db"))
    try:
        grant(lessor, 1, 10)
        with store.write() as w:
            lessor.revoke(1, w)
        assert woken == ["a", "b", "c"]
    finally:
        store.close()


# ---------------------------------------------------------------------- persistence format


@pytest.mark.parametrize(
    "rec",
    [persist.LeaseRecord(1, 2), persist.LeaseRecord(-3, 100, 7), persist.LeaseRecord(2**63 - 1, MAX_LEASE_TTL)],
)
def test_lease_record_round_trip(rec: persist.LeaseRecord) -> None:
    assert persist.decode(persist.encode(rec)) == rec


def test_lease_record_is_leasepb_wire_format() -> None:
    # leasepb.Lease{ID: 5, TTL: 10}: field 1 varint 5, field 2 varint 10.
    assert persist.encode(persist.LeaseRecord(5, 10)) == b"\x08\x05\x10\x0a"
    assert persist.lease_key(5) == b"\x00" * 7 + b"\x05"
    assert persist.lease_key(-1) == b"\xff" * 8
    with pytest.raises(ValueError):
        persist.decode(b"\x08")


# ---------------------------------------------------------------------- the apply path, on a real store


class Node:
    """One member's apply step with a lessor, as EtcdServer wires it."""

    def __init__(self, path: Path, clock: FakeClock) -> None:
        self.path = path
        self.clock = clock
        self.open()

    def open(self) -> None:
        self.store = KVStore(str(self.path))
        self.lessor = Lessor(MIN_TTL, clock=self.clock)
        self.lessor.recover(self.store.backend, self.store)
        self.applier = Applier(self.store, self.lessor)
        self.index = self.store.consistent_index

    def reopen(self) -> None:
        self.store.close()
        self.open()

    def apply(self, **req: object) -> ApplyResult:
        self.index += 1
        return self.applier.apply(raft_internal_pb2.InternalRaftRequest(**req), self.index, 2)

    def ok(self, **req: object) -> ApplyResult:
        res = self.apply(**req)
        assert res.err is None, res.err
        return res

    def grant(self, lease_id: int, ttl: int) -> rpc_pb2.LeaseGrantResponse:
        return self.ok(lease_grant=rpc_pb2.LeaseGrantRequest(ID=lease_id, TTL=ttl)).resp  # type: ignore[return-value]

    def revoke(self, lease_id: int) -> ApplyResult:
        return self.apply(lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=lease_id))

    def put(self, key: bytes, lease: int = 0, **kw: object) -> int:
        return self.ok(put=rpc_pb2.PutRequest(key=key, value=b"v", lease=lease, **kw)).resp.header.revision  # type: ignore[union-attr]

    def keys(self, lease_id: int) -> set[bytes]:
        lease = self.lessor.lookup(lease_id)
        assert lease is not None
        return set(lease.keys)

    def live(self) -> dict[bytes, int]:
        return {kv.key: kv.lease for kv in self.store.range(b"\x00", b"\x00").kvs}


@pytest.fixture
def node(tmp_path: Path, clock: FakeClock) -> Iterator[Node]:
    n = Node(tmp_path / "db", clock)
    yield n
    n.store.close()


def test_grant_is_persisted_with_the_consistent_index_and_no_revision(node: Node) -> None:
    resp = node.grant(5, 1)
    assert (resp.ID, resp.TTL, resp.header.revision) == (5, 2, 1)
    assert node.store.current_rev == 1 and node.store.consistent_index == node.index
    row = node.store.backend.get(BUCKET_LEASE, persist.lease_key(5))
    assert row is not None and persist.decode(row) == persist.LeaseRecord(5, 2)


def test_failed_grant_writes_no_row_but_moves_the_consistent_index(node: Node) -> None:
    node.grant(5, 10)
    res = node.apply(lease_grant=rpc_pb2.LeaseGrantRequest(ID=5, TTL=10))
    assert isinstance(res.err, errors.ErrLeaseExist) and res.resp is None
    res = node.apply(lease_grant=rpc_pb2.LeaseGrantRequest(ID=6, TTL=MAX_LEASE_TTL + 1))
    assert isinstance(res.err, errors.ErrLeaseTTLTooLarge)
    assert node.store.backend.get(BUCKET_LEASE, persist.lease_key(6)) is None
    assert node.store.consistent_index == node.index == 3


def test_puts_attach_ignore_lease_keeps_and_plain_puts_and_deletes_detach(node: Node) -> None:
    node.grant(1, 100)
    node.grant(2, 100)
    node.put(b"a", lease=1)
    node.put(b"b", lease=1)
    assert node.keys(1) == {b"a", b"b"}
    node.put(b"a", ignore_lease=True)
    assert node.keys(1) == {b"a", b"b"} and node.live()[b"a"] == 1
    node.put(b"a", lease=2)  # moves to the other lease
    assert node.keys(1) == {b"b"} and node.keys(2) == {b"a"}
    node.put(b"b")  # a put without lease detaches
    assert node.keys(1) == set()
    node.ok(delete_range=rpc_pb2.DeleteRangeRequest(key=b"a"))
    assert node.keys(2) == set() and node.lessor.get_lease(b"a") == 0


def test_unknown_lease_fails_the_put_and_attaches_nothing(node: Node) -> None:
    res = node.apply(put=rpc_pb2.PutRequest(key=b"k", value=b"v", lease=77))
    assert isinstance(res.err, errors.ErrLeaseNotFound)
    assert node.lessor.get_lease(b"k") == 0 and node.live() == {}


def test_txn_puts_attach_and_a_failed_txn_attaches_nothing(node: Node) -> None:
    node.grant(1, 100)
    P = rpc_pb2.RequestOp
    ok = node.ok(txn=rpc_pb2.TxnRequest(success=[P(request_put=rpc_pb2.PutRequest(key=b"t1", lease=1))]))
    assert ok.resp.succeeded and node.keys(1) == {b"t1"}  # type: ignore[union-attr]
    bad = node.apply(
        txn=rpc_pb2.TxnRequest(
            success=[
                P(request_put=rpc_pb2.PutRequest(key=b"t2", lease=1)),
                P(request_put=rpc_pb2.PutRequest(key=b"t3", lease=99)),
            ]
        )
    )
    assert isinstance(bad.err, errors.ErrLeaseNotFound) and node.keys(1) == {b"t1"}


def test_revoke_deletes_all_keys_in_one_revision_and_returns_the_events(node: Node) -> None:
    node.grant(1, 100)
    for k in (b"c", b"a", b"b"):
        node.put(k, lease=1)
    node.put(b"other")
    rev = node.store.current_rev
    res = node.revoke(1)
    assert res.err is None and res.resp.header.revision == rev + 1  # type: ignore[union-attr]
    assert node.store.current_rev == rev + 1
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in res.events] == [
        (kv_pb2.Event.DELETE, k, rev + 1) for k in (b"a", b"b", b"c")  # sorted: same on every member
    ]
    assert node.live() == {b"other": 0}
    assert node.lessor.lookup(1) is None
    assert node.store.backend.get(BUCKET_LEASE, persist.lease_key(1)) is None


def test_revoke_without_keys_keeps_the_revision_and_unknown_fails(node: Node) -> None:
    node.grant(1, 100)
    res = node.revoke(1)
    assert res.err is None and res.resp.header.revision == 1 and res.events == []  # type: ignore[union-attr]
    assert isinstance(node.revoke(1).err, errors.ErrLeaseNotFound)
    assert isinstance(node.revoke(0).err, errors.ErrLeaseNotFound)


def test_checkpoint_apply_does_not_crash(node: Node) -> None:
    node.grant(1, 100)
    cps = [rpc_pb2.LeaseCheckpoint(ID=1, remaining_TTL=40), rpc_pb2.LeaseCheckpoint(ID=9, remaining_TTL=5)]
    res = node.ok(lease_checkpoint=rpc_pb2.LeaseCheckpointRequest(checkpoints=cps))
    assert res.resp.header.revision == 1  # type: ignore[union-attr]
    assert node.lessor.lookup(1).remaining_ttl == 40  # type: ignore[union-attr]


def test_recovery_restores_leases_and_reattaches_keys(node: Node, clock: FakeClock) -> None:
    node.grant(1, 100)
    node.grant(2, 1)
    node.grant(3, 50)
    node.put(b"a", lease=1)
    node.put(b"b", lease=1)
    node.put(b"c", lease=3)
    node.put(b"c")  # detached again
    node.revoke(3)
    node.lessor.promote(0.0)
    node.reopen()
    le = node.lessor
    assert sorted((x.id, x.ttl) for x in le.leases()) == [(1, 100), (2, 2)]
    assert node.keys(1) == {b"a", b"b"} and node.keys(2) == set() and le.get_lease(b"c") == 0
    assert not le.is_primary and all(le.remaining(x) == FOREVER_SECONDS for x in le.leases())
    le.promote(1.0)
    assert le.remaining(le.lookup(1)) == 101.0  # type: ignore[arg-type]
    # the recovered lessor revokes like the original
    rev = node.store.current_rev
    assert node.revoke(1).err is None and node.store.current_rev == rev + 1 and node.live() == {b"c": 0}


def test_recovery_pages_through_many_keys(tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    import etcdpy.lease.lessor as lessor_mod

    monkeypatch.setattr(lessor_mod, "_RECOVER_PAGE", 3)
    n = Node(tmp_path / "db", clock)
    try:
        n.grant(1, 100)
        for i in range(10):
            n.put(b"k%02d" % i, lease=1 if i % 2 else 0)
        n.reopen()
        assert n.keys(1) == {b"k%02d" % i for i in range(1, 10, 2)}
    finally:
        n.store.close()


def test_recovery_raises_stored_ttls_below_a_new_minimum(node: Node, clock: FakeClock) -> None:
    node.grant(1, 3)
    node.store.close()
    store = KVStore(str(node.path))
    try:
        le = Lessor(8, clock=clock)
        le.recover(store.backend, store)
        assert le.lookup(1).ttl == 8  # type: ignore[union-attr]
    finally:
        store.close()


def test_replaying_a_grant_after_a_crash_is_skipped_by_the_consistent_index(node: Node) -> None:
    node.grant(1, 100)
    index = node.index
    node.reopen()
    assert node.store.consistent_index == index and node.lessor.lookup(1) is not None


# ---------------------------------------------------------------------- the async side


def test_revoker_proposes_each_expired_lease_once_per_retry_interval(clock: FakeClock) -> None:
    le = Lessor(MIN_TTL, clock=clock)
    le.promote(0.0)
    for i in (1, 2, 3):
        grant(le, i, 2)
    proposed: list[int] = []

    async def propose(lease_id: int) -> None:
        proposed.append(lease_id)

    async def scenario() -> None:
        rv = ExpiredLeaseRevoker(le, propose, _logger())
        assert rv.revoke_expired() == 0
        clock.advance(2)
        assert rv.revoke_expired() == 3
        assert rv.revoke_expired() == 0  # held back while the revokes are in flight
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        le.demote()
        clock.advance(100)
        assert rv.revoke_expired() == 0  # only the primary revokes

    asyncio.run(scenario())
    assert sorted(proposed) == [1, 2, 3]


def test_revoker_run_loop_stops_cleanly(clock: FakeClock) -> None:
    le = Lessor(MIN_TTL, clock=clock)
    le.promote(0.0)
    grant(le, 1, 2)
    clock.advance(5)

    async def scenario() -> list[int]:
        seen: list[int] = []
        gate = asyncio.Event()

        async def propose(lease_id: int) -> None:
            seen.append(lease_id)
            gate.set()
            await asyncio.sleep(3600)  # a proposal still in flight when the task stops

        task = asyncio.create_task(ExpiredLeaseRevoker(le, propose, _logger(), interval=0.01).run())
        await asyncio.wait_for(gate.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(scenario()) == [1]


def test_renew_on_primary_waits_for_promotion_then_renews(clock: FakeClock) -> None:
    le = Lessor(MIN_TTL, clock=clock)
    grant(le, 1, 30)

    async def scenario() -> int:
        task = asyncio.create_task(renew_on_primary(le, 1, lambda: None, timeout=5))
        await asyncio.sleep(0)
        assert not task.done()
        le.promote(1.0)
        return await task

    assert asyncio.run(scenario()) == 30


def test_renew_of_an_expired_lease_waits_for_its_revocation(clock: FakeClock, tmp_path: Path) -> None:
    le = Lessor(MIN_TTL, clock=clock)
    le.promote(0.0)
    grant(le, 1, 2)
    clock.advance(2)
    store = KVStore(str(tmp_path / "db"))

    async def scenario() -> None:
        task = asyncio.create_task(renew_on_primary(le, 1, lambda: None, timeout=5))
        await asyncio.sleep(0)
        assert not task.done()
        with store.write() as w:
            le.revoke(1, w)
        with pytest.raises(errors.ErrLeaseNotFound):
            await task

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_renew_on_primary_fails_when_this_member_loses_the_lead(clock: FakeClock) -> None:
    le = Lessor(MIN_TTL, clock=clock)
    grant(le, 1, 30)
    leader = [True]

    def check_leader() -> None:
        if not leader[0]:
            raise errors.ErrNotLeader()

    async def scenario() -> None:
        task = asyncio.create_task(renew_on_primary(le, 1, check_leader, timeout=5))
        await asyncio.sleep(0)
        leader[0] = False
        le.demote()
        with pytest.raises(errors.ErrNotLeader):
            await task
        with pytest.raises(errors.ErrTimeout):
            leader[0] = True
            await renew_on_primary(le, 1, check_leader, timeout=0.01)  # never promoted

    asyncio.run(scenario())


def _logger():  # type: ignore[no-untyped-def]
    import logging

    return logging.getLogger("test_lessor")


def test_keep_alives_do_not_grow_the_expiry_heap(lessor: Lessor, clock: FakeClock) -> None:
    """etcd updates a lease's queue entry in place; 200k renewals must not leave 200k entries."""
    grant(lessor, 1, 10)
    grant(lessor, 2, 10)
    t0 = clock.now
    lessor.promote(0.0)  # both deadlines at t0+10
    for _ in range(20000):
        clock.advance(0.0001)
        lessor.renew(1)
    assert len(lessor._heap) <= 4, f"{len(lessor._heap)} heap entries for 2 leases"
    # Deadlines still hold: lease 2 expires at t0+10, lease 1 at its renewed deadline (t0+12) only.
    clock.advance(t0 + 10.5 - clock.now)
    assert [le.id for le in lessor.find_expired(10)] == [2]
    clock.advance(1.0)
    assert [le.id for le in lessor.find_expired(10)] == []
    clock.advance(1.0)
    assert [le.id for le in lessor.find_expired(10)] == [1]
