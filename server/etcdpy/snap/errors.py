"""Typed errors of the raft snapshot store."""

from __future__ import annotations


class SnapError(Exception):
    """Base class of every error raised by `etcdpy.snap`."""


class SnapCorruptError(SnapError):
    """A snapshot file fails its magic, length, CRC or name checks."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{message} ({path})")
        self.path = path
