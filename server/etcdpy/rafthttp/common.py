"""What the sending and receiving halves of the peer transport share: options, errors, gRPC settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import grpc

if TYPE_CHECKING:
    from etcdpy.tlsutil import TLSInfo

SERVICE = "etcdpypeerpb.Peer"
METHOD_STREAM = f"/{SERVICE}/Stream"
METHOD_SNAPSHOT = f"/{SERVICE}/Snapshot"
METHOD_MEMBERS = f"/{SERVICE}/Members"
METHOD_LEASE_RENEW = f"/{SERVICE}/LeaseRenew"
METHOD_MEMBER_PROMOTE = f"/{SERVICE}/MemberPromote"
METHOD_LEASE_TTL = f"/{SERVICE}/LeaseTimeToLive"

# Rejection texts (gRPC status details). The first is etcd's own wording: a member that reads
# it knows it was removed from the cluster and must stop.
ERR_MEMBER_REMOVED = "the member has been permanently removed from the cluster"
ERR_CLUSTER_MISMATCH = "cluster ID mismatch"
ERR_WRONG_MEMBER = "raft message sent to the wrong member"
ERR_BLOCKED = "peer traffic blocked by fault injection"


class PeerUnreachable(Exception):
    """A peer RPC could not be completed (no connection, timeout, refused, blocked)."""


class MemberRemoved(Exception):
    """A peer refused us because this member was removed from the cluster."""


@dataclass(frozen=True)
class TransportOptions:
    """Tunables; the defaults follow etcd's rafthttp where it has an equivalent."""

    queue_messages: int = 4096
    """Per-peer send queue bound in messages (etcd's streamBufSize); beyond it messages are dropped."""
    queue_bytes: int = 64 << 20
    """Per-peer send queue bound in (approximate) bytes, so queued MsgApps cannot eat the memory."""
    batch_bytes: int = 4 << 20
    """Soft limit of one gRPC message: a batch stops growing once it is this big."""
    dial_timeout: float = 1.0
    """How long a new stream may take to be accepted (etcd's DialTimeout)."""
    backoff_initial: float = 0.05
    backoff_max: float = 1.0
    """Reconnect back-off doubles from the first to the second value; reset by a working stream."""
    probe_interval: float = 1.0
    """Seconds between round-trip pings on each stream."""
    snapshot_chunk_bytes: int = 1 << 20
    snapshot_timeout: float | None = None
    """Overall deadline of one snapshot transfer (None: only keep-alive detects a dead peer)."""
    fault_poll_interval: float = 0.1
    max_receive_bytes: int = 256 << 20
    """Largest gRPC message accepted from a peer (a batch is at most batch_bytes plus one message)."""
    keepalive_seconds: float = 2.0
    """HTTP/2 keep-alive ping interval and timeout: how fast a silent dead connection is noticed."""
    server_grace: float = 0.2
    """On stop, how long in-flight peer RPCs get to finish before they are cancelled."""


def grpc_target(url: str) -> str:
    """`http(s)://host:port` → `host:port` (IPv6 hosts bracketed), as gRPC dials it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"peer URL scheme must be http or https: {url}")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"peer URL needs a host and a port: {url}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}"


def is_tls_url(url: str) -> bool:
    return url.startswith("https://")


def open_channel(
    url: str, opts: TransportOptions, tls: TLSInfo | None, creds: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """A channel to a peer URL: TLS for https (the peer certificate doubles as the client
    certificate, the peer CA verifies the server), plain for http. `creds` saves re-reading
    the PEM files on every dial."""
    target = grpc_target(url)
    if not is_tls_url(url):
        return grpc.aio.insecure_channel(target, options=channel_options(opts))
    if creds is None:
        creds = tls.channel_credentials() if tls is not None else grpc.ssl_channel_credentials()
    return grpc.aio.secure_channel(target, creds, options=channel_options(opts))


def channel_options(opts: TransportOptions) -> list[tuple[str, int]]:
    """Client channel settings: quick reconnects, dead-peer detection, own TCP connection."""
    ka = int(opts.keepalive_seconds * 1000)
    backoff_max = int(opts.backoff_max * 1000)
    return [
        # Our own back-off drives reconnects; gRPC's default (1 s up to 120 s) would make a
        # restarted peer wait minutes before a channel tries it again.
        ("grpc.initial_reconnect_backoff_ms", int(opts.backoff_initial * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(opts.backoff_initial * 1000)),
        ("grpc.max_reconnect_backoff_ms", backoff_max),
        # A new member's DNS name (Kubernetes: its Pod's record) appears only after MemberAdd
        # told the leader about it; gRPC would otherwise wait 30 s before resolving it again.
        ("grpc.dns_min_time_between_resolutions_ms", 1000),
        # Streams and snapshots get separate channels; without a local subchannel pool gRPC
        # would put them on one TCP connection and a snapshot would delay heartbeats.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.keepalive_time_ms", ka),
        ("grpc.keepalive_timeout_ms", ka),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", opts.max_receive_bytes),
        ("grpc.enable_retries", 0),
    ]


def server_options(opts: TransportOptions) -> list[tuple[str, int]]:
    ka = int(opts.keepalive_seconds * 1000)
    return [
        # Without this two members could share a port silently (gRPC sets SO_REUSEPORT by default).
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", opts.max_receive_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_concurrent_streams", 1 << 20),
        ("grpc.keepalive_time_ms", ka),
        ("grpc.keepalive_timeout_ms", ka),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept the clients' frequent keep-alive pings instead of answering them with GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", max(100, ka // 2)),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def rejection(err: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(code, details) of a failed gRPC call, or None when `err` is not one."""
    if isinstance(err, grpc.aio.AioRpcError):
        return err.code(), err.details() or ""
    return None


def is_removed_rejection(err: BaseException) -> bool:
    rej = rejection(err)
    return rej is not None and rej[0] == grpc.StatusCode.FAILED_PRECONDITION and rej[1].startswith(ERR_MEMBER_REMOVED)
