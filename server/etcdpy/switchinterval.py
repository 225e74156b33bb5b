"""The interpreter's thread switch interval for a member: how long a thread waiting for the GIL waits.

Why: the WAL is written and fdatasync'd on its own thread, which gives the GIL up for each
system call and must take it back afterwards. While the event loop thread is busy (it
serves the requests), CPython lets the waiting thread in only after the switch interval,
5 ms by default: under load a WAL save of ~0.2 ms of disk time took 2 ms or more, and every
write waits for one. At 0.5 ms the same saves took about a third less, with no measurable
cost to the loop thread (the other threads want the GIL only briefly). The gRPC dispatch
thread, which hands new calls to the loop, waits the same way.

``ETCDPY_SWITCH_INTERVAL`` overrides it (seconds, e.g. ``0.005``; ``default`` keeps CPython's).
A value that is neither is refused at start-up (one line, exit 1), as a bad
``ETCDPY_CLIENT_FRONT`` or ``ETCDPY_GRPC_SERVER`` is: a typo must not silently leave the
member on a setting nobody chose.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping

ENV_SWITCH_INTERVAL = "ETCDPY_SWITCH_INTERVAL"
SWITCH_INTERVAL_SECONDS = 0.0005


def switch_interval_setting(environ: Mapping[str, str] | None = None) -> float | None:
    """The interval to set (ours, or $ETCDPY_SWITCH_INTERVAL), None for CPython's own.

    Raises ValueError, with the message the member exits with, for anything but a number of
    seconds in (0, 1] or ``default``. Read before the member starts, applied after.
    """
    env = os.environ if environ is None else environ
    raw = env.get(ENV_SWITCH_INTERVAL, "").strip().lower()
    if raw == "default":
        return None
    if not raw:
        return SWITCH_INTERVAL_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:  # NaN fails this too
        raise ValueError(
            f"{ENV_SWITCH_INTERVAL} must be a number of seconds in (0, 1] or 'default', got {raw!r}"
        )
    return value


def tune_switch_interval(value: float | None) -> None:
    """Set the interval `switch_interval_setting` chose (None leaves CPython's)."""
    if value is not None:
        sys.setswitchinterval(value)


__all__ = ["ENV_SWITCH_INTERVAL", "SWITCH_INTERVAL_SECONDS", "switch_interval_setting", "tune_switch_interval"]
