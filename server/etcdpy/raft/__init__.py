"""The Raft consensus algorithm as a pure, deterministic state machine (no I/O, threads or clock).

Modelled on etcd-io/raft: drive a `RawNode` with ticks, proposals and network
messages; collect `Ready` batches to persist, send and apply; call `advance`.
"""

from .errors import (
    ErrCompacted,
    ErrSnapOutOfDate,
    ErrSnapshotTemporarilyUnavailable,
    ErrStepLocalMsg,
    ErrStepPeerNotFound,
    ErrUnavailable,
    ProposalDropped,
    RaftError,
)
from .raft import Config, Raft
from .rawnode import Peer, RawNode, Ready, Status
from .read_only import ReadOnlyOption
from .storage import MemoryStorage, Storage
from .tracker import Progress, ProgressState
from .types import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateType,
    marshal_conf_change,
    unmarshal_conf_change,
)

__all__ = [
    "NONE",
    "Config",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "ErrCompacted",
    "ErrSnapOutOfDate",
    "ErrSnapshotTemporarilyUnavailable",
    "ErrStepLocalMsg",
    "ErrStepPeerNotFound",
    "ErrUnavailable",
    "HardState",
    "MemoryStorage",
    "Message",
    "MessageType",
    "Peer",
    "Progress",
    "ProgressState",
    "ProposalDropped",
    "Raft",
    "RaftError",
    "RawNode",
    "ReadOnlyOption",
    "ReadState",
    "Ready",
    "SnapshotMetadata",
    "Snapshot",
    "SoftState",
    "StateType",
    "Status",
    "Storage",
    "marshal_conf_change",
    "unmarshal_conf_change",
]
