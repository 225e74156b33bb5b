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

The thread is the writer's own, asleep on a condition variable while there is nothing to
write and woken by the first item queued after that: no executor. Waking a sleeping thread
is the expensive part of the hand-off on this kind of machine (a cross-CPU wake-up), and the
executor's `submit` cost more loop CPU per wake-up than a condition's notify (measured under
the txn load: 40-56 us against 28-37 us per wake-up, with ~200 of them a second).

Merging saves is exact: `WAL.save` appends entry records then the hard state, and reading
a WAL back keeps the last record per index and the last hard state, so one save of
[entries A + entries B, hard state B] leaves what two saves of A then B would have.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
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

    def __init__(self, wal: WAL, on_save: Callable[[float], None] | None = None) -> None:
        self.wal = wal
        self._cv = threading.Condition(threading.Lock())  # guards the queue and the flags below
        self._queue: list[_Save | _Call] = []
        self._awake = False  # the thread is working (it takes what is queued before it sleeps)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called on the loop with the seconds of each WAL.save (write + fdatasync): metrics.
        self.on_save = on_save
        self.saves = 0
        self.save_seconds = 0.0
        self._broken: BaseException | None = None  # the first failed save (writer thread only)
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)
        self._thread.start()

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

    def close(self) -> None:
        """Finish what is queued, then end the thread (blocks until it has)."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()

    def _future(self) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        self._loop = loop
        return loop.create_future()

    def _enqueue(self, item: _Save | _Call) -> None:
        with self._cv:
            if self._closing:
                raise RuntimeError("the WAL writer is closed")
            self._queue.append(item)
            if not self._awake:
                self._awake = True
                self._cv.notify()

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        """Write until closed; each pass takes all that was queued during the last."""
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._awake = False
                    self._cv.wait()
                if not self._queue:
                    return  # closing, and everything queued is written
                items, self._queue = self._queue, []
                self._awake = True
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
