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

``ETCDPY_GC=default`` keeps CPython's defaults (to measure what this saves); ``tuned`` (or
unset) is the above. Any other value is refused at start-up (one line, exit 1), as every
``ETCDPY_`` setting is: a typo must not leave the member on a setting nobody chose.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping

ENV_GC = "ETCDPY_GC"
GC_MODES = ("tuned", "default")
THRESHOLDS = (50_000, 20, 100)
"""gen0 allocations between young collections, and the gen1/gen2 multipliers."""


def gc_setting(environ: Mapping[str, str] | None = None) -> str:
    """$ETCDPY_GC as one of `GC_MODES` (unset is ``tuned``); raises ValueError, with the line
    the member exits with, for anything else. Read before the member starts, applied after."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_GC, "").strip().lower() or "tuned"
    if value not in GC_MODES:
        raise ValueError(f"{ENV_GC} must be one of {', '.join(GC_MODES)}, got {value!r}")
    return value


def tune_after_startup(mode: str = "tuned") -> bool:
    """Freeze what start-up built and raise the thresholds; False (nothing done) for ``default``."""
    if mode == "default":
        return False
    gc.collect(1)  # young garbage goes now, not into the permanent generation (no full walk)
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return True
