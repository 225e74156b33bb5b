"""Builds the client-facing gRPC server: every v3 service on every --listen-client-urls address."""

from __future__ import annotations

import socket

import grpc

from etcdpy.api.cluster import ClusterService
from etcdpy.api.kv import KVService
from etcdpy.api.lease import LeaseService
from etcdpy.api.maintenance import MaintenanceService
from etcdpy.api.watch import WatchService
from etcdpy.config import url_host_port
from etcdpy.pb import rpc_pb2_grpc
from etcdpy.server.etcdserver import EtcdServer

GRPC_OVERHEAD_BYTES = 512 * 1024
"""etcd lets a gRPC message exceed --max-request-bytes by this much so the server, not gRPC,
answers an oversized request, with etcd's own "request is too large" error."""


class ListenError(Exception):
    """A listen address could not be bound (port in use, bad address)."""


def build_grpc_server(server: EtcdServer) -> grpc.aio.Server:
    cfg = server.cfg
    options = [
        # Without this two servers could share a port silently (gRPC sets SO_REUSEPORT by default).
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", cfg.max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_concurrent_streams", 2**31 - 1),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]
    g = grpc.aio.server(options=options)
    rpc_pb2_grpc.add_KVServicer_to_server(KVService(server), g)
    rpc_pb2_grpc.add_LeaseServicer_to_server(LeaseService(server), g)
    rpc_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceService(server), g)
    rpc_pb2_grpc.add_ClusterServicer_to_server(ClusterService(server), g)
    # Watch writes pre-encoded responses, so it registers its own (pass-through) handler.
    WatchService(server, cfg.max_request_bytes + GRPC_OVERHEAD_BYTES).add_to_server(g)
    for url in cfg.listen_client_urls:
        host, port, scheme = url_host_port(url, 2379)
        if scheme == "https":
            raise ListenError(f"TLS listener {url} needs --cert-file/--key-file (not supported yet)")
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        check_bindable(host, port)
        try:
            bound = g.add_insecure_port(addr)
        except RuntimeError as e:
            raise ListenError(f"listen tcp {addr}: bind: address already in use ({e})") from e
        if bound == 0:
            raise ListenError(f"listen tcp {addr}: bind: address already in use")
    return g


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
                raise ListenError(f"listen tcp {host}:{port}: bind: {e.strerror.lower()}") from e
