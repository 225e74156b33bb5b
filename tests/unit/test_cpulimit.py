"""The CPUs a member sizes its threads by: affinity, capped by a cgroup CPU quota (v1 or v2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from etcdpy.cpulimit import cgroup_cpu_quota, usable_cpus


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc(tmp_path: Path, text: str) -> str:
    _write(tmp_path / "proc_cgroup", text)
    return str(tmp_path / "proc_cgroup")


def test_v2_quota_of_the_process_group(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    _write(root / "kubepods" / "pod1" / "cpu.max", "150000 100000\n")
    _write(root / "cpu.max", "max 100000\n")
    proc = _proc(tmp_path, "0::/kubepods/pod1\n")
    assert cgroup_cpu_quota(proc, str(root)) == pytest.approx(1.5)
    assert usable_cpus(proc, str(root)) == min(len(os.sched_getaffinity(0)), 2)


def test_an_ancestor_quota_limits_too_and_the_lowest_wins(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    _write(root / "kubepods" / "cpu.max", "50000 100000\n")
    _write(root / "kubepods" / "pod1" / "cpu.max", "400000 100000\n")
    proc = _proc(tmp_path, "0::/kubepods/pod1\n")
    assert cgroup_cpu_quota(proc, str(root)) == pytest.approx(0.5)
    assert usable_cpus(proc, str(root)) == 1  # half a CPU is still one to run on


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    group = root / "cpu,cpuacct" / "docker" / "abc"
    _write(group / "cpu.cfs_quota_us", "300000\n")
    _write(group / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    proc = _proc(tmp_path, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/docker/abc\n")
    assert cgroup_cpu_quota(proc, str(root)) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("files", "proc_text"),
    [
        ({"cpu.max": "max 100000\n"}, "0::/\n"),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/\n"),  # v1, none
        ({"cpu.max": "lots of it\n"}, "0::/\n"),  # unreadable: as none
        ({"cpu.max": "0 100000\n"}, "0::/\n"),  # not a quota the kernel would enforce
        ({}, "garbage\n"),
    ],
)
def test_no_quota_means_the_affinity(tmp_path: Path, files: dict[str, str], proc_text: str) -> None:
    root = tmp_path / "fs"
    for name, text in files.items():
        _write(root / name, text)
    proc = _proc(tmp_path, proc_text)
    assert cgroup_cpu_quota(proc, str(root)) is None
    assert usable_cpus(proc, str(root)) == len(os.sched_getaffinity(0))


def test_missing_proc_file_is_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(str(tmp_path / "absent"), str(tmp_path)) is None
