"""ReadIndex bookkeeping on the leader (etcd-io/raft read_only.go).

ReadOnlySafe: the leader records its commit index for a request context, then
confirms leadership with a heartbeat round carrying that context; once a quorum
acknowledges the context (or a later one), every request queued up to it is
answered with its recorded index.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .types import Message


class ReadOnlyOption(enum.IntEnum):
    SAFE = 0
    """Confirm leadership with a quorum heartbeat round per batch of reads."""
    LEASE_BASED = 1
    """Trust the leader lease (CheckQuorum); cheaper but depends on bounded clock drift."""


@dataclass(slots=True)
class ReadIndexStatus:
    req: Message
    index: int
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self, option: ReadOnlyOption) -> None:
        self.option = option
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        ctx = m.context
        if ctx in self.pending:
            return
        self.pending[ctx] = ReadIndexStatus(m, index)
        self.queue.append(ctx)

    def recv_ack(self, id_: int, ctx: bytes) -> set[int] | None:
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks.add(id_)
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Pop every request queued up to and including `ctx` (they are all confirmed)."""
        try:
            i = self.queue.index(ctx)
        except ValueError:
            return []
        done = self.queue[: i + 1]
        del self.queue[: i + 1]
        return [self.pending.pop(c) for c in done]

    def last_pending_request_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""
