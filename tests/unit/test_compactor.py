"""Auto-compaction schedules (etcd's v3compactor) on a fake clock, and retention parsing.

Why a fake clock: the schedule is the contract (first compaction one retention after
start, then every retention or hour, at the revision sampled one retention earlier;
revision mode every 5 minutes) and real time would make these tests minutes long.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from etcdpy import errors
from etcdpy.pb import rpc_pb2
from etcdpy.server.compactor import (
    HOUR,
    MINUTE,
    SECOND,
    Periodic,
    RetentionError,
    RevisionCompactor,
    new_compactor,
    parse_go_duration,
    parse_retention,
)

LOG = logging.getLogger("test")


class Stop(Exception):
    """Ends a compactor's endless loop from inside the fake compact call."""


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _run_periodic(period_ns: int, count: int, leader_from: float = 0.0, fail_at: set[int] | None = None) -> list[tuple[float, int]]:
    """Compactions (time, revision) until `count` succeeded; the store revision is 10 per second."""
    t = FakeTime()
    done: list[tuple[float, int]] = []
    calls = 0

    async def compact(req: rpc_pb2.CompactionRequest) -> None:
        nonlocal calls
        calls += 1
        if fail_at and calls in fail_at:
            raise errors.ErrTimeout()
        done.append((round(t.now, 3), req.revision))
        if len(done) == count:
            raise Stop()

    pc = Periodic(period_ns, lambda: int(t.now * 10), compact, lambda: t.now >= leader_from, LOG, t.clock, t.sleep)
    with pytest.raises(Stop):
        asyncio.run(pc.run())
    return done


def test_periodic_short_retention_compacts_every_retention() -> None:
    # samples every second; the first compaction after 10 s at the revision of start,
    # then every 10 s at the oldest sample of the 11-sample window
    assert _run_periodic(10 * SECOND, 3) == [(10.0, 0), (20.0, 90), (30.0, 190)]


def test_periodic_long_retention_compacts_hourly_after_the_first_retention() -> None:
    got = _run_periodic(2 * HOUR, 3)
    assert [at for at, _ in got] == [2 * 3600.0, 3 * 3600.0, 4 * 3600.0]
    # each compaction keeps about two hours of history
    assert [at * 10 - rev for at, rev in got] == [72000, 75600, 75600]


def test_periodic_waits_for_leadership() -> None:
    assert _run_periodic(10 * SECOND, 1, leader_from=15.0) == [(15.0, 40)]


def test_periodic_retries_a_failed_compaction_at_the_next_sample() -> None:
    assert _run_periodic(10 * SECOND, 1, fail_at={1}) == [(11.0, 0)]  # the window is still full at 11 s


def test_periodic_counts_already_compacted_as_done() -> None:
    t = FakeTime()
    seen: list[float] = []

    async def compact(req: rpc_pb2.CompactionRequest) -> None:
        seen.append(t.now)
        if len(seen) == 2:
            raise Stop()
        raise errors.ErrCompacted()

    pc = Periodic(10 * SECOND, lambda: 5, compact, lambda: True, LOG, t.clock, t.sleep)
    with pytest.raises(Stop):
        asyncio.run(pc.run())
    assert seen == [10.0, 20.0]  # not retried after one second: ErrCompacted counts as success


def test_revision_compactor_keeps_the_last_revisions() -> None:
    t = FakeTime()
    revs = iter([100, 100, 150, 20, 400])
    done: list[tuple[float, int]] = []

    async def compact(req: rpc_pb2.CompactionRequest) -> None:
        done.append((t.now, req.revision))
        if len(done) == 3:
            raise Stop()

    rc = RevisionCompactor(30, lambda: next(revs), compact, lambda: True, LOG, sleep=t.sleep)
    with pytest.raises(Stop):
        asyncio.run(rc.run())
    # every 5 minutes; the same target twice is skipped, a non-positive one too
    assert done == [(300.0, 70), (900.0, 120), (1500.0, 370)]


@pytest.mark.parametrize(
    "mode,text,want",
    [
        ("periodic", "0", 0),
        ("periodic", "1", HOUR),
        ("periodic", "72", 72 * HOUR),
        ("periodic", "30m", 30 * MINUTE),
        ("periodic", "1h30m", 90 * MINUTE),
        ("periodic", "1.5s", 1500 * 1000 * 1000),
        ("periodic", "500ms", 500 * 1000 * 1000),
        ("revision", "1000", 1000),
        ("revision", "", 0),
        ("revision", "2m", 2 * MINUTE),  # etcd's quirk: a duration counts its nanoseconds
    ],
)
def test_parse_retention(mode: str, text: str, want: int) -> None:
    assert parse_retention(mode, text) == want


@pytest.mark.parametrize("text", ["abc", "1x", "h", "1h-", "--1s", "."])
def test_bad_retention(text: str) -> None:
    with pytest.raises(RetentionError, match="error parsing AutoCompactionRetention"):
        parse_retention("periodic", text)


def test_bad_mode() -> None:
    with pytest.raises(RetentionError, match="unknown auto-compaction-mode"):
        parse_retention("hourly", "1")


def test_go_durations() -> None:
    assert parse_go_duration("-1m30s") == -90 * SECOND
    assert parse_go_duration("2h45m0.5s") == 2 * HOUR + 45 * MINUTE + SECOND // 2
    assert parse_go_duration("1us") == parse_go_duration("1\u00b5s") == 1000


def test_new_compactor() -> None:
    async def compact(req: rpc_pb2.CompactionRequest) -> None:
        return None

    assert new_compactor("periodic", "0", lambda: 1, compact, lambda: True, LOG) is None
    assert isinstance(new_compactor("periodic", "1h", lambda: 1, compact, lambda: True, LOG), Periodic)
    rc = new_compactor("revision", "10", lambda: 1, compact, lambda: True, LOG)
    assert isinstance(rc, RevisionCompactor) and rc.retention == 10
