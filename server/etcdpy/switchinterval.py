"""The interpreter's thread switch interval for a member: how long a thread waiting for the GIL waits.

Why: the WAL is written and fdatasync'd on its own thread, which gives the GIL up for each
system call and must take it back afterwards. While the event loop thread is busy (it
serves the requests), CPython lets the waiting thread in only after the switch interval,
5 ms by default: under load a WAL save of ~0.2 ms of disk time took 2 ms or more, and every
write waits for one. At 0.5 ms the same saves took about a third less, with no measurable
cost to the loop thread (the other threads want the GIL only briefly). The gRPC dispatch
thread, which hands new calls to the loop, waits the same way.

``ETCDPY_SWITCH_INTERVAL`` overrides it (seconds, e.g. ``0.005``; ``default`` keeps CPython's).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

ENV_SWITCH_INTERVAL = "ETCDPY_SWITCH_INTERVAL"
SWITCH_INTERVAL_SECONDS = 0.0005


def tune_switch_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Set the switch interval (ours, or $ETCDPY_SWITCH_INTERVAL); the value set, None if left alone.

    A value that is not a positive number is ignored (CPython's default stays): this runs at
    start-up and must not stop a member over a tuning knob.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV_SWITCH_INTERVAL, "").strip().lower()
    if raw == "default":
        return None
    value = SWITCH_INTERVAL_SECONDS
    if raw:
        try:
            value = float(raw)
        except ValueError:
            return None
        if not 0 < value <= 1:
            return None
    sys.setswitchinterval(value)
    return value


__all__ = ["ENV_SWITCH_INTERVAL", "SWITCH_INTERVAL_SECONDS", "tune_switch_interval"]
