"""An interval index over byte-string ranges (the role etcd's `pkg/adt` interval tree plays).

Range watchers must be found by *stabbing*: given one changed key, which
[begin, end) intervals contain it? Scanning every range watcher per event
would make a write cost O(watchers), so the index is a treap (a randomized
balanced binary search tree) ordered by (begin, end), where every node also
knows the largest `end` in its subtree. A stab then skips every subtree whose
largest end is <= the key and every right subtree whose begin is > the key:
O(log n + k) expected for k hits.

Each distinct interval is stored once with a caller-owned value (the watcher
set), so a thousand watchers on one prefix cost one node, as in etcd.

An `end` of None means "no upper bound" (etcd's "\\0" range end: every key >= begin).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

Interval = tuple[bytes, bytes | None]


def _end_order(end: bytes | None) -> tuple[int, bytes]:
    """Sort key of an end: None (unbounded) after every finite end."""
    return (1, b"") if end is None else (0, end)


def _max_end(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is None or b is None:
        return None
    return a if a >= b else b


class _Node(Generic[V]):
    __slots__ = ("begin", "end", "order", "val", "prio", "left", "right", "max_end")

    def __init__(self, begin: bytes, end: bytes | None, val: V, prio: float) -> None:
        self.begin = begin
        self.end = end
        self.order = (begin, _end_order(end))
        self.val = val
        self.prio = prio
        self.left: _Node[V] | None = None
        self.right: _Node[V] | None = None
        self.max_end: bytes | None = end

    def update(self) -> None:
        """Recompute the subtree's largest end after a child changed."""
        m = self.end
        if self.left is not None:
            m = _max_end(m, self.left.max_end)
        if self.right is not None:
            m = _max_end(m, self.right.max_end)
        self.max_end = m


class IntervalIndex(Generic[V]):
    """Distinct intervals -> value, with stabbing queries. Not thread-safe (loop-owned)."""

    def __init__(self, seed: int | None = None) -> None:
        self._root: _Node[V] | None = None
        self._nodes: dict[Interval, _Node[V]] = {}
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, begin: bytes, end: bytes | None) -> V | None:
        """The value stored for exactly this interval, or None."""
        node = self._nodes.get((begin, end))
        return None if node is None else node.val

    def insert(self, begin: bytes, end: bytes | None, val: V) -> None:
        """Add a new interval; it must not be present yet (check with `get`)."""
        if end is not None and end <= begin:
            raise ValueError("interval end must be greater than its begin")
        if (begin, end) in self._nodes:
            raise KeyError("interval already indexed")
        node = _Node(begin, end, val, self._rng.random())
        self._nodes[(begin, end)] = node
        left, right = self._split(self._root, node.order)
        self._root = self._merge(self._merge(left, node), right)

    def delete(self, begin: bytes, end: bytes | None) -> bool:
        """Remove an interval; False if it was not indexed."""
        node = self._nodes.pop((begin, end), None)
        if node is None:
            return False
        self._root = self._delete(self._root, node.order)
        return True

    def stab(self, point: bytes) -> list[V]:
        """Values of every interval with begin <= point < end, in (begin, end) order."""
        out: list[V] = []
        if self._root is not None:
            self._stab(self._root, point, out)
        return out

    def intersects(self, point: bytes) -> bool:
        """Whether any interval contains `point` (cheaper than `stab` when only existence matters)."""
        return bool(self._root is not None and self._any(self._root, point))

    def items(self) -> Iterator[tuple[Interval, V]]:
        for iv, node in self._nodes.items():
            yield iv, node.val

    # -- treap internals ---------------------------------------------------------

    def _split(self, node: _Node[V] | None, order: tuple[bytes, tuple[int, bytes]]) -> tuple[_Node[V] | None, _Node[V] | None]:
        """Split into (nodes ordered before `order`, nodes at or after it)."""
        if node is None:
            return None, None
        if node.order < order:
            before, after = self._split(node.right, order)
            node.right = before
            node.update()
            return node, after
        before, after = self._split(node.left, order)
        node.left = after
        node.update()
        return before, node

    def _merge(self, a: _Node[V] | None, b: _Node[V] | None) -> _Node[V] | None:
        """Join two treaps where every node of `a` orders before every node of `b`."""
        if a is None:
            return b
        if b is None:
            return a
        if a.prio > b.prio:
            a.right = self._merge(a.right, b)
            a.update()
            return a
        b.left = self._merge(a, b.left)
        b.update()
        return b

    def _delete(self, node: _Node[V] | None, order: tuple[bytes, tuple[int, bytes]]) -> _Node[V] | None:
        if node is None:
            return None
        if order == node.order:
            return self._merge(node.left, node.right)
        if order < node.order:
            node.left = self._delete(node.left, order)
        else:
            node.right = self._delete(node.right, order)
        node.update()
        return node

    def _stab(self, node: _Node[V] | None, p: bytes, out: list[V]) -> None:
        while node is not None:
            if node.max_end is not None and node.max_end <= p:
                return  # nothing below reaches p
            if node.left is not None:
                self._stab(node.left, p, out)
            if node.begin > p:
                return  # this node and its right subtree all begin after p
            if node.end is None or p < node.end:
                out.append(node.val)
            node = node.right

    def _any(self, node: _Node[V] | None, p: bytes) -> bool:
        while node is not None:
            if node.max_end is not None and node.max_end <= p:
                return False
            if node.left is not None and self._any(node.left, p):
                return True
            if node.begin > p:
                return False
            if node.end is None or p < node.end:
                return True
            node = node.right
        return False


__all__ = ["IntervalIndex"]
