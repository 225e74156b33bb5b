"""Plain value types of the Raft algorithm (the raftpb of etcd-io/raft).

They are slotted dataclasses rather than protobuf messages so the core stays
free of any wire format and cheap to create in the hot path; the transport and
the WAL own their encodings of these types. Numbering of the enums follows
etcd's raftpb so logs and traces read the same as etcd's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NONE = 0
"""Node id meaning "no node" (no leader, no vote)."""


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class MessageType(enum.IntEnum):
    HUP = 0
    BEAT = 1
    PROP = 2
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    SNAP = 7
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10
    SNAP_STATUS = 11
    CHECK_QUORUM = 12
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18


class ConfChangeType(enum.IntEnum):
    ADD_NODE = 0
    REMOVE_NODE = 1
    UPDATE_NODE = 2
    ADD_LEARNER_NODE = 3


class StateType(enum.IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


@dataclass(slots=True)
class Entry:
    term: int = 0
    index: int = 0
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


@dataclass(slots=True)
class HardState:
    term: int = 0
    vote: int = 0
    commit: int = 0

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == 0 and self.commit == 0


@dataclass(slots=True)
class ConfState:
    voters: list[int] = field(default_factory=list)
    learners: list[int] = field(default_factory=list)


@dataclass(slots=True)
class SnapshotMetadata:
    conf_state: ConfState = field(default_factory=ConfState)
    index: int = 0
    term: int = 0


@dataclass(slots=True)
class Snapshot:
    data: bytes = b""
    metadata: SnapshotMetadata = field(default_factory=SnapshotMetadata)

    def is_empty(self) -> bool:
        return self.metadata.index == 0


@dataclass(slots=True)
class ConfChange:
    """A single-step membership change; `context` carries the server's member record."""

    type: ConfChangeType = ConfChangeType.ADD_NODE
    node_id: int = 0
    context: bytes = b""
    id: int = 0


@dataclass(slots=True)
class Message:
    type: MessageType = MessageType.HUP
    to: int = 0
    frm: int = 0
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list[Entry] = field(default_factory=list)
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


@dataclass(slots=True)
class SoftState:
    """Volatile state worth telling the server about (leader and role changes)."""

    lead: int = NONE
    raft_state: StateType = StateType.FOLLOWER


@dataclass(slots=True)
class ReadState:
    """Answer to a ReadIndex request: reads tagged `request_ctx` may be served once `index` is applied."""

    index: int = 0
    request_ctx: bytes = b""


# ---------------------------------------------------------------------------
# Encodings the raft package itself needs.
#
# A ConfChange travels inside an Entry's data, so the raft package (which must
# not import etcdpy.pb) has to marshal it. We use the protobuf wire encoding of
# etcd's raftpb.ConfChange (ID=1, Type=2, NodeID=3, Context=4) so the bytes in
# the WAL are the same as etcd's.
# ---------------------------------------------------------------------------


def _put_uvarint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _get_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint overflow")


def marshal_conf_change(cc: ConfChange) -> bytes:
    """Encode `cc` like gogoproto encodes raftpb.ConfChange (all fields present)."""
    out = bytearray()
    out.append(0x08)
    _put_uvarint(out, cc.id)
    out.append(0x10)
    _put_uvarint(out, int(cc.type))
    out.append(0x18)
    _put_uvarint(out, cc.node_id)
    if cc.context:
        out.append(0x22)
        _put_uvarint(out, len(cc.context))
        out += cc.context
    return bytes(out)


def unmarshal_conf_change(data: bytes) -> ConfChange:
    """Decode bytes produced by `marshal_conf_change` (or by etcd)."""
    cc = ConfChange()
    pos = 0
    n = len(data)
    while pos < n:
        key, pos = _get_uvarint(data, pos)
        fieldno, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _get_uvarint(data, pos)
            if fieldno == 1:
                cc.id = v
            elif fieldno == 2:
                cc.type = ConfChangeType(v)
            elif fieldno == 3:
                cc.node_id = v
        elif wt == 2:
            ln, pos = _get_uvarint(data, pos)
            if pos + ln > n:
                raise ValueError("truncated bytes field")
            if fieldno == 4:
                cc.context = bytes(data[pos : pos + ln])
            pos += ln
        else:
            raise ValueError(f"unsupported wire type {wt}")
    return cc


ENTRY_OVERHEAD = 16
"""Approximate per-entry framing bytes counted against size limits (term, index, type)."""


def entry_size(e: Entry) -> int:
    """Size of an entry for max_size_per_msg style limits (payload plus framing)."""
    return len(e.data) + ENTRY_OVERHEAD


def is_empty_snap(s: Snapshot | None) -> bool:
    return s is None or s.metadata.index == 0
