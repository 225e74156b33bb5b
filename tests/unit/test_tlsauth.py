"""peer_common_name: the verified client certificate's CN as gRPC's auth context reports it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

pytest.importorskip("cryptography", reason="needs the cryptography package (test extras)")
from tlscerts import CA  # noqa: E402

from etcdpy.api.tlsauth import peer_common_name  # noqa: E402
from etcdpy.tlsutil import TLSInfo  # noqa: E402


async def _call_with(ca: CA, server_tls: TLSInfo, client_cert: bool) -> str:
    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return repr(peer_common_name(context)).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "t.S", {"Who": grpc.unary_unary_rpc_method_handler(whoami)}),))
    port = server.add_secure_port("127.0.0.1:0", server_tls.server_credentials())
    await server.start()
    try:
        client = ca.issue("client", "alice")
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.pem.cert.read_bytes(),
            private_key=client.key.read_bytes() if client_cert else None,
            certificate_chain=client.cert.read_bytes() if client_cert else None,
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
            return (await ch.unary_unary("/t.S/Who")(b"", timeout=10)).decode()
    finally:
        await server.stop(None)


def test_common_name_of_verified_client_cert(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    srv = ca.issue("server", "server")
    tls = TLSInfo(str(srv.cert), str(srv.key), str(ca.pem.cert), client_cert_auth=True)
    assert asyncio.run(_call_with(ca, tls, client_cert=True)) == "'alice'"


def test_no_common_name_without_client_verification(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    srv = ca.issue("server", "server")
    tls = TLSInfo(str(srv.cert), str(srv.key))  # no trusted CA: client certs are not requested
    assert asyncio.run(_call_with(ca, tls, client_cert=True)) == "None"


def test_no_auth_context_is_none() -> None:
    class NoTls:
        def auth_context(self) -> dict[str, list[bytes]]:
            return {}

    assert peer_common_name(NoTls()) is None
