"""Key-range permissions of one user, merged over their roles (etcd's range_perm_cache.go).

A permission covers one key (`range_end` empty), a range `[key, range_end)`, or
everything from `key` on (`range_end` = b"\\x00"). A user's READ and WRITE rights
are the union of the permissions of all their roles. The questions asked are:

* a single key (a Put, a Range without range_end): is the key inside any interval?
* a range (a Range/DeleteRange/Watch with range_end): do the intervals together
  cover the whole range without a gap? A range that two permissions cover only
  together (`[a, c)` + `[c, e)` for a request `[b, d)`) is allowed, as in etcd.

Intervals are half-open byte ranges; `end=None` means "to the end of the keyspace"
(etcd encodes that with its affine comparable whose empty value sorts last).
A user has few permissions, so sorted lists beat an interval tree here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from etcdpy.pb import auth_pb2

READ = auth_pb2.Permission.READ
WRITE = auth_pb2.Permission.WRITE
READWRITE = auth_pb2.Permission.READWRITE

OPEN_END = b"\x00"
"""range_end meaning "every key from `key` on" (etcdctl's --from-key)."""


@dataclass(frozen=True, order=True)
class Interval:
    """[begin, end) over byte strings; end None = unbounded."""

    begin: bytes
    end: bytes | None

    def overlaps(self, other: Interval) -> bool:
        return _lt(self.begin, other.end) and _lt(other.begin, self.end)


def _lt(a: bytes, end: bytes | None) -> bool:
    """a < end, where end None is +infinity."""
    return end is None or a < end


def _end_max(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is None or b is None:
        return None
    return max(a, b)


def _end_ge(a: bytes | None, b: bytes | None) -> bool:
    """a >= b for interval ends (None = +infinity)."""
    if a is None:
        return True
    if b is None:
        return False
    return a >= b


def point(key: bytes) -> Interval:
    """The interval holding exactly `key` (its successor is key + NUL)."""
    return Interval(key, key + b"\x00")


def permission_interval(key: bytes, range_end: bytes) -> Interval:
    """The interval a stored permission grants."""
    if not range_end:
        return point(key)
    return Interval(key, None if range_end == OPEN_END else range_end)


def request_interval(key: bytes, range_end: bytes) -> Interval:
    """The interval a request with a non-empty range_end touches."""
    return Interval(key, None if range_end == OPEN_END else range_end)


@dataclass
class IntervalSet:
    """A union of intervals; answers etcd's Intersects(point) and Contains(range)."""

    intervals: list[Interval] = field(default_factory=list)

    def add(self, ivl: Interval) -> None:
        self.intervals.append(ivl)
        self.intervals.sort(key=lambda i: i.begin)

    def contains_point(self, key: bytes) -> bool:
        return any(i.begin <= key and _lt(key, i.end) for i in self.intervals)

    def covers(self, query: Interval) -> bool:
        """True when the intervals overlapping `query` join into one run covering all of it.

        Same fold as etcd's IntervalTree.Contains: walk the overlapping intervals in
        begin order, stop at the first gap, then require the run to span the query.
        """
        run_begin: bytes | None = None
        run_end: bytes | None = b""
        for ivl in self.intervals:
            if not ivl.overlaps(query):
                continue
            if run_begin is None:
                run_begin, run_end = ivl.begin, ivl.end
                continue
            if run_end is not None and run_end < ivl.begin:
                return False  # a gap inside the query
            run_end = _end_max(run_end, ivl.end)
        if run_begin is None:
            return False
        return run_begin <= query.begin and _end_ge(run_end, query.end)


@dataclass
class UnifiedRangePermissions:
    """Everything one user may read and write."""

    read: IntervalSet = field(default_factory=IntervalSet)
    write: IntervalSet = field(default_factory=IntervalSet)

    def permits(self, key: bytes, range_end: bytes, perm_type: int) -> bool:
        """isRangeOpPermitted: a key is a point lookup, a range must be fully covered."""
        ivls = self.read if perm_type == READ else self.write
        if not range_end:
            return ivls.contains_point(key)
        return ivls.covers(request_interval(key, range_end))


def merge_permissions(
    role_names: Iterable[str], get_role: Callable[[str], auth_pb2.Role | None]
) -> UnifiedRangePermissions:
    """getMergedPerms: the union of all roles' permissions; roles that no longer exist count for nothing."""
    out = UnifiedRangePermissions()
    for name in role_names:
        role = get_role(name)
        if role is None:
            continue
        for perm in role.keyPermission:
            ivl = permission_interval(perm.key, perm.range_end)
            if perm.permType in (READ, READWRITE):
                out.read.add(ivl)
            if perm.permType in (WRITE, READWRITE):
                out.write.add(ivl)
    return out


def is_valid_permission_range(key: bytes, range_end: bytes) -> bool:
    """etcd 3.5's isValidPermissionRange: a key is required, and a range must not be empty."""
    if not key:
        return False
    if not range_end:
        return True
    return key < range_end or range_end == OPEN_END
