"""Whole-store operations on a big store, etcd vs etcdpy, in one run: duration and worst probe.

The scenario is the no-stall test's (tests/cluster/nostall.py): a 3-member cluster of each
target filled with --keys keys x --versions versions, then a physical compaction, an
unpaginated range of everything, HashKV on every member, a follower defrag and a snapshot
catch-up of a wiped member, each while a prober does a linearizable get every 50 ms through
another member. Targets run one after the other (never at the same time), with the same
flags and the same seed.

    python bench/nostall.py                       # both targets, 100k keys x 5 versions
    python bench/nostall.py --keys 20000 --targets etcdpy

Prints a Markdown table (duration, worst probe, probes, term changes) with the load average
before and after each target. Nothing is asserted: that is the test's job.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "server")]

from cluster.nostall import OPERATIONS, SERVER_ARGS, OpResult, scenario  # noqa: E402 - after the path setup
from harness import Cluster  # noqa: E402 - after the path setup


def run_target(target: str, keys: int, versions: int, seed: int, base: Path) -> tuple[list[OpResult], str]:
    """One target's scenario on a fresh cluster; returns the results and the load averages seen."""
    load_before = os.getloadavg()
    cluster = Cluster(base / target, size=3, extra_args=SERVER_ARGS, target_name=target)
    cluster.start()
    try:
        results = scenario(cluster, keys, versions, seed, log=lambda line: print(f"[{target}] {line}", flush=True))
    finally:
        cluster.release()
    load_after = os.getloadavg()
    return results, f"{load_before[0]:.1f} -> {load_after[0]:.1f}"


def table(by_target: dict[str, list[OpResult]], loads: dict[str, str]) -> str:
    names = list(by_target)
    head = "| operation | " + " | ".join(f"{t} s | {t} worst probe ms | {t} probes (failed) | {t} term change" for t in names)
    sep = "|---|" + "|".join("--:|--:|--:|:-:" for _ in names) + "|"
    rows = [head + " |", sep]
    for op in OPERATIONS:
        cells = []
        for t in names:
            r = next((x for x in by_target[t] if x.name == op), None)
            if r is None:
                cells.append("- | - | - | -")
                continue
            cells.append(
                f"{r.seconds:.2f} | {r.worst_probe * 1000:.0f} | {r.probes} ({r.failed_probes}) | "
                f"{'yes' if r.term_changed else 'no'}"
            )
        rows.append(f"| {op} | " + " | ".join(cells) + " |")
    rows.append("")
    rows.append("load average (1 min) before -> after: " + ", ".join(f"{t} {loads[t]}" for t in names))
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--versions", type=int, default=5)
    ap.add_argument("--targets", default="etcd,etcdpy", help="comma-separated: etcd, etcdpy")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}; {args.keys} keys x {args.versions} versions; cpus {os.cpu_count()}", flush=True)
    by_target: dict[str, list[OpResult]] = {}
    loads: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="etcdpy-nostall-") as tmp:
        for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
            t0 = time.monotonic()
            by_target[target], loads[target] = run_target(target, args.keys, args.versions, seed, Path(tmp))
            print(f"[{target}] scenario took {time.monotonic() - t0:.0f} s", flush=True)
    print()
    print(table(by_target, loads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
