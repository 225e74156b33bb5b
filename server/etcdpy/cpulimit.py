"""How many CPUs this process may really use: its CPU affinity, lowered by a cgroup CPU quota.

Why: in a Kubernetes pod with a CPU limit the kernel enforces the limit as a CFS quota,
while `os.sched_getaffinity` (and `os.cpu_count`) still report every CPU of the node. A
member sizing its helper threads by the node's CPUs would start threads for cores it is not
allowed to use. Python 3.11 has no function that looks at the quota, so this reads it.

Both cgroup versions are read: v2's ``cpu.max`` ("max 100000" or "200000 100000") and v1's
``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (-1: no quota). A quota set on any ancestor group
limits the process too, so every group from the process's own up to the root is looked at
and the lowest limit wins. Anything unreadable counts as "no quota": this sizes threads, it
must never stop a member.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

_Reader = Callable[[Path], "float | None"]


def usable_cpus(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs in this process's affinity mask, capped by its cgroup CPU quota (rounded up: 0.5 is 1)."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(proc_cgroup, cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return cpus


def cgroup_cpu_quota(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> float | None:
    """The lowest CPU quota (in CPUs, e.g. 1.5) on the process's cgroup path, None if there is none."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(cgroup_root)
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            limits += _quotas(root, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            # Mounted under the controllers' joint name ("cpu,cpuacct"), usually with "cpu" linked to it.
            for base in {root / controllers, root / "cpu"}:
                limits += _quotas(base, path, _v1_quota)
    return min(limits) if limits else None


def _quotas(base: Path, path: str, read: _Reader) -> list[float]:
    """The quota of each group from `path` up to the hierarchy's root (where `read` finds one)."""
    found = []
    rel = Path(path.lstrip("/"))
    for group in [rel, *rel.parents]:
        quota = read(base / group)
        if quota is not None:
            found.append(quota)
    return found


def _v2_quota(group: Path) -> float | None:
    try:
        fields = (group / "cpu.max").read_text().split()
        if len(fields) != 2 or fields[0] == "max":
            return None
        quota, period = int(fields[0]), int(fields[1])
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _v1_quota(group: Path) -> float | None:
    try:
        quota = int((group / "cpu.cfs_quota_us").read_text())
        period = int((group / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


__all__ = ["cgroup_cpu_quota", "usable_cpus"]
