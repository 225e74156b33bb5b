"""Raft snapshot metadata files (etcd's server/etcdserver/api/snap)."""

from .errors import SnapCorruptError, SnapError
from .snapshotter import Snapshotter, decode_snapshot, encode_snapshot, snap_name

__all__ = ["SnapCorruptError", "SnapError", "Snapshotter", "decode_snapshot", "encode_snapshot", "snap_name"]
