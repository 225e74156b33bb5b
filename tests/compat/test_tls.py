"""TLS on the client URL: etcd's --cert-file/--key-file/--trusted-ca-file/--client-cert-auth.

The tests make their own throw-away CA, server and client certificates (with the
`cryptography` package), start a member on an ``https://`` client URL and drive it
with the real etcdctl (``--cacert --cert --key``) and with a gRPC client. The same
tests run against etcd 3.5.1 (ETCDPY_TEST_TARGET=etcd).
"""

from __future__ import annotations

import http.client
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from harness import Etcdctl, EtcdctlError, Member, reserve_port, target

pytest.importorskip("cryptography", reason="the TLS tests need the cryptography package")
from tlscerts import CA, Pem  # noqa: E402


@dataclass
class Pki:
    ca: CA
    server: Pem
    client: Pem
    other_ca: CA
    stranger: Pem  # a client certificate from a CA the server does not trust
    alice: Pem  # a client certificate for a user without permissions


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CA(root / "ca")
    other = CA(root / "other", cn="some other CA")
    return Pki(ca, ca.issue("server", "etcd-server"), ca.issue("client", "root"), other,
               other.issue("stranger", "root"), ca.issue("alice", "alice"))


# --------------------------------------------------------------------------- members


def tls_member(base: Path, pki: Pki, client_cert_auth: bool, metrics: bool = False, trusted_ca: bool = True) -> Member:
    """A single member serving https on its client URL (and plain http metrics if asked)."""
    flags = [f"--cert-file={pki.server.cert}", f"--key-file={pki.server.key}"]
    if trusted_ca:
        flags.append(f"--trusted-ca-file={pki.ca.pem.cert}")
    if client_cert_auth:
        flags.append("--client-cert-auth")
    m = Member(name="tls", base_dir=base, client=reserve_port(), peer=reserve_port(), extra_args=flags)
    m.scheme = "https"
    m.grpc_credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.pem.cert.read_bytes(),
        private_key=pki.client.key.read_bytes(),
        certificate_chain=pki.client.cert.read_bytes(),
    )
    if metrics:
        res = reserve_port()
        m.extra_args.append(f"--listen-metrics-urls=http://127.0.0.1:{res.port}")
        m._metrics = res  # type: ignore[attr-defined]
    return m


@pytest.fixture(scope="module")
def cert_auth_member(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Member]:
    m = tls_member(tmp_path_factory.mktemp("tls-cca"), pki, client_cert_auth=True, metrics=True)
    m.start()
    yield m
    m.release()
    m._metrics.release()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def server_tls_member(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Member]:
    m = tls_member(tmp_path_factory.mktemp("tls-server"), pki, client_cert_auth=False, trusted_ca=False)
    m.start()
    yield m
    m.release()


def ctl(m: Member, *tls: str) -> Callable[..., Any]:
    """etcdctl against the member's https URL; `tls` are --cacert/--cert/--key flags."""
    base = Etcdctl([m.client_url], timeout=30)

    def run(*args: str, **kwargs: Any) -> Any:
        return base(*tls, "--dial-timeout=3s", "--command-timeout=5s", *args, **kwargs)

    return run


def full(pki: Pki) -> tuple[str, ...]:
    return (f"--cacert={pki.ca.pem.cert}", f"--cert={pki.client.cert}", f"--key={pki.client.key}")


# --------------------------------------------------------------------------- tests


def test_etcdctl_over_https_with_client_cert(cert_auth_member: Member, pki: Pki) -> None:
    c = ctl(cert_auth_member, *full(pki))
    c("put", "/tls/k", "v1", json=False)
    got = c("get", "/tls/k")
    assert [kv["value"] for kv in got["kvs"]] == ["djE="]  # base64("v1")
    health = c("endpoint", "health")
    assert health[0]["health"] is True


def test_client_without_cert_is_refused(cert_auth_member: Member, pki: Pki) -> None:
    c = ctl(cert_auth_member, f"--cacert={pki.ca.pem.cert}")
    with pytest.raises(EtcdctlError):
        c("get", "/tls/k")


def test_client_cert_from_unknown_ca_is_refused(cert_auth_member: Member, pki: Pki) -> None:
    c = ctl(cert_auth_member, f"--cacert={pki.ca.pem.cert}", f"--cert={pki.stranger.cert}",
            f"--key={pki.stranger.key}")
    with pytest.raises(EtcdctlError):
        c("get", "/tls/k")


def test_plaintext_client_is_refused_on_https_port(cert_auth_member: Member) -> None:
    c = Etcdctl([cert_auth_member.endpoint], timeout=30)
    with pytest.raises(EtcdctlError):
        c("get", "/tls/k", "--dial-timeout=3s", "--command-timeout=5s")


def test_grpc_client_with_cert(cert_auth_member: Member, pki: Pki) -> None:
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    with cert_auth_member.client_channel() as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        kv.Put(rpc_pb2.PutRequest(key=b"/tls/grpc", value=b"x"), timeout=10)
        resp = kv.Range(rpc_pb2.RangeRequest(key=b"/tls/grpc"), timeout=10)
        assert [kv.value for kv in resp.kvs] == [b"x"]


def test_metrics_url_serves_health_for_a_tls_member(cert_auth_member: Member) -> None:
    """The plain-HTTP metrics listener still answers /health and /metrics next to a TLS client URL."""
    port = cert_auth_member._metrics.port  # type: ignore[attr-defined]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["health"] == "true"
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        assert b"etcd_server_has_leader 1" in resp.read()
    finally:
        conn.close()


def test_server_only_tls(server_tls_member: Member, pki: Pki) -> None:
    """Without --trusted-ca-file and --client-cert-auth, a client that only trusts the CA gets in."""
    c = ctl(server_tls_member, f"--cacert={pki.ca.pem.cert}")
    c("put", "/tls/open", "v", json=False)
    assert c("get", "/tls/open")["count"] == 1


def test_trusted_ca_alone_requires_client_certs(pki: Pki, tmp_path: Path) -> None:
    """etcd verifies client certificates whenever --trusted-ca-file is set, even without --client-cert-auth."""
    m = tls_member(tmp_path / "m", pki, client_cert_auth=False, trusted_ca=True)
    try:
        m.start()
        ctl(m, *full(pki))("put", "/tls/ca-only", "v", json=False)
        with pytest.raises(EtcdctlError):
            ctl(m, f"--cacert={pki.ca.pem.cert}")("get", "/tls/ca-only")
    finally:
        m.release()
        shutil.rmtree(m.base_dir, ignore_errors=True)


def test_https_url_without_cert_fails_to_start(tmp_path: Path) -> None:
    m = Member(name="nocert", base_dir=tmp_path / "m", client=reserve_port(), peer=reserve_port())
    m.scheme = "https"
    try:
        m.spawn()
        assert m.proc is not None
        code = m.proc.wait(60)
        assert code != 0
        # etcd's own words, which etcdpy's one line repeats.
        want = f"TLS key/cert (--cert-file, --key-file) must be provided for client url {m.client_url} with HTTPS scheme"
        assert want in m.stderr_path.read_text()
        if target() == "etcdpy":
            err = m.stderr_path.read_text().strip().splitlines()
            assert err[-1] == (f"etcdpy: TLS key/cert (--cert-file, --key-file) must be provided for client url "
                               f"{m.client_url} with HTTPS scheme")
    finally:
        m.release()
        shutil.rmtree(m.base_dir, ignore_errors=True)


def test_missing_cert_file_is_one_line(tmp_path: Path, pki: Pki) -> None:
    if target() == "etcd":
        pytest.skip("checks etcdpy's own one-line start-up error (etcd words it differently)")
    m = Member(name="badcert", base_dir=tmp_path / "m", client=reserve_port(), peer=reserve_port(),
               extra_args=[f"--cert-file={tmp_path / 'missing.crt'}", f"--key-file={pki.server.key}"])
    m.scheme = "https"
    try:
        m.spawn()
        assert m.proc is not None
        assert m.proc.wait(60) == 1
        err = [ln for ln in m.stderr_path.read_text().splitlines() if not ln.startswith("{")]  # minus JSON logs
        assert err == [f"etcdpy: open {tmp_path / 'missing.crt'}: no such file or directory"]
    finally:
        m.release()
        shutil.rmtree(m.base_dir, ignore_errors=True)


def test_https_metrics_url(pki: Pki, tmp_path: Path) -> None:
    """An https:// --listen-metrics-urls entry uses the client TLS flags, client certificates included."""
    import ssl

    metrics = reserve_port()
    m = tls_member(tmp_path / "m", pki, client_cert_auth=True)
    m.extra_args.append(f"--listen-metrics-urls=https://127.0.0.1:{metrics.port}")
    try:
        m.start()
        ctx = ssl.create_default_context(cafile=str(pki.ca.pem.cert))
        ctx.load_cert_chain(str(pki.client.cert), str(pki.client.key))
        conn = http.client.HTTPSConnection("127.0.0.1", metrics.port, timeout=30, context=ctx)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["health"] == "true"
        finally:
            conn.close()
        no_cert = ssl.create_default_context(cafile=str(pki.ca.pem.cert))
        conn = http.client.HTTPSConnection("127.0.0.1", metrics.port, timeout=30, context=no_cert)
        try:
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                conn.request("GET", "/health")
                conn.getresponse().read()
        finally:
            conn.close()
    finally:
        m.release()
        metrics.release()
        shutil.rmtree(m.base_dir, ignore_errors=True)


def test_client_cert_common_name_is_the_user_under_auth(pki: Pki, tmp_path: Path) -> None:
    """With --client-cert-auth and auth enabled, a request without a token runs as the certificate's CN."""
    m = tls_member(tmp_path / "m", pki, client_cert_auth=True)
    try:
        m.start()
        root = ctl(m, *full(pki))  # CN=root
        root("user", "add", "root", "--new-user-password=rootpw", json=False)
        root("user", "add", "alice", "--new-user-password=alicepw", json=False)
        root("auth", "enable", json=False)
        root("put", "/cn/k", "by-root", json=False)  # no --user: the CN is the user
        assert root("get", "/cn/k")["count"] == 1
        alice = ctl(m, f"--cacert={pki.ca.pem.cert}", f"--cert={pki.alice.cert}", f"--key={pki.alice.key}")
        with pytest.raises(EtcdctlError) as ei:
            alice("put", "/cn/k", "by-alice", json=False)
        assert ei.value.message == "etcdserver: permission denied"
        # A token still wins over the certificate: alice's cert with root's password works.
        alice("--user=root:rootpw", "put", "/cn/k", "by-token", json=False)
    finally:
        m.release()
        shutil.rmtree(m.base_dir, ignore_errors=True)


def https_call(m: Member, pki: Pki, path: str, body: Any, cert: Pem | None, alpn: list[str] | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One call over TLS on the client URL, as curl --cacert --cert --key sends it: (status, body)."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(pki.ca.pem.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    host, port = m.endpoint.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=ctx)
    try:
        conn.request("POST" if body is not None else "GET", path,
                     body=json.dumps(body) if body is not None else None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def https_json(m: Member, pki: Pki, path: str, body: Any, cert: Pem | None, **kw: Any) -> tuple[int, Any]:
    status, raw = https_call(m, pki, path, body, cert, **kw)
    return status, json.loads(raw)


def test_gateway_and_health_over_https(cert_auth_member: Member, pki: Pki) -> None:
    """The client URL serves the HTTP endpoints and the /v3 JSON API over TLS too, next to gRPC (etcd's cmux)."""
    m = cert_auth_member
    status, doc = https_json(m, pki, "/v3/kv/put", {"key": "L3Rscy9ndw==", "value": "eA=="}, pki.client,
                             alpn=["http/1.1"])
    assert status == 200 and set(doc) == {"header"}, doc
    status, doc = https_json(m, pki, "/v3/kv/range", {"key": "L3Rscy9ndw=="}, pki.client)  # no ALPN at all
    assert status == 200
    assert [(kv["key"], kv["value"]) for kv in doc["kvs"]] == [("L3Rscy9ndw==", "eA==")]
    status, doc = https_json(m, pki, "/health", None, pki.client)
    assert (status, doc["health"]) == (200, "true")
    # gRPC on the same port still works (etcdctl offers only h2).
    assert ctl(m, *full(pki))("get", "/tls/gw")["count"] == 1


CN_REFUSED = b"CommonName of client sending a request against gateway will be ignored and not used as expected\n"


def test_gateway_refuses_certificate_common_name_under_auth(pki: Pki, tmp_path: Path) -> None:
    """etcd 3.5: with --client-cert-auth and auth enabled, a /v3 JSON call with a CN certificate is refused (400).

    The gateway would not pass the CN on as the user, so etcd says so rather than run the call anonymously.
    """
    m = tls_member(tmp_path / "m", pki, client_cert_auth=True)
    try:
        m.start()
        put = {"key": "L2NuL2s=", "value": "eA=="}
        assert https_call(m, pki, "/v3/kv/put", put, pki.client)[0] == 200  # auth off: no check
        root = ctl(m, *full(pki))  # CN=root
        root("user", "add", "root", "--new-user-password=rootpw", json=False)
        root("auth", "enable", json=False)
        assert https_call(m, pki, "/v3/kv/put", put, pki.client) == (400, CN_REFUSED)
        assert https_call(m, pki, "/v3beta/kv/range", put, pki.client) == (400, CN_REFUSED)
        assert https_call(m, pki, "/health", None, pki.client)[0] == 200  # only the gateway is refused
    finally:
        m.release()
        shutil.rmtree(m.base_dir, ignore_errors=True)
