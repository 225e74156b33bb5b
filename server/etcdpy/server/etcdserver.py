"""EtcdServer: bootstrap, the propose-and-wait write path, linearizable reads and the apply step.

The shape follows etcd's server (see docs/ARCHITECTURE.md): a request gets an
id, is checked for size, marshalled into an `InternalRaftRequest` entry and
proposed; its caller waits on the wait registry under the request id until the
apply step applies the committed entry. Reads go to the MVCC store directly,
after a ReadIndex round for linearizable ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field

from etcdpy import errors
from etcdpy.auth import AuthInfo, AuthStore, SimpleTokenProvider
from etcdpy.config import MAX_GAP_BETWEEN_APPLY_AND_COMMIT, ServerConfig
from etcdpy.lease import ExpiredLeaseRevoker, Lessor, min_lease_ttl, renew_on_primary
from etcdpy.metrics import ServerMetrics
from etcdpy.mvcc import KVStore
from etcdpy.pb import raft_internal_pb2, rpc_pb2
from etcdpy.raft import Config as RaftConfig
from etcdpy.raft import Peer, RawNode
from etcdpy.raft.errors import ProposalDropped
from etcdpy.raft.storage import MemoryStorage
from etcdpy.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    ReadState,
    Snapshot,
    SoftState,
    StateType,
)
from etcdpy.server.apply import Applier, ApplyResult, is_txn_read_only
from etcdpy.server.apply_auth import AuthApplier
from etcdpy.server.idutil import IdGenerator
from etcdpy.server.maintenance import MaintenanceOps
from etcdpy.server.membership import (
    Member,
    RaftCluster,
    compute_cluster_id,
    members_from_initial_cluster,
)
from etcdpy.raft.types import unmarshal_conf_change
from etcdpy.server.raftnode import NullTransport, RaftNode
from etcdpy.server.wait import Wait, WaitTime
from etcdpy.snap import Snapshotter
from etcdpy.wal import WAL, WalSnapshot, valid_snapshot_entries
from etcdpy.watch import WatchableStore

READ_INDEX_RETRY_SECONDS = 0.5


class StartupError(Exception):
    """A configuration or data-dir problem that stops the server from starting (one clear line)."""


@dataclass
class Progress:
    """etcdProgress: what has been applied and snapshotted, as the apply step sees it."""

    applied_index: int = 0
    applied_term: int = 0
    snapshot_index: int = 0
    committed_index: int = 0
    term: int = 0
    conf_state: ConfState = field(default_factory=ConfState)


class EtcdServer:
    def __init__(self, cfg: ServerConfig, logger: logging.Logger | None = None) -> None:
        self.cfg = cfg
        self.log = logger or logging.getLogger("etcdpy")
        self.member_id = 0
        self.cluster = RaftCluster()
        self.progress = Progress()
        self.lead = NONE
        self.wait = Wait()
        self.applied_wait = WaitTime()
        self.kv: KVStore | None = None
        self.watchable: WatchableStore | None = None  # watch: watchers over self.kv
        self.applier: Applier | None = None
        self.auth_store: AuthStore | None = None
        self.lessor: Lessor | None = None
        self.maintenance: MaintenanceOps | None = None  # alarms, quota, auto-compaction, snapshots
        self.raft: RaftNode | None = None
        self._idgen: IdGenerator | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._read_waiters: asyncio.Future[None] | None = None
        self._read_signal = asyncio.Event()
        self._read_states: dict[bytes, asyncio.Future[int]] = {}
        self._snapshotting = False
        self._stopped = False
        self.leader_changes = 0
        self.last_leader_change = time.monotonic()
        self.done = asyncio.Event()
        self.metrics = ServerMetrics()  # hot counters; the rest is read at scrape time
        self.ready = asyncio.Event()
        self._has_leader = asyncio.Event()

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Open or bootstrap the member, then start the raft, ticker and read loops."""
        cfg = self.cfg
        try:
            os.makedirs(cfg.snap_dir, exist_ok=True)
            os.makedirs(os.path.dirname(cfg.wal_dir), exist_ok=True)
        except OSError as e:
            raise StartupError(f"cannot access data directory {cfg.data_dir!r}: {e.strerror}") from e
        if not os.access(cfg.data_dir, os.W_OK):
            raise StartupError(f"cannot access data directory {cfg.data_dir!r}: permission denied")
        self.kv = KVStore(cfg.backend_path)
        # watch: notified by the KV store of every committed write txn; its sync/victim loops start here.
        self.watchable = WatchableStore(self.kv, logger=self.log)
        self.watchable.start()
        self.lessor = self._open_lessor(self.kv)
        self.applier = Applier(self.kv, self.lessor)
        self.maintenance = MaintenanceOps(self)
        self.maintenance.attach()  # alarm gate + quota in the applier before any entry is applied
        self.auth_store = self._open_auth_store(self.kv)
        if WAL.exists(cfg.wal_dir):
            node, storage, wal, snapshotter = self._restart()
        else:
            node, storage, wal, snapshotter = self._bootstrap()
        self._idgen = IdGenerator(self.member_id)
        self.raft = RaftNode(
            node,
            storage,
            wal,
            snapshotter,
            NullTransport(),
            tick_seconds=cfg.heartbeat_ms / 1000.0,
            logger=self.log,
        )
        self.raft.on_persist = self.metrics.wal_fsync.observe
        self._tasks = [
            asyncio.create_task(self.raft.run(self), name="raft"),
            asyncio.create_task(self.raft.run_ticker(), name="ticker"),
            asyncio.create_task(self._linearizable_read_loop(), name="read-index"),
        ]
        self._tasks.append(asyncio.create_task(self._campaign_if_sole_voter(), name="campaign"))
        self._tasks.append(asyncio.create_task(self._publish(), name="publish"))
        assert self.lessor is not None
        revoker = ExpiredLeaseRevoker(self.lessor, self._propose_lease_revoke, self.log)
        self._tasks.append(asyncio.create_task(revoker.run(), name="lease-revoker"))
        self._tasks.extend(self.maintenance.tasks())  # the auto-compactor (leader-only), if configured

    async def _campaign_if_sole_voter(self) -> None:
        """A one-voter cluster needs no election timeout to find out it wins.

        Raft refuses to campaign while committed conf changes are unapplied, so wait until the
        log committed at start-up (the bootstrap members) has been applied first.
        """
        await self.applied_wait.wait(self.progress.committed_index or len(self.cfg.initial_cluster))
        if self._sole_voter() and self.lead == NONE and self.raft is not None:
            self.raft.campaign()

    async def _publish(self) -> None:
        """Record this member's name and client URLs in the cluster through the log (etcd's publish)."""
        from etcdpy.pb import membership_pb2

        attrs = membership_pb2.Attributes(name=self.cfg.name, client_urls=self.cfg.advertise_client_urls)
        req = raft_internal_pb2.InternalRaftRequest(
            cluster_member_attr_set=membership_pb2.ClusterMemberAttrSetRequest(
                member_ID=self.member_id, member_attributes=attrs
            )
        )
        while not self._stopped:
            await self._has_leader.wait()
            try:
                await self.process_internal_raft_request(req)
                self.ready.set()
                self.log.info("published local member to cluster through raft", extra={"fields": {
                    "local-member-id": f"{self.member_id:x}", "cluster-id": f"{self.cluster.cluster_id:x}"}})
                return
            except errors.EtcdError as e:
                self.log.warning("failed to publish local member", extra={"fields": {"error": e.message}})
                await asyncio.sleep(self.cfg.heartbeat_ms / 1000.0)

    def _raft_config(self, storage: MemoryStorage, applied: int) -> RaftConfig:
        return RaftConfig(
            id=self.member_id,
            storage=storage,
            election_tick=self.cfg.election_ticks,
            heartbeat_tick=1,
            applied=applied,
            check_quorum=True,
            pre_vote=True,
        )

    def _bootstrap(self) -> tuple[RawNode, MemoryStorage, WAL, Snapshotter]:
        cfg = self.cfg
        if cfg.initial_cluster_state != "new":
            raise StartupError("--initial-cluster-state=existing needs a running cluster to join (not supported yet)")
        members = members_from_initial_cluster(cfg.initial_cluster, cfg.initial_cluster_token)
        me = next((m for m in members if m.name == cfg.name), None)
        if me is None:
            raise StartupError(
                f"couldn't find local name {cfg.name!r} in the initial cluster configuration"
            )
        if sorted(me.peer_urls) != sorted(cfg.initial_advertise_peer_urls):
            raise StartupError(
                f"--initial-cluster has {cfg.name}={','.join(me.peer_urls)} but missing from "
                f"--initial-advertise-peer-urls={','.join(cfg.initial_advertise_peer_urls)}"
            )
        self.member_id = me.id
        cluster_id = compute_cluster_id([m.id for m in members])
        self.cluster = RaftCluster(cluster_id)
        wal = WAL.create(cfg.wal_dir, self._wal_metadata(cluster_id))
        storage = MemoryStorage()
        node = RawNode(self._raft_config(storage, 0))
        node.bootstrap([Peer(id=m.id, context=m.to_json()) for m in members])
        self.log.info(
            "bootstrapped new cluster",
            extra={"fields": {"member-id": f"{self.member_id:x}", "cluster-id": f"{cluster_id:x}"}},
        )
        return node, storage, wal, Snapshotter(cfg.snap_dir)

    def _restart(self) -> tuple[RawNode, MemoryStorage, WAL, Snapshotter]:
        cfg = self.cfg
        snapshotter = Snapshotter(cfg.snap_dir)
        snap = snapshotter.load_newest_available(valid_snapshot_entries(cfg.wal_dir))
        walsnap = WalSnapshot(index=snap.metadata.index, term=snap.metadata.term) if snap else None
        wal = WAL.open(cfg.wal_dir, walsnap)
        metadata, hs, ents = wal.read_all()
        meta = json.loads(metadata)
        self.member_id = int(meta["member_id"])
        storage = MemoryStorage()
        if snap is not None and not snap.is_empty():
            storage.apply_snapshot(snap)
            self.progress.conf_state = snap.metadata.conf_state
            self.cluster = RaftCluster.from_json(snap.data)
            self.progress.snapshot_index = snap.metadata.index
            self.progress.applied_index = snap.metadata.index
            self.progress.applied_term = snap.metadata.term
        else:
            self.cluster = RaftCluster(int(meta["cluster_id"]))
        storage.set_hard_state(hs)
        storage.append(ents)
        self.progress.committed_index = hs.commit
        self.progress.term = hs.term
        if cfg.initial_cluster_state == "new" and cfg.initial_cluster:
            self.log.info("found existing data; ignoring --initial-cluster flags")
        node = RawNode(self._raft_config(storage, self.progress.applied_index))
        self.log.info(
            "restarted member",
            extra={
                "fields": {
                    "member-id": f"{self.member_id:x}",
                    "commit-index": hs.commit,
                    "consistent-index": self.kv.consistent_index if self.kv else 0,
                }
            },
        )
        return node, storage, wal, snapshotter

    def _wal_metadata(self, cluster_id: int) -> bytes:
        return json.dumps({"member_id": self.member_id, "cluster_id": cluster_id}).encode()

    def _sole_voter(self) -> bool:
        voters = [m for m in self.cluster.members.values() if not m.is_learner]
        if self.cluster.members:
            return len(voters) == 1 and voters[0].id == self.member_id
        return len(self.cfg.initial_cluster) == 1

    # ------------------------------------------------------------------ the write path

    async def process_internal_raft_request(
        self, req: raft_internal_pb2.InternalRaftRequest, auth: AuthInfo | None = None
    ) -> object:
        """processInternalRaftRequestOnce: propose `req` and wait for its applied result.

        `auth` (from `etcdpy.api.auth.auth_info`) goes into the header: every member
        checks the proposer's permissions against it when applying.
        """
        if self._stopped:
            raise errors.ErrStopped()
        if self.maintenance is not None:
            await self.maintenance.check_quota(req)  # etcd's quota check comes before everything else
        p = self.progress
        if p.committed_index > p.applied_index + MAX_GAP_BETWEEN_APPLY_AND_COMMIT:
            raise errors.ErrTooManyRequests()
        assert self._idgen is not None and self.raft is not None
        req_id = self._idgen.next()
        req.header.ID = req_id
        if auth is not None:
            req.header.username = auth.username
            req.header.auth_revision = auth.revision
        data = req.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise errors.ErrRequestTooLarge()
        fut = self.wait.register(req_id)
        start = time.monotonic()
        try:
            self.raft.propose(data)
        except ProposalDropped:
            self.metrics.proposals_failed += 1
            self.wait.trigger(req_id, None)
            raise errors.ErrNoLeader() if self.lead == NONE else errors.ErrTimeout()
        try:
            async with asyncio.timeout(self.cfg.request_timeout):
                result: ApplyResult | None = await fut
        except TimeoutError:
            self.metrics.proposals_failed += 1
            self.wait.trigger(req_id, None)
            raise self._timeout_error(start) from None
        except asyncio.CancelledError:
            self.wait.trigger(req_id, None)
            raise
        if result is None:
            raise errors.ErrStopped()
        if result.err is not None:
            raise result.err
        return result.resp

    def _open_auth_store(self, kv: KVStore) -> AuthStore:
        """The auth store on the KV backend; its changes are applied by the applier's auth hook."""
        store = AuthStore(
            kv.backend,
            SimpleTokenProvider(ttl=self.cfg.auth_token_ttl),
            bcrypt_cost=self.cfg.bcrypt_cost,
            logger=self.log,
        )
        assert self.applier is not None
        applier = self.applier
        applier.auth = AuthApplier(kv, store, lambda: applier.lessor)
        return store

    def _timeout_error(self, start: float) -> errors.EtcdError:
        """parseProposeCtxErr: blame a recent leader change when there was one."""
        if self.last_leader_change > start - 2 * self.cfg.election_ms / 1000.0 and self.leader_changes > 1:
            return errors.ErrTimeoutDueToLeaderFail()
        return errors.ErrTimeout()

    # ------------------------------------------------------------------ KV operations

    async def range(self, req: rpc_pb2.RangeRequest, auth: AuthInfo | None = None) -> rpc_pb2.RangeResponse:
        if not req.serializable:
            await self.linearizable_read_notify()
        assert self.applier is not None and self.auth_store is not None
        # etcd's doSerialize: check and read with no await in between, so no auth change slips in.
        self.auth_store.is_range_permitted(auth, req.key, req.range_end)
        resp = self.applier.range(req)
        self.fill_header(resp.header)
        return resp

    async def put(self, req: rpc_pb2.PutRequest, auth: AuthInfo | None = None) -> rpc_pb2.PutResponse:
        resp = await self.process_internal_raft_request(raft_internal_pb2.InternalRaftRequest(put=req), auth)
        self.fill_header(resp.header)
        return resp

    async def delete_range(
        self, req: rpc_pb2.DeleteRangeRequest, auth: AuthInfo | None = None
    ) -> rpc_pb2.DeleteRangeResponse:
        irr = raft_internal_pb2.InternalRaftRequest(delete_range=req)
        resp = await self.process_internal_raft_request(irr, auth)
        self.fill_header(resp.header)
        return resp

    async def txn(self, req: rpc_pb2.TxnRequest, auth: AuthInfo | None = None) -> rpc_pb2.TxnResponse:
        if is_txn_read_only(req):
            # etcd answers read-only transactions without the log, like a Range.
            if not is_txn_serializable(req):
                await self.linearizable_read_notify()
            assert self.applier is not None and self.auth_store is not None
            self.auth_store.check_txn_permitted(auth, req)
            resp = self.applier.txn_read_only(req)
        else:
            resp = await self.process_internal_raft_request(raft_internal_pb2.InternalRaftRequest(txn=req), auth)
        self.fill_header(resp.header)
        return resp

    async def compact(self, req: rpc_pb2.CompactionRequest, auth: AuthInfo | None = None) -> rpc_pb2.CompactionResponse:
        resp = await self.process_internal_raft_request(raft_internal_pb2.InternalRaftRequest(compaction=req), auth)
        self.fill_header(resp.header)
        return resp

    # ------------------------------------------------------------------ leases (etcd's v3_server.go Lease*)

    def _open_lessor(self, kv: KVStore) -> Lessor:
        """Recover the lessor before any entry is applied: leases from the lease bucket, keys from the live KVs."""
        lessor = Lessor(min_lease_ttl(self.cfg.election_ticks, self.cfg.heartbeat_ms))
        lessor.recover(kv.backend, kv)
        return lessor

    async def lease_grant(self, req: rpc_pb2.LeaseGrantRequest) -> rpc_pb2.LeaseGrantResponse:
        """The id is chosen here, before proposing, so that every member applies the same one."""
        assert self._idgen is not None
        while req.ID == 0:
            req.ID = self._idgen.next() & ((1 << 63) - 1)  # positive ids only, as etcd
        resp = await self.process_internal_raft_request(raft_internal_pb2.InternalRaftRequest(lease_grant=req))
        self.fill_header(resp.header)
        return resp

    async def lease_revoke(
        self, req: rpc_pb2.LeaseRevokeRequest, auth: AuthInfo | None = None
    ) -> rpc_pb2.LeaseRevokeResponse:
        """Revoking deletes the lease's keys, so the applier checks write permission on all of them."""
        irr = raft_internal_pb2.InternalRaftRequest(lease_revoke=req)
        resp = await self.process_internal_raft_request(irr, auth)
        self.fill_header(resp.header)
        return resp

    async def _propose_lease_revoke(self, lease_id: int) -> object:
        """What the expired-lease task proposes: a revoke through the log, as root (etcd's WithRoot)."""
        root = self.auth_store.root_info() if self.auth_store is not None else None
        return await self.lease_revoke(rpc_pb2.LeaseRevokeRequest(ID=lease_id), root)

    async def lease_renew_on_leader(self, lease_id: int) -> int:
        """A keep-alive: renewals bypass the log and belong to the leader's lessor (etcd's LeaseRenew).

        HOOK for the peer transport: etcd forwards a follower's renewal to the leader
        over the peer URLs (leasehttp). Until that exists, a member that is not the
        leader answers "no leader" / "not leader" (see _check_lease_leader).
        """
        assert self.lessor is not None
        return await renew_on_primary(self.lessor, lease_id, self._check_lease_leader, self.cfg.request_timeout)

    async def lease_ttl_on_leader(self, req: rpc_pb2.LeaseTimeToLiveRequest) -> rpc_pb2.LeaseTimeToLiveResponse:
        """LeaseTimeToLive from the leader's lessor, the only one that knows deadlines.

        HOOK for the peer transport, like lease_renew_on_leader. ErrLeaseNotFound
        for an unknown lease (the API answers it with TTL -1, as etcd).
        """
        assert self.lessor is not None
        self._check_lease_leader()
        lease = self.lessor.lookup(req.ID)
        if lease is None:
            raise errors.ErrLeaseNotFound()
        resp = rpc_pb2.LeaseTimeToLiveResponse(ID=req.ID, TTL=self.lessor.time_to_live(lease), grantedTTL=lease.ttl)
        if req.keys:
            resp.keys.extend(sorted(lease.keys))
        self.fill_header(resp.header)
        return resp

    def lease_leases(self) -> rpc_pb2.LeaseLeasesResponse:
        """Every lease this member knows (answered locally, as etcd), soonest deadline first."""
        assert self.lessor is not None
        resp = rpc_pb2.LeaseLeasesResponse(leases=[rpc_pb2.LeaseStatus(ID=le.id) for le in self.lessor.leases()])
        self.fill_header(resp.header)
        return resp

    def _check_lease_leader(self) -> None:
        if self._stopped:
            raise errors.ErrStopped()
        if self.lead == NONE:
            raise errors.ErrNoLeader()
        if not self.is_leader():
            raise errors.ErrNotLeader()

    # ------------------------------------------------------------------ headers

    def fill_header(self, header: rpc_pb2.ResponseHeader, with_revision: bool = True) -> None:
        """etcd's header: Cluster RPCs carry no revision; everything else the store revision."""
        header.cluster_id = self.cluster.cluster_id
        header.member_id = self.member_id
        header.raft_term = self.progress.term
        if with_revision and header.revision == 0 and self.kv is not None:
            header.revision = self.kv.current_rev

    # ------------------------------------------------------------------ linearizable reads

    async def linearizable_read_notify(self) -> None:
        """Wait until this member has applied everything committed before the call (ReadIndex)."""
        if self._stopped:
            raise errors.ErrStopped()
        if self._read_waiters is None:
            self._read_waiters = asyncio.get_running_loop().create_future()
            self._read_signal.set()
        await asyncio.shield(self._read_waiters)

    async def _linearizable_read_loop(self) -> None:
        """One ReadIndex round at a time serves every read that arrived before it started."""
        while not self._stopped:
            await self._read_signal.wait()
            self._read_signal.clear()
            waiters, self._read_waiters = self._read_waiters, None
            if waiters is None:
                continue
            try:
                index = await self._request_read_index()
                await self.applied_wait.wait(index)
            except errors.EtcdError as e:
                if not waiters.done():
                    waiters.set_exception(e)
                continue
            except asyncio.CancelledError:
                if not waiters.done():
                    waiters.set_exception(errors.ErrStopped())
                raise
            if not waiters.done():
                waiters.set_result(None)

    async def _request_read_index(self) -> int:
        assert self.raft is not None and self._idgen is not None
        deadline = time.monotonic() + self.cfg.request_timeout
        while True:
            ctx = self._idgen.next().to_bytes(8, "big")
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._read_states[ctx] = fut
            try:
                self.raft.read_index(ctx)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.ErrTimeout()
                try:
                    async with asyncio.timeout(min(READ_INDEX_RETRY_SECONDS, remaining)):
                        return await fut
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise errors.ErrTimeout() from None
            finally:
                self._read_states.pop(ctx, None)

    # ------------------------------------------------------------------ ReadyHandler

    def on_soft_state(self, ss: SoftState) -> None:
        if ss.lead != self.lead:
            if ss.lead != NONE:
                self.leader_changes += 1
            self.last_leader_change = time.monotonic()
            self.log.info(
                "leader changed",
                extra={"fields": {"leader": f"{ss.lead:x}", "state": StateType(ss.raft_state).name}},
            )
        self.lead = ss.lead
        if ss.lead == NONE:
            self._has_leader.clear()
        else:
            self._has_leader.set()
        if self.lessor is not None and not self.is_leader():
            self.lessor.demote()  # only the leader's lessor expires leases (etcd's updateLeadership)

    def on_read_states(self, states: list[ReadState]) -> None:
        for rs in states:
            fut = self._read_states.get(rs.request_ctx)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)

    def on_committed_index(self, index: int, term: int) -> None:
        self.progress.committed_index = max(self.progress.committed_index, index)
        self.progress.term = term

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Install a snapshot received from the leader (issue 3: needs the MVCC data to come with it)."""
        self.cluster = RaftCluster.from_json(snap.data)
        self.progress.conf_state = snap.metadata.conf_state
        self.progress.applied_index = snap.metadata.index
        self.progress.applied_term = snap.metadata.term
        self.progress.snapshot_index = snap.metadata.index
        self.applied_wait.trigger(snap.metadata.index)

    def apply_entries(self, entries: list[Entry]) -> None:
        p = self.progress
        for ent in entries:
            if ent.index <= p.applied_index:
                continue
            if ent.type == EntryType.CONF_CHANGE:
                self._apply_conf_change(ent)
            else:
                self._apply_normal(ent)
            p.applied_index = ent.index
            p.applied_term = ent.term
        self.applied_wait.trigger(p.applied_index)
        self._maybe_trigger_snapshot()

    def _apply_normal(self, ent: Entry) -> None:
        if not ent.data:
            # The empty entry a new leader appends to commit its term. Once it is applied, so is
            # everything of earlier terms: etcd promotes the leader's lessor here, extending every
            # lease by an election timeout (the new leader cannot know the old one's last renewals).
            if self.is_leader() and self.lessor is not None:
                self.lessor.promote(self.cfg.election_ticks * self.cfg.heartbeat_ms / 1000.0)
            return
        assert self.kv is not None and self.applier is not None
        req = raft_internal_pb2.InternalRaftRequest()
        req.ParseFromString(ent.data)
        if req.HasField("cluster_member_attr_set"):
            # Membership lives in raft snapshots + the log, not in MVCC, so it is always re-applied.
            attrs = req.cluster_member_attr_set
            self.cluster.update_attributes(
                attrs.member_ID, attrs.member_attributes.name, list(attrs.member_attributes.client_urls)
            )
            self._trigger(req, ApplyResult(resp=None, err=None, events=[]))
            return
        if ent.index <= self.kv.consistent_index:
            return  # applied before a restart: the store already has it
        t0 = time.perf_counter()
        result = self.applier.apply(req, ent.index, ent.term)  # one RocksDB write batch per entry
        self.metrics.backend_commit.observe(time.perf_counter() - t0)
        self._trigger(req, result)

    def _trigger(self, req: raft_internal_pb2.InternalRaftRequest, result: ApplyResult) -> None:
        req_id = req.header.ID or req.ID
        if self.wait.is_registered(req_id):
            self.wait.trigger(req_id, result)

    def _apply_conf_change(self, ent: Entry) -> None:
        assert self.raft is not None
        cc = unmarshal_conf_change(ent.data)
        if cc.type in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
            m = Member.from_json(cc.context)
            if cc.type == ConfChangeType.ADD_LEARNER_NODE:
                m.is_learner = True
            existing = self.cluster.get(m.id)
            if existing is not None and existing.is_learner and cc.type == ConfChangeType.ADD_NODE:
                self.cluster.promote(m.id)
            else:
                self.cluster.add(m)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            self.cluster.remove(cc.node_id)
        elif cc.type == ConfChangeType.UPDATE_NODE:
            m = Member.from_json(cc.context)
            self.cluster.update_peer_urls(m.id, m.peer_urls)
        if self.cluster.cluster_id == 0:
            self.cluster.cluster_id = compute_cluster_id(self.cluster.member_ids())
        self.progress.conf_state = self.raft.node.apply_conf_change(cc)
        if self.wait.is_registered(cc.id):
            self.wait.trigger(cc.id, ApplyResult(resp=None, err=None, events=[]))

    def _maybe_trigger_snapshot(self) -> None:
        p = self.progress
        if self._snapshotting or p.applied_index - p.snapshot_index <= self.cfg.snapshot_count:
            return
        assert self.raft is not None and self.kv is not None
        self._snapshotting = True
        index = p.applied_index
        conf_state = ConfState(list(p.conf_state.voters), list(p.conf_state.learners))
        data = self.cluster.to_json()

        async def snapshot() -> None:
            try:
                assert self.raft is not None and self.kv is not None
                await self.raft.create_snapshot(
                    index, conf_state, data, self.cfg.snapshot_catchup_entries, self._sync_backend
                )
                self.progress.snapshot_index = index
            except Exception:
                self.log.exception("snapshot failed")
            finally:
                self._snapshotting = False

        # Runs inside the raft loop's pass, serialised with WAL writes by the single disk thread.
        self._tasks.append(asyncio.create_task(snapshot(), name="snapshot"))

    def _sync_backend(self) -> None:
        """Make every applied write durable in RocksDB (flushes memtables; blocking, for a worker thread)."""
        assert self.kv is not None
        self.kv.backend.db.flush(True)

    # ------------------------------------------------------------------ status and shutdown

    def is_leader(self) -> bool:
        return self.lead == self.member_id

    def alarms(self) -> list[rpc_pb2.AlarmMember]:
        """etcd's Alarms(): the active alarms, answered locally (Status errors, HTTP /health)."""
        return self.maintenance.active_alarms() if self.maintenance is not None else []

    def status(self) -> rpc_pb2.StatusResponse:
        from etcdpy import ETCD_VERSION

        assert self.kv is not None
        resp = rpc_pb2.StatusResponse(
            version=ETCD_VERSION,
            dbSize=self.kv.size(),
            leader=self.lead,
            raftIndex=self.progress.committed_index,
            raftTerm=self.progress.term,
            raftAppliedIndex=self.progress.applied_index,
            dbSizeInUse=min(self.kv.size_in_use(), self.kv.size()),
            isLearner=bool(self.cluster.get(self.member_id) and self.cluster.members[self.member_id].is_learner),
        )
        self.fill_header(resp.header)
        return resp

    async def stop(self) -> None:
        """Stop accepting work, let the raft loop finish its pass, then close storage."""
        if self._stopped:
            return
        self._stopped = True
        if self.raft is not None:
            self.raft.stop()
        for t in self._tasks:
            if t.get_name() in ("ticker", "read-index", "publish", "campaign", "lease-revoker", "compactor"):
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.wait.fail_all(errors.ErrStopped())
        self.applied_wait.fail_all(errors.ErrStopped())
        if self._read_waiters is not None and not self._read_waiters.done():
            self._read_waiters.set_exception(errors.ErrStopped())
        if self.raft is not None:
            self.raft.close()
        if self.watchable is not None:  # watch: stop its loops before the store closes
            await self.watchable.stop()
        if self.kv is not None:
            self.kv.close()
        self.done.set()


def is_txn_serializable(req: rpc_pb2.TxnRequest) -> bool:
    for op in list(req.success) + list(req.failure):
        kind = op.WhichOneof("request")
        if kind == "request_range" and not op.request_range.serializable:
            return False
        if kind == "request_txn" and not is_txn_serializable(op.request_txn):
            return False
    return True
