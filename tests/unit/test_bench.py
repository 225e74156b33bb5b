"""Functional checks of `etcdpy.bench`: it runs, it reports, its arithmetic is right.

Never a timing assertion: speed is something the bench reports (as a ratio against etcd
in the same run), not something a test can demand of a shared 2-core machine.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from etcdpy.bench import main
from etcdpy.bench.report import Report
from etcdpy.bench.stats import percentile, summarize
from etcdpy.bench.workloads import KeyChooser
from harness import etcd_binary

ETCD_BIN = os.environ.get("ETCDPY_BENCH_ETCD_BIN") or etcd_binary()


def test_percentile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_summary_counts_only_successes() -> None:
    s = summarize("put", "etcd", [0.001] * 10, 2.0, {"UNAVAILABLE": 3})
    assert s.ops == 10 and s.errors == 3
    assert s.ops_per_s == pytest.approx(5.0)
    assert s.p50_ms == pytest.approx(1.0)


def test_ratio_rows_compare_with_etcd() -> None:
    report = Report(machine={}, settings={})
    report.results = [
        summarize("put", "etcd", [0.002] * 100, 1.0, {}),
        summarize("put", "etcdpy", [0.004] * 50, 1.0, {}),
    ]
    (row,) = report.ratios()
    assert row["target"] == "etcdpy" and row["baseline"] == "etcd"
    assert row["ops_per_s"] == pytest.approx(0.5)
    assert row["p99_ms"] == pytest.approx(2.0)


def test_txn_key_shares_are_disjoint() -> None:
    import random

    rng = random.Random(0)
    shares = [{KeyChooser(b"k/", 10, w, 3).pick(rng) for _ in range(200)} for w in range(3)]
    assert not (shares[0] & shares[1] or shares[1] & shares[2] or shares[0] & shares[2])
    assert sum(len(s) for s in shares) == 10


@pytest.mark.skipif(not Path(ETCD_BIN).exists(), reason=f"no etcd binary at {ETCD_BIN}")
def test_bench_against_real_etcd(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A ~1 s run of every workload against a real etcd: structure and zero errors."""
    out_file = tmp_path / "report.json"
    argv = [
        "--targets", "etcd", "--etcd-bin", ETCD_BIN,
        "--workloads", "put,range,range-serializable,txn",
        "--clients", "2", "--concurrency", "4",
        "--duration", "0.25", "--warmup", "0.05",
        "--keyspace", "64", "--value-size", "32",
        "--data-root", str(tmp_path),
        "--json", "--output", str(out_file), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out_file.read_text())
    assert doc["failures"] == {}
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["etcd_version"]
    assert doc["targets"]["etcd"]["version"].startswith("3.")
    rows = {(r["workload"], r["target"]): r for r in doc["results"]}
    assert set(rows) == {(w, "etcd") for w in ("put", "range", "range-serializable", "txn")}
    for row in rows.values():
        assert row["errors"] == 0, row
        assert row["ops"] > 0 and row["ops_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert doc["ratios"] == []  # nothing to compare etcd with in this run
    assert not list(tmp_path.glob("etcdpy-bench-*")), "temp data dirs must be removed"


@pytest.mark.skipif(not Path(ETCD_BIN).exists(), reason=f"no etcd binary at {ETCD_BIN}")
def test_markdown_report_and_request_budget(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--requests measures exactly that many requests; Markdown has the table header."""
    argv = [
        "--targets", "etcd", "--etcd-bin", ETCD_BIN, "--workloads", "put", "--serial",
        "--requests", "50", "--warmup", "0", "--data-root", str(tmp_path), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| workload | target | ops/s |" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| put | etcd |"))
    cells = [c.strip() for c in line.split("|")]
    assert cells[11] == "0"  # errors column
    assert "CPU µs/op" in text and "ops/fsync" in text
    float(cells[8].replace(",", ""))  # server CPU per request: a number, not "-"
    # One request in flight: every put waits for its own WAL fsync, so about one put per fsync
    # (read from etcd's /metrics; the window edges may split one).
    assert 0.5 <= float(cells[9]) <= 2.0, line
    # Puts per backend commit: etcd commits its backend every 100 ms, so a window this short may
    # hold no commit ("-"); otherwise a positive number.
    assert cells[10] == "-" or float(cells[10].replace(",", "")) > 0, line
    assert "load average" in text


def test_process_cpu_seconds_reads_proc_stat() -> None:
    """The CPU column's source: this process's own utime + stime grows as it burns CPU."""
    import os

    from etcdpy.bench.targets import process_cpu_seconds, process_tree_cpu_seconds

    before = process_cpu_seconds(os.getpid())
    x = 0
    while process_cpu_seconds(os.getpid()) - before < 0.05:
        x += sum(range(1000))
    assert process_tree_cpu_seconds(os.getpid()) >= process_cpu_seconds(os.getpid()) > before
    assert process_cpu_seconds(2**22 + 12345) == 0.0  # gone: no error


def test_unstartable_target_is_reported_not_raised(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A target that dies at start shows up under failures and sets exit status 1."""
    argv = [
        "--targets", "etcd", "--etcd-bin", "/bin/false", "--workloads", "put",
        "--duration", "0.1", "--data-root", str(tmp_path), "--json", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 1
    doc = json.loads(capsys.readouterr().out)
    assert "etcd" in doc["failures"] and doc["results"] == []


@pytest.mark.skipif(not Path(ETCD_BIN).exists(), reason=f"no etcd binary at {ETCD_BIN}")
def test_watch_fanout_against_real_etcd(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """~1 s of watch-fanout: every watch saw every acknowledged write once, nothing lost."""
    argv = [
        "--targets", "etcd", "--etcd-bin", ETCD_BIN, "--workloads", "watch-fanout",
        "--clients", "2", "--watchers", "20", "--watch-streams", "3", "--watch-rate", "50",
        "--duration", "0.5", "--warmup", "0.1", "--timeout", "5",
        "--data-root", str(tmp_path), "--json", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["failures"] == {}
    (row,) = doc["results"]
    assert (row["workload"], row["target"]) == ("watch-fanout", "etcd")
    assert row["errors"] == 0, row
    assert row["writes"] > 0 and row["lost"] == 0, row
    assert row["ops"] > 0 and row["ops"] <= row["writes"] * 20
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]


@pytest.mark.skipif(not Path(ETCD_BIN).exists(), reason=f"no etcd binary at {ETCD_BIN}")
def test_lease_keepalive_against_real_etcd(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """~1 s of lease-keepalive: keep-alives answered on every stream, zero errors."""
    argv = [
        "--targets", "etcd", "--etcd-bin", ETCD_BIN, "--workloads", "lease-keepalive",
        "--clients", "2", "--concurrency", "4", "--duration", "0.5", "--warmup", "0.1",
        "--data-root", str(tmp_path), "--json", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["failures"] == {}
    (row,) = doc["results"]
    assert (row["workload"], row["target"]) == ("lease-keepalive", "etcd")
    assert row["errors"] == 0, row
    assert row["ops"] > 0 and row["lost"] is None
    assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
