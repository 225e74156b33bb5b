#!/usr/bin/env python3
"""Smoke test of the etcdpy container image with podman (run by .ci/run via scripts/image-smoke).

What it proves, on the image as built (not on the source tree):
  * the image's metadata: OCI labels, non-root user, /var/lib/etcd volume, ports, tini entrypoint;
  * nothing that should stay in the builder reached it (compilers, pip, apt lists, caches);
  * the default command serves clients: `etcdctl put/get` from the host, /readyz answers 200;
  * SIGTERM stops it with exit code 0 within a few seconds, both under the image's tini and
    with `etcdpy` itself as PID 1 (member pods use `command: ["etcdpy"]`, bypassing the entrypoint);
  * data written before a stop is there after a restart with the same volume;
  * the operator's entry point and its CRDs are in the image (once the operator exists in the tree);
  * the operator, run from the image with the command, arguments, environment and confinement of the
    chart's rendered Deployment (non-root, read-only root filesystem, only /tmp writable), drives a 1-member EtcdCluster to ready against the e2e suite's Kubernetes API
    double and test node (e2e/k8sdouble, once it exists), and stops on SIGTERM with exit code 0.

Containers use the host network (podman's bridge range may collide with the host's) on free
ports picked here, so parallel runs and a packaged etcd on 2379 do not collide with it.
Exit codes: 0 passed, 1 failed, 0 with a loud "SKIPPED" line when podman cannot run containers
here (unless ETCDPY_REQUIRE_PODMAN=1, then 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STOP_DEADLINE_S = 10.0
READY_DEADLINE_S = 60.0


class SmokeFailure(Exception):
    """A check on the image failed; the message says which and why."""


def log(msg: str) -> None:
    """Progress on stderr, prefixed so it stands out in the CI log."""
    print(f"image-smoke: {msg}", file=sys.stderr, flush=True)


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run podman with the CI containers.conf; raise SmokeFailure with its stderr on failure."""
    p = subprocess.run(["podman", *args], check=False, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise SmokeFailure(f"podman {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return p


def podman_unusable(image: str) -> str | None:
    """Why podman cannot run the image here, or None when it can (a trivial container runs)."""
    if not shutil.which("podman"):
        return "podman is not installed"
    if podman("image", "exists", image, check=False).returncode != 0:
        return None  # podman works; the missing image is a failure, reported by the caller
    p = podman("run", "--rm", "--network", "host", "--entrypoint", "true", image, check=False, timeout=60)
    if p.returncode != 0:
        return f"podman cannot run a container here: {p.stderr.strip()[-500:]}"
    return None


def free_ports(n: int) -> list[int]:
    """n ports that are free right now on 127.0.0.1 (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll pred until true; SmokeFailure naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise SmokeFailure(f"timed out after {timeout:.0f}s waiting for {what}")


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET, (0, error) when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def etcdctl(endpoint: str, *args: str) -> str:
    """The host's etcdctl against the container; SmokeFailure with its output when it fails."""
    exe = os.environ.get("ETCDPY_ETCDCTL_BIN") or shutil.which("etcdctl")
    if not exe:
        raise SmokeFailure("etcdctl is not installed on the host (Debian's etcd-client)")
    env = dict(os.environ, ETCDCTL_API="3")
    p = subprocess.run([exe, "--endpoints", endpoint, "--command-timeout=10s", *args],
                       check=False, capture_output=True, text=True, env=env, timeout=30)
    if p.returncode != 0:
        raise SmokeFailure(f"etcdctl {' '.join(args)} failed: {(p.stdout + p.stderr).strip()}")
    return p.stdout


def check_metadata(image: str) -> None:
    """Labels, user, volume, ports and entrypoint as the Dockerfile promises them."""
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    cfg = info.get("Config", {})
    labels = cfg.get("Labels") or {}
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        if not labels.get(f"org.opencontainers.image.{key}"):
            raise SmokeFailure(f"OCI label org.opencontainers.image.{key} missing: {labels}")
    if cfg.get("User", "") in ("", "0", "root") or cfg.get("User", "").startswith(("0:", "root")):
        raise SmokeFailure(f"image runs as root (User={cfg.get('User')!r})")
    if "/var/lib/etcd" not in (cfg.get("Volumes") or {}):
        raise SmokeFailure(f"/var/lib/etcd is not a volume: {cfg.get('Volumes')}")
    ports = set(cfg.get("ExposedPorts") or {})
    if not {"2379/tcp", "2380/tcp", "2381/tcp"} <= ports:
        raise SmokeFailure(f"ports 2379-2381 not all exposed: {sorted(ports)}")
    if (cfg.get("Entrypoint") or [""])[0] != "/usr/bin/tini":
        raise SmokeFailure(f"entrypoint is not tini: {cfg.get('Entrypoint')}")
    log(f"metadata ok (user {cfg['User']}, version label {labels['org.opencontainers.image.version']})")


def check_contents(image: str) -> None:
    """No compilers, pip, caches or apt lists in the final stage; the commands are on PATH."""
    script = r"""
set -u
for tool in gcc cc c++ make pip pip3; do
  if command -v "$tool" >/dev/null 2>&1; then echo "unexpected tool in the image: $tool"; exit 1; fi
done
for d in /root/.cache /var/lib/apt/lists /var/cache/apt/archives /src; do
  if [ -n "$(ls -A "$d" 2>/dev/null | grep -v -e '^partial$' -e '^lock$' || true)" ]; then
    echo "not empty in the final image: $d"; exit 1
  fi
done
command -v etcdpy >/dev/null || { echo "etcdpy is not on PATH"; exit 1; }
python -c 'import pygrpc_native.aio' || { echo "pygrpc-native (the default gRPC server) is missing"; exit 1; }
etcdpy --version
"""
    p = podman("run", "--rm", "--network", "host", "--user", "0", "--entrypoint", "sh", image, "-c", script,
               check=False)
    if p.returncode != 0:
        raise SmokeFailure(f"image contents: {(p.stdout + p.stderr).strip()}")
    log(f"contents ok ({p.stdout.strip().splitlines()[0]})")


def check_operator(image: str) -> None:
    """The operator's command and CRDs are in the image when the tree has an operator."""
    if not (ROOT / "operator" / "etcdpy_operator").is_dir():
        log("no operator/etcdpy_operator in this tree yet: operator checks not applicable")
        return
    crds = sorted(p.name for p in (ROOT / "operator" / "etcdpy_operator" / "crds").glob("*.yaml"))
    code = (
        "import importlib.resources as r, sys; "
        "names = sorted(p.name for p in (r.files('etcdpy_operator') / 'crds').iterdir() "
        "if p.name.endswith('.yaml')); print(' '.join(names))"
    )
    p = podman("run", "--rm", "--network", "host", "--entrypoint", "python3", image, "-c", code, check=False)
    if p.returncode != 0 or p.stdout.split() != crds:
        raise SmokeFailure(f"operator CRDs in the image {p.stdout.split()} != tree {crds}: {p.stderr.strip()}")
    log(f"operator CRDs in the image: {', '.join(crds)}")
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"].get("etcdpy-operator", "")
    module = entry.split(":")[0]
    if not module or not (ROOT / "operator" / (module.replace(".", "/") + ".py")).is_file():
        log(f"etcdpy-operator's module {module or '(no console script)'} is not in the tree yet: not run")
        return
    p = podman("run", "--rm", "--network", "host", "--entrypoint", "etcdpy-operator", image, "--help", check=False)
    if p.returncode != 0:
        raise SmokeFailure(f"etcdpy-operator --help exited {p.returncode}: {(p.stdout + p.stderr).strip()[-1000:]}")
    log("operator entry point ok (etcdpy-operator --help)")


class ApiDouble:
    """e2e/k8sdouble (API double + test node) as a host process, for the operator-in-the-image check."""

    def __init__(self, state: Path) -> None:
        self.state = state
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT / "e2e"), str(ROOT / "server"), str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]))
        env.pop("KUBECONFIG", None)
        # The test node runs member Pods' `etcdpy` from PATH: the one next to this interpreter (a venv) first.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        self.log = open(state / "k8sdouble.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "k8sdouble", str(state), "--die-with-parent"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: (state / "kubeconfig").exists() or self.proc.poll() is not None, 30, "the API double")
        if self.proc.poll() is not None:
            raise SmokeFailure(f"k8sdouble exited: {(state / 'k8sdouble.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM (it ends its pod processes by PID), then wait."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def check_operator_runs(image: str, workdir: Path) -> None:
    """The operator from the image, confined as the chart confines it, brings up a 1-member cluster."""
    if not (ROOT / "e2e" / "k8sdouble" / "__main__.py").is_file():
        log("no e2e/k8sdouble in this tree yet: operator run check not applicable")
        return
    from kubernetes import (  # the host's client: the test side, not the image
        client,
        config,
    )

    double = ApiDouble(workdir)
    name = f"etcdpy-smoke-op-{uuid.uuid4().hex[:8]}"
    try:
        api = config.new_client_from_config(config_file=str(workdir / "kubeconfig"))
        for crd in sorted((ROOT / "operator" / "etcdpy_operator" / "crds").glob("*.yaml")):
            client.ApiextensionsV1Api(api).create_custom_resource_definition(yaml_load(crd))
        client.CoreV1Api(api).create_namespace({"metadata": {"name": "smoke"}})
        health, metrics = free_ports(2)
        os.chmod(workdir / "kubeconfig", 0o644)
        run_args = chart_container_args(health, metrics)
        podman("run", "-d", "--name", name, "--network", "host",
               "-v", f"{workdir / 'kubeconfig'}:/etc/etcdpy/kubeconfig:ro", "-v", f"{workdir / 'hosts'}:/etc/hosts:ro",
               "-e", "KUBECONFIG=/etc/etcdpy/kubeconfig", *run_args[:-1], image, *run_args[-1])
        custom = client.CustomObjectsApi(api)
        custom.create_namespaced_custom_object("etcd.etcdpy.io", "v1alpha1", "smoke", "etcdclusters", {
            "apiVersion": "etcd.etcdpy.io/v1alpha1", "kind": "EtcdCluster", "metadata": {"name": "one"},
            "spec": {"replicas": 1}})

        def ready() -> bool:
            state = podman("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
            if state != "true":
                logs = podman("logs", "--tail", "40", name, check=False)
                raise SmokeFailure(f"the operator container exited:\n{(logs.stdout + logs.stderr).strip()}")
            obj = custom.get_namespaced_custom_object("etcd.etcdpy.io", "v1alpha1", "smoke", "etcdclusters", "one")
            return bool((obj.get("status") or {}).get("readyMembers") == 1)

        t0 = time.monotonic()
        wait_until(ready, 180, "the operator (in the image) to report 1 ready member")
        took = time.monotonic() - t0
        if http_get(f"http://127.0.0.1:{health}/healthz")[0] != 200:
            raise SmokeFailure("the operator's /healthz does not answer 200")
        status, body = http_get(f"http://127.0.0.1:{metrics}/metrics")
        if status != 200 or "etcdpy_operator_" not in body:
            raise SmokeFailure(f"the operator's /metrics: {status} {body[:200]!r}")
        log(f"operator from the image, run as the chart's Deployment runs it ({' '.join(map(str, run_args[:-1]))} "
            f"{' '.join(run_args[-1])}), made a 1-member cluster ready in {took:.1f}s; /healthz and /metrics answer")
        t0 = time.monotonic()
        podman("kill", "--signal", "TERM", name)
        try:
            code = podman("wait", name, timeout=STOP_DEADLINE_S + 10).stdout.strip()
        except subprocess.TimeoutExpired:
            raise SmokeFailure("the operator still runs 20s after SIGTERM") from None
        if code != "0":
            logs = podman("logs", "--tail", "30", name, check=False)
            raise SmokeFailure(f"the operator exited {code} after SIGTERM: {(logs.stdout + logs.stderr).strip()}")
        log(f"SIGTERM to the operator: exit 0 after {time.monotonic() - t0:.2f}s")
    finally:
        if os.environ.get("ETCDPY_SMOKE_KEEP") != "1":
            podman("rm", "-f", "-v", "--time", "0", name, check=False)
        double.stop()


def chart_container_args(health: int, metrics: int) -> list[Any]:
    """podman options for the operator container as the chart's Deployment defines it, then its args.

    Why from the chart: this runs the operator with the Deployment's real command, arguments,
    environment and confinement (user, read-only root, capabilities, the /tmp emptyDir), so a flag the
    operator does not know or a file it must write fails here. Returns [*options, [args]].
    """
    tools = subprocess.run([str(ROOT / "scripts" / "k8s-tools")], check=True, capture_output=True, text=True)
    rendered = subprocess.run(
        [str(Path(tools.stdout.strip()) / "helm"), "template", "etcdpy-operator", str(ROOT / "charts" / "etcdpy-operator"),
         "--namespace", "smoke", "--set", "watchNamespaces={smoke}", "--set", f"healthPort={health}",
         "--set", f"metrics.port={metrics}"],
        check=True, capture_output=True, text=True).stdout
    import yaml  # type: ignore[import-untyped]

    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc, psc = container.get("securityContext") or {}, pod.get("securityContext") or {}
    opts: list[Any] = ["--user", f"{psc['runAsUser']}:{psc.get('runAsGroup', psc['runAsUser'])}"]
    if sc.get("readOnlyRootFilesystem"):
        opts.append("--read-only")
    opts += [a for cap in (sc.get("capabilities") or {}).get("drop", []) for a in ("--cap-drop", cap)]
    if sc.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    opts += [a for m in container.get("volumeMounts", []) if m["name"] in empty_dirs for a in ("--tmpfs", m["mountPath"])]
    opts += [a for e in container.get("env", []) if "value" in e for a in ("-e", f"{e['name']}={e['value']}")]
    opts += ["--entrypoint", container["command"][0]]
    return [*opts, [*container["command"][1:], *container["args"]]]


def yaml_load(path: Path) -> dict[str, object]:
    """The first YAML document of a file (the CRD files hold one each)."""
    import yaml  # type: ignore[import-untyped]

    doc: dict[str, object] = yaml.safe_load(path.read_text())
    return doc


class Container:
    """One etcdpy container on the host network with its own ports and a shared named volume."""

    def __init__(self, image: str, volume: str, name: str) -> None:
        self.image, self.volume, self.name = image, volume, name
        self.client, self.peer, self.metrics = free_ports(3)
        self.endpoint = f"http://127.0.0.1:{self.client}"

    def start(self, as_pod: bool) -> None:
        """Start it: the image's own entrypoint+CMD configured by ETCD_* env, or as a member pod does."""
        env = {
            "ETCD_LISTEN_CLIENT_URLS": self.endpoint,
            "ETCD_ADVERTISE_CLIENT_URLS": self.endpoint,
            "ETCD_LISTEN_PEER_URLS": f"http://127.0.0.1:{self.peer}",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": f"http://127.0.0.1:{self.peer}",
            "ETCD_INITIAL_CLUSTER": f"default=http://127.0.0.1:{self.peer}",
            "ETCD_LISTEN_METRICS_URLS": f"http://127.0.0.1:{self.metrics}",
        }
        args = ["run", "-d", "--name", self.name, "--network", "host", "-v", f"{self.volume}:/var/lib/etcd"]
        if as_pod:
            # What the operator's member pods do: command ["etcdpy"] replaces tini; flags, not env.
            args += ["--entrypoint", "etcdpy", self.image, "--data-dir", "/var/lib/etcd/default.etcd"]
            args += [f"--{k[5:].lower().replace('_', '-')}={v}" for k, v in env.items()]
        else:
            args += [a for k, v in env.items() for a in ("-e", f"{k}={v}")] + [self.image]
        podman(*args)
        wait_until(self.ready, READY_DEADLINE_S, f"{self.name} to answer /readyz (logs: podman logs {self.name})")

    def ready(self) -> bool:
        """/readyz on the metrics listener answers 200; fails fast if the container died."""
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False).stdout.strip()
        if state != "true":
            raise SmokeFailure(f"{self.name} is not running: {self.logs()}")
        return http_get(f"http://127.0.0.1:{self.metrics}/readyz")[0] == 200

    def logs(self) -> str:
        """The container's last log lines, for failure messages."""
        p = podman("logs", "--tail", "20", self.name, check=False)
        return (p.stdout + p.stderr).strip()

    def sigterm(self) -> float:
        """Send SIGTERM; return how long until it exited; SmokeFailure unless exit code 0 in time."""
        t0 = time.monotonic()
        podman("kill", "--signal", "TERM", self.name)
        try:
            p = podman("wait", self.name, timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            raise SmokeFailure(f"{self.name} still running {STOP_DEADLINE_S:.0f}s after SIGTERM") from None
        took = time.monotonic() - t0
        code = p.stdout.strip()
        if code != "0":
            raise SmokeFailure(f"{self.name} exited {code} after SIGTERM: {self.logs()}")
        return took

    def remove(self) -> None:
        """Remove the container (force), ignoring that it may not exist."""
        podman("rm", "-f", "-v", "--time", "0", self.name, check=False)


def check_backup_agent(image: str, endpoint: str) -> None:
    """The operator's backup Pod command, from the image, saves a verified snapshot of a live member."""
    if not (ROOT / "operator" / "etcdpy_operator" / "agent.py").is_file():
        log("no backup agent (operator/etcdpy_operator/agent.py) in this tree yet: backup check not applicable")
        return
    try:  # the operator's own command and mount, so the check follows what its backup Pods run
        from etcdpy_operator.backupexec import AGENT_COMMAND, BACKUP_MOUNT, parse_result
    except ImportError as e:
        raise SmokeFailure(f"cannot import etcdpy_operator here ({e}); run with the project's venv") from e

    volume = f"etcdpy-smoke-backups-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", volume)
    try:
        p = podman("run", "--rm", "--network", "host", "-v", f"{volume}:{BACKUP_MOUNT}",
                   "--entrypoint", AGENT_COMMAND[0], image, *AGENT_COMMAND[1:],
                   f"--endpoint={endpoint}", f"--dir={BACKUP_MOUNT}", "--cluster=smoke", "--trigger=OnDemand",
                   check=False)
        result = parse_result(p.stdout + p.stderr)
        if p.returncode != 0 or "error" in result:
            raise SmokeFailure(f"backup agent from the image exited {p.returncode}: {result}")
        files = podman("run", "--rm", "-v", f"{volume}:{BACKUP_MOUNT}", "--entrypoint", "ls", image,
                       BACKUP_MOUNT).stdout.split()
        db = [f for f in files if f.startswith("smoke-") and f.endswith(".db")]
        if len(db) != 1 or f"{db[0]}.json" not in files:
            raise SmokeFailure(f"backup volume holds {files}, expected one smoke-*.db and its .json")
        log(f"backup agent ({' '.join(AGENT_COMMAND)}) from the image saved {db[0]}")
    finally:
        podman("volume", "rm", "-f", volume, check=False)


def run_checks(image: str) -> None:
    """All checks in order; containers and the volume are removed whatever happens."""
    check_metadata(image)
    check_contents(image)
    check_operator(image)
    tag = uuid.uuid4().hex[:8]
    volume = f"etcdpy-smoke-{tag}"
    podman("volume", "create", volume)
    first = Container(image, volume, f"etcdpy-smoke-{tag}-a")
    second = Container(image, volume, f"etcdpy-smoke-{tag}-b")
    try:
        first.start(as_pod=False)
        etcdctl(first.endpoint, "put", "smoke/key", f"value-{tag}")
        got = etcdctl(first.endpoint, "get", "smoke/key", "--print-value-only").strip()
        if got != f"value-{tag}":
            raise SmokeFailure(f"etcdctl get returned {got!r}, expected 'value-{tag}'")
        status, body = http_get(f"{first.endpoint}/readyz")
        if status != 200 or body.strip() != "ok":
            raise SmokeFailure(f"/readyz on the client port: {status} {body!r}")
        log(f"default command (tini, env config) serves clients: put/get and /readyz ok on {first.endpoint}")
        check_backup_agent(image, first.endpoint)
        log(f"SIGTERM under tini: exit 0 after {first.sigterm():.2f}s")
        second.start(as_pod=True)
        got = etcdctl(second.endpoint, "get", "smoke/key", "--print-value-only").strip()
        if got != f"value-{tag}":
            raise SmokeFailure(f"after a restart on the same volume, get returned {got!r}")
        log("restart on the same volume (etcdpy as PID 1, flags as a member pod): data kept")
        log(f"SIGTERM to etcdpy as PID 1: exit 0 after {second.sigterm():.2f}s")
    finally:
        first.remove()
        second.remove()
        podman("volume", "rm", "-f", volume, check=False)
    with tempfile.TemporaryDirectory(prefix="etcdpy-smoke-") as tmp:
        check_operator_runs(image, Path(tmp))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, decide skip or run, print one verdict line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", help="image to test, e.g. etcdpy:0.1.0")
    ns = ap.parse_args(argv)
    reason = podman_unusable(ns.image)
    if reason:
        if os.environ.get("ETCDPY_REQUIRE_PODMAN") == "1":
            print(f"image-smoke: FAILED: {reason} (ETCDPY_REQUIRE_PODMAN=1)", file=sys.stderr)
            return 1
        print(f"image-smoke: SKIPPED: {reason}", file=sys.stderr)
        return 0
    if podman("image", "exists", ns.image, check=False).returncode != 0:
        print(f"image-smoke: FAILED: image {ns.image} does not exist (run scripts/image-build)", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    try:
        run_checks(ns.image)
    except SmokeFailure as e:
        print(f"image-smoke: FAILED: {e}", file=sys.stderr)
        return 1
    log(f"PASSED in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
