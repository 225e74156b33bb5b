"""Server configuration: etcd's flags as one typed value, built by the CLI and read by the server."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from etcdpy.tlsutil import TLSInfo

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024
DEFAULT_QUOTA_BACKEND_BYTES = 2 * 1024 * 1024 * 1024
MAX_GAP_BETWEEN_APPLY_AND_COMMIT = 5000
DEFAULT_SNAPSHOT_COUNT = 100_000
SNAPSHOT_CATCHUP_ENTRIES = 5000
MAX_TXN_OPS = 128
DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL = 600.0  # seconds (etcd: 10m)


@dataclass
class ServerConfig:
    name: str = "default"
    data_dir: str = ""
    listen_client_urls: list[str] = field(default_factory=lambda: ["http://localhost:2379"])
    advertise_client_urls: list[str] = field(default_factory=lambda: ["http://localhost:2379"])
    listen_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    initial_cluster: dict[str, list[str]] = field(default_factory=dict)
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    snapshot_count: int = DEFAULT_SNAPSHOT_COUNT
    snapshot_catchup_entries: int = SNAPSHOT_CATCHUP_ENTRIES
    quota_backend_bytes: int = 0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = MAX_TXN_OPS
    auth_token: str = "simple"  # etcd's --auth-token; only simple tokens exist so far
    auth_token_ttl: int = 300  # seconds a simple token lives unused (--auth-token-ttl)
    bcrypt_cost: int = 10  # --bcrypt-cost for password hashes
    heartbeat_ms: int = 100
    election_ms: int = 1000
    log_level: str = "info"
    auto_compaction_mode: str = "periodic"  # --auto-compaction-mode: periodic | revision
    auto_compaction_retention: str = "0"  # --auto-compaction-retention: "0" = off (see server.compactor)
    listen_metrics_urls: list[str] = field(default_factory=list)  # --listen-metrics-urls
    force_new_cluster: bool = False  # --force-new-cluster: restart existing data as a one-member cluster
    # Client TLS (--cert-file, --key-file, --trusted-ca-file, --client-cert-auth) and its --peer-* twin.
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False
    watch_progress_notify_interval: float = DEFAULT_WATCH_PROGRESS_NOTIFY_INTERVAL  # seconds
    grpc_server: str = ""  # --experimental-grpc-server: native | grpcio; "" = $ETCDPY_GRPC_SERVER or default
    wal_dir_flag: str = ""  # --wal-dir: a dedicated WAL directory (else member/wal in the data dir)
    log_outputs: list[str] = field(default_factory=lambda: ["default"])  # --log-outputs
    initial_corrupt_check: bool = False  # --experimental-initial-corrupt-check

    def __post_init__(self) -> None:
        if not self.data_dir:
            self.data_dir = f"{self.name}.etcd"

    @property
    def member_dir(self) -> str:
        return os.path.join(self.data_dir, "member")

    @property
    def wal_dir(self) -> str:
        """--wal-dir when given (etcd keeps the WAL there, and nothing of it in the data dir)."""
        return self.wal_dir_flag or os.path.join(self.member_dir, "wal")

    @property
    def snap_dir(self) -> str:
        return os.path.join(self.member_dir, "snap")

    @property
    def backend_path(self) -> str:
        return os.path.join(self.snap_dir, "db")

    @property
    def election_ticks(self) -> int:
        return max(1, self.election_ms // self.heartbeat_ms)

    @property
    def request_timeout(self) -> float:
        """etcd's ReqTimeout: 5 s plus two election timeouts."""
        return 5.0 + 2 * self.election_ms / 1000.0

    @property
    def client_tls(self) -> TLSInfo:
        return TLSInfo(self.cert_file, self.key_file, self.trusted_ca_file, self.client_cert_auth)

    @property
    def peer_tls(self) -> TLSInfo:
        """For the peer transport: `.server_credentials()` to listen, `.channel_credentials()` to dial."""
        return TLSInfo(self.peer_cert_file, self.peer_key_file, self.peer_trusted_ca_file,
                       self.peer_client_cert_auth, flag_prefix="peer-")

    @property
    def effective_quota(self) -> int:
        return self.quota_backend_bytes if self.quota_backend_bytes > 0 else DEFAULT_QUOTA_BACKEND_BYTES


def url_host_port(url: str, default_port: int) -> tuple[str, int, str]:
    """Split a listen URL into (host, port, scheme); etcd accepts http(s) and unix-less TCP URLs only."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"URL scheme must be http or https: {url}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {url}")
    return parts.hostname, parts.port or default_port, parts.scheme
