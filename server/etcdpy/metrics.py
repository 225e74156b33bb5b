"""Prometheus metrics under etcd's names, kept cheap on the hot path.

Why this shape: the write path runs on one event-loop thread that is also the
server's bottleneck, so instrumentation there must cost next to nothing. Hot
counters and histograms are plain Python numbers updated on the loop thread
(no locks: there is exactly one writer), and everything that is already state
of the server (leader, applied index, db size, ...) is not tracked at all but
read when Prometheus scrapes, by `EtcdCollector`. The scrape also runs on the
loop thread, so it sees consistent numbers without any locking either.

Each server gets its own `CollectorRegistry` (`build_registry`): no global
registry state, so several servers can live in one test process.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """Upper bounds start, start*factor, ... (Go's prometheus.ExponentialBuckets)."""
    return tuple(start * factor**i for i in range(count))


# etcd's bucket layouts, so dashboards built for etcd read etcdpy the same way.
WAL_FSYNC_BUCKETS = exponential_buckets(0.001, 2, 14)  # 1 ms .. 8.192 s
BACKEND_COMMIT_BUCKETS = exponential_buckets(0.001, 2, 14)
PEER_RTT_BUCKETS = exponential_buckets(0.0001, 2, 16)  # 0.1 ms .. 3.2768 s (etcd 3.5)


class Histogram:
    """A histogram written by one thread and read at scrape time: a list of counts and a sum.

    `observe` is one bisect and two additions; prometheus_client's own Histogram takes a
    lock per observation, which the single-writer loop thread does not need.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last slot: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, cumulative count) pairs as the Prometheus text format wants them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts):
            total += n
            out.append((_float_str(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


def _float_str(x: float) -> str:
    """Bucket labels as Go prints them (0.001, 8.192), without binary float noise."""
    return repr(round(x, 10))


class GrpcCounters:
    """grpc_server_started_total / grpc_server_handled_total, as go-grpc-prometheus counts them.

    Keys are tuples built once per method by the interceptor; a call costs two dict updates.
    """

    __slots__ = ("started", "handled")

    def __init__(self) -> None:
        self.started: dict[tuple[str, str, str], int] = {}  # (type, service, method)
        self.handled: dict[tuple[str, str, str, str], int] = {}  # (type, service, method, code)


class ServerMetrics:
    """The counters and histograms the server updates itself; everything else is read at scrape."""

    def __init__(self) -> None:
        self.wal_fsync = Histogram(WAL_FSYNC_BUCKETS)
        self.backend_commit = Histogram(BACKEND_COMMIT_BUCKETS)
        self.peer_rtt: dict[int, Histogram] = {}
        self.proposals_failed = 0
        self.health_success = 0
        self.health_failures = 0
        self.grpc = GrpcCounters()

    def observe_peer_rtt(self, peer_id: int, seconds: float) -> None:
        """Hook for the peer transport (rafthttp's `on_rtt`): one ping round trip to `peer_id`."""
        h = self.peer_rtt.get(peer_id)
        if h is None:
            h = self.peer_rtt[peer_id] = Histogram(PEER_RTT_BUCKETS)
        h.observe(seconds)


class ServerView(Protocol):
    """What the collector reads from `EtcdServer` (kept structural so metrics never imports it)."""

    metrics: ServerMetrics
    member_id: int
    lead: int
    leader_changes: int
    kv: Any
    wait: Any
    progress: Any
    cluster: Any
    cfg: Any


class EtcdCollector(Collector):
    """Builds every etcd metric family from the live server at scrape time."""

    def __init__(self, server: ServerView, server_version: str, cluster_version: str) -> None:
        self.server = server
        self.server_version = server_version
        self.cluster_version = cluster_version

    def collect(self) -> Iterator[Metric]:
        yield from self._server_families()
        yield from self._storage_families()
        yield from self._network_families()
        yield from self._grpc_families()

    def _server_families(self) -> Iterator[Metric]:
        s = self.server
        m = s.metrics
        yield _gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.",
                     1 if s.lead else 0)
        yield _gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                     1 if s.lead and s.lead == s.member_id else 0)
        me = s.cluster.members.get(s.member_id) if s.cluster is not None else None
        yield _gauge("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                     1 if me is not None and me.is_learner else 0)
        yield _counter("etcd_server_leader_changes_seen", "The number of leader changes seen.", s.leader_changes)
        # etcd exports these two as gauges that carry the raft indexes, despite the _total suffix.
        yield _gauge("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.",
                     s.progress.committed_index)
        yield _gauge("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.",
                     s.progress.applied_index)
        yield _gauge("etcd_server_proposals_pending", "The current number of pending proposals to commit.",
                     len(s.wait))
        yield _counter("etcd_server_proposals_failed", "The total number of failed proposals seen.",
                       m.proposals_failed)
        yield _untyped("etcd_server_health_success", "The total number of successful health checks",
                       m.health_success)
        yield _untyped("etcd_server_health_failures", "The total number of failed health checks", m.health_failures)
        yield _gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.",
                     s.cfg.effective_quota)
        yield _labelled_one("etcd_server_version",
                            "Which version is running. 1 for 'server_version' label with current version.",
                            "server_version", self.server_version)
        yield _labelled_one("etcd_cluster_version",
                            "Which version is running. 1 for 'cluster_version' label with current cluster version",
                            "cluster_version", self.cluster_version)
        yield _labelled_one("etcd_server_id",
                            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                            "server_id", f"{s.member_id:x}")

    def _storage_families(self) -> Iterator[Metric]:
        s = self.server
        m = s.metrics
        yield _histogram("etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.",
                         m.wal_fsync)
        yield _histogram("etcd_disk_backend_commit_duration_seconds",
                         "The latency distributions of commit called by backend.", m.backend_commit)
        kv = s.kv
        if kv is None:
            return
        try:
            size, in_use, keys = kv.size(), kv.size_in_use(), kv.index.live_count
        except Exception:  # noqa: BLE001 - the store closed under the scrape (shutdown): skip these
            return
        yield _gauge("etcd_mvcc_db_total_size_in_bytes",
                     "Total size of the underlying database physically allocated in bytes.", size)
        yield _gauge("etcd_mvcc_db_total_size_in_use_in_bytes",
                     "Total size of the underlying database logically in use in bytes.", min(in_use, size))
        yield _gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", keys)
        yield _gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", kv.current_rev)
        yield _gauge("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.",
                     max(0, kv.compact_rev))

    def _network_families(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily("etcd_network_peer_round_trip_time_seconds",
                                    "Round-Trip-Time histogram between peers", labels=["To"])
        for peer_id, h in sorted(self.server.metrics.peer_rtt.items()):
            fam.add_metric([f"{peer_id:x}"], h.cumulative(), h.sum)
        yield fam

    def _grpc_families(self) -> Iterator[Metric]:
        g = self.server.metrics.grpc
        started = CounterMetricFamily("grpc_server_started", "Total number of RPCs started on the server.",
                                      labels=["grpc_method", "grpc_service", "grpc_type"])
        for (typ, service, method), n in sorted(g.started.items()):
            started.add_metric([method, service, typ], n)
        yield started
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=["grpc_code", "grpc_method", "grpc_service", "grpc_type"],
        )
        for (typ, service, method, code), n in sorted(g.handled.items()):
            handled.add_metric([code, method, service, typ], n)
        yield handled


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """A counter; prometheus_client appends the `_total` suffix on exposition."""
    return CounterMetricFamily(name, doc, value=value)


def _untyped(name: str, doc: str, value: float) -> Metric:
    """etcd's counters whose names lack `_total`: exposed untyped so the name stays etcd's."""
    m = Metric(name, doc, "unknown")
    m.add_sample(name, {}, value)
    return m


def _labelled_one(name: str, doc: str, label: str, value: str) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=[label])
    fam.add_metric([value], 1)
    return fam


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc)
    fam.add_metric([], h.cumulative(), h.sum)
    return fam


def build_registry(server: ServerView, server_version: str, cluster_version: str) -> CollectorRegistry:
    """A private registry: etcd's families plus the standard process_* (and python_info) ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EtcdCollector(server, server_version, cluster_version))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
