"""What the scenarios stand on: a Kubernetes to talk to, the operator, node faults, a checked writer.

Why one module: the scenarios are written once against the Kubernetes API; this module is the only
place that knows whether that API is the double with the test node (default) or a real cluster
(`--kubeconfig` / `E2E_KUBECONFIG`). On the double it starts the operator as a real process in a
mount namespace with the test hosts file; on a real cluster the operator is expected to be running
already (deployed by the kind runner) and members are reached through `kubectl port-forward`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parent.parent
E2E = Path(__file__).resolve().parent
GROUP, VERSION, PLURAL = "etcd.etcdpy.io", "v1alpha1", "etcdclusters"
CRD_DIR = ROOT / "operator" / "etcdpy_operator" / "crds"
LABEL_CLUSTER = "etcd.etcdpy.io/cluster"
MERGE = "application/merge-patch+json"


def dies_with_us(argv: list[str], sig: str = "KILL") -> list[str]:
    """`argv` run under `setpriv --pdeathsig`, so it dies if this process does.

    Why not a preexec_fn: Python code between fork and exec in a process whose gRPC threads are busy
    (the writers) made a child abort in gRPC's poller; without a preexec_fn subprocess uses vfork.
    """
    return ["setpriv", "--pdeathsig", sig, "--", *argv]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` (and the last error) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the last error is part of the failure message
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last
                                                                                   else ""))


class Kube:
    """A Kubernetes API (double or real) with the clients the scenarios use."""

    is_double = False

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.api = k8s_config.new_client_from_config(str(kubeconfig))
        self.core = k8s.CoreV1Api(self.api)
        self.custom = k8s.CustomObjectsApi(self.api)
        self.ext = k8s.ApiextensionsV1Api(self.api)
        self.policy = k8s.PolicyV1Api(self.api)

    # ---- namespaces and custom resources --------------------------------------------------------
    def create_namespace(self, prefix: str = "e2e") -> str:
        name = f"{prefix}-{random.randrange(16**6):06x}"
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def delete_namespace(self, ns: str) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(ns)

    def apply_crds(self) -> bool:
        """Create (or replace) the operator's CRDs from its package data; False if not there yet."""
        files = sorted(CRD_DIR.glob("*.yaml")) if CRD_DIR.is_dir() else []
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                try:
                    self.ext.create_custom_resource_definition(doc)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    cur = self.ext.read_custom_resource_definition(doc["metadata"]["name"])
                    doc["metadata"]["resourceVersion"] = cur.metadata.resource_version
                    self.ext.replace_custom_resource_definition(doc["metadata"]["name"], doc)
        return bool(files)

    def etcdcluster(self, ns: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    def create_etcdcluster(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EtcdCluster", "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

    def patch_etcdcluster(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": spec},
                                                          _content_type=MERGE)

    def delete_etcdcluster(self, ns: str, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    # ---- pods and members -----------------------------------------------------------------------
    def member_pods(self, ns: str, cluster: str) -> list[k8s.V1Pod]:
        return list(self.core.list_namespaced_pod(ns, label_selector=f"{LABEL_CLUSTER}={cluster}").items)

    @staticmethod
    def pod_ready(pod: k8s.V1Pod) -> bool:
        return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or [])) and \
            not pod.metadata.deletion_timestamp

    def condition(self, ns: str, cluster: str, ctype: str) -> dict[str, Any] | None:
        obj = self.etcdcluster(ns, cluster)
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") == ctype:
                return dict(c)
        return None

    def available(self, ns: str, cluster: str, members: int) -> bool:
        """Available with `members` ready voters, its generation observed and no operation in flight."""
        obj = self.etcdcluster(ns, cluster)
        st = obj.get("status") or {}
        cond: dict[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "Available"), {})
        voters = [m for m in st.get("members") or [] if not m.get("learner")]
        ready_pods = [p for p in self.member_pods(ns, cluster) if self.pod_ready(p)]
        return cond.get("status") == "True" and len(voters) == members and len(ready_pods) == members and \
            st.get("readyMembers") == members and st.get("observedGeneration") == obj["metadata"].get("generation") \
            and not st.get("operation")

    def events(self, ns: str) -> list[k8s.CoreV1Event]:
        return list(self.core.list_namespaced_event(ns).items)

    # ---- what differs between the double and a real cluster --------------------------------------
    def endpoint(self, ns: str, pod: k8s.V1Pod, port: int = 2379) -> str:
        raise NotImplementedError

    def start_operator(self, ns: str, env: dict[str, str] | None = None) -> None:
        raise NotImplementedError

    def stop_operator(self) -> None:
        raise NotImplementedError

    def operator_exited(self) -> int | None:
        raise NotImplementedError

    def kill_pod_process(self, ns: str, pod: str) -> None:
        raise NotImplementedError

    def wipe_volume(self, ns: str, pvc: str) -> None:
        raise NotImplementedError

    def corrupt_volume(self, ns: str, pvc: str) -> None:
        raise NotImplementedError

    def freeze_pod(self, ns: str, pod: str) -> None:
        """Stop the member's process (SIGSTOP): it holds its ports but answers nothing, like a hung node."""
        raise NotImplementedError

    def thaw_pod(self, ns: str, pod: str) -> None:
        raise NotImplementedError

    def diagnostics(self, ns: str) -> str:
        return ""

    def close(self) -> None:
        self.api.close()


class DoubleKube(Kube):
    """The API double and the test node (`python -m k8sdouble`), started and ended by this process."""

    is_double = True

    def __init__(self, state: Path) -> None:
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        self.log = open(state / "k8sdouble.log", "ab")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(E2E), str(ROOT / "server"), str(ROOT / "operator"),
                                                            os.environ.get("PYTHONPATH", "")])}
        env.pop("KUBECONFIG", None)
        self.proc = subprocess.Popen(dies_with_us([sys.executable, "-m", "k8sdouble", str(state)], "TERM"),
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: (state / "kubeconfig").exists() or self.proc.poll() is not None, 30, "the API double")
        if self.proc.poll() is not None:
            raise RuntimeError(f"k8sdouble exited: {(state / 'k8sdouble.log').read_text()[-2000:]}")
        super().__init__(state / "kubeconfig")
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_starts = 0

    def endpoint(self, ns: str, pod: k8s.V1Pod, port: int = 2379) -> str:
        return f"{pod.status.pod_ip}:{port}"

    def start_operator(self, ns: str, env: dict[str, str] | None = None) -> None:
        """The operator as a real process, in a mount namespace whose /etc/hosts is the cluster's."""
        self.stop_operator()
        self.operator_starts += 1
        penv = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PYTHONPATH": os.pathsep.join([str(ROOT / "server"), str(ROOT / "operator"),
                                               os.environ.get("PYTHONPATH", "")]), **(env or {})}
        if "ETCDPY_OPERATOR_CRASH_AT" not in (env or {}):
            penv.pop("ETCDPY_OPERATOR_CRASH_AT", None)
        health, metrics = _free_port(), _free_port()
        self.operator_ports = (health, metrics)
        argv = [sys.executable, "-m", "etcdpy_operator", "--namespace", ns, "--health-port", str(health),
                "--metrics-port", str(metrics), "--log-level", "debug"]
        script = f"mount --bind {shlex.quote(str(self.state / 'hosts'))} /etc/hosts && exec \"$@\""
        out = open(self.state / f"operator.{self.operator_starts}.log", "ab")  # noqa: SIM115 - owned by the child
        self.operator = subprocess.Popen(dies_with_us(["unshare", "--mount", "--propagation", "private", "--", "sh",
                                                       "-c", script, "sh", *argv]),
                                         stdout=out, stderr=subprocess.STDOUT, env=penv, start_new_session=True)
        out.close()

    def operator_exited(self) -> int | None:
        return None if self.operator is None else self.operator.poll()

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(10)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
        self.operator = None

    def _pod_dir(self, ns: str, pod: str) -> Path:
        uid = self.core.read_namespaced_pod(pod, ns).metadata.uid
        return self.state / "pods" / f"{ns}_{pod}_{uid[:8]}"

    def kill_pod_process(self, ns: str, pod: str, container: str = "etcd") -> None:
        """SIGKILL the container's process, as an OOM kill or a crash would."""
        self._signal(ns, pod, signal.SIGKILL, container)

    def _signal(self, ns: str, pod: str, sig: int, container: str = "etcd") -> None:
        pid = int((self._pod_dir(ns, pod) / f"{container}.pid").read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def freeze_pod(self, ns: str, pod: str) -> None:
        self._signal(ns, pod, signal.SIGSTOP)

    def thaw_pod(self, ns: str, pod: str) -> None:
        self._signal(ns, pod, signal.SIGCONT)

    def volume_dir(self, ns: str, pvc: str) -> Path:
        name = self.core.read_namespaced_persistent_volume_claim(pvc, ns).spec.volume_name
        return self.state / "volumes" / name

    def wipe_volume(self, ns: str, pvc: str) -> None:
        """The disk is replaced by an empty one: everything in the volume goes, the process is killed."""
        d = self.volume_dir(ns, pvc)
        for child in d.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def corrupt_volume(self, ns: str, pvc: str) -> None:
        """Bit rot: every regular file in the volume gets garbage written over its middle."""
        rng = random.Random(7)
        for f in sorted(self.volume_dir(ns, pvc).rglob("*")):
            if f.is_file() and f.stat().st_size > 0:
                size = f.stat().st_size
                with open(f, "r+b") as fh:
                    fh.seek(size // 3)
                    fh.write(bytes(rng.randrange(256) for _ in range(min(4096, max(1, size // 3)))))

    def diagnostics(self, ns: str) -> str:
        parts = []
        for f in sorted(self.state.glob("operator.*.log")):
            parts.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-6000:])
        for d in sorted((self.state / "pods").glob(f"{ns}_*")):
            for f in sorted(d.glob("*.log"))[-2:]:
                parts.append(f"--- {d.name}/{f.name}\n" + f.read_text(errors="replace")[-2500:])
        parts.append("--- k8sdouble.log\n" + (self.state / "k8sdouble.log").read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def close(self) -> None:
        self.stop_operator()
        super().close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class RealKube(Kube):
    """A real cluster (kind): the operator runs in it already; members are reached by port-forward."""

    def __init__(self, kubeconfig: Path) -> None:
        super().__init__(kubeconfig)
        self.forwards: dict[tuple[str, str, int], tuple[subprocess.Popen[bytes], int]] = {}

    def endpoint(self, ns: str, pod: k8s.V1Pod, port: int = 2379) -> str:
        key = (ns, pod.metadata.name, port)
        fwd = self.forwards.get(key)
        if fwd is None or fwd[0].poll() is not None:
            local = _free_port()
            proc = subprocess.Popen(["kubectl", "--kubeconfig", str(self.kubeconfig), "-n", ns, "port-forward",
                                     f"pod/{pod.metadata.name}", f"{local}:{port}"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            wait_until(lambda: _connectable("127.0.0.1", local), 20, f"port-forward to {pod.metadata.name}")
            self.forwards[key] = fwd = (proc, local)
        return f"127.0.0.1:{fwd[1]}"

    def start_operator(self, ns: str, env: dict[str, str] | None = None) -> None:
        """The operator is deployed by the cluster runner; crash-point scenarios are skipped here."""

    def stop_operator(self) -> None:
        """Not ours to stop on a real cluster."""

    def operator_exited(self) -> int | None:
        return None

    def _exec(self, ns: str, pod: str, script: str) -> None:
        subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), "-n", ns, "exec", pod, "-c", "etcd", "--",
                        "sh", "-c", script], check=False, timeout=60, capture_output=True)

    def kill_pod_process(self, ns: str, pod: str, container: str = "etcd") -> None:
        self._exec(ns, pod, "kill 1")  # PID 1 of a container ignores SIGKILL sent from inside it

    def wipe_volume(self, ns: str, pvc: str) -> None:
        self._exec(ns, pvc, "rm -rf /var/lib/etcd/* ; kill 1")

    def corrupt_volume(self, ns: str, pvc: str) -> None:
        self._exec(ns, pvc, "for f in $(find /var/lib/etcd -type f); do "
                            "dd if=/dev/urandom of=$f bs=1 count=4096 seek=64 conv=notrunc 2>/dev/null; done; kill 1")

    def close(self) -> None:
        for proc, _ in self.forwards.values():
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        super().close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connectable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
        return True
    return False


# ---- the checked writer ---------------------------------------------------------------------------
@dataclass
class TLSFiles:
    """Client credentials for a TLS cluster (PEM bytes) and the name its server certificate is for."""

    ca: bytes
    cert: bytes
    key: bytes
    server_name: str


@dataclass
class Writer:
    """A client writing continuously to whichever member answers; every acknowledged write is recorded.

    Why it reads the member list from the API on every failure: the set of members changes during a
    scenario (scale, replacement), and a real client would be configured with the client Service;
    here each member is dialled directly so a failover never depends on the proxy.
    """

    kube: Kube
    ns: str
    cluster: str
    prefix: str = "/e2e/"
    tls: TLSFiles | None = None
    acked: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{self.cluster}", daemon=True)
        self._channels: dict[str, grpc.Channel] = {}

    def _channel(self, endpoint: str) -> grpc.Channel:
        ch = self._channels.get(endpoint)
        if ch is None:
            if self.tls:
                creds = grpc.ssl_channel_credentials(self.tls.ca, self.tls.key, self.tls.cert)
                ch = grpc.secure_channel(endpoint, creds, options=[("grpc.ssl_target_name_override",
                                                                    self.tls.server_name)])
            else:
                ch = grpc.insecure_channel(endpoint)
            self._channels[endpoint] = ch
        return ch

    def endpoints(self) -> list[str]:
        pods = [p for p in self.kube.member_pods(self.ns, self.cluster) if p.status.pod_ip or not self.kube.is_double]
        ready = [p for p in pods if Kube.pod_ready(p)]
        return [self.kube.endpoint(self.ns, p) for p in (ready or pods)]

    def start(self) -> Writer:
        self._thread.start()
        return self

    def _run(self) -> None:
        from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

        i = 0
        endpoints: list[str] = []
        while not self._stop.is_set():
            if not endpoints:
                try:
                    endpoints = self.endpoints()
                except Exception as exc:  # noqa: BLE001 - the API may be briefly unavailable
                    self.errors.append(f"endpoints: {exc}")
                if not endpoints:
                    time.sleep(0.2)
                    continue
            ep = endpoints[i % len(endpoints)]
            key, value = f"{self.prefix}{i:08d}", f"v{i}-{time.time():.3f}"
            try:
                rpc_pb2_grpc.KVStub(self._channel(ep)).Put(rpc_pb2.PutRequest(key=key.encode(), value=value.encode()),
                                                          timeout=3)
                self.acked[key] = value
                i += 1
                time.sleep(0.02)
            except grpc.RpcError as exc:
                self.failures += 1
                if len(self.errors) < 200:
                    self.errors.append(f"{ep}: {exc.code().name} {exc.details()}")
                endpoints = []
                i += 1  # the outcome is unknown; never reuse the key
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def verify(self, timeout: float = 60) -> int:
        """Read everything back (linearizably) and check every acknowledged write; returns how many."""
        from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

        self.stop()

        def read() -> dict[str, str]:
            for ep in self.endpoints():
                try:
                    resp = rpc_pb2_grpc.KVStub(self._channel(ep)).Range(rpc_pb2.RangeRequest(
                        key=self.prefix.encode(), range_end=_prefix_end(self.prefix.encode())), timeout=10)
                    return {kv.key.decode(): kv.value.decode() for kv in resp.kvs}
                except grpc.RpcError:
                    continue
            return {}

        stored = wait_until(read, timeout, "a member to serve the final read")
        missing = [k for k in self.acked if k not in stored]
        wrong = [k for k in self.acked if k in stored and stored[k] != self.acked[k]]
        assert not missing and not wrong, (f"{len(missing)} acknowledged writes lost (first {missing[:5]}), "
                                           f"{len(wrong)} with another value")
        assert self.acked, f"the writer never got a write acknowledged: {self.errors[-5:]}"
        for ch in self._channels.values():
            ch.close()
        return len(self.acked)


def _prefix_end(prefix: bytes) -> bytes:
    b = bytearray(prefix)
    b[-1] += 1
    return bytes(b)


def etcd_members(kube: Kube, ns: str, cluster: str, tls: TLSFiles | None = None) -> list[Any]:
    """etcd's own member list, asked of any member that answers."""
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    w = Writer(kube, ns, cluster, tls=tls)
    for ep in w.endpoints():
        with contextlib.suppress(grpc.RpcError):
            return list(rpc_pb2_grpc.ClusterStub(w._channel(ep)).MemberList(
                rpc_pb2.MemberListRequest(linearizable=True), timeout=5).members)
    raise AssertionError("no member answered MemberList")


@contextlib.contextmanager
def timed(results: dict[str, float], name: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    results[name] = round(time.monotonic() - start, 2)


def record_timings(path: Path, scenario: str, timings: dict[str, float]) -> None:
    """Append measured durations to the suite's JSON results (read by the README table)."""
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(scenario, {}).update(timings)
    data.setdefault("_meta", {})["loadavg"] = os.getloadavg()
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---- waiting on the operator's view ----------------------------------------------------------------
TIMEOUT_SCALE = float(os.environ.get("E2E_TIMEOUT_SCALE", "1"))


def t(seconds: float) -> float:
    """A timeout, stretched by E2E_TIMEOUT_SCALE on slow machines or clusters."""
    return seconds * TIMEOUT_SCALE


def summary(kube: Kube, ns: str, cluster: str) -> str:
    """One line of what the cluster looks like, for failure messages."""
    try:
        st = kube.etcdcluster(ns, cluster).get("status") or {}
    except ApiException as exc:
        return f"(EtcdCluster unreadable: {exc.status})"
    conds = {c.get("type"): f"{c.get('status')}/{c.get('reason')}" for c in st.get("conditions") or []}
    pods = {p.metadata.name: ("Ready" if Kube.pod_ready(p) else p.status.phase) for p in
            kube.member_pods(ns, cluster)}
    return (f"phase={st.get('phase')} ready={st.get('readyMembers')}/{st.get('desiredMembers')} "
            f"members={[m.get('name') for m in st.get('members') or []]} op={st.get('operation')} "
            f"conditions={conds} pods={pods}")


def wait_available(kube: Kube, ns: str, cluster: str, members: int, timeout: float = 300) -> float:
    """Wait until the cluster is Available with `members` ready voters; returns the seconds it took."""
    start = time.monotonic()
    deadline = start + t(timeout)
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiException):
            if kube.available(ns, cluster, members):
                return round(time.monotonic() - start, 2)
        exited = kube.operator_exited()
        if exited is not None:
            raise AssertionError(f"the operator exited with {exited}; {summary(kube, ns, cluster)}")
        time.sleep(0.5)
    raise AssertionError(f"{cluster} not Available with {members} members after {t(timeout):.0f}s: "
                         f"{summary(kube, ns, cluster)}")


def member_names(kube: Kube, ns: str, cluster: str, tls: TLSFiles | None = None) -> dict[str, int]:
    """etcd's member list as name -> id (learners included)."""
    return {m.name: m.ID for m in etcd_members(kube, ns, cluster, tls)}


def assert_converged(kube: Kube, ns: str, cluster: str, members: int, tls: TLSFiles | None = None) -> dict[str, int]:
    """etcd, the Pods, the PVCs and the status agree: `members` started voters, one Pod+PVC each, no leftovers."""
    listed = etcd_members(kube, ns, cluster, tls)
    names = {m.name for m in listed}
    assert len(listed) == members and all(m.name and not m.isLearner for m in listed), \
        f"etcd members {[(m.name, m.isLearner) for m in listed]}"
    pods = {p.metadata.name for p in kube.member_pods(ns, cluster) if not p.metadata.deletion_timestamp}
    assert pods == names, f"pods {sorted(pods)} vs etcd members {sorted(names)}"
    pvcs = {c.metadata.name for c in kube.core.list_namespaced_persistent_volume_claim(
        ns, label_selector=f"{LABEL_CLUSTER}={cluster}").items if not c.metadata.deletion_timestamp}
    spec = kube.etcdcluster(ns, cluster)["spec"]
    if not (spec.get("storage") or {}).get("ephemeral"):
        assert pvcs == names, f"PVCs {sorted(pvcs)} vs etcd members {sorted(names)}"
    return {m.name: m.ID for m in listed}
