"""The server side of etcd's Maintenance service: alarms, quota, snapshots, defrag, leader moves, auto-compaction.

`MaintenanceOps` is attached to an `EtcdServer` at start (`attach`) and owns the
alarm store, the backend quota and the auto-compactor. The server calls three
things on it: `check_quota` before proposing a request (etcd's quotaKVServer /
quotaLeaseServer), `tasks()` for its background tasks, and nothing else; the
gRPC service (`etcdpy.api.maintenance`) uses the rest.

Blocking work — writing a snapshot of the backend, defragmenting it — runs on
worker threads so the event loop keeps serving while it happens. RocksDB is
thread-safe for that: a checkpoint or a full compaction can run while the loop
thread applies writes.

Corruption checks (the CORRUPT alarm): etcd compares HashKV across members — at
start (`--experimental-initial-corrupt-check`) and periodically on the leader
(`--experimental-corrupt-check-time`) — and raises CORRUPT for a member whose
hash differs from the others' at the same revision and compact revision. The
comparison is `find_corrupt_members`; `check_corruption` runs it over what
`peer_hashes` returns (the peers' HashKV, asked on their client URLs). etcdpy runs
the start-up check (`EtcdServer._initial_corrupt_check`); the periodic one is not
scheduled, and an operator (or a test) can still raise CORRUPT through the Alarm RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from etcdpy import errors
from etcdpy.mvcc.etcd_db import ClusterState, MemberRecord, convert_checkpoint
from etcdpy.pb import raft_internal_pb2, rpc_pb2
from etcdpy.raft.types import NONE
from etcdpy.server.alarm import CORRUPT, NOSPACE, AlarmApplier, AlarmStore, alarm_string
from etcdpy.server.compactor import (
    Periodic,
    RetentionError,
    RevisionCompactor,
    new_compactor,
)
from etcdpy.server.quota import BackendQuota, is_charged

if TYPE_CHECKING:
    from etcdpy.mvcc import KVStore
    from etcdpy.server.etcdserver import EtcdServer

SNAPSHOT_SEND_BUFFER = 32 * 1024
"""etcd's snapshotSendBufferSize: bytes per Maintenance.Snapshot message."""

SNAPSHOT_ALIGN = 512
"""etcdctl recognises a saved snapshot's sha256 trailer by size % 512 == 32; the bbolt file sent
before the checksum is whole pages, so its size is a multiple of this."""

_READ_AHEAD = 32 * SNAPSHOT_SEND_BUFFER  # bytes read per worker-thread hop while streaming


@dataclass(frozen=True)
class MemberHash:
    """One member's HashKV answer, as the corruption check compares them."""

    member_id: int
    revision: int
    compact_revision: int
    hash: int


def find_corrupt_members(local: MemberHash, peers: list[MemberHash]) -> list[int]:
    """Members whose hash disagrees with ours at the same revision and compact revision.

    etcd's rule: only hashes taken at the same revision with the same compaction
    are comparable; a peer at another revision tells nothing. When a mismatch is
    found etcd blames the peer (the leader runs the check and trusts itself).
    """
    return [
        p.member_id
        for p in peers
        if p.member_id != local.member_id
        and p.revision == local.revision
        and p.compact_revision == local.compact_revision
        and p.hash != local.hash
    ]


class MaintenanceOps:
    def __init__(self, server: EtcdServer) -> None:
        self.server = server
        self.log = server.log
        self.alarms: AlarmStore | None = None
        self.quota: BackendQuota | None = None
        self._compactor: Periodic | RevisionCompactor | None = None

    # ------------------------------------------------------------------ wiring

    def attach(self) -> None:
        """Load the alarms and hook the alarm gate into the applier (before any entry is applied).

        Bad auto-compaction flags stop the start-up with etcd's message (the CLI checks them first).
        """
        from etcdpy.server.etcdserver import StartupError

        s = self.server
        assert s.kv is not None and s.applier is not None
        self.alarms = AlarmStore(s.kv)
        self.quota = BackendQuota(s.kv.size, s.cfg.quota_backend_bytes, max_request_bytes=s.cfg.max_request_bytes)
        s.applier.alarm = AlarmApplier(s.kv, self.alarms, self.quota, s.applier.apply, self.log)
        try:
            self._compactor = new_compactor(
                s.cfg.auto_compaction_mode,
                s.cfg.auto_compaction_retention,
                lambda: s.kv.current_rev if s.kv is not None else 0,
                s.compact,
                s.is_leader,
                self.log,
            )
        except RetentionError as e:
            raise StartupError(str(e)) from None
        for m in self.alarms.get():
            self.log.warning("alarm is active", extra={"fields": {"alarm": alarm_string(m).strip()}})

    def tasks(self) -> list[asyncio.Task[None]]:
        """Background tasks to start with the server (and cancel when it stops): the auto-compactor."""
        if self._compactor is None:
            return []
        return [asyncio.create_task(self._compactor.run(), name="compactor")]

    # ------------------------------------------------------------------ quota and alarms

    def quota_allows(self, req: raft_internal_pb2.InternalRaftRequest) -> bool:
        """The common case without a coroutine: True when `req` certainly fits the quota."""
        return self.quota is None or not is_charged(req) or self.quota.available(req)

    def quota_fits_any(self) -> bool:
        """True when any write at all certainly fits the quota (`quota_allows` without a request)."""
        return self.quota is None or self.quota.fits_any()

    async def check_quota(self, req: raft_internal_pb2.InternalRaftRequest) -> None:
        """etcd's quotaAlarmer.check: refuse a write that does not fit, raising NOSPACE through the log."""
        if self.quota is None or not is_charged(req) or self.quota.available(req):
            return
        ar = rpc_pb2.AlarmRequest(
            action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.server.member_id, alarm=NOSPACE
        )
        try:
            await self.alarm(ar)
        except errors.EtcdError as e:  # like etcd: the write is refused whether or not the alarm got in
            self.log.warning("failed to raise NOSPACE alarm", extra={"fields": {"error": e.message}})
        raise errors.ErrGRPCNoSpace()

    async def alarm(self, ar: rpc_pb2.AlarmRequest) -> rpc_pb2.AlarmResponse:
        """Every alarm request, GET included, goes through the log (as in etcd)."""
        resp = await self.server.process_internal_raft_request(raft_internal_pb2.InternalRaftRequest(alarm=ar))
        assert isinstance(resp, rpc_pb2.AlarmResponse)
        self.server.fill_header(resp.header)
        return resp

    def active_alarms(self) -> list[rpc_pb2.AlarmMember]:
        """What is raised now (for Status, HTTP /health and tests); answered locally."""
        if self.alarms is None or self.server.kv is None:
            return []
        self.alarms.sync(self.server.kv)
        return self.alarms.get()

    def status_errors(self) -> list[str]:
        """StatusResponse.errors: no leader, then every active alarm in Go's text format."""
        out = [errors.ErrNoLeader.message] if self.server.lead == NONE else []
        out.extend(alarm_string(m) for m in self.active_alarms())
        return out

    async def check_corruption(self) -> list[int]:
        """Compare our HashKV with the peers' and raise CORRUPT for each mismatching member."""
        kv = self.server.kv
        assert kv is not None
        h, rev, compact_rev = await kv.hash_kv_async(0)
        local = MemberHash(self.server.member_id, rev, compact_rev, h)
        corrupt = find_corrupt_members(local, await self.peer_hashes(rev))
        for member_id in corrupt:
            self.log.error("found data inconsistency with peer", extra={"fields": {"remote-peer-id": f"{member_id:x}"}})
            await self.alarm(rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=member_id, alarm=CORRUPT))
        return corrupt

    async def peer_hashes(self, revision: int) -> list[MemberHash]:
        """The other members' HashKV at `revision`; members that cannot answer are logged and left out."""
        hashes, problems = await self.fetch_peer_hashes(revision)
        for member_id, why in problems:
            self.log.warning("cannot fetch hash from remote peer",
                             extra={"fields": {"remote-peer-id": f"{member_id:x}", "error": why}})
        return hashes

    async def fetch_peer_hashes(
        self, revision: int, members: list[tuple[int, list[str]]] | None = None, timeout: float = 5.0
    ) -> tuple[list[MemberHash], list[tuple[int, str]]]:
        """Ask every other member's client URL for Maintenance.HashKV at `revision`, all at once.

        Why client URLs: etcdpy's peer transport carries raft messages only, and HashKV is a
        client RPC every member serves (etcd asks over its peer HTTP handler instead). An
        https client URL is dialled with the peer certificates. A member under auth refuses
        HashKV without a token: it then counts as unreachable, as in etcd a peer that fails to answer.
        `members` ((id, client URLs) of the others) defaults to this member's view of the cluster.
        """
        import grpc

        from etcdpy.pb import rpc_pb2_grpc

        cfg = self.server.cfg
        if members is None:
            members = [(m.id, list(m.client_urls)) for m in self.server.cluster.members.values()]
        others = [(mid, urls) for mid, urls in members if mid != self.server.member_id]

        async def one(member_id: int, urls: list[str]) -> MemberHash:
            if not urls:
                raise ConnectionError("member has not published its client URLs")
            url = urls[0]
            target = url.split("://", 1)[-1]
            if url.startswith("https://"):
                channel = grpc.aio.secure_channel(target, cfg.peer_tls.channel_credentials())
            else:
                channel = grpc.aio.insecure_channel(target)
            async with channel:
                stub = rpc_pb2_grpc.MaintenanceStub(channel)
                resp = await stub.HashKV(rpc_pb2.HashKVRequest(revision=revision), timeout=timeout)
            return MemberHash(member_id, revision, resp.compact_revision, resp.hash)

        results = await asyncio.gather(*(one(mid, urls) for mid, urls in others), return_exceptions=True)
        hashes: list[MemberHash] = []
        problems: list[tuple[int, str]] = []
        for (member_id, _), result in zip(others, results, strict=True):
            if isinstance(result, MemberHash):
                hashes.append(result)
            elif isinstance(result, grpc.aio.AioRpcError):
                problems.append((member_id, result.details() or str(result.code())))
            else:
                problems.append((member_id, str(result)))
        return hashes, problems

    # ------------------------------------------------------------------ defrag, snapshot

    async def defragment(self) -> None:
        """Rewrite the backend without its dead data, on a worker thread; the size is measured again after."""
        kv = self.server.kv
        assert kv is not None
        self.log.info("starting defragment")
        await kv.backend.run_in_worker(kv.defrag)
        if self.quota is not None:
            self.quota.invalidate()
        self.log.info("finished defragment")

    async def snapshot(self) -> SnapshotSender:
        """Freeze the backend now and spool it to an anonymous temp file (worker thread).

        The whole size must be known before the first message (remaining_bytes), and
        the stream format is produced on the fly, hence the spool file. It lives in the
        snap directory, is unlinked from the start, and disappears with the sender.
        """
        kv = self.server.kv
        assert kv is not None
        state = self.cluster_state()
        return await kv.backend.run_in_worker(SnapshotSender.prepare, kv, self.server.cfg.snap_dir, state)

    def cluster_state(self) -> ClusterState:
        """What etcd's backend holds about the membership, taken now (on the loop thread)."""
        s = self.server
        members = [
            MemberRecord(m.id, m.name, list(m.peer_urls), list(m.client_urls), m.is_learner)
            for _, m in sorted(s.cluster.members.items())
        ]
        cs = s.progress.conf_state
        voters = list(cs.voters) or [m.id for m in members if not m.is_learner]
        learners = list(cs.learners) if cs.voters else [m.id for m in members if m.is_learner]
        return ClusterState(members, sorted(s.cluster.removed), voters, learners)

    # ------------------------------------------------------------------ leadership

    async def move_leader(self, target: int) -> None:
        """etcd's MoveLeader: only the leader may hand leadership to a voting member, then waits for it."""
        s = self.server
        if s.lead != s.member_id or s.raft is None:
            raise errors.ErrNotLeader()
        m = s.cluster.get(target)
        if m is None or m.is_learner:
            raise errors.ErrBadLeaderTransferee()
        self.log.info("leadership transfer starting", extra={"fields": {
            "local-member-id": f"{s.member_id:x}", "current-leader-member-id": f"{s.lead:x}",
            "transferee-member-id": f"{target:x}"}})
        s.raft.node.transfer_leader(target)
        s.raft.wake()
        interval = s.cfg.heartbeat_ms / 1000.0
        try:
            async with asyncio.timeout(s.cfg.request_timeout):
                while s.lead != target:
                    await asyncio.sleep(interval)
        except TimeoutError:
            raise errors.ErrTimeoutLeaderTransfer() from None
        self.log.info("leadership transfer finished", extra={"fields": {"new-leader-member-id": f"{target:x}"}})


def _convert_in_child(checkpoint: str, out: str, state: ClusterState | None) -> int:
    """Run the conversion in a child Python (same interpreter and etcdpy); return the file size."""
    import etcdpy

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(etcdpy.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, "-m", "etcdpy.mvcc.etcd_db", checkpoint, out],
        input=state.to_json() if state is not None else b"", capture_output=True, env=env, check=False,
    )
    if r.returncode != 0:
        last = (r.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise errors.EtcdError(f"etcdserver: snapshot conversion failed: {last}")
    n = int(r.stdout.decode().strip() or 0)
    if n <= 0 or n != os.path.getsize(out) or n % SNAPSHOT_ALIGN:
        raise errors.EtcdError("etcdserver: snapshot conversion produced a bad file")
    return n


class SnapshotSender:
    """One Maintenance.Snapshot stream: spooled snapshot bytes, then the sha256 of all of them."""

    def __init__(self, f: IO[bytes], total: int) -> None:
        self._f: IO[bytes] | None = f
        self.total = total

    @classmethod
    def prepare(cls, kv: KVStore, spool_dir: str, state: ClusterState | None = None) -> SnapshotSender:
        """Blocking: checkpoint the backend and convert it to etcd's bbolt database in a spool file.

        The checkpoint is one consistent point of the store (every applied batch or
        none of it), taken here in a moment; the conversion reads the checkpoint, not
        the live store, in a child process (`etcdpy.mvcc.etcd_db`), so neither the
        loop nor the GIL is held while a big database is converted. A bbolt file is
        whole pages, so its size is a multiple of SNAPSHOT_ALIGN, as etcdctl expects.
        The spool file is unlinked once open and disappears with the sender.
        """
        stream = kv.open_snapshot()
        fd, spool = tempfile.mkstemp(prefix=".snapshot-", suffix=".db", dir=spool_dir if os.path.isdir(spool_dir) else None)
        os.close(fd)
        try:
            if os.environ.get("ETCDPY_SNAPSHOT_CONVERT") == "thread":  # in this process (measurements, debugging)
                n = convert_checkpoint(stream.path, spool, state)
            else:
                n = _convert_in_child(stream.path, spool, state)
            f = open(spool, "rb")  # noqa: SIM115 - owned by the sender, closed by close()
        finally:
            stream.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(spool)
        return cls(f, n)

    async def responses(self) -> AsyncIterator[rpc_pb2.SnapshotResponse]:
        """32 KiB messages with remaining_bytes counting down to 0, then one carrying the sha256."""
        assert self._f is not None
        sha = hashlib.sha256()
        sent = 0
        while sent < self.total:
            block = await asyncio.to_thread(self._f.read, _READ_AHEAD)
            if not block:
                raise errors.EtcdError("etcdserver: snapshot spool file ended early")
            for off in range(0, len(block), SNAPSHOT_SEND_BUFFER):
                chunk = block[off : off + SNAPSHOT_SEND_BUFFER]
                sent += len(chunk)
                sha.update(chunk)
                yield rpc_pb2.SnapshotResponse(remaining_bytes=self.total - sent, blob=chunk)
        yield rpc_pb2.SnapshotResponse(remaining_bytes=0, blob=sha.digest())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
