"""Garbage-collector settings for a long-running member.

Why: every request allocates a handful of container objects (protobuf messages,
futures, coroutine frames), so with CPython's default thresholds (700, 10, 10) the
young generation is collected every few hundred requests, and each collection also
walks whatever survived into it; a full collection walks every object the member
holds (imported modules, the key index, caches). None of that is garbage: the server
creates very few reference cycles. So, once start-up is done:

- ``gc.freeze()`` moves every object alive now (modules, the loaded store, the
  servers) into the permanent generation, which collections never scan again;
- higher thresholds make young collections rarer (the per-request garbage is freed
  by reference counting anyway; only cycles wait for a collection).

`etcdpy.server.heap` freezes the MVCC index again as it grows; this module adds the
thresholds and freezes what the listeners built after the server had started.

``ETCDPY_GC=default`` keeps CPython's defaults (to measure what this saves).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping

ENV_GC = "ETCDPY_GC"
THRESHOLDS = (50_000, 20, 100)
"""gen0 allocations between young collections, and the gen1/gen2 multipliers."""


def tune_after_startup(environ: Mapping[str, str] | None = None) -> bool:
    """Freeze what start-up built and raise the thresholds; False if disabled by $ETCDPY_GC."""
    env = os.environ if environ is None else environ
    if env.get(ENV_GC, "").strip().lower() == "default":
        return False
    gc.collect(1)  # young garbage goes now, not into the permanent generation (no full walk)
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return True
