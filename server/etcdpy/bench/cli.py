"""Command line of `etcdpy bench` / `python -m etcdpy.bench`.

Targets run one after the other with the identical load shape; each started target
gets fresh data directories and is stopped before the next one starts, so the two
servers never compete for the same two cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from etcdpy.bench.report import Report, filesystem_of, machine_info
from etcdpy.bench.runner import Log, Measurement, RunConfig, preload, preload_prefix, run_workload
from etcdpy.bench.targets import (
    DEFAULT_ETCD_BIN,
    KINDS,
    LocalCluster,
    Target,
    TargetError,
    etcd_binary_version,
    parse_endpoint,
    server_version,
    wait_ready,
)
from etcdpy.bench.workloads import PRELOADED, WORKLOADS

KNOWN_TARGETS = KINDS


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    """Flags; defaults match the anchor measurement in the project's reference notes."""
    p = argparse.ArgumentParser(
        prog="etcdpy bench",
        description="Compare etcdpy with etcd under the same load; reports ratios etcdpy / etcd.",
        epilog="workloads: " + "; ".join(f"{k}: {v}" for k, v in WORKLOADS.items()),
    )
    p.add_argument("--targets", type=_csv, default=["etcd", "etcdpy"], help="targets to start: etcd, etcd35 (--etcd35-bin), etcdpy (its default gRPC server), "
        "etcdpy-native, etcdpy-grpcio")
    p.add_argument(
        "--endpoints",
        action="append",
        default=[],
        metavar="[NAME=]HOST:PORT[,HOST:PORT...]",
        help="benchmark already-running servers instead of starting any (repeatable, one per target; "
        "NAME defaults to 'external')",
    )
    p.add_argument("--workloads", type=_csv, default=list(WORKLOADS), help="comma-separated, see below")
    p.add_argument("--members", type=int, choices=(1, 3, 5), default=1, help="cluster size for started targets")
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight per client process")
    p.add_argument("--serial", action="store_true", help="1 client, 1 request in flight: single-client latency")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per workload")
    p.add_argument("--requests", type=int, default=None, help="measure this many requests instead of a duration")
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat each workload, alternating target order; rounds are pooled"
    )
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each measurement")
    p.add_argument("--keyspace", type=int, default=10_000, help="number of distinct keys")
    p.add_argument("--value-size", type=int, default=256, help="bytes per value")
    p.add_argument("--watchers", type=int, default=1000, help="watch-fanout: watches on the prefix in total")
    p.add_argument("--watch-streams", type=int, default=10, help="watch-fanout: Watch streams they are spread over")
    p.add_argument(
        "--watch-rate", type=float, default=20.0, help="watch-fanout: writer puts per second (0: back to back)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per-request deadline in seconds")
    p.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds a target gets to answer a linearizable Range"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--etcd-bin", default=DEFAULT_ETCD_BIN)
    p.add_argument("--etcd35-bin", default=None, help="etcd binary of the etcd35 target (e.g. etcd 3.5.1)")
    p.add_argument("--data-root", default=None, help="where temp data dirs go (default: system temp dir)")
    p.add_argument("--keep-data", action="store_true", help="keep data dirs and logs of started targets")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--output", default=None, help="also write the report to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and validate; errors exit with argparse's usage message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    if not args.endpoints:
        bad = [t for t in args.targets if t not in KNOWN_TARGETS]
        if bad:
            parser.error(f"unknown target(s) {bad}; known: {', '.join(KNOWN_TARGETS)}")
    if "etcd35" in args.targets and not args.endpoints and not args.etcd35_bin:
        parser.error("target etcd35 needs --etcd35-bin (an etcd 3.5 binary)")
    if args.serial:
        args.clients, args.concurrency = 1, 1
    if min(args.clients, args.concurrency, args.keyspace) < 1 or args.value_size < 0:
        parser.error("--clients, --concurrency and --keyspace must be >= 1, --value-size >= 0")
    if min(args.watchers, args.watch_streams) < 1 or args.watch_rate < 0:
        parser.error("--watchers and --watch-streams must be >= 1, --watch-rate >= 0")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be >= 1")
    if args.requests is None and args.duration <= 0:
        parser.error("--duration must be > 0")
    return args


def run_config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        clients=args.clients,
        concurrency=args.concurrency,
        duration_s=args.duration,
        requests=args.requests,
        warmup_s=max(0.0, args.warmup),
        keyspace=args.keyspace,
        value_size=args.value_size,
        timeout_s=args.timeout,
        seed=args.seed,
        watchers=args.watchers,
        watch_streams=args.watch_streams,
        watch_rate=args.watch_rate,
    )


def external_targets(specs: list[str]) -> list[Target]:
    """Parse repeated --endpoints values into targets."""
    targets: list[Target] = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep:
            name, rest = "external" if len(specs) == 1 else f"external{len(targets) + 1}", spec
        targets.append(Target(name=name, endpoints=[parse_endpoint(e) for e in _csv(rest)]))
    return targets


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit status 1 if any target or workload could not be measured."""
    args = parse_args(argv)
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    cfg = run_config(args)
    report = Report(machine=machine_info(etcd_binary_version(args.etcd_bin)), settings=_settings(args, cfg))
    if args.endpoints:
        targets = external_targets(args.endpoints)
    else:
        targets = [
            Target(
                kind,
                [],
                LocalCluster(kind, args.members, args.etcd_bin, args.data_root, args.keep_data, etcd35_bin=args.etcd35_bin),
            )
            for kind in args.targets
        ]
    try:
        live = _bring_up(targets, args, report, log)
        _run_all(live, args, cfg, report, log)
    finally:
        for target in targets:
            _tear_down(target, args, log)
    report.machine["load_avg_end"] = list(os.getloadavg())
    _emit(report, args)
    return 1 if report.failures else 0


def _bring_up(targets: list[Target], args: argparse.Namespace, report: Report, log: Log) -> list[Target]:
    """Start every local target (all at once: startup overlaps), then wait for each.

    All targets stay up for the whole run so that measurements of the same workload on
    different targets can be taken back to back, under the same background load.
    """
    starting = []
    for target in targets:
        if target.cluster is None:
            starting.append(target)
            continue
        log(f"{target.name}: starting {args.members} member(s)")
        try:
            target.cluster.start()
        except (OSError, TargetError) as exc:
            _fail(report, target.name, str(exc), log)
            _tear_down(target, args, log)
            continue
        target.endpoints = target.cluster.endpoints
        starting.append(target)
    live = []
    for target in starting:
        try:
            wait_ready(target, args.ready_timeout)
        except (OSError, TargetError) as exc:
            _fail(report, target.name, str(exc), log)
            _tear_down(target, args, log)  # stop now: it must not load the others' runs
            continue
        target.version = server_version(target.endpoints[0])
        report.targets[target.name] = {
            "endpoints": target.endpoints,
            "version": target.version,
            "started": target.cluster is not None,
            "data_fs": filesystem_of(args.data_root or tempfile.gettempdir()) if target.cluster else "",
        }
        live.append(target)
    return live


def _run_all(live: list[Target], args: argparse.Namespace, cfg: RunConfig, report: Report, log: Log) -> None:
    """Workload by workload, round by round, alternate the target order and pool rounds.

    Alternating (etcd, etcdpy), (etcdpy, etcd), ... cancels the drift of the machine's
    background load between the two; a failure stops only that target or workload.
    """
    loaded: dict[str, set[bytes]] = {t.name: set() for t in live}
    for workload in args.workloads:
        pooled: dict[str, Measurement] = {}
        for rnd in range(args.rounds):
            for target in live if rnd % 2 == 0 else live[::-1]:
                if target.name in report.failures or f"{target.name}/{workload}" in report.failures:
                    continue
                measured = _run_once(target, workload, cfg, loaded[target.name], report, log)
                if measured is not None:
                    pooled.setdefault(target.name, Measurement()).add(measured)
        for target in live:
            failed = target.name in report.failures or f"{target.name}/{workload}" in report.failures
            if target.name in pooled and not failed:
                report.results.append(pooled[target.name].summary(workload, target.name))


def _run_once(
    target: Target, workload: str, cfg: RunConfig, loaded: set[bytes], report: Report, log: Log
) -> Measurement | None:
    """One round of one workload on one target; None (and a recorded failure) if it broke."""
    try:
        prefix = preload_prefix(workload)
        if workload in PRELOADED and prefix not in loaded:
            log(f"  {target.name}: preloading {cfg.keyspace} keys")
            preload(target, prefix, cfg)
            loaded.add(prefix)
        measured = run_workload(target, workload, cfg, log)
        if target.cluster is not None:
            target.cluster.check_alive()
    except TargetError as exc:
        _fail(report, target.name, str(exc), log)
        if target.cluster is not None:
            target.cluster.stop()
        return None
    except Exception as exc:  # noqa: BLE001 - BenchError, or e.g. a gRPC error during preload
        _fail(report, f"{target.name}/{workload}", f"{type(exc).__name__}: {exc}", log)
        return None
    s = measured.summary(workload, target.name)
    log(
        f"  {target.name} {workload}: {s.ops_per_s:,.0f} ops/s, p50 {s.p50_ms:.2f} ms, "
        f"p99 {s.p99_ms:.2f} ms, {s.errors} errors"
    )
    return measured


def _fail(report: Report, key: str, reason: str, log: Log) -> None:
    report.failures[key] = reason
    log(f"{key}: FAILED: {reason}")


def _tear_down(target: Target, args: argparse.Namespace, log: Log) -> None:
    """Stop what we started (once); say where the logs are if they were kept."""
    if target.cluster is None or target.cluster.stopped:
        return
    target.cluster.stop()
    if args.keep_data and target.cluster.root is not None:
        log(f"{target.name}: data and logs kept in {target.cluster.root}")


def _settings(args: argparse.Namespace, cfg: RunConfig) -> dict[str, object]:
    out: dict[str, object] = asdict(cfg)
    out.update(
        workloads=args.workloads,
        members=args.members,
        serial=args.serial,
        rounds=args.rounds,
        targets=[t.name for t in external_targets(args.endpoints)] if args.endpoints else args.targets,
        etcd_bin=args.etcd_bin,
    )
    return out


def _emit(report: Report, args: argparse.Namespace) -> None:
    text = report.to_json() if args.json else report.to_markdown()
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    if args.output:
        Path(args.output).write_text(text)
