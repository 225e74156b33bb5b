"""Auto-compaction (etcd's server/etcdserver/api/v3compactor).

`--auto-compaction-mode` picks the policy, `--auto-compaction-retention` its
parameter; a retention of 0 (the default) disables auto-compaction.

* periodic: keep `retention` of history. The compactor samples the store
  revision every retention/10 (every 6 minutes for retentions of an hour or
  more) into a window of retention/interval + 1 samples, so the oldest sample is
  the revision of one retention ago. The first compaction happens one retention
  after start; later ones every retention (every hour for retentions longer than
  an hour), each at the oldest sample. A failed compaction is retried at the
  next sample.
* revision: every 5 minutes, compact at (current revision - retention), unless
  that is not positive or was already done.

Retention parsing, as etcd: a bare non-negative integer is hours in periodic
mode and a revision count in revision mode; anything else must be a Go duration
("30m", "1h30m", "1.5s") and is used as is (in revision mode a duration
counts its nanoseconds as revisions, an etcd quirk kept for compatibility).

Compactions are proposed through the raft log like a client's Compact, and only
while this member leads: etcd pauses the compactor on followers, which here
means a non-leader skips its turn (periodic mode keeps sampling meanwhile).
An ErrCompacted answer counts as success: someone already compacted further.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from etcdpy import errors
from etcdpy.pb import rpc_pb2

MODE_PERIODIC = "periodic"
MODE_REVISION = "revision"
MODES = (MODE_PERIODIC, MODE_REVISION)

NS = 1
US = 1000 * NS
MS = 1000 * US
SECOND = 1000 * MS
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

REVISION_INTERVAL_NS = 5 * MINUTE
"""etcd's revInterval: how often the revision compactor looks."""

RETRY_DIVISOR = 10

_UNITS = {"ns": NS, "us": US, "\u00b5s": US, "\u03bcs": US, "ms": MS, "s": SECOND, "m": MINUTE, "h": HOUR}
_COMPONENT = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


class RetentionError(ValueError):
    """An --auto-compaction-retention value etcd would refuse."""


def parse_go_duration(text: str) -> int:
    """Go's time.ParseDuration, in integer nanoseconds ("1h30m", "1.5s", "-2m", "0")."""
    s = text
    sign = 1
    if s[:1] in ("-", "+"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise RetentionError(f"time: invalid duration {text!r}")
    total = 0
    pos = 0
    while pos < len(s):
        m = _COMPONENT.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise RetentionError(f"time: invalid duration {text!r}")
        whole, _, frac = m.group(1).partition(".")
        unit = _UNITS[m.group(2)]
        total += int(whole or "0") * unit
        if frac:
            total += int(frac) * unit // 10 ** len(frac)
        pos = m.end()
    return sign * total


def parse_retention(mode: str, text: str) -> int:
    """The retention as etcd's embed.StartEtcd derives it: nanoseconds (periodic) or revisions.

    Raises RetentionError with etcd's wording for an unknown mode or a bad value.
    """
    if mode not in MODES:
        raise RetentionError(f"unknown auto-compaction-mode {mode!r}")
    text = text or "0"
    if re.fullmatch(r"\+?[0-9]+", text):
        n = int(text)
        return n * HOUR if mode == MODE_PERIODIC else n
    try:
        return parse_go_duration(text)
    except RetentionError as e:
        raise RetentionError(f"error parsing AutoCompactionRetention: {e}") from None


Compact = Callable[[rpc_pb2.CompactionRequest], Awaitable[object]]
Sleep = Callable[[float], Awaitable[None]]


class Periodic:
    """etcd's Periodic compactor; `clock` returns seconds and `sleep` waits seconds (injectable for tests)."""

    def __init__(
        self,
        period_ns: int,
        rev: Callable[[], int],
        compact: Compact,
        is_leader: Callable[[], bool],
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if period_ns <= 0:
            raise ValueError("periodic compaction needs a positive retention")
        self.period_ns = period_ns
        self._rev = rev
        self._compact = compact
        self._is_leader = is_leader
        self._log = logger
        self._clock = clock
        self._sleep = sleep
        self.revs: list[int] = []

    @property
    def compact_interval_ns(self) -> int:
        """Compact every retention, but at least once an hour."""
        return min(self.period_ns, HOUR)

    @property
    def retry_interval_ns(self) -> int:
        return self.compact_interval_ns // RETRY_DIVISOR

    @property
    def retentions(self) -> int:
        """How many samples the window holds: revs[0] is always the revision of one retention ago."""
        return self.period_ns // max(1, self.retry_interval_ns) + 1

    async def run(self) -> None:
        retry_s = self.retry_interval_ns / SECOND
        last_success = self._clock()
        base_interval_s = self.period_ns / SECOND
        first = True
        while True:
            self.revs.append(self._rev())
            if len(self.revs) > self.retentions:
                del self.revs[0]
            await self._sleep(retry_s)
            if not self._is_leader():
                continue
            if self._clock() - last_success < base_interval_s:
                continue
            if first:  # waited one whole retention; from now on compact every compact interval
                base_interval_s = self.compact_interval_ns / SECOND
                first = False
            if await self._try_compact(self.revs[0]):
                last_success = self._clock()

    async def _try_compact(self, rev: int) -> bool:
        return await _compact_once(self._compact, rev, self._log, "periodic", retention=f"{self.period_ns / SECOND}s")


class RevisionCompactor:
    """etcd's Revision compactor: keep the last `retention` revisions, checked every 5 minutes."""

    def __init__(
        self,
        retention: int,
        rev: Callable[[], int],
        compact: Compact,
        is_leader: Callable[[], bool],
        logger: logging.Logger,
        interval_ns: int = REVISION_INTERVAL_NS,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.retention = retention
        self.interval_ns = interval_ns
        self._rev = rev
        self._compact = compact
        self._is_leader = is_leader
        self._log = logger
        self._sleep = sleep

    async def run(self) -> None:
        prev = 0
        while True:
            await self._sleep(self.interval_ns / SECOND)
            if not self._is_leader():
                continue
            rev = self._rev() - self.retention
            if rev <= 0 or rev == prev:
                continue
            if await _compact_once(self._compact, rev, self._log, "revision", retention=str(self.retention)):
                prev = rev


async def _compact_once(compact: Compact, rev: int, log: logging.Logger, mode: str, retention: str) -> bool:
    """One compaction through the log; True when done (or already done by someone else)."""
    log.info(f"starting auto {mode} compaction", extra={"fields": {"revision": rev, "retention": retention}})
    start = time.monotonic()
    try:
        await compact(rpc_pb2.CompactionRequest(revision=rev))
    except errors.ErrCompacted:
        pass
    except errors.EtcdError as e:
        log.warning(f"failed auto {mode} compaction", extra={"fields": {"revision": rev, "error": e.message}})
        return False
    log.info(f"completed auto {mode} compaction", extra={"fields": {
        "revision": rev, "retention": retention, "took": f"{time.monotonic() - start:.6f}s"}})
    return True


def new_compactor(
    mode: str,
    retention_text: str,
    rev: Callable[[], int],
    compact: Compact,
    is_leader: Callable[[], bool],
    logger: logging.Logger,
) -> Periodic | RevisionCompactor | None:
    """The compactor the flags ask for, or None when auto-compaction is off (retention 0)."""
    retention = parse_retention(mode, retention_text)
    if retention == 0:
        return None
    if retention < 0:
        raise RetentionError(f"error parsing AutoCompactionRetention: negative retention {retention_text!r}")
    if mode == MODE_PERIODIC:
        return Periodic(retention, rev, compact, is_leader, logger)
    return RevisionCompactor(retention, rev, compact, is_leader, logger)
