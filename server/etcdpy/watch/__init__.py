"""Watch: etcd's watchable store (synced / unsynced / victim watchers) over the MVCC store.

`WatchableStore` hooks into `KVStore` as an observer of committed write txns;
`WatchStream` is the per-client-stream set of watchers the API layer drives.
"""

from etcdpy.watch.watchable_store import WatchableStore
from etcdpy.watch.watcher import (
    AUTO_WATCH_ID,
    INVALID_WATCH_ID,
    SharedEvents,
    WatchChannel,
    WatchError,
    Watcher,
    WatchResponse,
    WatchStream,
    filter_types,
)

__all__ = [
    "AUTO_WATCH_ID",
    "INVALID_WATCH_ID",
    "SharedEvents",
    "WatchChannel",
    "WatchError",
    "WatchResponse",
    "WatchStream",
    "WatchableStore",
    "Watcher",
    "filter_types",
]
