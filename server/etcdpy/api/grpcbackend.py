"""Which gRPC server implementation serves the client port: grpcio's or pygrpc-native's.

Two backends take the same servicers and options; ``native`` is the default:

- ``grpcio``: ``grpc.aio.server()``. HTTP/2 and per-call work run in grpc-core, but each
  call crosses into Python on the event loop thread through several layers of
  grpc.aio's own Python/Cython code, which holds the GIL.
- ``native``: PyPI ``pygrpc-native`` (pinned in pyproject.toml). HTTP/2 framing, flow
  control, deadlines and cancellation run on tokio threads in Rust outside the GIL, and
  calls reach the event loop in batches. etcdpy drives its documented low-level API
  (`NativeGrpcFront`) itself (`etcdpy.api.nativeserver`: one lean coroutine per unary
  call instead of pygrpc-native's grpc.aio layer); with ``ETCDPY_STREAM_SERVER=grpcio`` it
  is ``pygrpc_native.aio.server()``. Its documented differences from grpcio and how
  etcdpy handles each:

  * Unary methods are served natively; streams (Watch, LeaseKeepAlive, Snapshot) are
    relayed (in Rust) to a unix socket where pygrpc-native's own server would start a
    grpc.aio server. etcdpy serves that socket with its own HTTP/2 server instead
    (`etcdpy.api.h2grpc`, `native_server`), which writes a stream's messages in batches
    rather than one grpc.aio write each; ``ETCDPY_STREAM_SERVER=grpcio`` restores
    pygrpc-native's own. `peer()` there is the socket: etcdpy uses peer() nowhere.
  * Interceptors run in Python on every call, natively served ones included. etcdpy
    therefore registers none: the metrics counters and the root-only guard of
    Maintenance/Cluster are wrapped around each method handler once (`register_services`).
  * No TLS: ``https://`` client URLs are served by a grpcio server with the same
    services (`Listeners`), whichever backend is chosen.
  * Only one port per server: the native server listens on the cmux front's private
    unix socket (or on the one plain URL when the front is off); further plain URLs
    without a front also go to the grpcio server.
  * Options it cannot honour (connection age/idle, compression, maximum_concurrent_rpcs)
    raise; etcdpy sets none of them. Message size limits, keepalive and
    max_concurrent_streams are honoured; SO_REUSEPORT is off in both (we ask for that).
  * A unary handler that sent initial metadata and then failed delivers it as trailing
    metadata: etcdpy's handlers never send initial metadata.
  * A keepalive ping unanswered for ``grpc.keepalive_timeout_ms`` closes the connection
    (grpcio waits for its ping timeout): etcdpy sets no server-side keepalive pings.

  Metadata (``token``, ``authorization``, ``hasleader``), deadlines (`time_remaining`),
  cancellation (the handler task gets CancelledError), `abort()` with etcd's codes and
  messages, and max message sizes behave as in grpc.aio; the compat suite runs on both.

The backend is chosen by ``--experimental-grpc-server`` or ``$ETCDPY_GRPC_SERVER``
(the environment variable is what test harnesses pass through to every member), else
``DEFAULT_BACKEND``. ``native`` became the default once the compat, cluster, CLI and crash
suites passed on it as on grpcio and the start-up aborts seen under it were explained (a
grpc-core fork handler in the test harness's forked children, see `etcdpy.cli`); CI
keeps running the compat suite on grpcio too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc

from etcdpy.api.h2grpc import H2GrpcServer

BACKENDS = ("grpcio", "native")
DEFAULT_BACKEND = "native"
"""Chosen by measurement (README, Benchmarks): about a quarter of grpcio's CPU per put."""
ENV_GRPC_SERVER = "ETCDPY_GRPC_SERVER"

HandlerWrapper = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


class BackendError(ValueError):
    """An unknown backend name, or the native one without its package installed."""


def resolve_backend(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The flag's value, else $ETCDPY_GRPC_SERVER, else the default; checked, one-line errors."""
    env = os.environ if environ is None else environ
    value = (flag or env.get(ENV_GRPC_SERVER, "") or DEFAULT_BACKEND).strip().lower()
    if value not in BACKENDS:
        raise BackendError(f"--experimental-grpc-server must be one of {', '.join(BACKENDS)}, got {value!r}")
    if value == "native":
        try:
            import pygrpc_native.aio  # noqa: F401
        except ImportError as e:
            raise BackendError(f"--experimental-grpc-server=native needs the pygrpc-native package ({e})") from e
    return value


def new_server(
    backend: str, options: Sequence[tuple[str, Any]], stream_server: H2GrpcServer | None = None
) -> grpc.aio.Server:
    """An un-started asyncio gRPC server of `backend`, without interceptors (see module doc).

    With `stream_server` (native only), the bidirectional streams pygrpc-native passes on
    are served by it instead of by a grpc.aio server (`native_server`).
    """
    if backend == "native":
        return native_server(options, stream_server)
    return grpc.aio.server(options=list(options))


def native_server(options: Sequence[tuple[str, Any]], stream_server: H2GrpcServer | None) -> Any:
    """pygrpc-native's front serving the unary calls; the streams go to `stream_server`.

    With a stream server (the default) this is etcdpy's own driver of pygrpc-native's
    low-level API (`etcdpy.api.nativeserver`): the Rust front relays the methods it does not
    serve (bidirectional and server streams) over HTTP/2 to the stream server's unix socket,
    and unary calls run with one coroutine each instead of pygrpc-native's grpc.aio layer.
    Without one (``ETCDPY_STREAM_SERVER=grpcio``) it is pygrpc-native's own grpc.aio server,
    which starts a grpc.aio server for the streams.
    """
    if stream_server is None:
        import pygrpc_native.aio

        return pygrpc_native.aio.server(options=list(options))
    from etcdpy.api.nativeserver import NativeServer

    return NativeServer(options, stream_server)


class ServiceRegistry:
    """Collects the services' method handlers once, wrapped, to add to one or more servers.

    It stands in for a server while the generated ``add_<Service>Servicer_to_server``
    functions run: they call `add_generic_rpc_handlers` and then
    `add_registered_method_handlers` with the same methods. The registered ones are
    wrapped (`wrap(full_method, handler)`: counting, guards) and re-added in both forms;
    a generic handler of a service that was also registered is replaced by the wrapped
    one, any other generic handler is passed on unchanged.
    """

    def __init__(self, wrap: HandlerWrapper) -> None:
        self._wrap = wrap
        self._generic: list[grpc.GenericRpcHandler] = []
        self._services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._services[service] = {name: self._wrap(f"/{service}/{name}", h) for name, h in handlers.items()}

    @property
    def methods(self) -> list[str]:
        """Every registered full method name (``/package.Service/Method``)."""
        return [f"/{service}/{name}" for service, handlers in self._services.items() for name in handlers]

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Every registered (wrapped) handler by full method name, for servers that look calls up themselves."""
        return {f"/{service}/{name}": h for service, handlers in self._services.items() for name, h in handlers.items()}

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register everything on `server` (a grpc.aio or pygrpc-native server)."""
        for service, handlers in self._services.items():
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
            server.add_registered_method_handlers(service, handlers)
        others = [h for h in self._generic if _service_name(h) not in self._services]
        if others:
            server.add_generic_rpc_handlers(others)


def _service_name(handler: grpc.GenericRpcHandler) -> str | None:
    name = getattr(handler, "service_name", None)
    return name() if callable(name) else None
