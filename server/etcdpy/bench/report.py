"""The bench report: machine facts, settings, one Markdown table per workload.

The machine facts (cores, load average, versions, filesystem of the data dir) are part
of the result, not decoration: a ratio measured on a loaded 2-core box means something
different from one measured on an idle 16-core one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

from etcdpy.bench.stats import Summary, ratio

BASELINE = "etcd"
"""Ratios are always <other target> / etcd: etcd is the yardstick."""


@dataclass
class Report:
    """Everything one bench invocation measured."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[Summary] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def ratios(self) -> list[dict[str, Any]]:
        """For each workload and non-etcd target: throughput and p99 relative to etcd."""
        out = []
        for workload in _workloads(self.results):
            rows = {r.target: r for r in self.results if r.workload == workload}
            base = rows.get(BASELINE)
            if base is None:
                continue
            for name, row in rows.items():
                if name == BASELINE:
                    continue
                out.append(
                    {
                        "workload": workload,
                        "target": name,
                        "baseline": BASELINE,
                        "ops_per_s": _nan_none(ratio(row.ops_per_s, base.ops_per_s)),
                        "p99_ms": _nan_none(ratio(row.p99_ms, base.p99_ms)),
                        "cpu_us_per_op": _nan_none(ratio(_nan(row.cpu_us_per_op), _nan(base.cpu_us_per_op))),
                    }
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The --json document."""
        return {
            "machine": self.machine,
            "settings": self.settings,
            "targets": self.targets,
            "results": [r.to_dict() for r in self.results],
            "ratios": self.ratios(),
            "failures": self.failures,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def to_markdown(self) -> str:
        """Human report: header lines, then one table per workload."""
        lines = ["# etcdpy bench", ""]
        lines += [f"- {k}: {v}" for k, v in _machine_lines(self.machine)]
        lines += [f"- {k}: {v}" for k, v in _settings_lines(self.settings, self.targets)]
        for name, reason in self.failures.items():
            lines.append(f"- **{name} failed**: {reason.splitlines()[0] if reason else 'unknown'}")
        ratios = self.ratios()
        workloads = _workloads(self.results)
        for workload in workloads:
            lines += ["", *_table(workload, [r for r in self.results if r.workload == workload], ratios)]
        spread = [r for r in self.results if len(r.rounds_ops_per_s) > 1]
        if spread:
            lines += ["", "Per-round ops/s (the spread is the noise floor of this machine):"]
            lines += [
                f"- {r.workload} / {r.target}: " + ", ".join(f"{x:,.0f}" for x in r.rounds_ops_per_s) for r in spread
            ]
        notes = [r for r in self.results if r.errors]
        if notes:
            lines += ["", "Errors:"]
            lines += [f"- {r.workload} / {r.target}: {r.error_codes} e.g. `{r.error_sample}`" for r in notes]
        return "\n".join(lines) + "\n"


HEADER = (
    "| workload | target | ops/s | mean ms | p50 ms | p90 ms | p99 ms | CPU µs/op | ops/fsync | ops/commit "
    "| errors | load 1m |"
)
RULE = "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"


def _table(workload: str, rows: list[Summary], ratios: list[dict[str, Any]]) -> list[str]:
    """One workload's table: a row per target, then a ratio row per non-etcd target."""
    out = [HEADER, RULE]
    for r in rows:
        extra = f" ({r.conflicts} conflicts)" if r.conflicts else ""
        if r.lost is not None:
            extra += f" ({r.lost} lost, {r.writes} writes)"
        out.append(
            f"| {workload} | {r.target} | {_num(r.ops_per_s, 0)} | {_num(r.mean_ms)} | {_num(r.p50_ms)} "
            f"| {_num(r.p90_ms)} | {_num(r.p99_ms)} | {_num(_nan(r.cpu_us_per_op), 0)} "
            f"| {_num(_nan(r.ops_per_wal_fsync), 1)} | {_num(_nan(r.ops_per_backend_commit), 1)} "
            f"| {r.errors}{extra} | {r.load_avg[0]:.2f} |"
        )
    for q in ratios:
        if q["workload"] == workload:
            out.append(
                f"| {workload} | {q['target']} / {q['baseline']} | {_times(q['ops_per_s'])} |  |  |  "
                f"| {_times(q['p99_ms'])} | {_times(q.get('cpu_us_per_op'))} |  |  |  |  |"
            )
    return out


def _machine_lines(m: dict[str, Any]) -> list[tuple[str, str]]:
    load = m.get("load_avg_start", [0, 0, 0])
    end = m.get("load_avg_end")
    load_text = "/".join(f"{x:.2f}" for x in load) + " at start"
    if end:
        load_text += ", " + "/".join(f"{x:.2f}" for x in end) + " at end"
    return [
        ("machine", f"{m['nproc']} CPUs ({m.get('cpu_model', '?')}), {m['platform']}"),
        ("software", f"Python {m['python']}, grpcio {m['grpcio']}, etcd {m['etcd_version']}"),
        ("load average (1/5/15 min)", load_text),
        ("date", m["date"]),
    ]


def _settings_lines(s: dict[str, Any], targets: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    amount = f"{s['requests']} requests" if s.get("requests") else f"{s['duration_s']:g} s"
    load = (
        f"{s['clients']} client processes x {s['concurrency']} in flight, {amount} "
        f"after {s['warmup_s']:g} s warm-up; keyspace {s['keyspace']}, values {s['value_size']} B"
    )
    if s.get("serial"):
        load += " (serial: single-client latency)"
    if "watch-fanout" in s.get("workloads", []):
        load += (
            f"; watch-fanout: {s.get('watchers')} watches over {s.get('watch_streams')} streams, "
            f"1 writer at {s.get('watch_rate'):g} puts/s (0: back to back)"
        )
    if s.get("rounds", 1) > 1:
        load += f"; {s['rounds']} rounds per workload, target order alternating, rounds pooled"
    where = "; ".join(
        f"{name}: {len(t.get('endpoints', []))} member(s){' (' + t['version'] + ')' if t.get('version') else ''}"
        f"{', data on ' + t['data_fs'] if t.get('data_fs') else ''}"
        for name, t in targets.items()
    )
    return [("load", load), ("targets", where or "none")]


def _workloads(results: list[Summary]) -> list[str]:
    """Workload names in the order they ran."""
    return list(dict.fromkeys(r.workload for r in results))


def _num(x: float, digits: int = 2) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


def _times(x: float | None) -> str:
    return "-" if x is None else f"**{x:.2f}x**"


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def machine_info(etcd_version: str) -> dict[str, Any]:
    """Facts about where this ran; taken once, at the start."""
    import grpc

    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "grpcio": grpc.__version__,
        "etcd_version": etcd_version,
        "load_avg_start": list(os.getloadavg()),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem_of(path: str) -> str:
    """The filesystem type holding `path` (tmpfs vs ext4 changes fsync cost entirely)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return ""
    real = os.path.realpath(path)
    best = ("", "")
    for fields in mounts:
        if len(fields) >= 3 and (real == fields[1] or real.startswith(fields[1].rstrip("/") + "/")):
            if len(fields[1]) >= len(best[0]):
                best = (fields[1], fields[2])
    return best[1]
