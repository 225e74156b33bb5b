"""`etcdpy snapshot restore`: a NEW member data directory holding a snapshot's data (etcd's etcdutl restore).

What a restored data dir contains, and why (it is exactly what
`EtcdServer._restart` reads when it finds a WAL):

* member/snap/db — the backend, loaded from the verified snapshot file, minus
  the old cluster's membership (`members`, `members_removed` buckets), with the
  consistent index set to the new log's commit index n (= number of members) at
  term 1, so that nothing of the new log is skipped or applied twice;
* member/wal — a fresh WAL whose metadata names this member and the new cluster
  ({member_id, cluster_id} JSON, as the server writes it), holding one committed
  AddNode entry per member (indexes 1..n, term 1, as a bootstrap would),
  HardState{term 1, vote = the lowest member id, commit n}, and a snapshot
  marker at (n, 1);
* member/snap/<term>-<index>.snap — a raft snapshot at (n, 1) whose ConfState
  lists every member as a voter and whose data is the membership (RaftCluster
  JSON) built from --initial-cluster and --initial-cluster-token, with the ids
  the server derives (etcdpy.server.membership).

Every member of the new cluster is restored from the same snapshot file with its
own --name (and the same cluster flags), then started with the same flags; the
ids are deterministic, so they all agree. The file may come from any member of
the old cluster: only the key space, leases, auth and alarms are kept, and the
consistent index is overwritten.

Nothing is left behind on failure: everything is built in a sibling temp
directory that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass, field

from etcdpy.etcdutl.snapshot_file import (
    BoundedReader,
    SnapshotFileError,
    SnapshotInfo,
    inspect,
)
from etcdpy.mvcc.backend import (
    BUCKET_MEMBERS,
    BUCKET_MEMBERS_REMOVED,
    BUCKET_META,
    META_CONSISTENT_INDEX,
    META_CONSISTENT_TERM,
    Backend,
)
from etcdpy.mvcc.bbolt import BoltError, BoltReader
from etcdpy.mvcc.etcd_db import MEMBERSHIP_BUCKETS, read_etcd_db
from etcdpy.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
    marshal_conf_change,
)
from etcdpy.server.membership import (
    Member,
    RaftCluster,
    compute_cluster_id,
    members_from_initial_cluster,
)
from etcdpy.snap import Snapshotter
from etcdpy.wal import WAL, WalSnapshot

RESTORE_TERM = 1
_LOAD_BATCH_BYTES = 4 << 20


class RestoreError(Exception):
    """A restore that cannot be done; the message is one line for the operator."""


@dataclass
class RestoreConfig:
    snapshot_path: str
    name: str = "default"
    data_dir: str = ""
    initial_cluster: dict[str, list[str]] = field(default_factory=lambda: {"default": ["http://localhost:2380"]})
    initial_cluster_token: str = "etcd-cluster"
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    skip_hash_check: bool = False

    def __post_init__(self) -> None:
        if not self.data_dir:
            self.data_dir = f"{self.name}.etcd"


@dataclass(frozen=True)
class RestoreResult:
    data_dir: str
    member_id: int
    cluster_id: int
    snapshot: SnapshotInfo


def restore(cfg: RestoreConfig) -> RestoreResult:
    """Build cfg.data_dir from the snapshot; raise RestoreError (nothing written) on any problem."""
    members, me = _verify_bootstrap(cfg)
    _check_target(cfg.data_dir)
    try:
        info = inspect(
            cfg.snapshot_path, verify_checksum=not cfg.skip_hash_check, require_checksum=not cfg.skip_hash_check
        )
    except SnapshotFileError as e:
        raise RestoreError(str(e)) from None
    cluster_id = compute_cluster_id([m.id for m in members])
    tmp = f"{os.path.abspath(cfg.data_dir).rstrip(os.sep)}.restoring-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(tmp, cfg, info, members, me, cluster_id)
        _move_into_place(tmp, cfg.data_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RestoreResult(cfg.data_dir, me.id, cluster_id, info)


def _verify_bootstrap(cfg: RestoreConfig) -> tuple[list[Member], Member]:
    """etcd's VerifyBootstrap: this name is in the cluster, with exactly the advertised peer URLs."""
    members = members_from_initial_cluster(cfg.initial_cluster, cfg.initial_cluster_token)
    me = next((m for m in members if m.name == cfg.name), None)
    if me is None:
        raise RestoreError(f"couldn't find local name {cfg.name!r} in the initial cluster configuration")
    if sorted(me.peer_urls) != sorted(cfg.initial_advertise_peer_urls):
        raise RestoreError(
            f"--initial-cluster has {cfg.name}={','.join(me.peer_urls)} but missing from "
            f"--initial-advertise-peer-urls={','.join(cfg.initial_advertise_peer_urls)}"
        )
    seen: dict[str, str] = {}
    for m in members:
        for url in m.peer_urls:
            if url in seen:
                raise RestoreError(f"duplicate URL {url!r} in --initial-cluster ({seen[url]} and {m.name})")
            seen[url] = m.name
    return sorted(members, key=lambda m: m.id), me


def _check_target(data_dir: str) -> None:
    """Like etcd: refuse a data dir that exists and is not empty (never overwrite a member)."""
    if os.path.exists(data_dir):
        try:
            empty = os.path.isdir(data_dir) and not os.listdir(data_dir)
        except OSError:
            empty = False
        if not empty:
            raise RestoreError(f"data-dir {data_dir!r} not empty or could not be read")


def _build(root: str, cfg: RestoreConfig, info: SnapshotInfo, members: list[Member], me: Member, cluster_id: int) -> None:
    member_dir = os.path.join(root, "member")
    snap_dir = os.path.join(member_dir, "snap")
    os.makedirs(snap_dir, mode=0o700)
    commit = len(members)
    _restore_backend(os.path.join(snap_dir, "db"), info, commit)
    metadata = json.dumps({"member_id": me.id, "cluster_id": cluster_id}).encode()  # as EtcdServer._wal_metadata
    entries = [
        Entry(
            term=RESTORE_TERM,
            index=i + 1,
            type=EntryType.CONF_CHANGE,
            data=marshal_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=m.id, context=m.to_json())),
        )
        for i, m in enumerate(members)
    ]
    state = HardState(term=RESTORE_TERM, vote=members[0].id, commit=commit)
    wal = WAL.create(os.path.join(member_dir, "wal"), metadata, initial=(state, entries))
    try:
        cluster = RaftCluster(cluster_id, [Member(m.id, m.name, list(m.peer_urls)) for m in members])
        meta = SnapshotMetadata(conf_state=ConfState(voters=[m.id for m in members]), index=commit, term=RESTORE_TERM)
        Snapshotter(snap_dir).save_snap(Snapshot(data=cluster.to_json(), metadata=meta))
        wal.save_snapshot(WalSnapshot(index=commit, term=RESTORE_TERM))
    finally:
        wal.close()


def _restore_backend(db_path: str, info: SnapshotInfo, commit: int) -> None:
    """Load the verified file, drop the old membership, point the consistent index at the new log."""
    if info.format == "bbolt":
        _load_bolt(db_path, info)
    else:
        with open(info.path, "rb") as f:
            try:
                Backend.restore_from(BoundedReader(f, info.data_len), db_path)  # type: ignore[arg-type]
            except Exception as e:  # the file changed since inspect(), or the disk failed
                raise RestoreError(f"cannot restore backend from {info.path}: {e}") from None
    be = Backend(db_path)
    try:
        batch = be.batch()
        for bucket in (BUCKET_MEMBERS, BUCKET_MEMBERS_REMOVED):
            for key, _ in be.iterate(bucket):
                batch.delete(bucket, key)
        batch.put(BUCKET_META, META_CONSISTENT_INDEX, struct.pack(">Q", commit))
        batch.put(BUCKET_META, META_CONSISTENT_TERM, struct.pack(">Q", RESTORE_TERM))
        be.write(batch)
        be.db.flush(True)
    finally:
        be.close()


def _load_bolt(db_path: str, info: SnapshotInfo) -> None:
    """Copy every bucket of an etcd bbolt db (etcd's or etcdpy's) into a new RocksDB backend.

    etcdpy's backend keeps etcd's buckets and encodings, so this is a copy; the old
    membership is left out (the new cluster's is written by the restore).
    """
    be = Backend(db_path)
    try:
        with BoltReader(info.path, length=info.data_len) as db:
            batch = be.batch()
            pending = 0
            for bucket, key, value in read_etcd_db(db, skip=MEMBERSHIP_BUCKETS):
                batch.put(bucket, key, value)
                pending += len(key) + len(value)
                if pending >= _LOAD_BATCH_BYTES:
                    be.write(batch)
                    batch, pending = be.batch(), 0
            if not batch.is_empty():
                be.write(batch)
        be.db.flush(True)
    except BoltError as e:  # the file changed since inspect()
        raise RestoreError(f"cannot restore backend from {info.path}: {e}") from None
    finally:
        be.close()


def _move_into_place(tmp: str, data_dir: str) -> None:
    if os.path.isdir(data_dir):
        os.rmdir(data_dir)  # empty (checked before): replace it
    parent = os.path.dirname(os.path.abspath(data_dir))
    os.makedirs(parent, exist_ok=True)
    os.rename(tmp, data_dir)
    fd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
