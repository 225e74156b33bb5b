"""Starting and stopping the servers under test.

Both etcd and etcdpy are started with the same etcd flags (etcdpy accepts etcd's
command line), in fresh temporary data directories on loopback ports picked by the
kernel, so a run never collides with another engineer's servers and never measures
a data directory left behind by an earlier run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ETCD_BIN = "/usr/bin/etcd"
READY_TIMEOUT_S = 60.0
"""Generous: an etcdpy member on a busy 2-core box may take a while to import."""
STOP_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 4000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class TargetError(RuntimeError):
    """A target could not be started or never became ready; carries its log tail."""


@dataclass
class Target:
    """A named set of client endpoints to benchmark, maybe started by us."""

    name: str
    endpoints: list[str]
    cluster: "LocalCluster | None" = None
    version: str = ""

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) its server processes have used so far; None if not ours."""
        return None if self.cluster is None else self.cluster.cpu_seconds()

    @property
    def members(self) -> int:
        """How many members serve it (from the endpoints when we did not start it)."""
        return self.cluster.members if self.cluster is not None else len(self.endpoints)

    def disk_counters(self) -> tuple[float, float] | None:
        """(WAL fsyncs, backend commits) so far, summed over members; None if any member did not say."""
        totals = [0.0, 0.0]
        for endpoint in self.endpoints:
            got = scrape_counters(f"http://{endpoint}/metrics", DISK_COUNTERS)
            if got is None:
                return None
            for i, name in enumerate(DISK_COUNTERS):
                totals[i] += got[name]
        return totals[0], totals[1]


def free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free loopback ports.

    All sockets stay open until every port is chosen, so the kernel cannot hand out the
    same port twice; the small window before the server binds it is accepted.
    """
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


ETCDPY_BACKEND_TARGETS = {"etcdpy-native": "native", "etcdpy-grpcio": "grpcio"}
"""Targets that pin etcdpy's client-port gRPC server (`ETCDPY_GRPC_SERVER`); plain `etcdpy` uses its default."""
KINDS = ("etcd", "etcd35", "etcdpy", *ETCDPY_BACKEND_TARGETS)


def target_command(kind: str, etcd_bin: str, etcd35_bin: str | None = None) -> list[str]:
    """The argv prefix that starts one member of `kind` (etcd flags follow)."""
    if kind == "etcd":
        return [etcd_bin]
    if kind == "etcd35":
        if not etcd35_bin:
            raise ValueError("target etcd35 needs --etcd35-bin")
        return [etcd35_bin]
    if kind == "etcdpy" or kind in ETCDPY_BACKEND_TARGETS:
        return [sys.executable, "-m", "etcdpy"]
    raise ValueError(f"unknown target {kind!r}; known: {', '.join(KINDS)}")


def clean_env(kind: str = "") -> dict[str, str]:
    """The environment minus ETCD_* / ETCDCTL_*: both servers read ETCD_* as flags,
    and a stray one in a developer's shell would silently change what is measured.
    An `etcdpy-<backend>` target also gets its gRPC server pinned."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    if kind in ETCDPY_BACKEND_TARGETS:
        env["ETCDPY_GRPC_SERVER"] = ETCDPY_BACKEND_TARGETS[kind]
    return env


@dataclass
class Member:
    """One started server process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def flags(self, initial_cluster: str, token: str) -> list[str]:
        """etcd's own flags: the one command line both implementations accept."""
        return [
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", token,
        ]  # fmt: skip

    def log_tail(self) -> str:
        """The end of the member's log, for error messages."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-LOG_TAIL_BYTES:].decode("utf-8", "replace")


@dataclass
class LocalCluster:
    """`members` servers of one kind sharing one --initial-cluster, in a temp dir."""

    kind: str
    members: int
    etcd_bin: str = DEFAULT_ETCD_BIN
    data_root: str | None = None
    keep_data: bool = False
    etcd35_bin: str | None = None
    root: Path | None = None
    nodes: list[Member] = field(default_factory=list)
    stopped: bool = False

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.nodes]

    def start(self) -> None:
        """Start every member at once (they must all be up to elect a leader)."""
        self.root = Path(tempfile.mkdtemp(prefix=f"etcdpy-bench-{self.kind}-", dir=self.data_root))
        ports = free_ports(2 * self.members)
        self.nodes = [
            Member(
                name=f"{self.kind}{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.root / f"m{i}.data",
                log_path=self.root / f"m{i}.log",
            )
            for i in range(self.members)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.nodes)
        token = f"etcdpy-bench-{secrets.token_hex(4)}"
        argv0 = target_command(self.kind, self.etcd_bin, self.etcd35_bin)
        for m in self.nodes:
            with open(m.log_path, "wb") as log:
                m.proc = subprocess.Popen(
                    argv0 + m.flags(initial, token),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=clean_env(self.kind),
                    cwd=self.root,
                )

    def cpu_seconds(self) -> float | None:
        """Summed CPU time of every member (and its children, e.g. a front process) so far."""
        pids = [m.proc.pid for m in self.nodes if m.proc is not None and m.proc.poll() is None]
        if not pids:
            return None
        return sum(process_tree_cpu_seconds(pid) for pid in pids)

    def check_alive(self) -> None:
        """Raise TargetError, with the log, if a member has exited."""
        for m in self.nodes:
            if m.proc is not None and m.proc.poll() is not None:
                raise TargetError(
                    f"{self.kind} member {m.name} exited with code {m.proc.returncode}; "
                    f"log tail ({m.log_path}):\n{m.log_tail()}"
                )

    def stop(self) -> None:
        """Terminate politely, then kill; remove the data unless asked to keep it."""
        self.stopped = True
        for m in self.nodes:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.terminate()
        for m in self.nodes:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=STOP_TIMEOUT_S)
        if self.root is not None and not self.keep_data:
            shutil.rmtree(self.root, ignore_errors=True)


DISK_COUNTERS = ("etcd_disk_wal_fsync_duration_seconds_count", "etcd_disk_backend_commit_duration_seconds_count")
"""Both servers export these on the client port's /metrics: how often each made its WAL durable
and committed its backend. Writes per fsync / per commit show how well each batches under load."""


def scrape_counters(url: str, names: tuple[str, ...], timeout_s: float = 2.0) -> dict[str, float] | None:
    """The named unlabelled samples of a Prometheus text page; None if unreachable or one is missing."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    wanted = set(names)
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            try:
                found[name] = float(value.split()[0])
            except (ValueError, IndexError):
                return None
    return found if len(found) == len(wanted) else None


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads) from /proc/<pid>/stat; 0 if it is gone.

    Why /proc rather than wall-clock throughput: on a shared machine the CPU a server
    spends per request barely moves with the background load, while ops/s does.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's children list), for helper processes."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its living descendants."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += process_cpu_seconds(p)
        todo += child_pids(p)
    return total


def wait_ready(target: Target, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Block until every endpoint answers a linearizable Range.

    A linearizable read needs a leader and a member that has caught up with it, which
    is exactly "ready to be measured"; it also uses nothing but the KV service.
    """
    import grpc

    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    deadline = time.monotonic() + timeout_s
    for endpoint in target.endpoints:
        with grpc.insecure_channel(endpoint) as channel:
            stub = rpc_pb2_grpc.KVStub(channel)
            last = _probe_until(stub, rpc_pb2.RangeRequest(key=b"bench/ready"), target, deadline)
            if last is not None:
                raise TargetError(f"{target.name} endpoint {endpoint} not ready after {timeout_s:.0f}s: {last}")


def _probe_until(stub: Any, request: Any, target: Target, deadline: float) -> str | None:
    """Retry one probe until it succeeds (None) or the deadline passes (last error)."""
    last = "no attempt"
    while time.monotonic() < deadline:
        if target.cluster is not None:
            target.cluster.check_alive()
        try:
            stub.Range(request, timeout=1.0)
            return None
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            details = getattr(exc, "details", None)  # a gRPC error's status message
            last = f"{type(exc).__name__}: {details() if callable(details) else exc}"
            time.sleep(0.1)
    return last


def server_version(endpoint: str) -> str:
    """The version the server reports in Maintenance.Status, or "" if it cannot say."""
    import grpc

    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    try:
        with grpc.insecure_channel(endpoint) as channel:
            resp = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(), timeout=3.0)
            return str(resp.version)
    except Exception:  # noqa: BLE001 - the version is decoration, not a result
        return ""


def etcd_binary_version(etcd_bin: str) -> str:
    """`etcd --version`'s first line, e.g. "etcd Version: 3.4.23"."""
    try:
        out = subprocess.run([etcd_bin, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    line = out.stdout.splitlines()[0] if out.stdout else ""
    return line.split(":", 1)[-1].strip() or "unknown"


def parse_endpoint(text: str) -> str:
    """Accept "host:port" or "http://host:port"; gRPC wants "host:port"."""
    text = text.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    return text.rstrip("/")
