"""Peer TLS: etcd's --peer-cert-file/--peer-key-file/--peer-trusted-ca-file/--peer-client-cert-auth
with ``https://`` peer URLs.

A throw-away CA issues one certificate per member (SANs: the member's own loopback
address 127.0.0.1x, 127.0.0.1 and localhost; the certificate serves and dials).
A 3-member cluster must elect a leader and replicate a write; a member added with
a certificate from the same CA joins with ``--initial-cluster-state existing``
(the cluster information is fetched over TLS); a member whose certificate comes
from another CA is refused by the peers and never joins. Green on etcd 3.5.1 too
(ETCDPY_TEST_TARGET=etcd).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Cluster, Member, unb64, wait_until

pytest.importorskip("cryptography", reason="the TLS tests need the cryptography package")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402
from tlscerts import CA, Pem, _write  # noqa: E402


def issue_for_host(ca: CA, stem: str, cn: str, host: str) -> Pem:
    """Like `CA.issue`, with the member's own loopback address among the SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address(host)}
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), *(x509.IPAddress(ip) for ip in sorted(ips))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return _write(ca.dir, stem, cert, key)


def peer_cert_flags(pem: Pem) -> list[str]:
    return [f"--peer-cert-file={pem.cert}", f"--peer-key-file={pem.key}"]


class PeerPki:
    def __init__(self, root: Path) -> None:
        self.ca = CA(root / "ca", cn="etcdpy peer CA")
        self.other_ca = CA(root / "other-ca", cn="some other CA")
        self.certs: dict[str, Pem] = {}

    def member_args(self, name: str, host: str) -> list[str]:
        pem = self.certs[name] = issue_for_host(self.ca, f"peer-{name}", name, host)
        return peer_cert_flags(pem)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PeerPki:
    return PeerPki(tmp_path_factory.mktemp("peer-pki"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, pki: PeerPki) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path_factory.mktemp("peer-tls"),
        size=3,
        extra_args=[f"--peer-trusted-ca-file={pki.ca.pem.cert}", "--peer-client-cert-auth"],
        peer_scheme="https",
        member_args=pki.member_args,
    )
    cluster.start()
    yield cluster
    cluster.release()


def serializable_value(m: Member, key: str) -> bytes | None:
    out = m.etcdctl("get", key, "--consistency=s")
    kvs = out.get("kvs") or []
    return unb64(kvs[0]["value"]) if kvs else None


def wait_replicated(members: list[Member], key: str, value: bytes) -> None:
    for m in members:
        wait_until(lambda m=m: serializable_value(m, key) == value, 15, f"{key} replicated to {m.name}")


def tls_probe(host: str, port: int, ca: Path, pem: Pem) -> str:
    """Open a TLS connection to a peer port presenting `pem`, send etcd's `GET /version`.

    "open": the peer answered (etcd with HTTP, etcdpy's gRPC listener with its HTTP/2
    SETTINGS frame); "refused": the handshake failed or the peer closed the connection
    without a word (TLS 1.3 rejects a client certificate only after the client's side of
    the handshake is done, hence the read).
    """
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(pem.cert), str(pem.key))
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                s.sendall(b"GET /version HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
                s.settimeout(3)
                return "open" if s.recv(1024) else "refused"
    except (ssl.SSLError, ConnectionError, OSError):
        return "refused"


def test_https_peers_elect_a_leader_and_replicate(tls_cluster: Cluster) -> None:
    tls_cluster.leader()
    members = tls_cluster.member_list()
    assert len(members) == 3
    assert sorted(u for m in members for u in m["peerURLs"]) == sorted(m.peer_url for m in tls_cluster.members)
    assert all(u.startswith("https://") for m in members for u in m["peerURLs"])
    tls_cluster.etcdctl("put", "/peer-tls/k", "v1")
    wait_replicated(tls_cluster.members, "/peer-tls/k", b"v1")


def test_peer_port_refuses_a_certificate_from_another_ca(tls_cluster: Cluster, pki: PeerPki) -> None:
    m0 = tls_cluster.members[0]
    good = issue_for_host(pki.ca, "probe-good", "probe", m0.host)
    bad = issue_for_host(pki.other_ca, "probe-bad", "probe", m0.host)
    assert tls_probe(m0.host, m0.peer.port, pki.ca.pem.cert, good) == "open"
    assert tls_probe(m0.host, m0.peer.port, pki.ca.pem.cert, bad) == "refused"


def test_member_with_a_peer_certificate_joins_existing(tls_cluster: Cluster) -> None:
    """member add + --initial-cluster-state existing: the cluster is fetched from the peers over TLS."""
    tls_cluster.etcdctl("put", "/peer-tls/join", "before")
    new = tls_cluster.add_member()
    assert new.peer_url.startswith("https://")
    wait_replicated([new], "/peer-tls/join", b"before")
    tls_cluster.etcdctl("put", "/peer-tls/join", "after")
    wait_replicated(tls_cluster.members, "/peer-tls/join", b"after")


def test_member_with_a_certificate_from_another_ca_cannot_join(tls_cluster: Cluster, pki: PeerPki) -> None:
    rogue = tls_cluster.add_member(start=False)
    rogue_pem = issue_for_host(pki.other_ca, f"peer-{rogue.name}", rogue.name, rogue.host)
    # It trusts the cluster's CA (so the refusal is the peers' client-certificate check),
    # but presents a certificate the peers cannot verify.
    rogue.extra_args = [
        *(a for a in rogue.extra_args if not a.startswith(("--peer-cert-file=", "--peer-key-file="))),
        *peer_cert_flags(rogue_pem),
    ]
    rogue.spawn()
    wait_until(lambda: not rogue.running(), 30, "the member with a foreign certificate to give up")
    assert rogue.proc is not None and rogue.proc.returncode != 0
    entry = next(m for m in tls_cluster.member_list() if rogue.peer_url in m.get("peerURLs", []))
    assert not entry.get("name") and not entry.get("clientURLs"), f"the foreign member never started: {entry}"
    # The cluster is unaffected.
    started = [m for m in tls_cluster.members if m is not rogue]
    tls_cluster.etcdctl("put", "/peer-tls/after-rogue", "ok")
    wait_replicated(started, "/peer-tls/after-rogue", b"ok")
