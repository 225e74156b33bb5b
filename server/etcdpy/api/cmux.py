"""The client-port multiplexer (etcd's cmux): gRPC and HTTP/1.1 on one plain-TCP port.

Python's gRPC server owns the sockets it listens on, so it cannot share a port
with an HTTP server. The front accepts each connection itself, looks at the
first bytes, and then either

- sees the HTTP/2 client preface (``PRI * HTTP/2.0...``, which every gRPC client
  sends first) and splices the connection, byte for byte in both directions, to
  the real gRPC server listening on a private abstract unix socket; or
- hands the connection to the HTTP/1.1 endpoints (`etcdpy.api.http`), in this
  process, or spliced to an internal HTTP socket of the server process when the
  front runs in a process of its own.

Why it looks the way it does: it sits on the path of every client request, so
the relay is as thin as asyncio allows. It uses Protocols, not streams (no
StreamReader buffers, no coroutine per chunk): each received chunk is written
to the other side at once, which sends it straight from the received bytes
when the socket can take it (asyncio only copies what the kernel refused).
Back-pressure is the transports' own: when one side's send buffer fills, the
other side stops reading (pause_reading/resume_reading) until it drains.

On ``https://`` client URLs (in-process front only) the front cannot read the
preface, which is encrypted; it reads the TLS ClientHello instead, which is not,
and routes by its ALPN list without terminating TLS: a client offering HTTP/1.1
(curl, Python's requests, browsers) or no ALPN at all is spliced to an internal
Python TLS server with the HTTP endpoints and the JSON gateway; anything else (every
gRPC client offers only ``h2``) is spliced to a TLS port of the gRPC server, which
terminates TLS itself and still sees the client certificate.

`run_front_process` (``python -m etcdpy.api.cmux``) runs the same relay in a
child process, so on a multi-core machine the relaying does not compete with
the server's event loop for the GIL. This module imports nothing heavy on
purpose: the child starts in a fraction of the server's start-up time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENV_FRONT_MODE = "ETCDPY_CLIENT_FRONT"
"""`inproc` (default), `process` (the relay in a child process) or `off` (gRPC binds the
client port itself and serves no HTTP there: for measuring what the front costs)."""
FRONT_MODES = ("inproc", "process", "off")


def front_mode(environ: dict[str, str] | os._Environ[str] | None = None) -> str:
    value = (environ if environ is not None else os.environ).get(ENV_FRONT_MODE, "inproc").strip().lower()
    if value not in FRONT_MODES:
        raise ValueError(f"{ENV_FRONT_MODE} must be one of {', '.join(FRONT_MODES)}, got {value!r}")
    return value


class InternalAddress:
    """A private abstract unix socket (no file to clean up, no path length trouble)."""

    def __init__(self, label: str) -> None:
        self.name = f"etcdpy-{os.getpid()}-{secrets.token_hex(6)}-{label}"

    @property
    def grpc_target(self) -> str:
        return f"unix-abstract:{self.name}"

    @property
    def path(self) -> str:
        return "\0" + self.name


# --------------------------------------------------------------------------- the relay


class Splice(asyncio.Protocol):
    """One end of a spliced connection: what it reads, the other end writes."""

    __slots__ = ("transport", "peer")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Splice | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        # HTTP/2 never half-closes usefully: end both sides (close() still flushes what is queued).
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()  # type: ignore[union-attr]


ProtocolFactory = Callable[[], asyncio.Protocol]


class Route:
    """Where one kind of connection goes: a local protocol, or a splice to a unix socket."""

    def __init__(self, *, factory: ProtocolFactory | None = None, unix_path: str | None = None) -> None:
        if (factory is None) == (unix_path is None):
            raise ValueError("a route is either a protocol factory or a unix socket path")
        self.factory = factory
        self.unix_path = unix_path


class Sniffer(asyncio.Protocol):
    """Reads just enough of a new connection to tell gRPC from HTTP/1.1, then hands it over."""

    __slots__ = ("grpc", "http", "transport", "buf", "lost", "task")

    def __init__(self, grpc_route: Route, http_route: Route) -> None:
        self.grpc = grpc_route
        self.http = http_route
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.lost = False
        self.task: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        n = min(len(buf), len(HTTP2_PREFACE))
        if buf[:n] != HTTP2_PREFACE[:n]:
            self._hand_over(self.http, buf)
        elif n == len(HTTP2_PREFACE):
            self._hand_over(self.grpc, buf)
        else:
            self.buf = buf  # a prefix of the preface so far: wait for more

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def _hand_over(self, route: Route, first: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.buf = b""
        if route.factory is not None:
            proto = route.factory()
            transport.set_protocol(proto)
            proto.connection_made(transport)
            proto.data_received(first)
            return
        transport.pause_reading()
        assert route.unix_path is not None
        self.task = asyncio.ensure_future(self._splice(transport, route.unix_path, first))

    async def _splice(self, transport: asyncio.Transport, path: str, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        client, upstream = Splice(), Splice()
        # Wire the upstream half to the client before connecting: the server behind may speak first
        # (gRPC sends its SETTINGS at once), and some loops (uvloop) deliver that before we resume.
        client.transport = transport
        upstream.peer = client
        try:
            await loop.create_unix_connection(lambda: upstream, sock=await connect_unix(path))
        except OSError:
            transport.abort()  # the server behind is gone or not up yet; the client will retry
            return
        if self.lost:
            assert upstream.transport is not None
            upstream.transport.close()
            return
        client.peer = upstream
        transport.set_protocol(client)
        assert upstream.transport is not None
        upstream.transport.write(first)
        transport.resume_reading()


TLS_HANDSHAKE_RECORD = 0x16
TLS_CLIENT_HELLO = 0x01
TLS_EXT_ALPN = 0x0010
MAX_HELLO_BYTES = 5 + 16384 + 5
"""One full TLS record (the most a ClientHello's first record can be) and the next header."""


def client_hello_alpn(buf: bytes) -> list[bytes] | None:
    """The ALPN names a TLS ClientHello at the start of `buf` offers; None while its first record is incomplete.

    Raises ValueError when `buf` is not a TLS handshake, or the hello cannot be read from
    its first record (a hello spread over several records: not seen from real clients).
    """
    if not buf:
        return None
    if buf[0] != TLS_HANDSHAKE_RECORD:
        raise ValueError("not a TLS handshake")
    if len(buf) < 5:
        return None
    end = 5 + int.from_bytes(buf[3:5], "big")
    if len(buf) < end:
        return None
    try:
        return _hello_alpn(memoryview(buf)[5:end])
    except IndexError:
        raise ValueError("truncated ClientHello") from None


def _hello_alpn(body: memoryview) -> list[bytes]:
    """Walk a ClientHello (version, random, session id, ciphers, compression) to its ALPN extension."""
    if body[0] != TLS_CLIENT_HELLO:
        raise ValueError("not a ClientHello")
    p = 4 + 2 + 32
    p += 1 + body[p]
    p += 2 + int.from_bytes(body[p:p + 2], "big")
    p += 1 + body[p]
    if p >= len(body):
        return []  # no extensions
    end = p + 2 + int.from_bytes(body[p:p + 2], "big")
    p += 2
    while p + 4 <= end:
        kind = int.from_bytes(body[p:p + 2], "big")
        size = int.from_bytes(body[p + 2:p + 4], "big")
        p += 4
        if kind == TLS_EXT_ALPN:
            names: list[bytes] = []
            q, stop = p + 2, p + size
            while q < stop:
                n = body[q]
                names.append(bytes(body[q + 1:q + 1 + n]))
                q += 1 + n
            return names
        p += size
    if p > end or end > len(body):
        raise IndexError
    return []


def tls_wants_http(alpn: list[bytes]) -> bool:
    """A client that offers HTTP/1.1, or no protocol at all, speaks HTTP; gRPC clients offer only h2."""
    return not alpn or b"http/1.1" in alpn


class TlsSniffer(Sniffer):
    """The Sniffer of an ``https://`` URL: routes by the ClientHello's ALPN, leaving TLS to the server behind."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        try:
            alpn = client_hello_alpn(buf)
        except ValueError:
            self._hand_over(self.grpc, buf)  # not TLS, or unreadable: gRPC's TLS refuses it as before
            return
        if alpn is None:
            if len(buf) > MAX_HELLO_BYTES:
                self._hand_over(self.grpc, buf)
            else:
                self.buf = buf
            return
        self._hand_over(self.http if tls_wants_http(alpn) else self.grpc, buf)


# --------------------------------------------------------------------------- listening sockets


class BindError(Exception):
    """One line, etcd's wording: `listen tcp host:port: bind: address already in use`."""


def bind_listeners(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (as gRPC binds "localhost" twice)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BindError(f"listen tcp {host}:{port}: {e.strerror}") from e
    socks: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, type_, proto, _, sockaddr in infos:
            if sockaddr in seen:
                continue
            seen.add(sockaddr)
            s = socket.socket(family, type_, proto)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(sockaddr)
                s.listen(backlog)
                s.setblocking(False)
            except OSError as e:
                s.close()
                if family == socket.AF_INET6 and e.errno == 99:  # no IPv6 here: skip it, as gRPC does
                    continue
                raise BindError(f"listen tcp {host}:{port}: bind: {(e.strerror or str(e)).lower()}") from e
            socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        raise
    if not socks:
        raise BindError(f"listen tcp {host}:{port}: bind: cannot assign requested address")
    return socks


# --------------------------------------------------------------------------- the front


class ClientFront:
    """The multiplexer on the plain-HTTP client URLs, in this process or in a child process."""

    def __init__(
        self,
        sockets: list[socket.socket],
        grpc_path: str,
        http_factory: ProtocolFactory,
        *,
        mode: str = "inproc",
        http_path: str | None = None,
        tls_sockets: list[socket.socket] | None = None,
        grpc_tls_path: str | None = None,
        https_path: str | None = None,
        grpc_factory: ProtocolFactory | None = None,
    ) -> None:
        if mode not in ("inproc", "process"):
            raise ValueError(f"unknown front mode {mode!r}")
        if mode == "process" and http_path is None:
            raise ValueError("a front process needs the server's internal HTTP socket")
        if tls_sockets and (mode != "inproc" or grpc_tls_path is None or https_path is None):
            raise ValueError("https client URLs need the in-process front and both internal TLS sockets")
        self.plain_sockets = sockets
        self.tls_sockets = tls_sockets or []
        self.grpc_tls_path = grpc_tls_path
        self.https_path = https_path
        self.sockets = sockets + self.tls_sockets
        self.grpc_path = grpc_path
        self.grpc_factory = grpc_factory
        """In-process only: a protocol that takes plain gRPC connections over (etcdpy.api.h2route)."""
        self.http_factory = http_factory
        self.http_path = http_path
        self.mode = mode
        self._servers: list[asyncio.base_events.Server] = []
        self._child: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None

    async def start(self) -> None:
        """Start accepting (connections that arrived before wait in the listen backlog)."""
        if self.mode == "process":
            self._spawn()
            return
        loop = asyncio.get_running_loop()
        grpc_route = Route(factory=self.grpc_factory) if self.grpc_factory else Route(unix_path=self.grpc_path)
        http_route = Route(factory=self.http_factory)
        for s in self.plain_sockets:
            srv = await loop.create_server(lambda: Sniffer(grpc_route, http_route), sock=s)
            self._servers.append(srv)
        if self.tls_sockets:
            assert self.grpc_tls_path is not None and self.https_path is not None
            tls_grpc, https = Route(unix_path=self.grpc_tls_path), Route(unix_path=self.https_path)
            for s in self.tls_sockets:
                self._servers.append(await loop.create_server(lambda: TlsSniffer(tls_grpc, https), sock=s))

    def _spawn(self) -> None:
        """Hand the listening sockets to `python -m etcdpy.api.cmux`; it lives while our lifeline pipe is open."""
        assert self.http_path is not None
        read_end, write_end = os.pipe()
        fds = [s.fileno() for s in self.sockets]
        argv = [sys.executable, "-m", "etcdpy.api.cmux", "--lifeline", str(read_end),
                "--grpc", socket_arg(self.grpc_path), "--http", socket_arg(self.http_path)]
        for fd in fds:
            argv += ["--fd", str(fd)]
        env = dict(os.environ)
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH", "")]))
        self._child = subprocess.Popen(argv, pass_fds=[read_end, *fds], stdin=subprocess.DEVNULL, env=env)
        os.close(read_end)
        self._lifeline = write_end
        for s in self.sockets:
            s.close()  # the child accepts now; our copies would only keep the port bound after it dies

    async def close(self) -> None:
        """Stop accepting and drop the relays; open client connections are closed."""
        for srv in self._servers:
            srv.close()
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 0.5)
        self._servers = []
        for s in self.sockets:
            s.close()  # idempotent; covers a front that never started
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._child is not None:
            child, self._child = self._child, None
            try:
                await asyncio.to_thread(child.wait, 5.0)
            except subprocess.TimeoutExpired:
                child.kill()
                await asyncio.to_thread(child.wait)


# --------------------------------------------------------------------------- the front process


def socket_arg(path: str) -> str:
    """A unix socket address as a command-line word: ``@name`` for an abstract one."""
    return "@" + path[1:] if path.startswith("\0") else path


def socket_path(arg: str) -> str:
    """The inverse of `socket_arg`."""
    return "\0" + arg[1:] if arg.startswith("@") else arg


async def _run_front_process(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    grpc_route = Route(unix_path=socket_path(args.grpc))
    http_route = Route(unix_path=socket_path(args.http))
    servers = []
    for fd in args.fd:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        servers.append(await loop.create_server(lambda: Sniffer(grpc_route, http_route), sock=sock))
    gone = loop.create_future()
    # The parent holds the write end; EOF here means it exited (or closed the front).
    loop.add_reader(args.lifeline, lambda: gone.done() or gone.set_result(None))
    await gone
    for srv in servers:
        srv.close()


def run_front_process(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m etcdpy.api.cmux", description="etcdpy client-port relay")
    p.add_argument("--fd", type=int, action="append", required=True, help="listening socket fd (repeatable)")
    p.add_argument("--grpc", required=True, help="unix socket of the gRPC server (@name: abstract)")
    p.add_argument("--http", required=True, help="unix socket of the HTTP endpoints (@name: abstract)")
    p.add_argument("--lifeline", type=int, required=True, help="pipe fd whose EOF means: exit")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_front_process(args))
    return 0



async def connect_unix(path: str) -> socket.socket:
    """A connected unix socket; made here because not every event loop (uvloop) takes abstract names."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_unix(path: str) -> socket.socket:
    """A listening unix socket (abstract names included) to hand to `loop.create_unix_server(sock=...)`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# Last, so that every helper above exists when the front process runs this module as __main__.
if __name__ == "__main__":
    raise SystemExit(run_front_process())
