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

The gRPC server is grpcio's or pygrpc-native's (`etcdpy.api.grpcbackend`); the native one
has no TLS and takes one port, so the TLS port (and, without a front, any second plain
URL) then goes to a grpcio server with the same services.

Each --listen-metrics-urls entry is a small HTTP(S) server with /metrics, /health,
/livez and /readyz (not /version: etcd's metrics listener has none either).

Everything is bound in `bind()` (synchronously, before the member starts, so a
port in use is one line and nothing is written), and accepting starts in `start()`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import tempfile
from typing import Any

import grpc

from etcdpy import ETCD_CLUSTER_VERSION, ETCD_VERSION
from etcdpy.api.auth import AdminInterceptor
from etcdpy.api.cmux import BindError, ClientFront, InternalAddress, bind_listeners, front_mode, listen_unix
from etcdpy.api.grpcbackend import DEFAULT_BACKEND, ServiceRegistry, new_server, resolve_backend
from etcdpy.api.grpcmetrics import counted_handler
from etcdpy.api.grpcserver import GRPC_OVERHEAD_BYTES, ListenError, bind_client_url, grpc_options, register_services
from etcdpy.api.h2grpc import H2GrpcServer, stream_server_mode
from etcdpy.api.http import EtcdHttpApi
from etcdpy.config import url_host_port
from etcdpy.metrics import build_registry
from etcdpy.tlsutil import TLSConfigError


class Listeners:
    """Binds, starts and stops the gRPC server, the client-port front and the metrics listeners."""

    def __init__(
        self, server: Any, logger: logging.Logger | None = None, mode: str | None = None, backend: str | None = None
    ) -> None:
        self.server = server
        self.log = logger or logging.getLogger("etcdpy")
        self.mode = mode or front_mode()
        self.backend_flag = backend
        self.backend = DEFAULT_BACKEND
        self.registry = build_registry(server, ETCD_VERSION, ETCD_CLUSTER_VERSION)
        self.client_api = EtcdHttpApi(server, self.registry, kind="client")
        self.metrics_api = EtcdHttpApi(server, self.registry, kind="metrics")
        self.grpc: grpc.aio.Server | None = None
        self.grpc_tls: grpc.aio.Server | None = None
        """A grpcio server for what the native one cannot serve (TLS, a second port); None if unneeded."""
        self._services: ServiceRegistry | None = None
        self.stream_server: H2GrpcServer | None = None
        """etcdpy's HTTP/2 stream server (native backend): pygrpc-native's stream fallback, and the
        connections that open with a Watch or LeaseKeepAlive stream (in-process front)."""
        self._socket_dir: str | None = None
        self.front: ClientFront | None = None
        self._http_internal: InternalAddress | None = None
        self._https_internal: InternalAddress | None = None
        self._https_context: ssl.SSLContext | None = None
        self._metrics_socks: list[tuple[str, list[socket.socket]]] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._metrics_started = False

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

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Per method, once: the root-only guard inside, the grpc_server_* counters outside."""
        return counted_handler(self.server.metrics.grpc, method, self._admin.guard(method, handler))

    def _bind(self) -> None:
        cfg = self.server.cfg
        cfg.client_tls.check(cfg.listen_client_urls, "client")
        cfg.client_tls.check(cfg.listen_metrics_urls, "metrics")
        self.backend = resolve_backend(self.backend_flag or getattr(cfg, "grpc_server", "") or None)
        self._admin = AdminInterceptor(self.server)
        self._services = ServiceRegistry(self._wrap)
        register_services(self.server, self._services)
        front_socks: list[socket.socket] = []
        tls_socks: list[socket.socket] = []
        for url in cfg.listen_client_urls:
            host, port, scheme = url_host_port(url, 2379)
            if self.mode == "off" or (scheme == "https" and self.mode != "inproc"):
                bind_client_url(self._grpc_for(scheme), cfg, url)
            elif scheme == "https":
                tls_socks += bind_listeners(host, port)
            else:
                front_socks += bind_listeners(host, port)
        if not front_socks and not tls_socks:
            return self._bind_metrics()
        grpc_target = self._internal_grpc_target() if front_socks else ""
        if front_socks and self._grpc_for("http").add_insecure_port(grpc_target) == 0:
            raise ListenError(f"cannot listen on internal socket {grpc_target}")
        if self.mode == "process":
            self._http_internal = InternalAddress("http")
        tls_grpc = None
        if tls_socks:
            tls_grpc = InternalAddress("grpc-tls")
            if self._grpc_for("https").add_secure_port(tls_grpc.grpc_target, cfg.client_tls.server_credentials()) == 0:
                raise ListenError(f"cannot listen on internal socket {tls_grpc.grpc_target}")
            self._https_internal = InternalAddress("https")
            self._https_context = cfg.client_tls.ssl_server_context()  # a bad key fails here, in one line
        self.front = ClientFront(
            front_socks,
            _unix_path(grpc_target),
            self.client_api.protocol,
            grpc_factory=self._authority_router(grpc_target) if front_socks else None,
            mode=self.mode,
            http_path=self._http_internal.path if self._http_internal else None,
            tls_sockets=tls_socks,
            grpc_tls_path=tls_grpc.path if tls_grpc else None,
            https_path=self._https_internal.path if self._https_internal else None,
        )
        self._bind_metrics()

    def _grpc_for(self, scheme: str) -> grpc.aio.Server:
        """The server a listener goes to: the main one, unless it is native and cannot take it.

        pygrpc-native has no TLS and one port per server; what it cannot serve goes to a
        grpcio server with the same (already wrapped) services.
        """
        assert self._services is not None
        if self.backend != "native" or (scheme != "https" and self.grpc is None):
            if self.grpc is None:
                self.grpc = new_server(self.backend, grpc_options(self.server.cfg), self._stream_server())
                self._services.add_to(self.grpc)
            return self.grpc
        if self.grpc_tls is None:
            self.grpc_tls = new_server("grpcio", grpc_options(self.server.cfg))
            self._services.add_to(self.grpc_tls)
        return self.grpc_tls

    def _internal_grpc_target(self) -> str:
        """Where the front relays plain gRPC: an abstract socket for grpcio; a socket file in a
        private directory for pygrpc-native (it binds no abstract names)."""
        if self.backend != "native":
            return InternalAddress("grpc").grpc_target
        self._socket_dir = tempfile.mkdtemp(prefix="etcdpy-grpc-")
        return "unix:" + os.path.join(self._socket_dir, "grpc.sock")

    def _authority_router(self, native_target: str) -> Any:
        """For the native server behind an in-process front: a grpcio port for the clients whose
        ``:authority`` pygrpc-native refuses (`etcdpy.api.h2route`); None otherwise."""
        if self.backend != "native" or self.mode != "inproc":
            return None
        from etcdpy.api.h2route import H2Router

        alt = InternalAddress("grpc-alt")
        if self._grpc_for("https").add_insecure_port(alt.grpc_target) == 0:
            raise ListenError(f"cannot listen on internal socket {alt.grpc_target}")
        native, grpcio = _unix_path(native_target), alt.path
        stream_server = self._stream_server()
        local = stream_server.protocol if stream_server is not None else None
        return lambda: H2Router(native, grpcio, local)

    def _stream_server(self) -> H2GrpcServer | None:
        """The in-process server of bidirectional streams (native backend only), made once.

        It serves pygrpc-native's stream fallback and, behind an in-process front, whole
        connections that open with a stream (`etcdpy.api.h2grpc`).
        """
        if self.backend != "native" or stream_server_mode(os.environ) != "h2":
            return None
        if self.stream_server is None:
            assert self._services is not None
            cfg = self.server.cfg
            self.stream_server = H2GrpcServer(self._services.handlers(), cfg.max_request_bytes + GRPC_OVERHEAD_BYTES)
        return self.stream_server

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
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    async def start_metrics(self) -> None:
        """Serve the --listen-metrics-urls listeners (/metrics, /health, ...), once.

        At once after start-up, before the member is ready, as etcd does: they exist to be
        asked whether the member is healthy, and a member without a leader answers 503.
        """
        if self._metrics_started:
            return
        self._metrics_started = True
        loop = asyncio.get_running_loop()
        tls = self.server.cfg.client_tls
        for url, socks in self._metrics_socks:
            ctx = tls.ssl_server_context() if url.startswith("https://") else None
            for s in socks:
                self._servers.append(await loop.create_server(self.metrics_api.protocol, sock=s, ssl=ctx))
            self.log.info("serving metrics", extra={"fields": {"address": url}})

    async def start(self) -> None:
        """Start serving the client URLs: gRPC first, so the front never relays to a socket nobody
        listens on (and the metrics listeners, if `start_metrics` has not started them yet).

        The member calls this once it is ready, as etcd serves its client port only then:
        until that moment the bound sockets hold connecting clients in the kernel's accept
        queue, so a request sent right after start-up waits for the member instead of failing
        with "no leader".
        """
        await self.start_metrics()
        for g in (self.grpc, self.grpc_tls):
            if g is not None:
                await g.start()
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
        self._log_serving()

    def _log_serving(self) -> None:
        cfg = self.server.cfg
        for url in cfg.listen_client_urls:
            secure = url.startswith("https://")
            fronted = self.mode == "inproc" or (self.mode == "process" and not secure)
            self.log.info(
                "serving client traffic securely" if secure else "serving client traffic insecurely",
                extra={
                    "fields": {
                        "address": url,
                        "http-endpoints": fronted,
                        "front": self.mode if fronted else "none",
                        "grpc-server": "grpcio" if secure else self.backend,
                        "stream-server": "h2" if self.stream_server is not None and not secure else "grpc",
                    }
                },
            )

    async def stop(self, grace: float | None = 2.0) -> None:
        """Stop accepting, then let in-flight RPCs finish within `grace` seconds."""
        if self.front is not None:
            await self.front.close()
        if self.stream_server is not None:
            self.stream_server.close()
        for srv in self._servers:
            srv.close()
        stopping = [g.stop(grace) for g in (self.grpc, self.grpc_tls) if g is not None]
        if stopping:
            await asyncio.gather(*stopping)
        self._servers = []
        self._release_sockets()  # those never handed to a server (stopped before start)


def _unix_path(target: str) -> str:
    """A gRPC unix target as a socket address: ``unix-abstract:n`` is ``\\0n``, ``unix:p`` is ``p``."""
    scheme, _, rest = target.partition(":")
    return "\0" + rest if scheme == "unix-abstract" else rest
