"""Raft value types ⇄ raftpb wire bytes, for the replication hot path.

Why not simply build a `raftpb.Message` per message: the scalar part is cheapest that way
(one C call with keyword arguments), but a MsgApp carries many entries, and building one
protobuf object per entry costs about a microsecond each — for every follower again. So:

- the scalar fields (and the rare snapshot) go through the protobuf runtime;
- entries are encoded by hand as ready-made `entries` fields (tag + length + Entry) and
  appended to the serialized header. Protobuf allows a repeated field to appear anywhere in
  the message, so the result is a valid `raftpb.Message`;
- an `EntryCache` keeps encoded entries keyed by (term, index), so the MsgApps that carry the
  same entries to several followers encode each entry once. That key is sound because of
  Raft's Log Matching property: only one leader exists per term and it never rewrites its own
  entries, so two entries with the same term and index are the same entry.

A batch (`etcdpypeerpb.StreamRequest`) is likewise assembled from already-encoded messages
(field 2, length-delimited), and decoded by the gRPC deserializer in one C call; only the
final conversion to the raft dataclasses runs per field in Python.
"""

from __future__ import annotations

from collections.abc import Iterable

from etcdpy.pb import raft_pb2
from etcdpy.pb.wire import uvarint
from etcdpy.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

_MESSAGE_TYPES = tuple(MessageType)
_ENTRY_TYPES = tuple(EntryType)

_TAG_MSG_ENTRIES = b"\x3a"  # raftpb.Message.entries: field 7, length-delimited
_TAG_ENTRY_TYPE = b"\x08"  # raftpb.Entry.Type: field 1, varint
_TAG_ENTRY_TERM = b"\x10"  # raftpb.Entry.Term: field 2, varint
_TAG_ENTRY_INDEX = b"\x18"  # raftpb.Entry.Index: field 3, varint
_TAG_ENTRY_DATA = b"\x22"  # raftpb.Entry.Data: field 4, length-delimited
TAG_BATCH_MESSAGES = b"\x12"  # etcdpypeerpb.StreamRequest.messages: field 2, length-delimited


class CodecError(ValueError):
    """A peer sent a raft message this member cannot represent (unknown type, bad bytes)."""


def encode_entry_field(e: Entry) -> bytes:
    """`e` as a complete raftpb.Message `entries` field (proto3: zero fields left out)."""
    t, term, index, data = e.type, e.term, e.index, e.data
    head = b""
    if t:
        head = _TAG_ENTRY_TYPE + uvarint(t)
    if term:
        head += _TAG_ENTRY_TERM + uvarint(term)
    if index:
        head += _TAG_ENTRY_INDEX + uvarint(index)
    if not data:
        return b"".join((_TAG_MSG_ENTRIES, uvarint(len(head)), head))
    dlen = uvarint(len(data))
    size = len(head) + 1 + len(dlen) + len(data)
    return b"".join((_TAG_MSG_ENTRIES, uvarint(size), head, _TAG_ENTRY_DATA, dlen, data))


class EntryCache:
    """Encoded `entries` fields by (term, index), bounded by count and bytes (FIFO eviction).

    Shared by all peers of a transport: the leader sends the same entries to every follower,
    usually within milliseconds, so a small cache catches nearly all repeats. Entries without
    a term or index (forwarded proposals) are never cached: they are not unique.
    """

    __slots__ = ("_d", "_bytes", "max_entries", "max_bytes", "hits", "misses")

    def __init__(self, max_entries: int = 65536, max_bytes: int = 32 << 20) -> None:
        self._d: dict[tuple[int, int], bytes] = {}
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    def field(self, e: Entry) -> bytes:
        term, index = e.term, e.index
        if not term or not index:
            return encode_entry_field(e)
        key = (term, index)
        enc = self._d.get(key)
        if enc is not None:
            self.hits += 1
            return enc
        self.misses += 1
        enc = encode_entry_field(e)
        if len(enc) <= self.max_bytes:
            self._d[key] = enc
            self._bytes += len(enc)
            self._evict()
        return enc

    def _evict(self) -> None:
        d = self._d
        while len(d) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(d))
            self._bytes -= len(d.pop(oldest))

    def clear(self) -> None:
        self._d.clear()
        self._bytes = 0


def _fill_snapshot(ps: raft_pb2.Snapshot, s: Snapshot) -> None:
    md = s.metadata
    ps.data = s.data
    ps.metadata.index = md.index
    ps.metadata.term = md.term
    cs = ps.metadata.conf_state
    cs.voters.extend(md.conf_state.voters)
    cs.learners.extend(md.conf_state.learners)


def encode_message(m: Message, cache: EntryCache | None = None) -> bytes:
    """Serialized raftpb.Message for `m` (entries through `cache` when given)."""
    pm = raft_pb2.Message(
        type=m.type,
        to=m.to,
        term=m.term,
        logTerm=m.log_term,
        index=m.index,
        commit=m.commit,
        reject=m.reject,
        rejectHint=m.reject_hint,
        context=m.context,
        **{"from": m.frm},
    )
    if m.snapshot is not None:
        _fill_snapshot(pm.snapshot, m.snapshot)
    head = pm.SerializeToString()
    ents = m.entries
    if not ents:
        return head
    field = cache.field if cache is not None else encode_entry_field
    return head + b"".join([field(e) for e in ents])


def encode_batch(messages: Iterable[bytes], ping: int = 0) -> bytes:
    """An etcdpypeerpb.StreamRequest from already-encoded raft messages."""
    parts: list[bytes] = []
    for enc in messages:
        parts.append(TAG_BATCH_MESSAGES)
        parts.append(uvarint(len(enc)))
        parts.append(enc)
    if ping:
        parts.append(b"\x18")  # StreamRequest.ping: field 3, varint
        parts.append(uvarint(ping))
    return b"".join(parts)


def _decode_snapshot(ps: raft_pb2.Snapshot) -> Snapshot:
    md = ps.metadata
    cs = ConfState(voters=list(md.conf_state.voters), learners=list(md.conf_state.learners))
    return Snapshot(data=ps.data, metadata=SnapshotMetadata(conf_state=cs, index=md.index, term=md.term))


def decode_message(pm: raft_pb2.Message) -> Message:
    """The raft Message for a parsed raftpb.Message; CodecError for types raft does not know."""
    try:
        mtype = _MESSAGE_TYPES[pm.type]
        etypes = _ENTRY_TYPES
        ents = [Entry(e.Term, e.Index, etypes[e.Type], e.Data) for e in pm.entries] if pm.entries else []
    except IndexError:
        raise CodecError(f"unsupported raft message type {pm.type} or entry type") from None
    return Message(
        type=mtype,
        to=pm.to,
        frm=getattr(pm, "from"),
        term=pm.term,
        log_term=pm.logTerm,
        index=pm.index,
        entries=ents,
        commit=pm.commit,
        snapshot=_decode_snapshot(pm.snapshot) if pm.HasField("snapshot") else None,
        reject=pm.reject,
        reject_hint=pm.rejectHint,
        context=pm.context,
    )


def decode_message_bytes(data: bytes) -> Message:
    """Parse and convert one serialized raftpb.Message."""
    try:
        pm = raft_pb2.Message.FromString(data)
    except Exception as e:  # protobuf's DecodeError; kept generic across runtimes
        raise CodecError(f"malformed raft message: {e}") from None
    return decode_message(pm)


def message_to_pb(m: Message) -> raft_pb2.Message:
    """A raftpb.Message object for `m` (tests and non-hot paths)."""
    return raft_pb2.Message.FromString(encode_message(m))
