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
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from etcdpy import errors
from etcdpy.auth import AuthInfo, AuthStore, SimpleTokenProvider
from etcdpy.config import MAX_GAP_BETWEEN_APPLY_AND_COMMIT, ServerConfig
from etcdpy.lease import ExpiredLeaseRevoker, Lessor, min_lease_ttl, renew_on_primary
from etcdpy.metrics import ServerMetrics
from etcdpy.mvcc import COMPACTION_SLEEP_SECONDS, Backend, CompactionJob, KVStore
from etcdpy.pb import raft_internal_pb2, rpc_pb2
from etcdpy.raft import Config as RaftConfig
from etcdpy.raft import Peer, RawNode, Ready
from etcdpy.raft.errors import ProposalDropped
from etcdpy.raft.storage import MemoryStorage
from etcdpy.raft.types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    ReadState,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
    unmarshal_conf_change,
)
from etcdpy.rafthttp import (
    ClusterMembers,
    PeerUnreachable,
    SnapshotSource,
    Transport,
    fetch_members,
    snapshot_db_path,
)
from etcdpy.server.apply import Applier, ApplyResult, is_txn_read_only, range_passes_values_through
from etcdpy.server.apply_auth import AuthApplier
from etcdpy.server.force_new_cluster import force_new_cluster
from etcdpy.server.heap import HeapFreezer
from etcdpy.server.idutil import IdGenerator
from etcdpy.server.maintenance import MaintenanceOps
from etcdpy.server.membership import (
    Member,
    RaftCluster,
    compute_cluster_id,
    members_from_initial_cluster,
)
from etcdpy.server import rawrequest
from etcdpy.server.raftnode import RaftNode
from etcdpy.server.wait import Wait, WaitTime
from etcdpy.snap import Snapshotter
from etcdpy.tlsutil import TLSConfigError, TLSInfo
from etcdpy.wal import WAL, WalError, WalSnapshot, valid_snapshot_entries
from etcdpy.watch import WatchableStore

READ_INDEX_RETRY_SECONDS = 0.5
APPLY_SLICE_SECONDS = 0.02
"""The apply task yields to the loop at least this often while applying a long batch."""
_DROPPED = ApplyResult(resp=None, err=None, events=[])
"""Handed to a proposer whose buffered proposal the raft loop could not step (no leader any more)."""

T = TypeVar("T")


class StartupError(Exception):
    """A configuration or data-dir problem that stops the server from starting (one clear line)."""


@dataclass
class Progress:
    """etcdProgress: what has been applied and snapshotted, as the apply step sees it."""

    applied_index: int = 0
    applied_term: int = 0
    snapshot_index: int = 0
    committed_index: int = 0
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
        self._header = rawrequest.HeaderEncoder()
        self._tasks: list[asyncio.Task[None]] = []
        self._read_waiters: list[asyncio.Future[None]] | None = None
        self._read_signal = asyncio.Event()
        self._read_states: dict[bytes, asyncio.Future[int]] = {}
        self._snapshotting = False
        self._snapshot_failed_at = 0
        self._stopped = False
        self.leader_changes = 0
        self.last_leader_change = time.monotonic()
        self.done = asyncio.Event()
        self.transport: Transport | None = None
        self.exit_code = 0
        self._received_snapshot_dbs: dict[int, str] = {}
        self._compaction_wake = asyncio.Event()
        self._compaction_waiters: list[tuple[CompactionJob, asyncio.Future[None]]] = []
        self.metrics = ServerMetrics()  # hot counters; the rest is read at scrape time
        self.heap = HeapFreezer()  # keeps full GC walks of the MVCC index off the loop
        self.ready = asyncio.Event()
        self._has_leader = asyncio.Event()

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Open or bootstrap the member, then start the raft, ticker and read loops."""
        cfg = self.cfg
        try:
            # Before the data dir is touched, as etcd: a bad peer TLS setup must not leave a half member.
            cfg.peer_tls.check(cfg.listen_peer_urls + cfg.initial_advertise_peer_urls, "peer")
        except TLSConfigError as e:
            raise StartupError(str(e)) from e
        try:
            os.makedirs(cfg.snap_dir, exist_ok=True)
            os.makedirs(os.path.dirname(cfg.wal_dir), exist_ok=True)
        except OSError as e:
            raise StartupError(f"cannot access data directory {cfg.data_dir!r}: {e.strerror}") from e
        if not os.access(cfg.data_dir, os.W_OK):
            raise StartupError(f"cannot access data directory {cfg.data_dir!r}: permission denied")
        self.kv = self._open_kv()
        self.kv.on_backend_commit = self.metrics.backend_commit.observe
        self._install_pending_snapshot_db()
        # watch: notified by the KV store of every committed write txn; its sync/victim loops start here.
        self.watchable = WatchableStore(self.kv, logger=self.log)
        self.watchable.start()
        self.lessor = self._open_lessor(self.kv)
        self.applier = Applier(self.kv, self.lessor)
        self.maintenance = MaintenanceOps(self)
        self.maintenance.attach()  # alarm gate + quota in the applier before any entry is applied
        self.auth_store = self._open_auth_store(self.kv)
        peers: dict[int, list[str]]
        if WAL.exists(cfg.wal_dir):
            try:
                node, storage, wal, snapshotter = self._restart()
            except WalError as e:
                raise StartupError(f"cannot read the WAL in {cfg.wal_dir!r} (written by etcd, or damaged): {e}") from e
            if not cfg.force_new_cluster:  # the others are being dropped: their cluster id does not matter
                await self._check_cluster_id_with_peers()
            if cfg.initial_corrupt_check:
                await self._initial_corrupt_check()
            peers = {m.id: m.peer_urls for m in self.cluster.members.values()}
        elif cfg.initial_cluster_state == "existing":
            node, storage, wal, snapshotter, peers = await self._join_existing()
        else:
            await self._check_not_bootstrapped()
            node, storage, wal, snapshotter = self._bootstrap()
            peers = {m.id: m.peer_urls for m in members_from_initial_cluster(cfg.initial_cluster, cfg.initial_cluster_token)}
        self._idgen = IdGenerator(self.member_id)
        self.transport = self._make_transport()
        self.raft = RaftNode(
            node,
            storage,
            wal,
            snapshotter,
            self.transport,
            tick_seconds=cfg.heartbeat_ms / 1000.0,
            logger=self.log,
        )
        try:
            await self.transport.start()
        except Exception as e:
            wal.close()
            raise StartupError(f"cannot listen for peers on {','.join(cfg.listen_peer_urls)}: {e}") from e
        for pid, urls in peers.items():
            if pid != self.member_id:
                self.transport.add_peer(pid, urls)
        self.raft.on_persist = self.metrics.wal_fsync.observe
        raft_task = asyncio.create_task(self.raft.run(self), name="raft")
        raft_task.add_done_callback(self._on_raft_loop_exit)
        apply_task = asyncio.create_task(self.raft.run_apply(self), name="apply")
        apply_task.add_done_callback(self._on_raft_loop_exit)
        self._tasks = [
            raft_task,
            apply_task,
            asyncio.create_task(self.raft.run_ticker(), name="ticker"),
            asyncio.create_task(self._linearizable_read_loop(), name="read-index"),
            asyncio.create_task(self._compaction_loop(), name="mvcc-compaction"),
        ]
        if self.kv.next_compaction() is not None:
            self._compaction_wake.set()
        self.heap.freeze()  # the index built at start-up is long-lived
        self._tasks.append(asyncio.create_task(self._campaign_if_sole_voter(), name="campaign"))
        self._tasks.append(asyncio.create_task(self._publish(), name="publish"))
        assert self.lessor is not None
        revoker = ExpiredLeaseRevoker(self.lessor, self._propose_lease_revoke, self.log)
        self._tasks.append(asyncio.create_task(revoker.run(), name="lease-revoker"))
        self._tasks.extend(self.maintenance.tasks())  # the auto-compactor (leader-only), if configured

    async def _initial_corrupt_check(self) -> None:
        """--experimental-initial-corrupt-check: refuse to start when our data disagrees with a peer's.

        etcd's rule (CheckInitialHashKV): only a member that already has data is checked,
        before it serves anyone; each peer hashes its store at our revision, and a different
        hash with the same compact revision means one of us is corrupt. Peers that cannot
        answer (down, compacted past us, behind us) are logged and do not stop the start.
        """
        from etcdpy.server.maintenance import MemberHash, find_corrupt_members

        assert self.kv is not None and self.maintenance is not None
        fields = {"local-member-id": f"{self.member_id:x}"}
        self.log.info("starting initial corruption check", extra={"fields": fields})
        h, rev, compact_rev = self.kv.hash_kv(0)
        # The membership is only rebuilt as the log replays, after this check: ask the peers for it.
        urls = [u for m in self.cluster.members.values() if m.id != self.member_id for u in m.peer_urls]
        remote = await _probe_members(urls or self._other_peer_urls(), tls=self.cfg.peer_tls)
        members = [(m.id, list(m.client_urls)) for m in remote.members] if remote is not None else None
        peers, problems = await self.maintenance.fetch_peer_hashes(rev, members)
        for member_id, why in problems:
            self.log.warning("cannot fetch hash from remote peer",
                             extra={"fields": {**fields, "remote-peer-id": f"{member_id:x}", "error": why}})
        mismatched = find_corrupt_members(MemberHash(self.member_id, rev, compact_rev, h), peers)
        for member_id in mismatched:
            self.log.error("found different hash values from remote peer",
                           extra={"fields": {**fields, "remote-peer-id": f"{member_id:x}", "local-member-revision": rev,
                                             "local-member-compact-revision": compact_rev, "local-member-hash": h}})
        if mismatched:
            raise StartupError(f"{self.member_id:x} found data inconsistency with peers")
        self.log.info("initial corruption checking passed; no corruption", extra={"fields": fields})

    def _open_kv(self) -> KVStore:
        """Open the backend; a data dir of etcd's or one in use becomes one line, not a traceback.

        Why check the file type first: etcd's backend is one bbolt file at member/snap/db where
        etcdpy keeps a RocksDB directory, and RocksDB's own complaint ("File exists") says nothing.
        """
        cfg = self.cfg
        if os.path.isfile(cfg.backend_path):
            raise StartupError(
                f"data directory {cfg.data_dir!r} was written by etcd (member/snap/db is a bbolt file), which "
                "etcdpy cannot run on; move the data with 'etcdctl snapshot save' and 'etcdpy snapshot restore'"
            )
        try:
            return KVStore(cfg.backend_path)
        except Exception as e:  # noqa: BLE001 - rocksdict raises bare Exception; any failure here ends the start
            text = str(e)
            if "lock" in text.lower():
                raise StartupError(
                    f"data directory {cfg.data_dir!r} is in use by another process (its backend is locked)"
                ) from None
            raise StartupError(f"cannot open the backend {cfg.backend_path!r}: {text}") from None

    def _on_raft_loop_exit(self, task: asyncio.Task[None]) -> None:
        """The raft loop and the apply task only end when the server stops; anything else is fatal (etcd panics).

        Serving on without it would leave clients waiting for entries that are never applied.
        """
        if task.cancelled() or self._stopped:
            return
        exc = task.exception()
        self.log.critical(
            "raft loop failed; stopping the member",
            exc_info=(type(exc), exc, exc.__traceback__) if exc else None,
        )
        self.exit_code = 1
        self._spawn(self.stop(), "fatal-stop")

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

    # ------------------------------------------------------------------ peers and joining

    def _make_transport(self) -> Transport:
        return Transport(
            self.member_id,
            self.cfg.listen_peer_urls,
            cluster_id=self.cluster.cluster_id,
            on_message=self._on_peer_message,
            report_unreachable=self._report_unreachable,
            report_snapshot=self._report_snapshot,
            on_snapshot=self._on_snapshot_received,
            snapshot_source=self._snapshot_source,
            snapshot_dir=self.cfg.snap_dir,
            on_removed=self._on_removed_by_peer,
            is_removed=lambda mid: mid in self.cluster.removed,
            members_provider=lambda: (self.cluster.cluster_id, list(self.cluster.members.values())),
            on_lease_renew=self._lease_renew_local,
            on_lease_time_to_live=self._lease_ttl_for_peer,
            on_member_promote=self._promote_for_peer,
            on_rtt=self.metrics.observe_peer_rtt,
            logger=self.log,
            tls=self.cfg.peer_tls,
        )

    def _other_peer_urls(self) -> list[str]:
        mine = set(self.cfg.initial_advertise_peer_urls)
        return [u for name, urls in self.cfg.initial_cluster.items() for u in urls if u not in mine]

    async def _join_existing(
        self,
    ) -> tuple[RawNode, MemoryStorage, WAL, Snapshotter, dict[int, list[str]]]:
        """--initial-cluster-state existing: learn the cluster from a running member, then wait for the log.

        The membership itself is rebuilt by applying the log (or a snapshot) as on every member,
        so only the transport learns the peers up front (etcd does the same).
        """
        cfg = self.cfg
        try:
            remote = await fetch_members(self._other_peer_urls(), timeout=5.0, tls=self.cfg.peer_tls)
        except PeerUnreachable as e:
            raise StartupError(f"cannot join the existing cluster: {e}") from e
        mine = sorted(cfg.initial_advertise_peer_urls)
        me = next((m for m in remote.members if sorted(m.peer_urls) == mine), None)
        if me is None:
            raise StartupError(
                f"member with peer URLs {','.join(mine)} has not been added to the cluster (run member add first)"
            )
        self.member_id = me.id
        self.cluster = RaftCluster(remote.cluster_id)
        wal = WAL.create(cfg.wal_dir, self._wal_metadata(remote.cluster_id))
        storage = MemoryStorage()
        node = RawNode(self._raft_config(storage, 0))
        self.log.info(
            "joining existing cluster",
            extra={"fields": {"member-id": f"{me.id:x}", "cluster-id": f"{remote.cluster_id:x}"}},
        )
        return node, storage, wal, Snapshotter(cfg.snap_dir), {m.id: m.peer_urls for m in remote.members}

    async def _check_not_bootstrapped(self) -> None:
        """Refuse to bootstrap a member that a running cluster already knows as started.

        A wiped member restarted with `new` would otherwise start a second history under the
        same ids (etcd: "member ... has already been bootstrapped").
        """
        urls = self._other_peer_urls()
        if not urls:
            return
        remote = await _probe_members(urls, tls=self.cfg.peer_tls)
        if remote is None:
            return  # nobody up yet: a normal fresh start of every member
        mine = sorted(self.cfg.initial_advertise_peer_urls)
        members = members_from_initial_cluster(self.cfg.initial_cluster, self.cfg.initial_cluster_token)
        expected = compute_cluster_id([m.id for m in members])
        if remote.cluster_id != expected:
            raise StartupError(
                f"cluster ID mismatch: the peers belong to cluster {remote.cluster_id:x}, "
                f"--initial-cluster describes cluster {expected:x}"
            )
        for m in remote.members:
            if sorted(m.peer_urls) == mine and m.client_urls:
                raise StartupError(f"member {m.id:x} has already been bootstrapped")

    async def _check_cluster_id_with_peers(self) -> None:
        """A data dir of another cluster must not join these peers (never fork a cluster)."""
        urls = [u for m in self.cluster.members.values() if m.id != self.member_id for u in m.peer_urls]
        urls = urls or self._other_peer_urls()
        if not urls:
            return
        remote = await _probe_members(urls, tls=self.cfg.peer_tls)
        if remote is None:
            return
        if remote.cluster_id != self.cluster.cluster_id:
            raise StartupError(
                f"cluster ID mismatch: local member has cluster {self.cluster.cluster_id:x}, "
                f"the peers have cluster {remote.cluster_id:x}"
            )

    def _on_peer_message(self, m: Message) -> None:
        if self.raft is not None and not self._stopped:
            self.raft.step(m)

    def _report_unreachable(self, member_id: int) -> None:
        if self.raft is not None:
            self.raft.node.report_unreachable(member_id)

    def _report_snapshot(self, member_id: int, failed: bool) -> None:
        if self.raft is not None:
            self.raft.node.report_snapshot(member_id, failed)
            self.raft.wake()

    def _on_removed_by_peer(self, by_peer: int) -> None:
        self.log.warning(
            "the member has been permanently removed from the cluster",
            extra={"fields": {"local-member-id": f"{self.member_id:x}", "reported-by": f"{by_peer:x}"}},
        )
        if not self._stopped:
            self._spawn(self._stop_removed(), "removed")

    async def _snapshot_source(self, m: Message) -> SnapshotSource:
        """etcd's merged snapshot: the MVCC store as applied right now, described at the applied index.

        The store is newer than raft's own snapshot, so the message is relabelled with the
        applied index/term and the current ConfState; the follower installs exactly that state.
        The memtables are flushed on a worker thread first: the checkpoint (taken on the loop,
        together with the metadata, so the two match) then has little left to flush, which it
        would do holding the GIL.
        """
        assert self.kv is not None
        await self.kv.backend.run_in_worker(lambda: self.kv.backend.db.flush(True))  # type: ignore[union-attr]
        p = self.progress
        m.snapshot = Snapshot(
            data=self.cluster.to_json(),
            metadata=SnapshotMetadata(
                conf_state=ConfState(list(p.conf_state.voters), list(p.conf_state.learners)),
                index=p.applied_index,
                term=p.applied_term,
            ),
        )
        self.log.info(
            "sending merged snapshot",
            extra={"fields": {"to": f"{m.to:x}", "snapshot-index": p.applied_index}},
        )
        return self.kv.open_snapshot()

    def _on_snapshot_received(self, m: Message, db_path: str) -> None:
        """The MVCC file is on disk under the snapshot's index; raft decides whether to install it."""
        assert m.snapshot is not None
        self._received_snapshot_dbs[m.snapshot.metadata.index] = db_path
        self._on_peer_message(m)

    def _install_pending_snapshot_db(self) -> None:
        """After a crash between saving a received snapshot and installing its store, finish the install."""
        assert self.kv is not None
        snap = Snapshotter(self.cfg.snap_dir).load()
        snap_index = 0
        if snap is not None and not snap.is_empty():
            snap_index = snap.metadata.index
        if snap_index and self.kv.consistent_index < snap_index:
            path = snapshot_db_path(self.cfg.snap_dir, snap_index)
            if os.path.exists(path):
                self.log.info("installing saved snapshot database", extra={"fields": {"index": snap_index}})
                self.kv.restore_from(path)
        self._remove_installed_snapshot_dbs(max(snap_index, self.kv.consistent_index))

    def _remove_installed_snapshot_dbs(self, upto: int) -> None:
        """Delete received `<index>.snap.db` files up to raft index `upto` (installed, or overtaken).

        Each is a full copy of the database; etcd consumes the file by renaming it into
        place. `upto` is an index the store is known to hold (an installed snapshot's, the
        applied index); the store's own consistent index can be lower, since entries that do
        not touch MVCC (membership) do not move it. A newer file may still be installed: it stays.
        """
        applied = upto
        try:
            names = os.listdir(self.cfg.snap_dir)
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(".snap.db"):
                continue
            try:
                index = int(name[: -len(".snap.db")], 16)
            except ValueError:
                continue
            if index <= applied:
                try:
                    os.unlink(os.path.join(self.cfg.snap_dir, name))
                except FileNotFoundError:
                    pass
                self._received_snapshot_dbs.pop(index, None)

    async def _lease_ttl_for_peer(self, lease_id: int, keys: bool) -> rpc_pb2.LeaseTimeToLiveResponse:
        return await self._lease_ttl_local(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys))

    def _raft_config(self, storage: MemoryStorage, applied: int) -> RaftConfig:
        """The raft core's configuration for this member.

        The core draws its randomized election timeouts from the `rand` it is given (it has no
        clock or entropy of its own, so tests can replay it); a member must give it its own
        entropy. With the core's default (one fixed seed) every member drew the same timeouts,
        so followers that lost the same leader at the same heartbeat campaigned together, split
        the vote, and did it again the next round: an election after a leader crash took 9 s
        instead of about one election timeout (seen in `test_kill_leader_under_load`).
        """
        return RaftConfig(
            id=self.member_id,
            storage=storage,
            election_tick=self.cfg.election_ticks,
            heartbeat_tick=1,
            applied=applied,
            check_quorum=True,
            pre_vote=True,
            rand=random.Random(),  # seeded from os.urandom
        )

    def _bootstrap(self) -> tuple[RawNode, MemoryStorage, WAL, Snapshotter]:
        cfg = self.cfg
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
        storage = MemoryStorage()
        node = RawNode(self._raft_config(storage, 0))
        node.bootstrap([Peer(id=m.id, context=m.to_json()) for m in members])
        # The bootstrap entries go into the WAL as it is created, not with the first Ready: a
        # member stopped in between used to restart from a WAL without them, knowing no voter,
        # and never campaigned. Raft counts them persisted, not applied: the first Ready still
        # hands the committed conf changes over to be applied.
        first = node.ready()
        wal = WAL.create(
            cfg.wal_dir, self._wal_metadata(cluster_id), initial=(first.hard_state or HardState(), first.entries)
        )
        storage.append(first.entries)
        node.advance(Ready(hard_state=first.hard_state, entries=first.entries))
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
        if cfg.force_new_cluster:
            hs, ents = self._force_new_cluster(wal, snap, hs, ents)
        storage.set_hard_state(hs)
        storage.append(ents)
        self.progress.committed_index = hs.commit
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

    def _force_new_cluster(
        self, wal: WAL, snap: Snapshot | None, hs: HardState, ents: list[Entry]
    ) -> tuple[HardState, list[Entry]]:
        """Drop uncommitted entries and commit the removal of every other member (etcd's semantics)."""
        me = self.cluster.get(self.member_id) or Member(
            self.member_id, self.cfg.name, list(self.cfg.initial_advertise_peer_urls)
        )
        has_snap = snap is not None and not snap.is_empty()
        forced = force_new_cluster(
            self.member_id, me.to_json(), snap.metadata.index if snap is not None and has_snap else 0,
            snap.metadata.conf_state if snap is not None and has_snap else None, hs, ents,
        )
        wal.save(forced.hard_state, forced.appended)
        self.log.warning(
            "forcing restart member as a one-member cluster",
            extra={"fields": {"local-member-id": f"{self.member_id:x}", "commit-index": forced.hard_state.commit,
                              "removed-member-ids": [f"{i:x}" for i in forced.removed]}},
        )
        return forced.hard_state, forced.entries

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
        return (await self._process(req, auth)).resp

    def _process(
        self, req: raft_internal_pb2.InternalRaftRequest, auth: AuthInfo | None = None, answer: bool = False
    ) -> Awaitable[Any]:
        """`process_internal_raft_request` returning the whole apply result (Compact needs physc),
        or with `answer` the response itself, its header filled (what a KV write answers).

        A plain function, not a coroutine: the checks run (and raise) when it is called, and
        it returns the `Proposal` itself (already proposed) unless the quota has to be checked
        first. Every write passes here, and each coroutine layer on the way costs its creation
        and a resume per request; a caller that has no coroutine (the native gRPC server's
        write calls) watches the Proposal with a callback instead.
        """
        if self._stopped:
            raise errors.ErrStopped()
        m = self.maintenance
        if m is not None and not m.quota_allows(req):
            return self._process_after_quota_check(m, req, auth, answer)
        return self._propose(req, auth, answer)

    def _process_wire(self, tag: bytes, wire: bytes, auth: AuthInfo | None) -> Proposal | None:
        """`_process` of a KV write from its request's own encoding (`wire`, which the caller
        has decoded and checked), logged as field `tag` of the entry without re-encoding it
        (`etcdpy.server.rawrequest`); answers as `_process(..., answer=True)` does.

        None when the quota has to look at the request itself (close to the quota): the
        caller then goes the way that builds the request.
        """
        if self._stopped:
            raise errors.ErrStopped()
        m = self.maintenance
        if m is not None and not m.quota_fits_any():
            return None
        self._check_apply_gap()
        assert self._idgen is not None
        req_id = self._idgen.next()
        if auth is None:
            header = self._header.encode(req_id)
        else:
            header = rawrequest.header_with_caller(req_id, auth.username, auth.revision)
        return self._propose_encoded(req_id, rawrequest.frame(tag, wire, header), answer=True)

    async def _process_after_quota_check(
        self, m: MaintenanceOps, req: raft_internal_pb2.InternalRaftRequest, auth: AuthInfo | None, answer: bool
    ) -> Any:
        """The write that may not fit: etcd's quota check comes before everything else (raises NOSPACE)."""
        await m.check_quota(req)
        return await self._propose(req, auth, answer)

    def _propose(
        self, req: raft_internal_pb2.InternalRaftRequest, auth: AuthInfo | None, answer: bool = False
    ) -> Proposal:
        """Stamp the request's id (and caller), encode it, register and propose it."""
        self._check_apply_gap()
        assert self._idgen is not None
        req_id = self._idgen.next()
        req.header.ID = req_id
        if auth is not None:
            req.header.username = auth.username
            req.header.auth_revision = auth.revision
        return self._propose_encoded(req_id, req.SerializeToString(), answer)

    def _check_apply_gap(self) -> None:
        """etcd's first check of a proposal: refuse while the apply step is too far behind the log."""
        p = self.progress
        if p.committed_index > p.applied_index + MAX_GAP_BETWEEN_APPLY_AND_COMMIT:
            raise errors.ErrTooManyRequests()

    def _propose_encoded(self, req_id: int, data: bytes, answer: bool) -> Proposal:
        """Propose the encoded entry of request `req_id` unless it is over --max-request-bytes."""
        if len(data) > self.cfg.max_request_bytes:
            raise errors.ErrRequestTooLarge()
        return self._register_and_propose(req_id, data, answer)

    def _register_and_propose(self, req_id: int, data: bytes, answer: bool = False) -> Proposal:
        """Register, propose, and give back the proposal's answer-to-be (see `Proposal`)."""
        assert self.raft is not None
        fut = self.wait.register(req_id, self.cfg.request_timeout)
        start = time.monotonic()

        def dropped() -> None:
            """The raft loop refused the batch this proposal was in (see RaftNode.propose)."""
            self.metrics.proposals_failed += 1
            self.wait.trigger(req_id, _DROPPED)

        try:
            self.raft.propose(data, dropped)
        except ProposalDropped:
            self._abandon(req_id)
            raise self._refused() from None
        return Proposal(self, req_id, fut, start, answer)

    def _abandon(self, req_id: int, failed: bool = True) -> None:
        """Stop waiting for a proposal; a failed one counts in proposals_failed_total (a cancelled caller does not)."""
        if failed:
            self.metrics.proposals_failed += 1
        self.wait.trigger(req_id, None)

    def _refused(self) -> errors.EtcdError:
        """What a proposal the raft loop refused answers: no leader, or a timeout while there is one (etcd)."""
        return errors.ErrNoLeader() if self.lead == NONE else errors.ErrTimeout()

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
        resp: rpc_pb2.RangeResponse = await self._range(req, auth, wire=False)
        return resp

    def range_wire(self, req: rpc_pb2.RangeRequest, auth: AuthInfo | None = None) -> Coroutine[Any, Any, bytes]:
        """The Range answer already serialized: a big one is encoded on the worker thread that built it.

        Encoding 100k KeyValues takes the loop thread 0.1 s or more; the gRPC service sends
        these bytes as they are (etcd's Range, same wire format). Returns `_range`'s coroutine
        itself rather than awaiting it in one more frame (this is on every Range's path).
        """
        return self._range(req, auth, wire=True)  # type: ignore[no-any-return]

    async def _range(self, req: rpc_pb2.RangeRequest, auth: AuthInfo | None, wire: bool) -> Any:
        if not req.serializable:
            await self.linearizable_read_notify()
        assert self.applier is not None and self.auth_store is not None and self.kv is not None
        # etcd's doSerialize: check and read with no await in between, so no auth change slips in.
        self.auth_store.is_range_permitted(auth, req.key, req.range_end)
        header = rpc_pb2.ResponseHeader()
        self.fill_header(header, with_revision=False)
        backend = self.kv.backend
        passthrough = wire and range_passes_values_through(req)

        def finalize(resp: rpc_pb2.RangeResponse) -> Any:
            h = resp.header
            h.cluster_id, h.member_id, h.raft_term = header.cluster_id, header.member_id, header.raft_term
            return resp.SerializeToString() if wire else resp

        def answer(run_in_worker: Any) -> Any:
            """The encoded answer from stored bytes where it can be (bytes when small, no
            coroutine), else an awaitable of it or of the decoded one."""
            if passthrough:
                plan = self.applier.range_wire_plan(req, header)
                return plan if isinstance(plan, bytes) else run_in_worker(plan)
            return self.applier.range_async(req, run_in_worker, finalize)

        if not req.range_end and not req.count_only and backend.open_for_loop_reads():
            # One key: planned, loaded and answered right here without an await (the small
            # path), so the DB cannot close meanwhile and needs no hold (were it ever not
            # small, run_in_worker takes the hold itself).
            result = answer(backend.run_in_worker)
            return result if isinstance(result, bytes) else await result
        async with backend.hold():  # the DB stays open from the plan to the end of the load
            result = answer(backend.in_thread)
            return result if isinstance(result, bytes) else await result

    def put(
        self, req: rpc_pb2.PutRequest, auth: AuthInfo | None = None, wire: bytes | None = None
    ) -> Awaitable[rpc_pb2.PutResponse]:
        """A Put through the log; awaiting it gives the answer (a plain function, see `_process`).

        `wire` is `req`'s encoding as received, when the caller has it: the entry is then
        made from it (`_process_wire`). The same holds for `delete_range` and `txn`.
        """
        if wire is not None and (p := self._process_wire(rawrequest.PUT, wire, auth)) is not None:
            return p
        return self._process(raft_internal_pb2.InternalRaftRequest(put=req), auth, answer=True)

    def delete_range(
        self, req: rpc_pb2.DeleteRangeRequest, auth: AuthInfo | None = None, wire: bytes | None = None
    ) -> Awaitable[rpc_pb2.DeleteRangeResponse]:
        """A DeleteRange through the log; awaiting it gives the answer."""
        if wire is not None and (p := self._process_wire(rawrequest.DELETE_RANGE, wire, auth)) is not None:
            return p
        return self._process(raft_internal_pb2.InternalRaftRequest(delete_range=req), auth, answer=True)

    def txn(
        self,
        req: rpc_pb2.TxnRequest,
        auth: AuthInfo | None = None,
        read_only: bool | None = None,
        wire: bytes | None = None,
    ) -> Awaitable[rpc_pb2.TxnResponse]:
        """A Txn; awaiting it gives the answer. `read_only` is etcd's isTxnReadonly of `req` when the
        caller already knows it (`etcdpy.api.validate.check_txn_request` answers it).

        etcd answers a read-only txn without the log, like a Range; a writing one goes through
        the log, and its awaitable is the proposal's own (no coroutine of its own here).
        """
        if is_txn_read_only(req) if read_only is None else read_only:
            return self._txn_read_only(req, auth)
        if wire is not None and (p := self._process_wire(rawrequest.TXN, wire, auth)) is not None:
            return p
        return self._process(raft_internal_pb2.InternalRaftRequest(txn=req), auth, answer=True)

    async def _txn_read_only(self, req: rpc_pb2.TxnRequest, auth: AuthInfo | None) -> rpc_pb2.TxnResponse:
        if not is_txn_serializable(req):
            await self.linearizable_read_notify()
        assert self.applier is not None and self.auth_store is not None
        self.auth_store.check_txn_permitted(auth, req)
        resp = self.applier.txn_read_only(req)
        self.fill_header(resp.header)
        return resp

    async def compact(self, req: rpc_pb2.CompactionRequest, auth: AuthInfo | None = None) -> rpc_pb2.CompactionResponse:
        """Compact through the log; with `physical`, answer once the disk work is done (etcd's physc)."""
        result = await self._process(raft_internal_pb2.InternalRaftRequest(compaction=req), auth)
        if req.physical and isinstance(result.physc, asyncio.Future):
            await asyncio.shield(result.physc)
        resp = result.resp
        self.fill_header(resp.header)
        return resp

    # ------------------------------------------------------------------ physical compaction

    def _schedule_physical_compaction(self, job: CompactionJob) -> asyncio.Future[None]:
        """Hand a compaction's disk work to the compaction task; the future resolves when it is done."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._compaction_waiters.append((job, fut))
        self._compaction_wake.set()
        return fut

    async def _compaction_loop(self) -> None:
        """Run scheduled physical compactions in etcd's shape: 1000 revisions per batch, 10 ms apart.

        Each batch is one short step on the loop; the pause lets the raft loop, applies and
        reads run between batches however big the store is.
        """
        while not self._stopped:
            await self._compaction_wake.wait()
            self._compaction_wake.clear()
            while self.kv is not None and not self._stopped:
                job = self.kv.next_compaction()
                if job is None:
                    break
                job.step()
                self._resolve_compaction_waiters()
                await asyncio.sleep(COMPACTION_SLEEP_SECONDS)
            self._resolve_compaction_waiters()

    def _resolve_compaction_waiters(self, everything: bool = False) -> None:
        """Wake the Compact callers whose job is done (all of them when the store was replaced)."""
        still = []
        for job, fut in self._compaction_waiters:
            if job.done or everything:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((job, fut))
        self._compaction_waiters = still

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
        """A keep-alive from a client: renewed by the leader's lessor, forwarded there from followers."""
        try:
            if not self.is_leader():
                return await self._forward_to_leader(
                    lambda leader: self.transport.lease_renew(  # type: ignore[union-attr]
                        leader, lease_id, timeout=self.cfg.request_timeout
                    )
                )
        except _LocalNow:
            pass
        return await self._lease_renew_local(lease_id)

    async def lease_ttl_on_leader(self, req: rpc_pb2.LeaseTimeToLiveRequest) -> rpc_pb2.LeaseTimeToLiveResponse:
        """LeaseTimeToLive from a client: answered by the leader, the only member that knows deadlines."""
        try:
            if not self.is_leader():
                resp = await self._forward_to_leader(
                    lambda leader: self.transport.lease_time_to_live(  # type: ignore[union-attr]
                        leader, req.ID, req.keys, timeout=self.cfg.request_timeout
                    )
                )
                self.fill_header(resp.header)
                return resp
        except _LocalNow:
            pass
        return await self._lease_ttl_local(req)

    async def _forward_to_leader(self, call: Callable[[int], Awaitable[T]]) -> T:
        """Call the leader over the peer transport, following leader changes until the request timeout."""
        deadline = time.monotonic() + self.cfg.request_timeout
        while True:
            if self._stopped:
                raise errors.ErrStopped()
            if self.is_leader():
                raise _LocalNow()
            leader = self.lead
            if leader != NONE and self.transport is not None:
                try:
                    return await call(leader)
                except PeerUnreachable:
                    pass
            if time.monotonic() >= deadline:
                raise errors.ErrNoLeader() if self.lead == NONE else errors.ErrTimeout()
            await asyncio.sleep(self.cfg.heartbeat_ms / 1000.0)

    async def _lease_renew_local(self, lease_id: int) -> int:
        """A keep-alive: renewals bypass the log and belong to the leader's lessor (etcd's LeaseRenew).

        HOOK for the peer transport: etcd forwards a follower's renewal to the leader
        over the peer URLs (leasehttp). Until that exists, a member that is not the
        leader answers "no leader" / "not leader" (see _check_lease_leader).
        """
        assert self.lessor is not None
        return await renew_on_primary(self.lessor, lease_id, self._check_lease_leader, self.cfg.request_timeout)

    async def _lease_ttl_local(self, req: rpc_pb2.LeaseTimeToLiveRequest) -> rpc_pb2.LeaseTimeToLiveResponse:
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
        """etcd's header: Cluster RPCs carry no revision; everything else the store revision.

        The term is the term of the last applied entry, as etcd's ``EtcdServer.Term`` (set
        by ``apply``), not raft's current term: right after an election both a header and
        ``Status.raftTerm`` still show the old term until the new leader's first entry applies.
        """
        header.cluster_id = self.cluster.cluster_id
        header.member_id = self.member_id
        header.raft_term = self.progress.applied_term
        if with_revision and header.revision == 0 and self.kv is not None:
            header.revision = self.kv.current_rev

    # ------------------------------------------------------------------ linearizable reads

    def linearizable_read_notify(self) -> asyncio.Future[None]:
        """Wait until this member has applied everything committed before the call (ReadIndex).

        Each caller gets its own future (a cancelled caller cancels only its own) and the
        next ReadIndex round settles all of them. A plain function returning the future,
        not a coroutine: a Range awaits this on every call.
        """
        if self._stopped:
            raise errors.ErrStopped()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._read_waiters
        if waiters is None:
            self._read_waiters = [fut]
            self._read_signal.set()
        else:
            waiters.append(fut)
        return fut

    async def _linearizable_read_loop(self) -> None:
        """One ReadIndex round at a time serves every read that arrived before it started."""
        while not self._stopped:
            await self._read_signal.wait()
            self._read_signal.clear()
            waiters, self._read_waiters = self._read_waiters, None
            if not waiters:
                continue
            try:
                index = await self._request_read_index()
                await self.applied_wait.wait(index)
            except errors.EtcdError as e:
                _settle(waiters, e)
                continue
            except asyncio.CancelledError:
                _settle(waiters, errors.ErrStopped())
                raise
            _settle(waiters, None)

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

    def on_committed_index(self, index: int) -> None:
        self.progress.committed_index = max(self.progress.committed_index, index)

    async def apply_snapshot(self, snap: Snapshot) -> None:
        """Install a snapshot received from the leader: its MVCC store, then everything derived from it.

        Runs on the apply task, never in the raft loop: loading the file into a new RocksDB
        and rebuilding the index happen on a worker thread while the old store keeps
        serving; only the swap itself (after in-flight worker-thread users finished) is
        on the loop. The received file is deleted once installed (etcd renames it into place).
        """
        path = self._received_snapshot_dbs.pop(snap.metadata.index, None)
        if path is None:
            path = snapshot_db_path(self.cfg.snap_dir, snap.metadata.index)
        assert self.kv is not None
        replaced: str | None = None
        if os.path.exists(path) and self.kv.consistent_index < snap.metadata.index:
            leased, replaced = await self.kv.restore_from_async(path, collect_leased=True)
            # From the swap on, nothing awaits until progress describes the new store.
            self._resolve_compaction_waiters(everything=True)
            self._after_store_restored(leased)
            self.heap.freeze()  # a new index: out of the full collections' way
        old_members = set(self.cluster.members)
        self.cluster = RaftCluster.from_json(snap.data)
        if self.transport is not None:
            for mid in old_members - set(self.cluster.members):
                self.transport.remove_peer(mid)
            for m in self.cluster.members.values():
                if m.id != self.member_id:
                    self.transport.update_peer(m.id, m.peer_urls) if m.id in old_members else self.transport.add_peer(
                        m.id, m.peer_urls
                    )
        self.progress.conf_state = snap.metadata.conf_state
        self.progress.applied_index = snap.metadata.index
        self.progress.applied_term = snap.metadata.term
        self.progress.snapshot_index = snap.metadata.index
        self.applied_wait.trigger(snap.metadata.index)
        await asyncio.to_thread(Backend.remove_replaced, replaced)
        await asyncio.to_thread(self._remove_installed_snapshot_dbs, snap.metadata.index)

    async def apply_entries(self, entries: list[Entry]) -> None:
        """Apply committed entries in order, yielding to the loop every APPLY_SLICE_SECONDS.

        A follower catching up gets thousands of entries at once; yielding between them
        keeps reads, watches and the raft loop going meanwhile (nothing else applies, so
        the order is kept). The KV writes of each slice go to RocksDB as one batch
        (`KVStore.defer_writes`), flushed before the slice yields or wakes anyone, as
        etcd's backend commits its batch transaction periodically rather than per entry.
        """
        p = self.progress
        kv = self.kv
        assert kv is not None
        deadline = time.perf_counter() + APPLY_SLICE_SECONDS
        kv.defer_writes()
        try:
            for ent in entries:
                if ent.index <= p.applied_index:
                    continue
                if ent.type == EntryType.CONF_CHANGE:
                    kv.flush_deferred()
                    self._apply_conf_change(ent)
                    kv.flush_deferred()
                else:
                    self._apply_normal(ent)
                p.applied_index = ent.index
                p.applied_term = ent.term
                if time.perf_counter() >= deadline:
                    kv.flush_deferred()
                    self.applied_wait.trigger(p.applied_index)
                    await asyncio.sleep(0)
                    deadline = time.perf_counter() + APPLY_SLICE_SECONDS
        finally:
            kv.end_deferred()
        self.applied_wait.trigger(p.applied_index)
        self.heap.applied(len(entries))
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
        if req.HasField("txn") or req.HasField("put") or req.HasField("delete_range"):
            # `_apply_request` for the usual entry: a KV write is never a member attribute
            # update and never schedules a physical compaction.
            if ent.index > self.kv.consistent_index:
                self._trigger(req, self.applier.apply(req, ent.index, ent.term))
        else:
            # Only KV requests share the slice's batch: the others (leases, auth, alarms,
            # compaction, members) read and write buckets outside the store's staged view,
            # so they see everything before them written and leave nothing staged.
            self.kv.flush_deferred()
            self._apply_request(ent, req)
            self.kv.flush_deferred()

    def _apply_request(self, ent: Entry, req: raft_internal_pb2.InternalRaftRequest) -> None:
        assert self.kv is not None and self.applier is not None
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
        result = self.applier.apply(req, ent.index, ent.term)
        if isinstance(result.physc, CompactionJob):
            result.physc = self._schedule_physical_compaction(result.physc)
        self._trigger(req, result)

    def _trigger(self, req: raft_internal_pb2.InternalRaftRequest, result: ApplyResult) -> None:
        self.wait.trigger(req.header.ID or req.ID, result)  # a no-op unless this member's caller waits

    def _apply_conf_change(self, ent: Entry) -> None:
        """Apply a committed membership change, or refuse it identically on every member.

        A refused change is applied to Raft as a no-op (node id NONE) so its pending-change
        slot is released; the proposer gets the error through the wait registry.
        """
        assert self.raft is not None
        cc = unmarshal_conf_change(ent.data)
        err: errors.EtcdError | None = None
        try:
            self.cluster.validate_conf_change(cc.type, cc.node_id, cc.context)
        except errors.EtcdError as e:
            err = e
            cc = ConfChange(type=cc.type, node_id=NONE, context=cc.context, id=cc.id)
        if err is None:
            self._apply_membership(cc)
        self.progress.conf_state = self.raft.node.apply_conf_change(cc)
        if self.wait.is_registered(cc.id):
            self.wait.trigger(cc.id, ApplyResult(resp=None, err=err, events=[]))
        if err is None and cc.type == ConfChangeType.REMOVE_NODE and cc.node_id == self.member_id:
            self.log.warning(
                "the member has been permanently removed from the cluster",
                extra={"fields": {"local-member-id": f"{self.member_id:x}"}},
            )
            self._spawn(self._stop_removed(), "removed")

    def _apply_membership(self, cc: ConfChange) -> None:
        if cc.type in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
            m = Member.from_json(cc.context)
            existing = self.cluster.get(cc.node_id)
            if existing is not None and existing.is_learner and cc.type == ConfChangeType.ADD_NODE:
                self.cluster.promote(cc.node_id)
            else:
                m.is_learner = cc.type == ConfChangeType.ADD_LEARNER_NODE
                self.cluster.add(m)
                self.on_member_added(m)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            self.cluster.remove(cc.node_id)
            self.on_member_removed(cc.node_id)
        elif cc.type == ConfChangeType.UPDATE_NODE:
            m = Member.from_json(cc.context)
            self.cluster.update_peer_urls(cc.node_id, m.peer_urls)
            self.on_member_updated(self.cluster.members[cc.node_id])
        if self.cluster.cluster_id == 0:
            self.cluster.cluster_id = compute_cluster_id(self.cluster.member_ids())

    def on_member_added(self, m: Member) -> None:
        if self.transport is not None and m.id != self.member_id and m.id not in self.transport.peer_ids():
            self.transport.add_peer(m.id, m.peer_urls)

    def on_member_removed(self, member_id: int) -> None:
        if self.transport is not None and member_id != self.member_id:
            self.transport.remove_peer(member_id)

    def on_member_updated(self, m: Member) -> None:
        if self.transport is not None and m.id != self.member_id:
            self.transport.update_peer(m.id, m.peer_urls)

    def _after_store_restored(self, leased: list[tuple[bytes, int]] | None = None) -> None:
        """Everything built from the MVCC store is rebuilt after a snapshot replaced it.

        `leased` (key, lease) of every live key, collected off the loop with the restore.
        """
        assert self.kv is not None
        if self.lessor is not None:
            self.lessor.recover(self.kv.backend, self.kv, leased)
        if self.watchable is not None:
            self.watchable.restore()
        if self.auth_store is not None:
            self.auth_store.recover()

    async def _transfer_leadership_on_stop(self) -> None:
        """A leader hands over before it stops, so a rolling restart costs no election timeout.

        The most caught-up connected voter is chosen; if leadership has not moved within two
        election timeouts the member stops anyway (etcd does the same, then logs a warning).
        """
        if self.raft is None or not self.is_leader() or self.transport is None:
            return
        st = self.raft.node.status()
        candidates = [
            (pr.match, mid)
            for mid, pr in st.progress.items()
            if mid != self.member_id and not pr.is_learner and self.transport.active_since(mid) is not None
        ]
        if not candidates:
            return
        target = max(candidates)[1]
        self.log.info("transferring leadership before stopping", extra={"fields": {"transferee": f"{target:x}"}})
        self.raft.node.transfer_leader(target)
        self.raft.wake()
        deadline = time.monotonic() + 2 * self.cfg.election_ms / 1000.0
        while time.monotonic() < deadline and self.lead not in (target,):
            await asyncio.sleep(self.cfg.heartbeat_ms / 1000.0)
        if self.lead != target:
            self.log.warning("leadership transfer timed out; stopping anyway")

    async def _stop_removed(self) -> None:
        """A removed member stops itself (after this apply pass completes)."""
        await asyncio.sleep(0)
        await self.stop()

    # -- helpers for etcdpy.server.reconfig --------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._stopped

    def next_request_id(self) -> int:
        assert self._idgen is not None
        return self._idgen.next()

    def timeout_error(self, start: float) -> errors.EtcdError:
        return self._timeout_error(start)

    def transport_active_since(self, member_id: int) -> float | None:
        """Monotonic time since which the peer has been connected, None when it is not."""
        return self.transport.active_since(member_id) if self.transport is not None else None

    async def forward_promote_to_leader(self, member_id: int) -> list[Member]:
        """Followers cannot judge a learner's progress; the leader promotes (etcd forwards over HTTP)."""
        from etcdpy.server import reconfig

        try:
            await self._forward_to_leader(
                lambda leader: self.transport.member_promote(  # type: ignore[union-attr]
                    leader, member_id, timeout=self.cfg.request_timeout
                )
            )
        except _LocalNow:
            return await reconfig.promote_member(self, member_id)
        # The change is committed; wait until this member has applied it too.
        await self.linearizable_read_notify()
        return sorted(self.cluster.members.values(), key=lambda m: m.id)

    async def _promote_for_peer(self, member_id: int) -> None:
        from etcdpy.server import reconfig

        if not self.is_leader():
            raise errors.ErrNotLeader()
        await reconfig.promote_member(self, member_id)

    def _maybe_trigger_snapshot(self) -> None:
        p = self.progress
        since = max(p.snapshot_index, self._snapshot_failed_at)
        if self._snapshotting or p.applied_index - since <= self.cfg.snapshot_count:
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
                await asyncio.to_thread(self._remove_installed_snapshot_dbs, index)
            except Exception:
                # Not retried on every apply pass: the next try comes after another
                # snapshot-count entries, as if this one had been taken.
                self._snapshot_failed_at = index
                self.log.exception("snapshot failed")
            finally:
                self._snapshotting = False

        # Runs inside the raft loop's pass, serialised with WAL writes by the single disk thread.
        self._spawn(snapshot(), "snapshot")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background task that `stop` waits for, dropped from the list once it is done."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)
        return task

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _sync_backend(self) -> None:
        """Make every applied write durable in RocksDB (flushes memtables; blocking, for a worker thread)."""
        assert self.kv is not None
        self.kv.backend.db.flush(True)

    # ------------------------------------------------------------------ status and shutdown

    def is_learner(self) -> bool:
        m = self.cluster.members.get(self.member_id)
        return m is not None and m.is_learner

    def has_leader(self) -> bool:
        return self.lead != NONE

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
            raftTerm=self.progress.applied_term,
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
        await self._transfer_leadership_on_stop()
        self._stopped = True
        if self.raft is not None:
            self.raft.stop()
        for t in self._tasks:
            if t.get_name() in (
                "ticker", "read-index", "publish", "campaign", "lease-revoker", "compactor", "mvcc-compaction"
            ):
                t.cancel()
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        if self.transport is not None:
            await self.transport.stop()
        self.wait.fail_all(errors.ErrStopped())
        self.applied_wait.fail_all(errors.ErrStopped())
        if self._read_waiters is not None:
            _settle(self._read_waiters, errors.ErrStopped())
            self._read_waiters = None
        if self.raft is not None:
            self.raft.close()
        if self.watchable is not None:  # watch: stop its loops before the store closes
            await self.watchable.stop()
        self._resolve_compaction_waiters(everything=True)
        if self.kv is not None:
            async with self.kv.backend.exclusive():  # a defrag, hash or snapshot may still be running
                self.kv.close()
        self.done.set()


class Proposal:
    """A proposed request's answer-to-be: awaited by a coroutine, or watched with a callback.

    Why not just a coroutine: every write of a busy member waits on one of these, and the
    native gRPC server answers a write without an asyncio task when the handler hands it a
    Proposal (a callback on the registry's future when it resolves, then `outcome`); a task
    per call and the coroutine frames it resumes through cost more loop CPU than the rest of
    the hand-off. Awaiting it gives the same answer or error as `outcome`, and cancelling the
    awaiting task (or `abandon`) withdraws the registration as etcd's proposer does when its
    context ends. Registered and proposed by `EtcdServer._register_and_propose` before it exists.
    """

    __slots__ = ("_server", "_req_id", "_fut", "_start", "_answer")

    def __init__(self, server: EtcdServer, req_id: int, fut: asyncio.Future[Any], start: float, answer: bool) -> None:
        self._server = server
        self._req_id = req_id
        self._fut = fut
        self._start = start
        self._answer = answer

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            yield from self._fut  # fails with TimeoutError after request_timeout (the registry's timer)
        except asyncio.CancelledError:
            self.abandon()
            raise
        except TimeoutError:
            pass  # `outcome` turns it into etcd's error
        return self.outcome()

    def add_done_callback(self, callback: Callable[[Proposal], None]) -> None:
        """Call `callback(self)` on the loop once the outcome is known (or the proposal abandoned)."""
        self._fut.add_done_callback(lambda _: callback(self))

    @property
    def future(self) -> asyncio.Future[Any]:
        """The registry's future: done once the outcome is known (to wait for it without an answer)."""
        return self._fut

    def abandon(self) -> None:
        """The caller is gone: drop the registration (not counted as a failed proposal). The
        entry may still be applied; nobody hears of it."""
        self._server._abandon(self._req_id, failed=False)

    def outcome(self) -> Any:
        """Once done: the ApplyResult, or with `answer` its response with the header filled;
        raises the request's error (etcd's, for a timeout, a dropped proposal or a stop)."""
        server = self._server
        try:
            result: ApplyResult | None = self._fut.result()
        except TimeoutError:
            server._abandon(self._req_id)
            raise server._timeout_error(self._start) from None
        if result is _DROPPED:
            raise server._refused()
        if result is None:
            raise errors.ErrStopped()
        if result.err is not None:
            raise result.err
        if self._answer:
            resp = result.resp
            server.fill_header(resp.header)
            return resp
        return result


class _LocalNow(Exception):
    """This member became the leader while forwarding: the caller should answer locally."""


async def _probe_members(urls: list[str], timeout: float = 1.0, tls: TLSInfo | None = None) -> ClusterMembers | None:
    """Ask every peer at once; the first answer wins, None when nobody answers within `timeout`."""

    async def one(url: str) -> ClusterMembers:
        return await fetch_members([url], timeout=timeout, tls=tls)

    tasks = [asyncio.create_task(one(u)) for u in urls]
    try:
        for fut in asyncio.as_completed(tasks):
            try:
                return await fut
            except PeerUnreachable:
                continue
        return None
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _settle(waiters: list[asyncio.Future[None]], error: Exception | None) -> None:
    """End every read waiter still waiting (a cancelled one is done already)."""
    for fut in waiters:
        if not fut.done():
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)


def is_txn_serializable(req: rpc_pb2.TxnRequest) -> bool:
    for op in list(req.success) + list(req.failure):
        kind = op.WhichOneof("request")
        if kind == "request_range" and not op.request_range.serializable:
            return False
        if kind == "request_txn" and not is_txn_serializable(op.request_txn):
            return False
    return True
