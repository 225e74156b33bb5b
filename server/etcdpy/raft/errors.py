"""Raft-internal exceptions.

These never reach a client directly: the server maps them (for example
`ProposalDropped` becomes a retryable "leader changed"/"no leader" error).
They are plain exceptions so the raft package stays free of etcdpy.errors.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base of every exception raised by the raft package."""


class ErrCompacted(RaftError):
    """The requested index is older than the storage's first index (compacted away)."""


class ErrSnapOutOfDate(RaftError):
    """The snapshot being applied or created is older than the one already held."""


class ErrUnavailable(RaftError):
    """The requested index is newer than anything the storage holds."""


class ErrSnapshotTemporarilyUnavailable(RaftError):
    """Storage cannot produce a snapshot right now; the leader retries later."""


class ProposalDropped(RaftError):
    """The proposal was not accepted (no leader, leader transfer in progress, flow control, ...).

    The caller may retry; nothing was appended to the log.
    """


class ErrStepLocalMsg(RaftError):
    """A local-only message type was passed to RawNode.step."""


class ErrStepPeerNotFound(RaftError):
    """A response message came from a peer the progress tracker does not know."""
