"""The peer transport (etcd's rafthttp, reimagined on gRPC): raft messages, snapshots and
the few member-to-member RPCs the server needs. etcdpy members only talk to etcdpy members.

Wire design (server/etcdpy/pb/peer.proto, service `etcdpypeerpb.Peer`):

- `Stream`: one long-lived bidi stream per ordered member pair. Each request is a batch of
  every raftpb.Message queued for the peer since the previous write; no per-batch ack. The
  receiver answers the opening header (or refuses it) and echoes pings (round-trip time).
- `Snapshot`: client stream of the MsgSnap then the MVCC backend snapshot file in chunks;
  the receiver writes `<snapshot_dir>/<index:016x>.snap.db` and calls `on_snapshot(m, path)`.
- `Members`, `LeaseRenew`, `LeaseTimeToLive`: small unary calls (joining a cluster, lease
  forwarding to the leader).

Fault injection for tests: see `etcdpy.rafthttp.fault` ($ETCDPY_FAULT_FILE).
"""

from .codec import CodecError, EntryCache, decode_message, decode_message_bytes, encode_batch, encode_message
from .common import MemberRemoved, PeerUnreachable, TransportOptions
from .fault import ENV_FAULT_FILE, FaultInjector
from .peer import SnapshotSource
from .service import snapshot_db_path
from .transport import (
    ClusterMembers,
    MemberLike,
    PeerStatus,
    RemoteMember,
    Transport,
    error_from_message,
    fetch_members,
)

__all__ = [
    "ENV_FAULT_FILE",
    "ClusterMembers",
    "CodecError",
    "EntryCache",
    "FaultInjector",
    "MemberLike",
    "MemberRemoved",
    "PeerStatus",
    "PeerUnreachable",
    "RemoteMember",
    "SnapshotSource",
    "Transport",
    "TransportOptions",
    "decode_message",
    "decode_message_bytes",
    "encode_batch",
    "encode_message",
    "error_from_message",
    "fetch_members",
    "snapshot_db_path",
]
