"""HTTP endpoints on the client URL and on --listen-metrics-urls: /health, /version, /metrics, /livez, /readyz.

etcd serves these next to gRPC on the client port (cmux), and on each metrics URL
(/metrics and the health checks, but not /version). The same tests run against
etcd 3.5.1 (ETCDPY_TEST_TARGET=etcd); where 3.5.1 lacks what a later 3.5 release
(followed by etcdpy) does, the test says so and checks that part on etcdpy only.

http.client is used directly (not urllib), so no proxy setting of the machine can
get between the test and the loopback server.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
from pathlib import Path

import pytest

from harness import Etcdctl, EtcdctlError, Member, reserve_port, target, wait_until

ETCD_METRICS = [
    "etcd_server_has_leader",
    "etcd_server_is_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_failed_total",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "etcd_server_version",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
]

NO_LIVEZ_IN_351 = "etcd 3.5.1 (the reference) has no /livez and /readyz (added in 3.5.11); etcdpy implements 3.5.11's"


def get(host_port: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body)."""
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def metric_samples(text: str) -> dict[str, float]:
    """Every sample line of a Prometheus text exposition: 'name{labels}' -> value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The value of `name` whose labels include `labels` (0 when absent)."""
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            return value
    return 0.0


# --------------------------------------------------------------------------- client URL


def test_health_on_client_url(member: Member) -> None:
    status, headers, body = get(member.endpoint, "/health")
    assert status == 200, body
    h = json.loads(body)
    assert h["health"] == "true"
    assert body == b'{"health":"true","reason":""}'
    assert headers["content-type"].startswith("text/plain")


def test_health_serializable(member: Member) -> None:
    status, _, body = get(member.endpoint, "/health?serializable=true")
    assert status == 200, body
    assert json.loads(body)["health"] == "true"


def test_health_is_get_only(member: Member) -> None:
    status, headers, body = get(member.endpoint, "/health", method="POST")
    assert status == 405
    assert headers["allow"] == "GET"
    assert body == b"Method Not Allowed\n"


def test_version(member: Member) -> None:
    status, headers, body = get(member.endpoint, "/version")
    assert status == 200
    assert headers["content-type"] == "application/json"
    v = json.loads(body)
    assert set(v) == {"etcdserver", "etcdcluster"}
    assert re.fullmatch(r"3\.\d+\.\d+", v["etcdserver"])
    assert re.fullmatch(r"3\.\d+\.0", v["etcdcluster"])
    if target() == "etcdpy":  # the version etcdpy claims (README); etcd reports its own
        assert v == {"etcdserver": "3.5.13", "etcdcluster": "3.5.0"}


def test_unknown_path_is_404(member: Member) -> None:
    status, _, body = get(member.endpoint, "/no/such/endpoint")
    assert status == 404
    assert body == b"404 page not found\n"


def test_keep_alive_and_grpc_on_the_same_port(member: Member, prefix: str) -> None:
    """Two HTTP/1.1 requests on one connection, with gRPC traffic on the same port in between."""
    host, port = member.endpoint.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        assert first.status == 200
        first.read()
        member.etcdctl("put", prefix + "k", "v", json=False)
        conn.request("GET", "/version")
        second = conn.getresponse()
        assert second.status == 200
        assert "etcdserver" in json.loads(second.read())
    finally:
        conn.close()


def test_metrics_names(member: Member) -> None:
    status, headers, body = get(member.endpoint, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    samples = metric_samples(text)
    missing = [name for name in ETCD_METRICS if not any(k.partition("{")[0] == name for k in samples)]
    assert not missing, f"missing metrics: {missing}"
    assert sample(samples, "etcd_server_has_leader") == 1
    assert sample(samples, "etcd_server_is_leader") == 1
    assert samples["etcd_server_proposals_applied_total"] >= 1
    assert any(k.startswith("etcd_server_version{server_version=\"3.") for k in samples)
    assert "# TYPE etcd_disk_wal_fsync_duration_seconds histogram" in text
    assert 'etcd_disk_wal_fsync_duration_seconds_bucket{le="0.001"}' in text  # etcd's buckets
    assert 'etcd_disk_wal_fsync_duration_seconds_bucket{le="8.192"}' in text


def test_metrics_counters_grow_with_puts(member: Member, prefix: str) -> None:
    def scrape() -> dict[str, float]:
        return metric_samples(get(member.endpoint, "/metrics")[2].decode())

    labels = {"grpc_method": "Put", "grpc_service": "etcdserverpb.KV", "grpc_type": "unary"}
    before = scrape()
    for i in range(5):
        member.etcdctl("put", f"{prefix}k{i}", "v", json=False)
    after = scrape()
    assert sample(after, "grpc_server_started_total", **labels) >= sample(before, "grpc_server_started_total", **labels) + 5
    assert (sample(after, "grpc_server_handled_total", grpc_code="OK", **labels)
            >= sample(before, "grpc_server_handled_total", grpc_code="OK", **labels) + 5)
    assert after["etcd_server_proposals_applied_total"] >= before["etcd_server_proposals_applied_total"] + 5
    assert after["etcd_server_proposals_committed_total"] >= before["etcd_server_proposals_committed_total"] + 5
    assert after["etcd_disk_wal_fsync_duration_seconds_count"] > before["etcd_disk_wal_fsync_duration_seconds_count"]


def test_metrics_count_errors_by_code(member: Member, prefix: str) -> None:
    """A failed RPC is counted under its gRPC code (here: a txn op on a missing lease)."""
    labels = {"grpc_method": "Put", "grpc_service": "etcdserverpb.KV", "grpc_type": "unary"}
    before = metric_samples(get(member.endpoint, "/metrics")[2].decode())
    with pytest.raises(EtcdctlError):
        member.etcdctl("put", prefix + "k", "v", "--lease=1234abcd", json=False)
    after = metric_samples(get(member.endpoint, "/metrics")[2].decode())
    assert (sample(after, "grpc_server_handled_total", grpc_code="NotFound", **labels)
            >= sample(before, "grpc_server_handled_total", grpc_code="NotFound", **labels) + 1)


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_livez_readyz(member: Member, path: str) -> None:
    if target() == "etcd":
        pytest.skip(NO_LIVEZ_IN_351)
    status, headers, body = get(member.endpoint, path)
    assert status == 200
    assert body == b"ok\n"
    assert headers["content-type"] == "text/plain; charset=utf-8"


def test_readyz_verbose_lists_checks(member: Member) -> None:
    if target() == "etcd":
        pytest.skip(NO_LIVEZ_IN_351)
    status, _, body = get(member.endpoint, "/readyz?verbose")
    assert status == 200
    lines = body.decode().splitlines()
    assert lines[-1] == "ok"
    assert set(lines[:-1]) == {"[+]data_corruption ok", "[+]serializable_read ok", "[+]linearizable_read ok"}
    status, _, body = get(member.endpoint, "/livez?verbose&exclude=serializable_read")
    assert (status, body) == (200, b"ok\n")
    status, _, body = get(member.endpoint, "/readyz/linearizable_read")
    assert (status, body) == (200, b"ok\n")


# --------------------------------------------------------------------------- --listen-metrics-urls


def _metrics_member(tmp_path: Path, initial_cluster: str | None = None) -> tuple[Member, str]:
    metrics = reserve_port()
    m = Member(name="a", base_dir=tmp_path / "a", client=reserve_port(), peer=reserve_port(),
               extra_args=[f"--listen-metrics-urls=http://127.0.0.1:{metrics.port}"])
    m._metrics_reservation = metrics  # type: ignore[attr-defined]  # released with the member
    if initial_cluster is not None:
        m.initial_cluster = initial_cluster.format(self=m.peer_url)
    return m, f"127.0.0.1:{metrics.port}"


def _release(m: Member) -> None:
    m.release()
    m._metrics_reservation.release()  # type: ignore[attr-defined]
    shutil.rmtree(m.base_dir, ignore_errors=True)


def test_listen_metrics_urls_serves_metrics_and_health(tmp_path: Path) -> None:
    m, metrics = _metrics_member(tmp_path)
    try:
        m.start()
        status, _, body = get(metrics, "/health")
        assert status == 200 and json.loads(body)["health"] == "true"
        status, _, body = get(metrics, "/metrics")
        assert status == 200
        names = {k.partition("{")[0] for k in metric_samples(body.decode())}
        assert {"etcd_server_has_leader", "grpc_server_handled_total", "etcd_disk_wal_fsync_duration_seconds_count"} <= names
        # etcd's metrics listener has no /version (only the client URLs do).
        assert get(metrics, "/version")[0] == 404
        # The same counters as on the client URL.
        Etcdctl([m.endpoint])("put", "k", "v", json=False)
        samples = metric_samples(get(metrics, "/metrics")[2].decode())
        assert sample(samples, "grpc_server_handled_total", grpc_method="Put", grpc_code="OK") >= 1
        if target() == "etcdpy":  # /livez: 3.5.11+, not in the reference 3.5.1
            assert get(metrics, "/livez")[:3:2] == (200, b"ok\n")
    finally:
        _release(m)


def test_health_without_leader_is_503(tmp_path: Path) -> None:
    """A member of a two-member cluster whose peer never starts has no leader: 503 on /health."""
    absent = reserve_port()
    m, metrics = _metrics_member(tmp_path, initial_cluster="a={self},b=http://127.0.0.1:" + str(absent.port))
    try:
        m.spawn()  # never ready: no quorum; etcd's metrics listener answers regardless

        def health() -> tuple[int, bytes] | None:
            if not m.running():
                raise AssertionError(f"member exited\n{m.log_tail()}")
            status, _, body = get(metrics, "/health")
            return status, body

        status, body = wait_until(health, 60, "an answer from /health")
        assert status == 503
        h = json.loads(body)
        assert h["health"] == "false"
        assert h == {"health": "false", "reason": "RAFT NO LEADER"}
        if target() == "etcdpy":
            # serializable=true skips the leader check and reads locally: later 3.5 releases
            # (etcdpy follows 3.5.13); the reference etcd 3.5.1 still answers 503 here.
            assert get(metrics, "/health?serializable=true")[0] == 200
    finally:
        _release(m)
        absent.release()
