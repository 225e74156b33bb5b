"""The wait registry: proposers park on a future keyed by request id until the apply loop answers.

etcd's `wait.Wait`: the gRPC handler registers before proposing, the apply loop
triggers with the result, and a handler that gives up (timeout, cancellation)
triggers with None so the entry does not leak.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from typing import Any


class Wait:
    """Futures keyed by request id; all methods run on the event loop thread.

    A registration may carry a timeout: the future then fails with TimeoutError (and
    leaves the registry) once it passes. Why here rather than an ``asyncio.timeout`` per
    request: every proposal has the same timeout, so deadlines arrive in order, and one
    timer for the oldest pending deadline replaces a timer handle, a context manager and
    task-cancellation bookkeeping per request (measured on the put path: issue 12).
    """

    def __init__(self) -> None:
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: deque[tuple[float, int, asyncio.Future[Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def register(self, req_id: int, timeout: float | None = None) -> asyncio.Future[Any]:
        if req_id in self._futures:
            raise KeyError(f"duplicate request id {req_id:x}")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._futures[req_id] = fut
        if timeout is not None:
            queue = self._deadlines
            while queue and queue[0][2].done():  # answered ones leave from the front (they finish roughly in order)
                queue.popleft()
            deadline = loop.time() + timeout
            if self._deadlines and deadline < self._deadlines[-1][0]:
                deadline = self._deadlines[-1][0]  # keep the queue ordered (timeouts may differ slightly)
            self._deadlines.append((deadline, req_id, fut))
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire)
        return fut

    def _expire(self) -> None:
        """Fail every registration whose deadline passed; re-arm for the next pending one."""
        self._timer = None
        assert self._loop is not None
        now, queue = self._loop.time(), self._deadlines
        while queue and (queue[0][2].done() or queue[0][0] <= now):
            _, req_id, fut = queue.popleft()
            if not fut.done():
                if self._futures.get(req_id) is fut:
                    del self._futures[req_id]
                fut.set_exception(TimeoutError())
        if queue:
            self._timer = self._loop.call_at(queue[0][0], self._expire)

    def trigger(self, req_id: int, result: Any) -> None:
        fut = self._futures.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def is_registered(self, req_id: int) -> bool:
        return req_id in self._futures

    def fail_all(self, exc: BaseException) -> None:
        """Wake every waiter with `exc` (server stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadlines.clear()
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
