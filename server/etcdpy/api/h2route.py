"""Picks the gRPC server for a plain HTTP/2 connection by its first request's ``:authority`` and ``:path``.

Why: pygrpc-native's HTTP/2 layer (Rust's h2) refuses, with RST_STREAM PROTOCOL_ERROR,
a request whose ``:authority`` is not a valid URI authority. Some etcd clients send one:
etcdctl 3.4's ``--cluster`` commands dial ``passthrough:///http://host:port`` and so send
``http://host:port`` as the authority; grpc-core (grpcio, and etcd's Go server) accepts it.
Such connections must reach the grpcio server instead, and the choice has to be made
before any byte reaches the native one.

How, without decrypting or re-encoding anything: the front answers the client preface with
an empty SETTINGS frame of its own (a gRPC client waits for the server's SETTINGS before it
sends a request), reads whole frames until the first HEADERS block, decodes that block
(HPACK; the first block of a connection needs no earlier state), picks the upstream and
then relays the buffered frames and everything after, byte for byte. The server behind
sends its own SETTINGS, which the client acknowledges as usual; the one acknowledgement of
the front's SETTINGS is taken out of the stream (the server behind never sent those).
Once that acknowledgement has gone by, the connection is a plain splice: no per-request
work, one decode per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from etcdpy.api.cmux import HTTP2_PREFACE, Splice, connect_unix

FRAME_HEADER_BYTES = 9
HEADERS, SETTINGS, CONTINUATION = 0x1, 0x4, 0x9
FLAG_ACK, FLAG_END_HEADERS, FLAG_PADDED, FLAG_PRIORITY = 0x1, 0x4, 0x8, 0x20
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""A SETTINGS frame with no parameters: "the defaults", the front's server preface."""
MAX_ROUTING_BYTES = 1 << 20
"""A client that sends this much without a complete first request is cut off."""


def authority_is_plain(authority: str) -> bool:
    """True if h2 takes this ``:authority`` (host[:port], no scheme, no path)."""
    return bool(authority) and not any(c in authority for c in "/?#@ ")


def first_request(block: bytes) -> tuple[str | None, str]:
    """``(:authority, :path)`` of a connection's first header block; (None, "") if it is not HPACK."""
    import hpack

    try:
        headers = hpack.Decoder().decode(block, raw=True)
    except Exception:  # noqa: BLE001 - hpack raises several kinds; any means "cannot tell"
        return None, ""
    found = {
        bytes(name): bytes(value).decode("latin-1") for name, value in headers if name in (b":authority", b":path")
    }
    return found.get(b":authority"), found.get(b":path", "")


def first_authority(block: bytes) -> str | None:
    """The ``:authority`` of a connection's first header block, or None if it has none or is not HPACK."""
    return first_request(block)[0]


STREAM_FIRST_PATHS = ("/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive")
"""Bidirectional methods: pygrpc-native relays them to the stream server behind itself (a second
hop). A connection that starts with one is most likely a watch or keep-alive connection, so
it is served in this process by `etcdpy.api.h2grpc` (or, with ``ETCDPY_STREAM_SERVER=grpcio``,
by the grpcio server); any later call on it is served there too (correct, only without the
native speed-up)."""


LOCAL = ""
"""`choose_upstream`'s answer for "serve it in this process" (`etcdpy.api.h2grpc`)."""


def choose_upstream(block: bytes, native_path: str, grpcio_path: str, local: bool = False) -> str:
    """The upstream for a connection whose first request carries header block `block`.

    With `local`, a stream-first connection is served in this process (LOCAL) instead of
    by the grpcio server.
    """
    authority, path = first_request(block)
    if authority is not None and not authority_is_plain(authority):
        return grpcio_path
    if path in STREAM_FIRST_PATHS:
        return LOCAL if local else grpcio_path
    return native_path


def header_block_fragment(flags: int, payload: bytes) -> bytes:
    """The HPACK fragment of a HEADERS frame payload (padding and priority removed)."""
    start, end = 0, len(payload)
    if flags & FLAG_PADDED:
        end -= payload[0]
        start = 1
    if flags & FLAG_PRIORITY:
        start += 5
    return payload[start:end]


class H2Router(asyncio.Protocol):
    """The client side of one plain gRPC connection until its upstream is chosen (see module doc)."""

    def __init__(self, native_path: str, grpcio_path: str, local: Callable[[], asyncio.Protocol] | None = None) -> None:
        self.native_path = native_path
        self.grpcio_path = grpcio_path
        self.local = local
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.block: bytes | None = None
        self.upstream: Splice | None = None
        self.ack_dropped = False
        self.preface_seen = False
        self.routing = True
        self.lost = False
        self.task: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(EMPTY_SETTINGS)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.upstream is not None and not self.routing:
            self._filter(data)
            return
        self.buf += data
        if len(self.buf) > MAX_ROUTING_BYTES:
            assert self.transport is not None
            self.transport.abort()
            return
        path = self._scan()
        if path == LOCAL and self.local is not None:
            self._hand_over(self.local())
        elif path is not None:
            assert self.transport is not None
            self.transport.pause_reading()
            self.task = asyncio.ensure_future(self._connect(path))

    def _hand_over(self, proto: asyncio.Protocol) -> None:
        """Give the connection to an in-process HTTP/2 server, replaying what was read.

        That server sends its own SETTINGS; if the client's acknowledgement of the front's
        empty SETTINGS has not gone by yet, it reaches the new server, which finds no
        change pending and ignores it.
        """
        transport = self.transport
        assert transport is not None
        data = b"".join(self.out) + bytes(self.buf)
        self.out, self.buf = [], bytearray()
        self.routing = False
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(data)

    def _frames(self) -> list[tuple[int, int, bytes]]:
        """Whole frames at the front of the buffer (preface passed on as is), removed from it."""
        if not self.preface_seen:
            if len(self.buf) < len(HTTP2_PREFACE):
                return []
            self.preface_seen = True
            self.out.append(bytes(self.buf[: len(HTTP2_PREFACE)]))
            del self.buf[: len(HTTP2_PREFACE)]
        frames = []
        while len(self.buf) >= FRAME_HEADER_BYTES:
            length = int.from_bytes(self.buf[0:3], "big")
            if len(self.buf) < FRAME_HEADER_BYTES + length:
                break
            frame = bytes(self.buf[: FRAME_HEADER_BYTES + length])
            del self.buf[: FRAME_HEADER_BYTES + length]
            frames.append((frame[3], frame[4], frame))
        return frames

    def _scan(self) -> str | None:
        """Queue whole frames (minus the front's SETTINGS ack); the upstream path once the first block is complete."""
        path = None
        for kind, flags, frame in self._frames():
            if kind == SETTINGS and flags & FLAG_ACK and not self.ack_dropped:
                self.ack_dropped = True
                continue
            self.out.append(frame)
            if path is not None:
                continue
            if kind == HEADERS:
                self.block = header_block_fragment(flags, frame[FRAME_HEADER_BYTES:])
            elif kind == CONTINUATION and self.block is not None:
                self.block += frame[FRAME_HEADER_BYTES:]
            else:
                continue
            if flags & FLAG_END_HEADERS:
                path = choose_upstream(self.block, self.native_path, self.grpcio_path, self.local is not None)
        return path

    def _filter(self, data: bytes) -> None:
        """After routing, until the front's SETTINGS ack went by: parse frames, drop that one."""
        self.buf += data
        assert self.upstream is not None and self.upstream.transport is not None
        for kind, flags, frame in self._frames():
            if kind == SETTINGS and flags & FLAG_ACK and not self.ack_dropped:
                self.ack_dropped = True
                continue
            self.upstream.transport.write(frame)
        self._maybe_plain()

    def _maybe_plain(self) -> None:
        """Become a plain splice once nothing is left to take out of the stream."""
        if not self.ack_dropped or self.buf:
            return
        assert self.transport is not None and self.upstream is not None
        client = Splice()
        client.transport, client.peer = self.transport, self.upstream
        self.upstream.peer = client
        self.transport.set_protocol(client)

    async def _connect(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        transport = self.transport
        assert transport is not None
        upstream = Splice()
        upstream.peer = self  # type: ignore[assignment]  # has .transport, as a Splice peer needs
        try:
            await loop.create_unix_connection(lambda: upstream, sock=await connect_unix(path))
        except OSError:
            transport.abort()
            return
        if self.lost:
            assert upstream.transport is not None
            upstream.transport.close()
            return
        assert upstream.transport is not None
        self.upstream = upstream
        upstream.transport.write(b"".join(self.out))
        self.out = []
        self.routing = False
        rest, self.buf = bytes(self.buf), bytearray()
        if rest:
            self._filter(rest)
        else:
            self._maybe_plain()
        transport.resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.upstream is not None and self.upstream.transport is not None:
            with contextlib.suppress(Exception):
                self.upstream.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()
