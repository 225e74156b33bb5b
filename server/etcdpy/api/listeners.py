"""Every client-facing listener of a member: gRPC, the cmux front, the metrics URLs.

The layout, per --listen-client-urls entry:

- ``http://`` — the cmux front (`etcdpy.api.cmux`) owns the port: gRPC connections
  are spliced to the gRPC server on a private abstract unix socket, HTTP/1.1 ones
  get etcd's HTTP endpoints. With ``ETCDPY_CLIENT_FRONT=off`` gRPC binds the port
  itself instead (no HTTP there), which is how the front's cost is measured.
- ``https://`` — the front owns the port too, but never decrypts: it reads the
  ClientHello's ALPN list and splices gRPC clients (they offer only ``h2``) to a
  TLS port of the gRPC server on another abstract socket, and HTTP/1.1 clients to
  an internal Python TLS server with the same HTTP endpoints and JSON gateway. With
  ``ETCDPY_CLIENT_FRONT=off`` or ``=process``, gRPC binds an https port itself
  and serves no HTTP there (use --listen-metrics-urls for /health and /metrics).

Each --listen-metrics-urls entry is a small HTTP(S) server with /metrics, /health,
/livez and /readyz (not /version: etcd's metrics listener has none either).

Everything is bound in `bind()` (synchronously, before the member starts, so a
port in use is one line and nothing is written), and accepting starts in `start()`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any

import grpc

from etcdpy import ETCD_CLUSTER_VERSION, ETCD_VERSION
from etcdpy.api.cmux import BindError, ClientFront, InternalAddress, bind_listeners, front_mode, listen_unix
from etcdpy.api.grpcmetrics import MetricsInterceptor
from etcdpy.api.grpcserver import ListenError, bind_client_url, build_grpc_server
from etcdpy.api.http import EtcdHttpApi
from etcdpy.config import url_host_port
from etcdpy.metrics import build_registry
from etcdpy.tlsutil import TLSConfigError


class Listeners:
    """Binds, starts and stops the gRPC server, the client-port front and the metrics listeners."""

    def __init__(self, server: Any, logger: logging.Logger | None = None, mode: str | None = None) -> None:
        self.server = server
        self.log = logger or logging.getLogger("etcdpy")
        self.mode = mode or front_mode()
        self.registry = build_registry(server, ETCD_VERSION, ETCD_CLUSTER_VERSION)
        self.client_api = EtcdHttpApi(server, self.registry, kind="client")
        self.metrics_api = EtcdHttpApi(server, self.registry, kind="metrics")
        self.grpc: grpc.aio.Server | None = None
        self.front: ClientFront | None = None
        self._http_internal: InternalAddress | None = None
        self._https_internal: InternalAddress | None = None
        self._https_context: ssl.SSLContext | None = None
        self._metrics_socks: list[tuple[str, list[socket.socket]]] = []
        self._servers: list[asyncio.base_events.Server] = []

    def bind(self) -> None:
        """Bind every address now; raises ListenError (one line) and releases what it bound."""
        try:
            self._bind()
        except (BindError, TLSConfigError, ValueError) as e:
            self._release_sockets()
            raise ListenError(str(e)) from e
        except ListenError:
            self._release_sockets()
            raise

    def _bind(self) -> None:
        cfg = self.server.cfg
        cfg.client_tls.check(cfg.listen_client_urls, "client")
        cfg.client_tls.check(cfg.listen_metrics_urls, "metrics")
        self.grpc = build_grpc_server(
            self.server, interceptors=[MetricsInterceptor(self.server.metrics.grpc)], bind_client_urls=False
        )
        front_socks: list[socket.socket] = []
        tls_socks: list[socket.socket] = []
        for url in cfg.listen_client_urls:
            host, port, scheme = url_host_port(url, 2379)
            if self.mode == "off" or (scheme == "https" and self.mode != "inproc"):
                bind_client_url(self.grpc, cfg, url)
            elif scheme == "https":
                tls_socks += bind_listeners(host, port)
            else:
                front_socks += bind_listeners(host, port)
        if not front_socks and not tls_socks:
            return self._bind_metrics()
        internal = InternalAddress("grpc")
        if front_socks and self.grpc.add_insecure_port(internal.grpc_target) == 0:
            raise ListenError(f"cannot listen on internal socket {internal.grpc_target}")
        if self.mode == "process":
            self._http_internal = InternalAddress("http")
        tls_grpc = None
        if tls_socks:
            tls_grpc = InternalAddress("grpc-tls")
            if self.grpc.add_secure_port(tls_grpc.grpc_target, cfg.client_tls.server_credentials()) == 0:
                raise ListenError(f"cannot listen on internal socket {tls_grpc.grpc_target}")
            self._https_internal = InternalAddress("https")
            self._https_context = cfg.client_tls.ssl_server_context()  # a bad key fails here, in one line
        self.front = ClientFront(
            front_socks,
            internal.path,
            self.client_api.protocol,
            mode=self.mode,
            http_path=self._http_internal.path if self._http_internal else None,
            tls_sockets=tls_socks,
            grpc_tls_path=tls_grpc.path if tls_grpc else None,
            https_path=self._https_internal.path if self._https_internal else None,
        )
        self._bind_metrics()

    def _bind_metrics(self) -> None:
        cfg = self.server.cfg
        for url in cfg.listen_metrics_urls:
            host, port, _ = url_host_port(url, 2381)
            self._metrics_socks.append((url, bind_listeners(host, port)))

    def _release_sockets(self) -> None:
        socks = [s for _, group in self._metrics_socks for s in group]
        if self.front is not None:
            socks += self.front.sockets
        for s in socks:
            s.close()

    async def start(self) -> None:
        """Start serving: gRPC first, so the front never relays to a socket nobody listens on."""
        assert self.grpc is not None
        await self.grpc.start()
        loop = asyncio.get_running_loop()
        if self._http_internal is not None:
            sock = listen_unix(self._http_internal.path)
            self._servers.append(await loop.create_unix_server(self.client_api.protocol, sock=sock))
        if self._https_internal is not None:
            sock = listen_unix(self._https_internal.path)
            self._servers.append(
                await loop.create_unix_server(self.client_api.protocol, sock=sock, ssl=self._https_context)
            )
        if self.front is not None:
            await self.front.start()
        tls = self.server.cfg.client_tls
        for url, socks in self._metrics_socks:
            ctx = tls.ssl_server_context() if url.startswith("https://") else None
            for s in socks:
                self._servers.append(await loop.create_server(self.metrics_api.protocol, sock=s, ssl=ctx))
        self._log_serving()

    def _log_serving(self) -> None:
        cfg = self.server.cfg
        for url in cfg.listen_client_urls:
            secure = url.startswith("https://")
            fronted = self.mode == "inproc" or (self.mode == "process" and not secure)
            self.log.info(
                "serving client traffic securely" if secure else "serving client traffic insecurely",
                extra={"fields": {"address": url, "http-endpoints": fronted,
                                  "front": self.mode if fronted else "none"}},
            )
        for url in cfg.listen_metrics_urls:
            self.log.info("serving metrics", extra={"fields": {"address": url}})

    async def stop(self, grace: float | None = 2.0) -> None:
        """Stop accepting, then let in-flight RPCs finish within `grace` seconds."""
        if self.front is not None:
            await self.front.close()
        for srv in self._servers:
            srv.close()
        if self.grpc is not None:
            await self.grpc.stop(grace)
        self._servers = []
        self._release_sockets()  # those never handed to a server (stopped before start)
