"""Keep Python's cyclic garbage collector from stalling the loop on a big store.

Measured (issue 10): with 100k keys x 5 versions the MVCC index alone is several
hundred thousand tracked objects, and every full ("generation 2") collection walks
all of them while holding the GIL: 0.2-0.8 s during which no raft tick, step or
send happens, triggered by any allocation-heavy request (a big Range). The index
objects are long-lived and never part of reference cycles; they are freed by
reference counting, not by the collector. So, as services with big heaps commonly do,
they are moved out of the collector's sight with `gc.freeze()`:

* after start-up and after a snapshot install (the index was just (re)built), and
* again each time `FREEZE_EVERY_ENTRIES` more entries have been applied, so objects
  the index gained since are not walked by every full collection either.

Before each freeze the young generations are collected (cheap), so what is frozen
is live data; frozen objects are still freed by reference counting. The cost is that
cyclic garbage older than one young collection at the moment of a freeze is never
collected: rare, and bounded by one such moment per FREEZE_EVERY_ENTRIES entries.
"""

from __future__ import annotations

import gc

FREEZE_EVERY_ENTRIES = 10_000


class HeapFreezer:
    """Counts applied entries and freezes the heap's long-lived objects every so often."""

    def __init__(self, every: int = FREEZE_EVERY_ENTRIES) -> None:
        self.every = every
        self._since = 0
        self.freezes = 0

    def applied(self, n: int) -> None:
        """Called after each applied batch with its size; freezes once enough entries went by."""
        self._since += n
        if self._since >= self.every:
            self.freeze()

    def freeze(self) -> None:
        """Collect the young generations, then freeze everything alive (quick: no full walk)."""
        gc.collect(1)
        gc.freeze()
        self._since = 0
        self.freezes += 1
