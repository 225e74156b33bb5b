"""Builds the client-facing gRPC server: every v3 service on every --listen-client-urls address."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import grpc

from etcdpy.api.auth import AdminInterceptor, AuthService
from etcdpy.api.cluster import ClusterService
from etcdpy.api.kv import KVService
from etcdpy.api.lease import LeaseService
from etcdpy.api.maintenance import MaintenanceService
from etcdpy.api.watch import WatchService
from etcdpy.config import ServerConfig, url_host_port
from etcdpy.pb import rpc_pb2_grpc
from etcdpy.server.etcdserver import EtcdServer

GRPC_OVERHEAD_BYTES = 512 * 1024
"""etcd lets a gRPC message exceed --max-request-bytes by this much so the server, not gRPC,
answers an oversized request, with etcd's own "request is too large" error."""


class ListenError(Exception):
    """A listen address could not be bound (port in use, bad address)."""


def grpc_options(cfg: ServerConfig) -> list[tuple[str, Any]]:
    """The client-port server options (the same for every backend)."""
    return [
        # Without this two servers could share a port silently (gRPC sets SO_REUSEPORT by default).
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", cfg.max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_concurrent_streams", 2**31 - 1),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]


def register_services(server: EtcdServer, g: Any) -> None:
    """Add every v3 service to `g`: a gRPC server, or a `ServiceRegistry` standing in for one."""
    cfg = server.cfg
    KVService(server).add_to_server(g)  # Range answers pre-encoded bytes (encoded off the loop when big)
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(server), g)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(server), g)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(server), g)
    rpc_pb2_grpc.add_AuthServicer_to_server(AuthService(server), g)
    # Watch writes pre-encoded responses, so it registers its own (pass-through) handler.
    WatchService(server, cfg.max_request_bytes + GRPC_OVERHEAD_BYTES).add_to_server(g)


def build_grpc_server(
    server: EtcdServer,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    bind_client_urls: bool = True,
) -> grpc.aio.Server:
    """A grpc.aio server with every v3 service and `interceptors`; bound to the client URLs unless not asked.

    The member itself uses `etcdpy.api.listeners` (no interceptors, either backend); this is
    the simple form for tools and tests.
    """
    cfg = server.cfg
    # AdminInterceptor: root-only Maintenance/Cluster RPCs while auth is enabled.
    g = grpc.aio.server(options=grpc_options(cfg), interceptors=[*interceptors, AdminInterceptor(server)])
    register_services(server, g)
    if bind_client_urls:
        for url in cfg.listen_client_urls:
            bind_client_url(g, cfg, url)
    return g


def bind_client_url(g: Any, cfg: ServerConfig, url: str) -> None:
    """Listen on one client URL: plain for http://, with --cert-file/--key-file for https://."""
    from etcdpy.tlsutil import TLSConfigError

    host, port, scheme = url_host_port(url, 2379)
    addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        creds = None
        if scheme == "https":
            cfg.client_tls.check([url], "client")
            creds = cfg.client_tls.server_credentials()
    except TLSConfigError as e:
        raise ListenError(str(e)) from e
    check_bindable(host, port)
    try:
        bound = g.add_secure_port(addr, creds) if creds is not None else g.add_insecure_port(addr)
    except RuntimeError as e:
        raise ListenError(f"listen tcp {addr}: bind: address already in use ({e})") from e
    if bound == 0:
        raise ListenError(f"listen tcp {addr}: bind: address already in use")


def check_bindable(host: str, port: int) -> None:
    """Fail with etcd's one-line message before gRPC's core logs its own multi-line complaint."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ListenError(f"listen tcp {host}:{port}: {e.strerror}") from e
    for family, type_, proto, _, sockaddr in infos:
        with socket.socket(family, type_, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as e:
                if family == socket.AF_INET6 and e.errno == 99:  # no IPv6 on this host: gRPC skips it too
                    continue
                raise ListenError(f"listen tcp {host}:{port}: bind: {(e.strerror or str(e)).lower()}") from e
