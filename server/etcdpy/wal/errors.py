"""Typed WAL errors.

The server must tell apart "the log is damaged, stop and page a human"
(`WalCorruptError`) from "you opened it wrong" (`WalLockedError`,
`SnapshotNotFoundError`), so each failure mode gets its own class under
`WalError`.
"""

from __future__ import annotations


class WalError(Exception):
    """Base class of every error raised by `etcdpy.wal`."""


class WalExistsError(WalError):
    """`WAL.create` on a directory that already holds WAL segments."""


class WalNotFoundError(WalError):
    """`WAL.open` on a directory without any WAL segment."""


class WalLockedError(WalError):
    """Another WAL instance (this or another process) holds a segment lock."""


class WalCorruptError(WalError):
    """A record fails its checks somewhere other than a repairable torn tail.

    Raised for CRC mismatches in the middle of the log, broken CRC chains between
    segments, missing segments, conflicting metadata and malformed payloads.
    """

    def __init__(self, message: str, path: str | None = None, offset: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f" ({path}" + (f" @ {offset}" if offset is not None else "") + ")"
        super().__init__(message + where)
        self.path = path
        self.offset = offset


class WalEntryGapError(WalError):
    """Entries after the snapshot are not contiguous: some of the log is missing.

    Happens when the WAL is opened at a snapshot older than a later snapshot
    marker whose entries were never written (a follower that installed a snapshot),
    or when segments were released past the requested snapshot.
    """


class SnapshotNotFoundError(WalError):
    """`read_all` found no marker for the snapshot given to `open`."""


class SnapshotMismatchError(WalError):
    """A marker with the snapshot's index exists but carries another term."""


class WalStateError(WalError):
    """API misuse or a WAL poisoned by an earlier write/fsync failure.

    After a failed write or fdatasync the on-disk tail is unknown (fsyncgate), so
    the WAL refuses further appends instead of guessing; the server must restart.
    """
