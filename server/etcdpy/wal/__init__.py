"""Write-ahead log of raft entries, hard state and snapshot markers (etcd's server/storage/wal)."""

from .errors import (
    SnapshotMismatchError,
    SnapshotNotFoundError,
    WalCorruptError,
    WalEntryGapError,
    WalError,
    WalExistsError,
    WalLockedError,
    WalNotFoundError,
    WalStateError,
)
from .record import WalSnapshot
from .wal import SEGMENT_SIZE, WAL, valid_snapshot_entries

__all__ = [
    "SEGMENT_SIZE",
    "WAL",
    "SnapshotMismatchError",
    "SnapshotNotFoundError",
    "WalCorruptError",
    "WalEntryGapError",
    "WalError",
    "WalExistsError",
    "WalLockedError",
    "WalNotFoundError",
    "WalSnapshot",
    "WalStateError",
    "valid_snapshot_entries",
]
