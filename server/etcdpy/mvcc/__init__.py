"""etcd's multi-version store (server/storage/mvcc + backend) on RocksDB.

`KVStore` is the entry point; `Backend` gives other packages (lease, auth,
membership) their own buckets in the same RocksDB and atomic batches.
"""

from etcdpy.mvcc.backend import Backend, Batch, SnapshotError, SnapshotStream
from etcdpy.mvcc.key_index import KeyIndex, TreeIndex
from etcdpy.mvcc.kvstore import (
    COMPACTION_SLEEP_SECONDS,
    CompactionJob,
    KVStore,
    RangeResult,
    TxnWrite,
)
from etcdpy.mvcc.revision import Revision, bytes_to_rev, is_tombstone, rev_to_bytes

__all__ = [
    "COMPACTION_SLEEP_SECONDS",
    "Backend",
    "Batch",
    "CompactionJob",
    "KVStore",
    "KeyIndex",
    "RangeResult",
    "Revision",
    "SnapshotError",
    "SnapshotStream",
    "TreeIndex",
    "TxnWrite",
    "bytes_to_rev",
    "is_tombstone",
    "rev_to_bytes",
]
