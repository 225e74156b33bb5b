"""A rolling change (one member at a time, identities kept) and a cluster with client and peer TLS."""

from __future__ import annotations

import base64
import datetime
import threading
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from e2ekit import (
    Kube,
    TLSFiles,
    Writer,
    assert_converged,
    summary,
    t,
    wait_available,
    wait_until,
)

pytestmark = pytest.mark.timeout(1500)  # scenarios wait on real processes; each wait has its own deadline


@pytest.mark.e2e_slow
def test_rolling_change_one_member_at_a_time(operator: Kube, ns: str, timings: dict[str, dict[str, Any]]) -> None:
    """Changing etcd settings re-creates every Pod from the new spec, never more than one down at once."""
    kube = operator
    kube.create_etcdcluster(ns, "r", {"replicas": 3})
    writer = Writer(kube, ns, "r").start()
    wait_available(kube, ns, "r", 3)
    ids = assert_converged(kube, ns, "r", 3)
    uids = {p.metadata.name: p.metadata.uid for p in kube.member_pods(ns, "r")}
    worst = [3]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            ready = sum(1 for p in kube.member_pods(ns, "r") if Kube.pod_ready(p))
            worst[0] = min(worst[0], ready)
            time.sleep(0.3)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    kube.patch_etcdcluster(ns, "r", {"etcd": {"snapshotCount": 5000}})

    def rolled() -> bool:
        pods = kube.member_pods(ns, "r")
        return len(pods) == 3 and all(p.metadata.uid != uids.get(p.metadata.name) and Kube.pod_ready(p) and
                                      "--snapshot-count=5000" in " ".join(p.spec.containers[0].args or [])
                                      for p in pods)
    wait_until(rolled, t(600), f"every member rolled ({summary(kube, ns, 'r')})")
    wait_available(kube, ns, "r", 3)
    done.set()
    sampler.join(5)
    timings["rolling"] = {"change_to_all_rolled_s": round(time.monotonic() - start, 2)}
    assert assert_converged(kube, ns, "r", 3) == ids, "a roll keeps every member's identity and volume"
    assert worst[0] >= 2, f"at most one member down at a time (saw {worst[0]} ready)"
    assert writer.verify() > 0


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2e CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str, dns: list[str]) -> tuple[bytes, bytes]:
    """A server+client certificate for `dns` (wildcards included), as cert-manager would issue it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca[1].subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca[0], hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _secret(kube: Kube, ns: str, name: str, ca: bytes, cert: bytes, key: bytes) -> None:
    data = {"ca.crt": ca, "tls.crt": cert, "tls.key": key}
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": name}, "type": "kubernetes.io/tls",
                                            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})


@pytest.mark.e2e_slow
def test_tls_cluster(operator: Kube, ns: str) -> None:
    """Client and peer TLS from Secrets: members serve TLS only, the operator manages them over TLS."""
    kube = operator
    ca = _ca()
    ca_pem = ca[1].public_bytes(serialization.Encoding.PEM)
    peers = [f"*.t-peers.{ns}.svc", f"*.t-peers.{ns}.svc.cluster.local"]
    client_cert, client_key = _leaf(ca, "etcd-client", [*peers, "t-client", f"t-client.{ns}.svc",
                                                        f"t-client.{ns}.svc.cluster.local", "localhost"])
    peer_cert, peer_key = _leaf(ca, "etcd-peer", peers)
    _secret(kube, ns, "t-client-tls", ca_pem, client_cert, client_key)
    _secret(kube, ns, "t-peer-tls", ca_pem, peer_cert, peer_key)
    kube.create_etcdcluster(ns, "t", {"replicas": 3, "tls": {"client": {"secretName": "t-client-tls"},
                                                             "peer": {"secretName": "t-peer-tls"}}})
    tls = TLSFiles(ca_pem, client_cert, client_key, f"x.t-peers.{ns}.svc")
    writer = Writer(kube, ns, "t", tls=tls).start()
    wait_available(kube, ns, "t", 3, timeout=400)
    assert_converged(kube, ns, "t", 3, tls=tls)
    args = " ".join(kube.member_pods(ns, "t")[0].spec.containers[0].args or [])
    assert "https://" in args and "--client-cert-auth" in args and "--peer-client-cert-auth" in args, args
    # a client without a certificate is refused
    import grpc
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    pod = kube.member_pods(ns, "t")[0]
    ch = grpc.secure_channel(kube.endpoint(ns, pod), grpc.ssl_channel_credentials(ca_pem),
                             options=[("grpc.ssl_target_name_override", tls.server_name)])
    with pytest.raises(grpc.RpcError):
        rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"x"), timeout=5)
    ch.close()
    assert writer.verify() > 0
    wait_until(lambda: kube.available(ns, "t", 3), t(30), "still Available")
