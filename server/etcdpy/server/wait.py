"""The wait registry: proposers park on a future keyed by request id until the apply loop answers.

etcd's `wait.Wait`: the gRPC handler registers before proposing, the apply loop
triggers with the result, and a handler that gives up (timeout, cancellation)
triggers with None so the entry does not leak.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any


class Wait:
    """Futures keyed by request id; all methods run on the event loop thread."""

    def __init__(self) -> None:
        self._futures: dict[int, asyncio.Future[Any]] = {}

    def register(self, req_id: int) -> asyncio.Future[Any]:
        if req_id in self._futures:
            raise KeyError(f"duplicate request id {req_id:x}")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[req_id] = fut
        return fut

    def trigger(self, req_id: int, result: Any) -> None:
        fut = self._futures.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def is_registered(self, req_id: int) -> bool:
        return req_id in self._futures

    def fail_all(self, exc: BaseException) -> None:
        """Wake every waiter with `exc` (server stopping)."""
        futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(exc)

    def __len__(self) -> int:
        return len(self._futures)


class WaitTime:
    """Futures released once a monotonically increasing index (the applied index) reaches theirs.

    etcd's `wait.WaitTime`: linearizable reads wait until the read index is applied.
    A waiter that gives up (its task cancelled, e.g. by a timeout) is removed: without
    that, a wait for an index never reached (a forged auth token's) would stay forever.
    Removal is lazy: cancelled entries are dropped when the heap is mostly cancelled.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._last = 0
        self._abandoned = 0

    def wait(self, index: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if index <= self._last:
            fut.set_result(None)
            return fut
        self._seq += 1
        heapq.heappush(self._heap, (index, self._seq, fut))
        fut.add_done_callback(self._on_done)
        return fut

    def _on_done(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled():
            return
        self._abandoned += 1
        if self._abandoned * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].done()]
            heapq.heapify(self._heap)
            self._abandoned = 0

    def trigger(self, index: int) -> None:
        self._last = max(self._last, index)
        heap = self._heap
        while heap and heap[0][0] <= index:
            _, _, fut = heapq.heappop(heap)
            if not fut.done():
                fut.set_result(None)
            elif fut.cancelled() and self._abandoned > 0:
                self._abandoned -= 1

    def fail_all(self, exc: BaseException) -> None:
        heap, self._heap = self._heap, []
        self._abandoned = 0
        for _, _, fut in heap:
            if not fut.done():
                fut.set_exception(exc)

    def __len__(self) -> int:
        """Waiters still registered (abandoned ones not dropped yet included)."""
        return len(self._heap)
