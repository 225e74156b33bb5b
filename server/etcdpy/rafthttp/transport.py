"""Transport: this member's side of the peer network (etcd's rafthttp.Transport, on gRPC).

Usage inside the server (all calls on the event loop thread):

    t = Transport(member_id, cfg.listen_peer_urls, cluster_id=cluster_id,
                  on_message=raft_node.step, report_unreachable=..., report_snapshot=...,
                  on_snapshot=..., snapshot_source=lambda m: kv.backend.open_snapshot(),
                  snapshot_dir=cfg.snap_dir, on_removed=..., members_provider=...)
    await t.start()
    for m in cluster.members.values():
        if m.id != member_id: t.add_peer(m.id, m.peer_urls)
    ... t.send(rd.messages) from the raft loop ...
    await t.stop()

Callbacks are plain attributes and may be (re)assigned at any time, e.g. once the raft node
exists. They run on the event loop thread and must not block.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from etcdpy import errors
from etcdpy.pb import peer_pb2, peer_pb2_grpc, rpc_pb2
from etcdpy.raft.types import Message, MessageType
from etcdpy.tlsutil import TLSInfo

from .codec import CodecError, EntryCache, decode_message
from .common import (
    ERR_BLOCKED,
    ERR_CLUSTER_MISMATCH,
    ERR_MEMBER_REMOVED,
    ERR_WRONG_MEMBER,
    METHOD_LEASE_RENEW,
    METHOD_MEMBER_PROMOTE,
    METHOD_LEASE_TTL,
    METHOD_MEMBERS,
    PeerUnreachable,
    TransportOptions,
    grpc_target,
    is_tls_url,
    open_channel,
    server_options,
)
from .fault import ENV_FAULT_FILE, FaultInjector
from .peer import PeerSender, SnapshotSource
from .service import PeerService

_DROP_LOG_INTERVAL = 1.0


class MemberLike(Protocol):
    """What the Members RPC reports per member (etcdpy.server.membership.Member fits)."""

    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool


@dataclass(frozen=True)
class RemoteMember:
    """A member as another member reported it; same field names as membership.Member."""

    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    is_learner: bool


@dataclass(frozen=True)
class ClusterMembers:
    cluster_id: int
    members: list[RemoteMember]


@dataclass
class PeerStatus:
    """One peer as this member sees it (for metrics, health and strict reconfiguration)."""

    id: int
    urls: list[str]
    active_since: float | None
    rtt: float | None
    queued: int
    sent_messages: int
    sent_batches: int
    sent_bytes: int
    dropped_messages: int
    send_failures: int
    snapshots_sent: int
    snapshot_failures: int
    received_messages: int
    received_bytes: int
    inbound_streams: int


@dataclass
class _Inbound:
    streams: int = 0
    messages: int = 0
    bytes: int = 0


@dataclass
class _Counters:
    dropped_unknown_target: int = 0
    dropped_wrong_target: int = 0
    dropped_wrong_sender: int = 0
    dropped_blocked: int = 0
    decode_errors: int = 0
    step_errors: int = 0
    last_drop_log: dict[int, float] = field(default_factory=dict)


def _noop(*_args: object) -> None:
    return None


class Transport:
    """Sends raft messages to peers and hands received ones to raft. Not thread-safe."""

    def __init__(
        self,
        member_id: int,
        listen_urls: Iterable[str],
        *,
        cluster_id: int = 0,
        on_message: Callable[[Message], None] = _noop,
        report_unreachable: Callable[[int], None] = _noop,
        report_snapshot: Callable[[int, bool], None] = _noop,
        on_snapshot: Callable[[Message, str], Awaitable[None] | None] | None = None,
        snapshot_source: Callable[[Message], SnapshotSource | None | Awaitable[SnapshotSource | None]] | None = None,
        snapshot_dir: str | None = None,
        on_removed: Callable[[int], None] = _noop,
        is_removed: Callable[[int], bool] | None = None,
        members_provider: Callable[[], tuple[int, Iterable[MemberLike]]] | None = None,
        on_lease_renew: Callable[[int], Awaitable[int] | int] | None = None,
        on_lease_time_to_live: Callable[[int, bool], Awaitable[rpc_pb2.LeaseTimeToLiveResponse]] | None = None,
        on_rtt: Callable[[int, float], None] = _noop,
        on_member_promote: Callable[[int], Awaitable[object] | object] | None = None,
        options: TransportOptions | None = None,
        fault_file: str | None = None,
        logger: logging.Logger | None = None,
        tls: TLSInfo | None = None,
    ) -> None:
        """See the module docstring and docs in etcdpy/rafthttp/__init__.py for each callback.

        `fault_file` defaults to $ETCDPY_FAULT_FILE; pass "" to disable fault injection.
        `snapshot_dir` is where received backend snapshots land (the server's snap dir).
        `tls` (the --peer-* flags, `ServerConfig.peer_tls`): https listen URLs are served with
        it and https peer URLs dialed with it (its certificate doubles as the client certificate).
        """
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.listen_urls = list(listen_urls)
        for u in self.listen_urls:
            grpc_target(u)
        self.on_message = on_message
        self.report_unreachable = report_unreachable
        self.report_snapshot = report_snapshot
        self.on_snapshot = on_snapshot
        self.snapshot_source = snapshot_source
        self.snapshot_dir = snapshot_dir or tempfile.gettempdir()
        self.on_removed = on_removed
        self.is_removed = is_removed
        self.members_provider = members_provider
        self.on_lease_renew = on_lease_renew
        self.on_lease_time_to_live = on_lease_time_to_live
        self.on_rtt = on_rtt
        self.on_member_promote = on_member_promote
        self.options = options or TransportOptions()
        self.tls = tls
        self._channel_creds: grpc.ChannelCredentials | None = None
        self.log = logger or logging.getLogger("etcdpy.rafthttp")
        path = os.environ.get(ENV_FAULT_FILE) if fault_file is None else fault_file
        self.faults = FaultInjector(path or None, poll_interval=self.options.fault_poll_interval, logger=self.log)
        self.entry_cache = EntryCache()
        self.bound_urls: list[str] = []
        self.counters = _Counters()
        self._peers: dict[int, PeerSender] = {}
        self._removed: set[int] = set()
        self._inbound: dict[int, _Inbound] = {}
        self._server: grpc.aio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._stopped = False
        self._removed_reported = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the peer URLs and start connecting to the peers added so far.

        A URL with port 0 gets a free port; `bound_urls` lists the actual addresses.
        """
        if self._started:
            return
        self._started = True
        server_creds: grpc.ServerCredentials | None = None
        if any(is_tls_url(u) for u in self.listen_urls):
            tls = self.tls if self.tls is not None else TLSInfo(flag_prefix="peer-")
            tls.check(self.listen_urls, "peer")  # etcd's one-line errors (TLSConfigError)
            server_creds = tls.server_credentials()
        from etcdpy.api.grpcserver import check_bindable  # here: the api package imports the server

        server = grpc.aio.server(options=server_options(self.options))
        peer_pb2_grpc.add_PeerServicer_to_server(PeerService(self), server)
        for url in self.listen_urls:
            target = grpc_target(url)
            scheme = "https" if is_tls_url(url) else "http"
            host_part, _, port_part = target.rpartition(":")
            check_bindable(host_part.strip("[]"), int(port_part))  # one line, before gRPC core logs its own
            try:
                if server_creds is not None and scheme == "https":
                    port = server.add_secure_port(target, server_creds)
                else:
                    port = server.add_insecure_port(target)
            except RuntimeError as e:
                raise OSError(f"listen tcp {target}: bind: address already in use ({e})") from e
            if port == 0:
                raise OSError(f"listen tcp {target}: bind: address already in use")
            host = target.rsplit(":", 1)[0]
            self.bound_urls.append(f"{scheme}://{host}:{port}")
        await server.start()
        self._server = server
        os.makedirs(self.snapshot_dir, exist_ok=True)
        self.faults.poll()
        for p in self._peers.values():
            p.start()
        if self.faults.path:
            self._spawn(self.faults.run(self._faults_changed), "rafthttp-faults")
        self.log.info(
            "started peer transport",
            extra={"fields": {"local-member-id": f"{self.member_id:x}", "listen-peer-urls": self.bound_urls}},
        )

    async def stop(self) -> None:
        """Close every stream and the listener; in-flight inbound calls get `server_grace` to end."""
        if self._stopped:
            return
        self._stopped = True
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in self._peers.values()), return_exceptions=True)
        if self._server is not None:
            await self._server.stop(self.options.server_grace)
            self._server = None

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- peers -----------------------------------------------------------------------------

    def add_peer(self, peer_id: int, urls: Iterable[str]) -> None:
        """Start talking to a member (no-op if known). Call for every member but this one."""
        if peer_id == self.member_id or peer_id in self._peers:
            return
        self._removed.discard(peer_id)
        p = PeerSender(self, peer_id, list(urls))
        self._peers[peer_id] = p
        if self._started and not self._stopped:
            p.start()
        fields = {"remote-peer-id": f"{peer_id:x}", "remote-peer-urls": p.urls}
        self.log.info("added remote peer", extra={"fields": fields})

    def remove_peer(self, peer_id: int) -> None:
        """The member was removed from the cluster: stop sending to it and refuse it from now on."""
        self._removed.add(peer_id)
        p = self._peers.pop(peer_id, None)
        if p is not None:
            self._spawn(p.close(), f"rafthttp-close-{peer_id:x}")
            self.log.info("removed remote peer", extra={"fields": {"remote-peer-id": f"{peer_id:x}"}})

    def update_peer(self, peer_id: int, urls: Iterable[str]) -> None:
        """The member's peer URLs changed: reconnect to the new ones."""
        p = self._peers.get(peer_id)
        if p is None:
            return
        new = list(urls)
        for u in new:
            grpc_target(u)
        if self._started and not self._stopped:
            self._spawn(p.update_urls(new), f"rafthttp-update-{peer_id:x}")
        else:
            p.urls = new
        fields = {"remote-peer-id": f"{peer_id:x}", "remote-peer-urls": new}
        self.log.info("updated remote peer", extra={"fields": fields})

    def channel_credentials(self, url: str) -> grpc.ChannelCredentials | None:
        """Credentials for dialing `url` (None for http); the PEM files are read once."""
        if not is_tls_url(url):
            return None
        if self._channel_creds is None:
            tls = self.tls if self.tls is not None else TLSInfo(flag_prefix="peer-")
            self._channel_creds = tls.channel_credentials()
        return self._channel_creds

    def peer_ids(self) -> list[int]:
        return sorted(self._peers)

    def is_id_removed(self, peer_id: int) -> bool:
        return peer_id in self._removed or (self.is_removed is not None and self.is_removed(peer_id))

    def active_since(self, peer_id: int) -> float | None:
        """`time.monotonic()` when the current stream to the peer was accepted; None when down."""
        p = self._peers.get(peer_id)
        return p.active_since if p is not None else None

    def active_peers(self) -> set[int]:
        return {i for i, p in self._peers.items() if p.active_since is not None}

    def rtt(self, peer_id: int) -> float | None:
        """Last measured round-trip time to the peer in seconds (None before the first pong)."""
        p = self._peers.get(peer_id)
        return p.rtt if p is not None else None

    def peer_status(self, peer_id: int) -> PeerStatus | None:
        p = self._peers.get(peer_id)
        if p is None:
            return None
        inbound = self._inbound.get(peer_id, _Inbound())
        return PeerStatus(
            id=peer_id,
            urls=list(p.urls),
            active_since=p.active_since,
            rtt=p.rtt,
            queued=p.queued,
            sent_messages=p.sent_messages,
            sent_batches=p.sent_batches,
            sent_bytes=p.sent_bytes,
            dropped_messages=p.dropped_messages,
            send_failures=p.send_failures,
            snapshots_sent=p.snapshots_sent,
            snapshot_failures=p.snapshot_failures,
            received_messages=inbound.messages,
            received_bytes=inbound.bytes,
            inbound_streams=inbound.streams,
        )

    # -- sending ---------------------------------------------------------------------------

    def send(self, messages: Iterable[Message]) -> None:
        """Queue raft messages for their peers; never blocks, never raises.

        MsgSnap starts a snapshot transfer. A message for a blocked peer, or one that does not
        fit the peer's queue, is dropped and the peer reported unreachable to raft.
        """
        if self._stopped:
            return
        peers = self._peers
        faults = self.faults
        for m in messages:
            p = peers.get(m.to)
            if p is None:
                if m.to != self.member_id:
                    self.counters.dropped_unknown_target += 1
                continue
            if faults.active and p.blocked():
                self.counters.dropped_blocked += 1
                if m.type == MessageType.SNAP:
                    self.call_report_snapshot(p.id, True)
                self.call_report_unreachable(p.id)
                continue
            if m.type == MessageType.SNAP:
                p.send_snapshot(m)
            elif not p.enqueue(m):
                self._log_drop(p)
                self.call_report_unreachable(p.id)

    def _log_drop(self, p: PeerSender) -> None:
        now = asyncio.get_running_loop().time()
        last = self.counters.last_drop_log.get(p.id, 0.0)
        if now - last >= _DROP_LOG_INTERVAL:
            self.counters.last_drop_log[p.id] = now
            self.log.warning(
                "dropped internal Raft message since sending buffer is full (overloaded network)",
                extra={"fields": {"remote-peer-id": f"{p.id:x}", "dropped-total": p.dropped_messages}},
            )

    def set_blocked(self, ids: Iterable[int] = (), urls: Iterable[str] = ()) -> None:
        """In-process fault injection (combined with the fault file): drop traffic with these peers."""
        self.faults.set_blocked(ids, urls)
        self._faults_changed()

    def _faults_changed(self) -> None:
        if self._stopped:
            return
        for p in self._peers.values():
            p.on_faults_changed()

    # -- helpers for PeerSender ------------------------------------------------------------

    def peer_header(self, peer_id: int) -> peer_pb2.PeerHeader:
        return peer_pb2.PeerHeader(from_id=self.member_id, to_id=peer_id, cluster_id=self.cluster_id)

    def stream_header(self, peer_id: int) -> bytes:
        return peer_pb2.StreamRequest(header=self.peer_header(peer_id)).SerializeToString()

    def call_report_unreachable(self, peer_id: int) -> None:
        if not self._stopped:
            _guard(self.log, "report_unreachable", self.report_unreachable, peer_id)

    def call_report_snapshot(self, peer_id: int, failed: bool) -> None:
        if not self._stopped:
            _guard(self.log, "report_snapshot", self.report_snapshot, peer_id, failed)

    def call_on_rtt(self, peer_id: int, seconds: float) -> None:
        _guard(self.log, "on_rtt", self.on_rtt, peer_id, seconds)

    def member_removed(self, by_peer: int) -> None:
        """A peer told us we were removed: tell the server once (it stops, as etcd does)."""
        if self._removed_reported or self._stopped:
            return
        self._removed_reported = True
        self.log.error(
            ERR_MEMBER_REMOVED,
            extra={"fields": {"local-member-id": f"{self.member_id:x}", "remote-peer-id": f"{by_peer:x}"}},
        )
        _guard(self.log, "on_removed", self.on_removed, by_peer)

    # -- helpers for PeerService -----------------------------------------------------------

    def check_inbound(self, header: peer_pb2.PeerHeader) -> tuple[grpc.StatusCode, str] | None:
        """Why a call with this header must be refused, as (code, details); None to accept."""
        frm = header.from_id
        if self.is_id_removed(frm):
            return grpc.StatusCode.FAILED_PRECONDITION, ERR_MEMBER_REMOVED
        if header.to_id != self.member_id:
            return grpc.StatusCode.FAILED_PRECONDITION, (
                f"{ERR_WRONG_MEMBER}: sent to {header.to_id:x}, this is {self.member_id:x}"
            )
        if header.cluster_id and self.cluster_id and header.cluster_id != self.cluster_id:
            self.log.warning(
                "request sent was ignored due to cluster ID mismatch",
                extra={"fields": {"remote-peer-id": f"{frm:x}", "remote-peer-cluster-id": f"{header.cluster_id:x}",
                                  "local-member-cluster-id": f"{self.cluster_id:x}"}},
            )
            return grpc.StatusCode.FAILED_PRECONDITION, (
                f"{ERR_CLUSTER_MISMATCH}: {header.cluster_id:x} != {self.cluster_id:x}"
            )
        return self.check_stream(frm)

    def check_stream(self, frm: int) -> tuple[grpc.StatusCode, str] | None:
        """Re-checked per inbound batch: the sender may have been removed or blocked meanwhile."""
        if self.is_id_removed(frm):
            return grpc.StatusCode.FAILED_PRECONDITION, ERR_MEMBER_REMOVED
        if self.faults.active:
            p = self._peers.get(frm)
            if self.faults.is_blocked(frm, p.urls if p is not None else ()):
                return grpc.StatusCode.UNAVAILABLE, ERR_BLOCKED
        return None

    def inbound_opened(self, frm: int) -> None:
        self._inbound.setdefault(frm, _Inbound()).streams += 1

    def inbound_closed(self, frm: int) -> None:
        st = self._inbound.get(frm)
        if st is not None:
            st.streams -= 1

    def note_received(self, frm: int, nbytes: int) -> None:
        self._inbound.setdefault(frm, _Inbound()).bytes += nbytes

    def deliver(self, frm: int, pms: Iterable[object], nbytes: int) -> None:
        """Hand a received batch to raft, dropping what is not for us or not really from `frm`."""
        st = self._inbound.setdefault(frm, _Inbound())
        st.bytes += nbytes
        local = self.member_id
        on_message = self.on_message
        c = self.counters
        for pm in pms:
            try:
                m = decode_message(pm)  # type: ignore[arg-type]
            except CodecError as e:
                c.decode_errors += 1
                self.log.warning("dropped undecodable raft message", extra={"fields": {"error": str(e)}})
                continue
            if m.to != local:
                c.dropped_wrong_target += 1
                continue
            if m.frm != frm:
                c.dropped_wrong_sender += 1
                continue
            st.messages += 1
            try:
                on_message(m)
            except Exception as e:  # raft refusing one message must not kill the stream
                c.step_errors += 1
                self.log.debug("raft refused a peer message", extra={"fields": {"type": m.type.name, "error": repr(e)}})

    # -- unary calls to peers --------------------------------------------------------------

    def _peer(self, peer_id: int) -> PeerSender:
        p = self._peers.get(peer_id)
        if p is None:
            raise PeerUnreachable(f"unknown peer {peer_id:x}")
        return p

    async def lease_renew(self, peer_id: int, lease_id: int, timeout: float = 5.0) -> int:
        """Forward a lease keep-alive to `peer_id` (the leader): its TTL, or the leader's EtcdError.

        PeerUnreachable when no answer came; the caller retries (etcd retries until its deadline).
        """
        req = peer_pb2.LeaseRenewRequest(header=self.peer_header(peer_id), ID=lease_id).SerializeToString()
        resp = await self._peer(peer_id).unary(METHOD_LEASE_RENEW, req, peer_pb2.LeaseRenewResponse, timeout)
        if resp.error:  # type: ignore[attr-defined]
            raise error_from_message(resp.error)  # type: ignore[attr-defined]
        return int(resp.TTL)  # type: ignore[attr-defined]

    async def member_promote(self, peer_id: int, member_id: int, timeout: float = 5.0) -> None:
        """Forward MemberPromote to `peer_id` (the leader); its EtcdError is raised here."""
        req = peer_pb2.MemberPromoteRequest(header=self.peer_header(peer_id), ID=member_id).SerializeToString()
        resp = await self._peer(peer_id).unary(METHOD_MEMBER_PROMOTE, req, peer_pb2.MemberPromoteResponse, timeout)
        if resp.error:  # type: ignore[attr-defined]
            raise error_from_message(resp.error)  # type: ignore[attr-defined]

    async def lease_time_to_live(
        self, peer_id: int, lease_id: int, keys: bool = False, timeout: float = 5.0
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        """Forward LeaseTimeToLive to `peer_id` (the leader); errors as in `lease_renew`."""
        req = peer_pb2.LeaseTimeToLiveRequest(header=self.peer_header(peer_id), ID=lease_id, keys=keys)
        resp = await self._peer(peer_id).unary(
            METHOD_LEASE_TTL, req.SerializeToString(), peer_pb2.LeaseTimeToLiveResponse, timeout
        )
        if resp.error:  # type: ignore[attr-defined]
            raise error_from_message(resp.error)  # type: ignore[attr-defined]
        return resp.response  # type: ignore[attr-defined,no-any-return]


def _guard(log: logging.Logger, name: str, fn: Callable[..., object], *args: object) -> None:
    """Run a server callback; its failure is logged, never allowed to kill a transport task."""
    try:
        fn(*args)
    except Exception:
        log.exception("rafthttp callback failed", extra={"fields": {"callback": name}})


@functools.cache
def _errors_by_message() -> dict[str, type[errors.EtcdError]]:
    out: dict[str, type[errors.EtcdError]] = {}
    for v in vars(errors).values():
        if isinstance(v, type) and issubclass(v, errors.EtcdError) and v is not errors.EtcdError:
            out.setdefault(v.message, v)
    return out


def error_from_message(message: str) -> errors.EtcdError:
    """The typed etcd error a peer reported by its message text (generic EtcdError if unknown)."""
    cls = _errors_by_message().get(message)
    return cls() if cls is not None else errors.EtcdError(message)


async def fetch_members(
    peer_urls: Iterable[str],
    *,
    timeout: float = 5.0,
    options: TransportOptions | None = None,
    tls: TLSInfo | None = None,
) -> ClusterMembers:
    """Ask running members for the cluster id and member list (etcd's GetClusterFromRemotePeers).

    Tries each URL in turn; PeerUnreachable when none answers. https URLs are dialed with
    `tls` (the --peer-* flags; without it, only the system CAs and no client certificate).
    """
    opts = options or TransportOptions()
    failures: list[str] = []
    creds: grpc.ChannelCredentials | None = None
    for url in peer_urls:
        if is_tls_url(url) and creds is None and tls is not None:
            creds = tls.channel_credentials()
        async with open_channel(url, opts, tls, creds) as ch:
            mc = ch.unary_unary(
                METHOD_MEMBERS, request_serializer=None, response_deserializer=peer_pb2.MembersResponse.FromString
            )
            try:
                resp = await mc(b"", timeout=timeout, wait_for_ready=True)
            except grpc.aio.AioRpcError as e:
                failures.append(f"{url}: {e.code().name}: {e.details()}")
                continue
        members = [
            RemoteMember(
                id=m.ID,
                name=m.name,
                peer_urls=list(m.peerURLs),
                client_urls=list(m.clientURLs),
                is_learner=m.isLearner,
            )
            for m in resp.members
        ]
        return ClusterMembers(cluster_id=resp.cluster_id, members=members)
    raise PeerUnreachable(
        "could not retrieve cluster information from the given URLs" + (f" ({'; '.join(failures)})" if failures else "")
    )
