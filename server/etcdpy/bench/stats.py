"""Latency and throughput summaries.

Kept free of gRPC and processes so the arithmetic can be checked on its own: a bench
whose percentiles are wrong is worse than none, because its ratios look authoritative.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from collections.abc import Iterable, Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence.

    Nearest rank, not interpolation, so a reported p99 is a latency some request
    really had; that is how etcd's benchmark tool reports it too.
    """
    if not sorted_values:
        return math.nan
    if q <= 0:
        return sorted_values[0]
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Summary:
    """One (workload, target) measurement, in the units the report prints."""

    workload: str
    target: str
    ops: int
    duration_s: float
    ops_per_s: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    error_codes: dict[str, int] = field(default_factory=dict)
    error_sample: str = ""
    conflicts: int = 0
    load_avg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rounds_ops_per_s: list[float] = field(default_factory=list)
    """Throughput of each round separately: the spread shows how noisy the machine was."""
    lost: int | None = None
    """watch-fanout only: events a watch never received (must be 0)."""
    writes: int | None = None
    """watch-fanout only: acknowledged writes, pooled over rounds."""
    cpu_us_per_op: float | None = None
    """Server CPU (user + system, every member) per successful request, in microseconds."""
    ops_per_wal_fsync: float | None = None
    """Successful requests per WAL fsync of a member (etcd_disk_wal_fsync_duration_seconds_count)."""
    ops_per_backend_commit: float | None = None
    """Successful requests per backend commit of a member (etcd_disk_backend_commit_duration_seconds_count)."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict; NaN becomes None because JSON has no NaN."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and math.isnan(value):
                out[key] = None
        out["load_avg"] = list(self.load_avg)
        return out


def summarize(
    workload: str,
    target: str,
    latencies_s: Iterable[float],
    duration_s: float,
    error_codes: Counter[str] | dict[str, int],
    *,
    conflicts: int = 0,
    error_sample: str = "",
    load_avg: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Summary:
    """Fold the successful requests' latencies (seconds) into a Summary.

    Throughput counts successes only; failed requests are reported as errors, never
    as work done, so a target that fails fast cannot look fast.
    """
    values = sorted(latencies_s)
    ops = len(values)
    to_ms = 1000.0
    mean = (sum(values) / ops * to_ms) if ops else math.nan
    return Summary(
        workload=workload,
        target=target,
        ops=ops,
        duration_s=duration_s,
        ops_per_s=(ops / duration_s) if duration_s > 0 else math.nan,
        mean_ms=mean,
        p50_ms=percentile(values, 50) * to_ms,
        p90_ms=percentile(values, 90) * to_ms,
        p99_ms=percentile(values, 99) * to_ms,
        max_ms=(values[-1] * to_ms) if values else math.nan,
        errors=sum(error_codes.values()),
        error_codes=dict(error_codes),
        error_sample=error_sample,
        conflicts=conflicts,
        load_avg=load_avg,
    )


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either side is missing or zero."""
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator
