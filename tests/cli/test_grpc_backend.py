"""The client-port gRPC server backends (`--experimental-grpc-server=native|grpcio`), on real processes.

The whole compat and cluster suites run on either backend with ``ETCDPY_GRPC_SERVER``
(the harness passes it through to every member); these tests pin what is specific to
the choice: the flag itself, one server process answering gRPC (unary, server
streaming, bidirectional), HTTP/1.1 and the /v3 gateway on the same port, metrics
counted without interceptors, and an https:// URL beside a plain one (the native
server has no TLS, so a grpcio server takes that listener).
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from harness import SERVER_SRC, Cluster, Etcdctl, Member, reserve_port, target

pytestmark = pytest.mark.skipif(target() != "etcdpy", reason="etcdpy's own gRPC server choice")
BACKENDS = ("native", "grpcio")


def _http(member: Member, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(member.host, member.client.port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _handled(metrics: str, method: str, code: str) -> float:
    pattern = rf'grpc_server_handled_total\{{grpc_code="{code}",grpc_method="{method}",[^}}]*\}} (\S+)'
    m = re.search(pattern, metrics)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_serves_grpc_http_and_gateway_on_one_port(
    backend: str, make_cluster: Callable[..., Cluster]
) -> None:
    member = make_cluster(extra_args=[f"--experimental-grpc-server={backend}"]).members[0]
    assert re.search(rf'"grpc-server": "{backend}"', member.stdout_path.read_text() + member.stderr_path.read_text())
    c = member.grpc()
    # unary, with hasleader metadata and a deadline
    c.kv.Put(c.pb.PutRequest(key=b"bk/a", value=b"1"), metadata=[("hasleader", "true")], timeout=10)
    got = c.kv.Range(c.pb.RangeRequest(key=b"bk/a"), timeout=10)
    assert [kv.value for kv in got.kvs] == [b"1"]
    # etcd's own error for a bad request, word for word
    with pytest.raises(grpc.RpcError) as err:
        c.kv.Put(c.pb.PutRequest(key=b""), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "etcdserver: key is not provided"
    # bidirectional: a watch sees the next put; a keep-alive renews a lease
    requests = iter([c.pb.WatchRequest(create_request=c.pb.WatchCreateRequest(key=b"bk/w"))])
    stream = c.watch.Watch(requests, timeout=10)
    created = next(stream)
    assert created.created
    c.kv.Put(c.pb.PutRequest(key=b"bk/w", value=b"x"), timeout=10)
    event = next(stream)
    assert [e.kv.value for e in event.events] == [b"x"]
    stream.cancel()
    lease = c.lease.LeaseGrant(c.pb.LeaseGrantRequest(TTL=30), timeout=10)
    keepalive = c.lease.LeaseKeepAlive(iter([c.pb.LeaseKeepAliveRequest(ID=lease.ID)]), timeout=10)
    assert next(keepalive).TTL == 30
    # server streaming (Snapshot) works and ends cleanly
    chunks = list(c.maintenance.Snapshot(c.pb.SnapshotRequest(), timeout=30))
    assert chunks and chunks[-1].remaining_bytes == 0
    # HTTP/1.1 on the same port: health, the JSON gateway, metrics counted per method and code
    status, body = _http(member, "GET", "/health")
    assert status == 200 and json.loads(body)["health"] == "true"
    status, body = _http(member, "POST", "/v3/kv/range", b'{"key":"YmsvYQ=="}')
    assert status == 200 and json.loads(body)["kvs"][0]["value"] == "MQ=="
    status, body = _http(member, "GET", "/metrics")
    metrics = body.decode()
    assert _handled(metrics, "Put", "OK") >= 2
    assert _handled(metrics, "Put", "InvalidArgument") == 1
    assert _handled(metrics, "Snapshot", "OK") == 1
    assert re.search(r'grpc_server_started_total\{[^}]*grpc_method="Watch"[^}]*\} 1', metrics)


@pytest.mark.parametrize("backend", BACKENDS)
def test_url_endpoints_of_etcdctl_cluster_commands(backend: str, make_cluster: Callable[..., Cluster]) -> None:
    """etcdctl 3.4's --cluster commands send ``http://host:port`` as :authority, which h2 (under
    pygrpc-native) refuses; the front routes such connections to grpcio (etcdpy.api.h2route)."""
    member = make_cluster(extra_args=[f"--experimental-grpc-server={backend}"]).members[0]
    ctl = Etcdctl([member.client_url])
    statuses = ctl("endpoint", "status", "--cluster")
    assert len(statuses) == 1
    ctl("put", "url/a", "1", json=False)
    ctl("defrag", "--cluster", json=False)


def test_native_backend_serves_https_beside_http(tmp_path: Path) -> None:
    """pygrpc-native has no TLS: the https:// URL is served by grpcio, the http:// one natively."""
    from tlscerts import CA

    ca = CA(tmp_path / "ca")
    server = ca.issue("server", "etcd-server")
    tls = reserve_port()
    member = Member(name="mixed", base_dir=tmp_path / "m", client=reserve_port(), peer=reserve_port())
    member.extra_args = [
        "--experimental-grpc-server=native",
        f"--cert-file={server.cert}",
        f"--key-file={server.key}",
        f"--listen-client-urls={member.client_url},https://127.0.0.1:{tls.port}",
    ]
    try:
        member.start()
        c = member.grpc()
        creds = grpc.ssl_channel_credentials(root_certificates=ca.pem.cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{tls.port}", creds) as channel:
            stub = type(c.kv)(channel)
            stub.Put(c.pb.PutRequest(key=b"tls/a", value=b"v"), timeout=10)
        assert [kv.value for kv in c.kv.Range(c.pb.RangeRequest(key=b"tls/a"), timeout=10).kvs] == [b"v"]
        status, _ = _http(member, "GET", "/health")
        assert status == 200
    finally:
        member.release()
        tls.release()


def test_unknown_backend_is_one_line_and_nonzero(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "etcdpy", "--experimental-grpc-server=fast", f"--data-dir={tmp_path / 'd'}"],
        env={"PYTHONPATH": str(SERVER_SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "--experimental-grpc-server" in proc.stderr, proc.stderr
    assert not (tmp_path / "d").exists()
