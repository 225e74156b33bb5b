"""Request id generation, unique across members and restarts (etcd's pkg/idutil).

An id is the low 16 bits of the member id, then 40 bits of the start time in
milliseconds, then an 8-bit counter; the counter carries into the time field,
so ids stay unique and increasing within a run while restarts (a later start
time) and other members (another prefix) never collide.
"""

from __future__ import annotations

import time

_TS_BITS = 40
_COUNT_BITS = 8
_SUFFIX_BITS = _TS_BITS + _COUNT_BITS
_SUFFIX_MASK = (1 << _SUFFIX_BITS) - 1


class IdGenerator:
    def __init__(self, member_id: int, now_ms: int | None = None) -> None:
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        self._prefix = (member_id & 0xFFFF) << _SUFFIX_BITS
        self._suffix = (now_ms & ((1 << _TS_BITS) - 1)) << _COUNT_BITS

    def next(self) -> int:
        self._suffix = (self._suffix + 1) & _SUFFIX_MASK
        return self._prefix | self._suffix
