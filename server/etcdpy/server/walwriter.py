"""The WAL's one writer thread, fed by the raft loop without waiting: group commit in the thread.

Why a queue of its own rather than `run_in_executor` per Ready awaited in the raft pass:
that way the rest of each pass (sends, the apply hand-off, `advance`) waited for the
fdatasync, and the disk sat idle until the event loop came round to both the completion
(one pass) and the next submission (another). Measured under a txn load, those two
hand-offs took 3.2-4.2 ms of each 5-5.6 ms raft cycle while the write itself took 1.5-1.9 ms.

Here the raft loop only queues (`save`) and gets a future (how many writes it lets be in
flight is its own choice: `raftnode.MAX_WRITES_IN_FLIGHT`); the thread takes everything
queued, writes it with one `WAL.save` (one fdatasync), resolves those futures on the loop,
and immediately takes what was queued meanwhile. After a failed save nothing more is
written: every later save fails with the same error, so no write can land behind one that
did not (the raft loop stops the server on the first failure anyway). Other disk work that must stay in order
with the writes (snapshot files and markers, releasing segments, flushing the backend
before a release) goes through the same queue (`call`).

Merging saves is exact: `WAL.save` appends entry records then the hard state, and reading
a WAL back keeps the last record per index and the last hard state, so one save of
[entries A + entries B, hard state B] leaves what two saves of A then B would have.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from etcdpy.raft.types import Entry, HardState
from etcdpy.wal import WAL


@dataclass
class _Save:
    hard_state: HardState | None
    entries: Sequence[Entry]
    done: asyncio.Future[None]


@dataclass
class _Call:
    fn: Callable[[], Any]
    done: asyncio.Future[Any]


@dataclass
class _Round:
    """What one pass of the thread finished: resolved together on the loop."""

    results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = field(default_factory=list)
    save_seconds: list[float] = field(default_factory=list)


class WalWriter:
    """Ordered disk work for one WAL on one thread; consecutive saves share one fdatasync."""

    def __init__(self, wal: WAL, executor: Executor, on_save: Callable[[float], None] | None = None) -> None:
        self.wal = wal
        self._executor = executor
        self._lock = threading.Lock()
        self._queue: list[_Save | _Call] = []
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called on the loop with the seconds of each WAL.save (write + fdatasync): metrics.
        self.on_save = on_save
        self.saves = 0
        self.save_seconds = 0.0
        self._broken: BaseException | None = None  # the first failed save (writer thread only)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> asyncio.Future[None]:
        """Queue a write of `entries` then `hard_state`; the future resolves once they are durable."""
        fut: asyncio.Future[None] = self._future()
        self._enqueue(_Save(hard_state, entries, fut))
        return fut

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run `fn` on the writer thread after everything queued before it; the future gets its result."""
        fut: asyncio.Future[Any] = self._future()
        self._enqueue(_Call(fn, fut))
        return fut

    def _future(self) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        self._loop = loop
        return loop.create_future()

    def _enqueue(self, item: _Save | _Call) -> None:
        with self._lock:
            self._queue.append(item)
            if self._running:
                return
            self._running = True
        self._executor.submit(self._drain)

    # -- the writer thread ------------------------------------------------------------------

    def _drain(self) -> None:
        """Write until the queue is empty; each pass takes all that was queued during the last."""
        while True:
            with self._lock:
                items, self._queue = self._queue, []
                if not items:
                    self._running = False
                    return
            done = _Round()
            i = 0
            while i < len(items):
                item = items[i]
                if isinstance(item, _Call):
                    done.results.append(_run_call(item))
                    i += 1
                    continue
                j = i
                while j < len(items) and isinstance(items[j], _Save):
                    j += 1
                self._save_run(items[i:j], done)  # type: ignore[arg-type]
                i = j
            self._resolve(done)

    def _save_run(self, saves: list[_Save], done: _Round) -> None:
        """One WAL.save for consecutive saves: all their entries, then the newest hard state."""
        entries: list[Entry] = []
        hard_state: HardState | None = None
        for s in saves:
            entries.extend(s.entries)
            if s.hard_state is not None and not s.hard_state.is_empty():
                hard_state = s.hard_state
        err = self._broken
        if err is None:
            start = time.perf_counter()
            try:
                self.wal.save(hard_state, entries)
            except BaseException as e:  # noqa: BLE001 - handed to every waiter; the raft loop makes it fatal
                err = self._broken = e
            done.save_seconds.append(time.perf_counter() - start)
        for s in saves:
            done.results.append((s.done, None, err))

    def _resolve(self, done: _Round) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._settle, done)
        except RuntimeError:
            pass  # the loop closed during shutdown: nobody is waiting any more

    # -- back on the loop -------------------------------------------------------------------

    def _settle(self, done: _Round) -> None:
        for seconds in done.save_seconds:
            self.saves += 1
            self.save_seconds += seconds
            if self.on_save is not None:
                self.on_save(seconds)
        for fut, result, err in done.results:
            if fut.done():
                continue
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(result)


def _run_call(item: _Call) -> tuple[asyncio.Future[Any], Any, BaseException | None]:
    try:
        return item.done, item.fn(), None
    except BaseException as e:  # noqa: BLE001 - re-raised where the caller awaits it
        return item.done, None, e
