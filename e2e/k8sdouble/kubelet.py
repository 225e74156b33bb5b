"""The test node: scheduler, kubelet, volume provisioner, kube-proxy and DNS for the API double.

Why: the operator creates Pods and PVCs and waits for them to become real; nothing in an API
server does that. This node watches the API like a real one and plays only what a node (and
the cluster's built-in controllers for volumes) would do:

- binds each Pod to itself (pods/binding), gives it its own loopback address 127.N.x.y (N reserved per node),
  and runs each container's command+args as a real process in its own mount and UTS namespace
  (`unshare --mount --uts --propagation private`) with the Pod's volumes bind-mounted at their
  mountPaths, Secrets/ConfigMaps materialised as files, an emptyDir per Pod, and the cluster's
  hosts file on /etc/hosts;
- sets Pod status (phase, podIP, conditions, containerStatuses with restartCount, state,
  exit codes, CrashLoopBackOff with the kubelet's doubling back-off) and Ready from the real
  readiness probe; liveness/startup probes restart the container as a kubelet would;
- deletes gracefully: preStop exec hook, SIGTERM, the grace period, SIGKILL, then confirms the
  deletion with gracePeriodSeconds=0;
- provisions a host directory per PVC (PersistentVolume with reclaim policy Delete), removes the
  pvc-protection finalizer once no Pod uses the claim, and removes the directory with the PVC;
- keeps a hosts file with every Pod's `<hostname>.<subdomain>.<ns>.svc(.cluster.local)` (when a
  headless Service of that name selects it, ready or publishing not-ready addresses) and every
  Service's name, and proxies each Service's cluster IP to its ready endpoints.

Every process it starts is tracked by PID and ended by PID; children get PR_SET_PDEATHSIG so a
killed node takes its Pods with it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import logging
import os
import sys
import random
import re
import shlex
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from .selectors import match_label_selector

log = logging.getLogger("e2e.kubelet")
Obj = dict[str, Any]
NODE = "e2e-node"
BACKOFF_BASE = float(os.environ.get("E2E_KUBELET_BACKOFF", "10"))  # the kubelet's 10 s, doubling to 300 s
BACKOFF_MAX = 300.0
PASS_ENV = ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _die_with_parent() -> None:
    """Child pre-exec: SIGKILL when the node process dies, so nothing outlives a crashed harness."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class Api:
    """A minimal HTTP client of the API double (what a kubelet's client does)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    async def close(self) -> None:
        if self.session:
            await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
                   ok404: bool = False) -> Obj | None:
        assert self.session is not None
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, self.base + path, data=data,
                                        headers={"Content-Type": ctype}) as resp:
            text = await resp.text()
            if resp.status == 404 and ok404:
                return None
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {text[:300]}")
            return json.loads(text) if text else None

    async def watch(self, path: str, rv: str) -> AsyncIterator[Obj]:
        assert self.session is not None
        sep = "&" if "?" in path else "?"
        async with self.session.get(f"{self.base}{path}{sep}watch=1&resourceVersion={rv}&timeoutSeconds=300") as resp:
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)


def pod_path(pod: Obj, sub: str = "") -> str:
    m = pod["metadata"]
    return f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}{'/' + sub if sub else ''}"


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined vars replaced, `$$` escapes, unknown refs left as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


class Container:
    """One container of a running Pod: its process, restarts, probes and status."""

    def __init__(self, pod: PodWorker, spec: Obj, init: bool = False) -> None:
        self.pod, self.spec, self.init = pod, spec, init
        self.name = spec["name"]
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.ready = False
        self.started = False  # startup probe passed
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.started_at = 0.0
        self.backoff = 0.0
        self.stopping = False
        self.exit_codes: list[int] = []

    def status(self) -> Obj:
        return {"name": self.name, "ready": self.ready, "restartCount": self.restarts, "state": self.state,
                "lastState": self.last_state, "image": self.spec.get("image", ""), "imageID": "",
                "containerID": f"e2e://{self.proc.pid}" if self.proc and self.proc.returncode is None else "",
                "started": self.proc is not None and self.proc.returncode is None}

    def env(self) -> dict[str, str]:
        """The container's environment: the 'image' env, service links, then its own env in order."""
        pod = self.pod.obj
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        # The image puts its venv's bin first on PATH (Dockerfile: /opt/etcdpy/bin); here that is
        # the bin of the Python running this node, so `etcdpy` is found without a global install.
        env["PATH"] = os.pathsep.join(filter(None, [os.path.dirname(sys.executable), env.get("PATH", "")]))
        env.update(self.pod.node.image_env)
        if pod["spec"].get("enableServiceLinks", True):
            env.update(self.pod.node.service_links(pod["metadata"]["namespace"]))
        for item in self.spec.get("env") or []:
            if "value" in item or "valueFrom" not in item:
                env[item["name"]] = expand(str(item.get("value", "")), env)
                continue
            src = item["valueFrom"]
            if "fieldRef" in src:
                env[item["name"]] = self.pod.field(src["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in src or "configMapKeyRef" in src:
                ref = src.get("secretKeyRef") or src.get("configMapKeyRef")
                value = self.pod.key_values.get(("secretKeyRef" in src, ref.get("name"), ref.get("key")))
                if value is not None:
                    env[item["name"]] = value
        return env

    def argv(self, env: dict[str, str]) -> list[str]:
        command = self.spec.get("command") or ["etcdpy"]  # the image's entrypoint is etcdpy
        return [expand(a, env) for a in [*command, *(self.spec.get("args") or [])]]

    async def start(self) -> None:
        """Start the process in its own mount+UTS namespace with the Pod's mounts."""
        env = self.env()
        argv = self.argv(env)
        pod = self.pod
        lines = ["set -e", f"mount --bind {shlex.quote(str(pod.node.hosts_file))} /etc/hosts",
                 f"hostname {shlex.quote(pod.hostname)}"]
        for m in self.spec.get("volumeMounts") or []:
            src = pod.volume_dirs.get(m["name"])
            if src is None:
                continue
            if m.get("subPath"):
                src = src / m["subPath"]
                src.mkdir(parents=True, exist_ok=True)
            target = shlex.quote(m["mountPath"])
            lines.append(f"mkdir -p {target} && mount --bind {shlex.quote(str(src))} {target}")
            if m.get("readOnly"):
                lines.append(f"mount -o remount,bind,ro {target}")
        workdir = self.spec.get("workingDir") or str(pod.dir / "rootfs")
        lines += [f"mkdir -p {shlex.quote(workdir)}", f"cd {shlex.quote(workdir)}", 'exec "$@"']
        script = pod.dir / f"{self.name}.start.sh"
        script.write_text("\n".join(lines) + "\n")
        log_path = pod.dir / f"{self.name}.{self.restarts}.log"
        with open(log_path, "ab") as out:  # noqa: ASYNC230 - a local file, opened once per start
            self.proc = await asyncio.create_subprocess_exec(
                "unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", str(script), *argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent)
        (pod.dir / f"{self.name}.pid").write_text(str(self.proc.pid))
        pod.node.pids.add(self.proc.pid)
        self.started_at = time.monotonic()
        self.state = {"running": {"startedAt": now_iso()}}
        self.ready = False
        self.started = "startupProbe" not in self.spec
        pod.node.event(pod.obj, "Started", f"Started container {self.name}")

    async def stop(self, grace: float) -> None:
        """preStop exec hook, SIGTERM, wait `grace`, SIGKILL: the kubelet's container stop."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        deadline = time.monotonic() + grace
        hook = ((self.spec.get("lifecycle") or {}).get("preStop") or {}).get("exec")
        if hook:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.exec_in(hook["command"]), max(0.1, grace))
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def exec_in(self, command: list[str]) -> int:
        """Run a command inside the container's mount namespace (exec probes and hooks)."""
        if self.proc is None or self.proc.returncode is not None:
            return 1
        p = await asyncio.create_subprocess_exec("nsenter", "-t", str(self.proc.pid), "-m", "-u", "--", *command,
                                                 stdout=asyncio.subprocess.DEVNULL,
                                                 stderr=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.pod.node.pids.add(p.pid)
        try:
            return await p.wait()
        finally:
            self.pod.node.pids.discard(p.pid)

    async def probe(self, spec: Obj) -> bool:
        """One probe attempt: httpGet, tcpSocket or exec, as the kubelet runs them."""
        timeout = float(spec.get("timeoutSeconds", 1))
        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                port = self.pod.port(h.get("port"))
                host = h.get("host") or self.pod.ip
                url = f"{h.get('scheme', 'HTTP').lower()}://{host}:{port}{h.get('path', '/')}"
                headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                        s.get(url, headers=headers, ssl=False) as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in spec:
                t = spec["tcpSocket"]
                _, w = await asyncio.wait_for(asyncio.open_connection(t.get("host") or self.pod.ip,
                                                                      self.pod.port(t["port"])), timeout)
                w.close()
                return True
            if "exec" in spec:
                return await asyncio.wait_for(self.exec_in(spec["exec"]["command"]), timeout) == 0
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
        return True

    async def run_probes(self) -> None:
        """Readiness, liveness and startup probes while the process runs; liveness failure restarts it."""
        proc = self.proc
        specs = {k: self.spec[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in self.spec}
        counts = {k: [0, 0] for k in specs}  # successes, failures in a row
        next_at = {k: time.monotonic() + float(v.get("initialDelaySeconds", 0)) for k, v in specs.items()}
        if "readinessProbe" not in specs:
            self.ready = self.started or "startupProbe" not in specs
            self.pod.dirty.set()
        while proc is not None and proc.returncode is None and not self.stopping:
            await asyncio.sleep(0.1)
            for kind, spec in specs.items():
                if time.monotonic() < next_at[kind] or proc.returncode is not None:
                    continue
                if kind != "startupProbe" and not self.started:
                    continue
                if kind == "startupProbe" and self.started:
                    continue
                next_at[kind] = time.monotonic() + float(spec.get("periodSeconds", 10))
                ok = await self.probe(spec)
                c = counts[kind]
                c[0], c[1] = (c[0] + 1, 0) if ok else (0, c[1] + 1)
                if kind == "startupProbe":
                    if ok:
                        self.started = True
                        if "readinessProbe" not in specs:
                            self.ready = True
                            self.pod.dirty.set()
                    elif c[1] >= int(spec.get("failureThreshold", 3)):
                        await self.kill_unhealthy("Startup")
                        return
                elif kind == "readinessProbe":
                    ready = self.ready
                    if ok and c[0] >= int(spec.get("successThreshold", 1)):
                        ready = True
                    elif not ok and c[1] >= int(spec.get("failureThreshold", 3)):
                        ready = False
                    if ready != self.ready:
                        self.ready = ready
                        self.pod.dirty.set()
                elif not ok and c[1] >= int(spec.get("failureThreshold", 3)):
                    await self.kill_unhealthy("Liveness")
                    return

    async def kill_unhealthy(self, kind: str) -> None:
        self.pod.node.event(self.pod.obj, "Unhealthy", f"{kind} probe failed; container {self.name} will be "
                                                       "restarted", "Warning")
        grace = float(self.pod.obj["spec"].get("terminationGracePeriodSeconds", 30))
        await self.stop(grace)

    async def run(self) -> None:
        """Start, wait, record the exit, back off and restart as the Pod's restartPolicy says."""
        policy = self.pod.obj["spec"].get("restartPolicy", "Always")
        while not self.stopping:
            await self.start()
            self.pod.dirty.set()
            probes = asyncio.create_task(self.run_probes())
            assert self.proc is not None
            code = await self.proc.wait()
            self.pod.node.pids.discard(self.proc.pid)
            probes.cancel()
            ran = time.monotonic() - self.started_at
            self.ready = False
            self.exit_codes.append(code)
            code = code if code >= 0 else 128 - code
            term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                    "startedAt": self.state.get("running", {}).get("startedAt", now_iso()), "finishedAt": now_iso()}
            if self.stopping:
                self.state = {"terminated": term}
                break
            if policy == "Never" or (policy == "OnFailure" and code == 0) or (self.init and code == 0):
                self.state = {"terminated": term}
                self.pod.dirty.set()
                return
            self.last_state = {"terminated": term}
            self.backoff = BACKOFF_BASE if ran > 600 or self.backoff == 0 else min(self.backoff * 2, BACKOFF_MAX)
            self.state = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {int(self.backoff)}s "
                                      f"restarting failed container={self.name} pod={self.pod.name}"}}
            self.pod.node.event(self.pod.obj, "BackOff", f"Back-off restarting failed container {self.name}",
                                "Warning")
            self.pod.dirty.set()
            try:
                await asyncio.wait_for(self.pod.deleting.wait(), self.backoff)
                break
            except TimeoutError:
                pass
            self.restarts += 1
        self.pod.dirty.set()


class PodWorker:
    """Everything the node does for one Pod, from binding to confirming its deletion."""

    def __init__(self, node: Node, obj: Obj) -> None:
        self.node, self.obj = node, obj
        self.uid = obj["metadata"]["uid"]
        self.name = obj["metadata"]["name"]
        self.ns = obj["metadata"]["namespace"]
        self.hostname = obj["spec"].get("hostname") or self.name
        self.dir = node.state / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.ip = ""
        self.volume_dirs: dict[str, Path] = {}
        self.containers: list[Container] = []
        self.init_done = False
        self.dirty = asyncio.Event()
        self.deleting = asyncio.Event()
        self.start_time = now_iso()
        self.phase = "Pending"
        self.pending_reason = ""
        self.key_values: dict[tuple[bool, str, str], str] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def field(self, path: str) -> str:
        """A fieldRef value (downward API)."""
        m = self.obj["metadata"]
        values = {"metadata.name": m["name"], "metadata.namespace": m["namespace"], "metadata.uid": m["uid"],
                  "status.podIP": self.ip, "status.hostIP": "127.0.0.1", "spec.nodeName": NODE,
                  "spec.serviceAccountName": self.obj["spec"].get("serviceAccountName", "default")}
        if path.startswith(("metadata.labels['", "metadata.annotations['")):
            kind, key = path.split("['")[0].split(".")[1], path.split("['")[1].rstrip("']")
            return str((m.get(kind) or {}).get(key, ""))
        return values.get(path, "")

    def port(self, port: Any) -> int:
        """A probe/service port: a number, or the name of one of the Pod's container ports."""
        if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            return int(port)
        for c in self.obj["spec"].get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise ValueError(f"unknown port {port!r}")

    async def run(self) -> None:
        """Schedule, prepare volumes, run containers until deletion, then stop and confirm."""
        try:
            await self._schedule()
            if self.deleting.is_set():
                return
            self.dir.mkdir(parents=True, exist_ok=True)
            self.ip = self.node.allocate_ip()
            status_task = asyncio.create_task(self._status_loop())
            await self._prepare_volumes()
            if not self.deleting.is_set():
                await self._run_containers()
            await self.deleting.wait()
            await self._stop_all()
            self.phase = "Succeeded" if all(c.exit_codes[-1:] == [0] for c in self.containers) else "Failed"
            status_task.cancel()
            with contextlib.suppress(Exception):
                await self._push_status()
        except asyncio.CancelledError:
            await self._stop_all()
            raise
        finally:
            await self._finish()

    async def _schedule(self) -> None:
        """The scheduler's part: wait for the Pod's claims to exist and be usable, then bind it here."""
        while not self.deleting.is_set():
            missing = self.node.unschedulable_reason(self.obj)
            if not missing:
                break
            if missing != self.pending_reason:
                self.pending_reason = missing
                with contextlib.suppress(Exception):
                    await self.node.api.call("PATCH", pod_path(self.obj, "status"), {"status": {
                        "phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                            "reason": "Unschedulable", "message": missing}]}},
                        "application/merge-patch+json")
            await asyncio.sleep(0.2)
        if self.deleting.is_set():
            return
        if not self.obj["spec"].get("nodeName"):
            await self.node.api.call("POST", pod_path(self.obj, "binding"), {
                "apiVersion": "v1", "kind": "Binding", "metadata": {"name": self.name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}})
            self.node.event(self.obj, "Scheduled", f"Successfully assigned {self.ns}/{self.name} to {NODE}")

    async def _prepare_volumes(self) -> None:
        """PVC directories, emptyDirs, and Secret/ConfigMap files (waiting for them as a kubelet does)."""
        for vol in self.obj["spec"].get("volumes") or []:
            name = vol["name"]
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                self.volume_dirs[name] = self.node.claim_dir(self.ns, claim)
            elif "emptyDir" in vol:
                d = self.dir / "emptydir" / name
                d.mkdir(parents=True, exist_ok=True)
                self.volume_dirs[name] = d
            elif "secret" in vol or "configMap" in vol:
                is_secret = "secret" in vol
                src = vol["secret"] if is_secret else vol["configMap"]
                ref = src.get("secretName") if is_secret else src.get("name")
                d = self.dir / ("secret" if is_secret else "configmap") / name
                while not self.deleting.is_set():
                    obj = await self.node.api.call("GET", f"/api/v1/namespaces/{self.ns}/"
                                                   f"{'secrets' if is_secret else 'configmaps'}/{ref}", ok404=True)
                    if obj is not None or src.get("optional"):
                        self._materialise(d, obj or {}, is_secret, src)
                        break
                    if self.pending_reason != f"missing {ref}":
                        self.pending_reason = f"missing {ref}"
                        self.node.event(self.obj, "FailedMount", f'MountVolume.SetUp failed for volume "{name}" : '
                                                                 f'{"secret" if is_secret else "configmap"} "{ref}" '
                                                                 "not found", "Warning")
                    await asyncio.sleep(0.5)
                self.volume_dirs[name] = d
        await self._resolve_key_refs()

    async def _resolve_key_refs(self) -> None:
        """Values of env entries taken from Secret/ConfigMap keys (read once per Pod start)."""
        for spec in [*(self.obj["spec"].get("initContainers") or []), *self.obj["spec"]["containers"]]:
            for item in spec.get("env") or []:
                src = item.get("valueFrom") or {}
                ref = src.get("secretKeyRef") or src.get("configMapKeyRef")
                if not ref:
                    continue
                secret = "secretKeyRef" in src
                obj = await self.node.api.call("GET", f"/api/v1/namespaces/{self.ns}/"
                                               f"{'secrets' if secret else 'configmaps'}/{ref['name']}", ok404=True)
                data = (obj or {}).get("data") or {}
                if ref["key"] in data:
                    raw = data[ref["key"]]
                    self.key_values[(secret, ref["name"], ref["key"])] = \
                        base64.b64decode(raw).decode() if secret else raw

    @staticmethod
    def _materialise(d: Path, obj: Obj, is_secret: bool, src: Obj) -> None:
        d.mkdir(parents=True, exist_ok=True)
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()} if is_secret else \
            {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        mode = int(src.get("defaultMode", 0o644))
        items = src.get("items")
        pairs = [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else \
            [(k, k, mode) for k in data]
        for key, path, m in pairs:
            if key in data:
                f = d / path
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data[key])
                f.chmod(m)

    async def _run_containers(self) -> None:
        for spec in self.obj["spec"].get("initContainers") or []:
            c = Container(self, spec, init=True)
            self.containers.append(c)
            while not self.deleting.is_set():
                await c.run()
                if c.exit_codes[-1:] == [0] or self.deleting.is_set():
                    break
            if self.deleting.is_set() or c.exit_codes[-1:] != [0]:
                return
        self.init_done = True
        self.phase = "Running"
        mains = [Container(self, spec) for spec in self.obj["spec"]["containers"]]
        self.containers.extend(mains)
        self.tasks = [asyncio.create_task(c.run()) for c in mains]
        done = asyncio.create_task(asyncio.wait(self.tasks))
        await asyncio.wait([done, asyncio.create_task(self.deleting.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not self.deleting.is_set():
            codes = [c.exit_codes[-1] if c.exit_codes else 1 for c in mains]
            self.phase = "Succeeded" if all(x == 0 for x in codes) else "Failed"
            self.dirty.set()

    async def _stop_all(self) -> None:
        grace = float(self.obj["metadata"].get("deletionGracePeriodSeconds")
                      or self.obj["spec"].get("terminationGracePeriodSeconds", 30))
        for c in self.containers:
            c.stopping = True
        if any(c.proc and c.proc.returncode is None for c in self.containers):
            self.node.event(self.obj, "Killing", "Stopping container " + ", ".join(c.name for c in self.containers))
        await asyncio.gather(*(c.stop(grace) for c in self.containers), return_exceptions=True)

    def status(self) -> Obj:
        """The Pod's status as the kubelet reports it."""
        mains = [c for c in self.containers if not c.init]
        ready = bool(mains) and all(c.ready for c in mains) and not self.deleting.is_set()
        t = now_iso()
        conds = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                 {"type": "Initialized", "status": "True" if self.init_done else "False", "lastTransitionTime": t},
                 {"type": "ContainersReady", "status": "True" if ready else "False", "lastTransitionTime": t},
                 {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": t}]
        st: Obj = {"phase": self.phase, "conditions": conds, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                   "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": self.start_time, "qosClass": "BestEffort",
                   "containerStatuses": [c.status() for c in mains] or [
                       {"name": s["name"], "ready": False, "restartCount": 0, "image": s.get("image", ""),
                        "imageID": "", "started": False,
                        "state": {"waiting": {"reason": "PodInitializing" if self.obj["spec"].get("initContainers")
                                              else "ContainerCreating"}}}
                       for s in self.obj["spec"]["containers"]]}
        inits = [c.status() for c in self.containers if c.init]
        if inits:
            st["initContainerStatuses"] = inits
        return st

    async def _push_status(self) -> None:
        await self.node.api.call("PATCH", pod_path(self.obj, "status"), {"status": self.status()},
                                 "application/merge-patch+json")

    async def _status_loop(self) -> None:
        """Push status whenever something changed (coalesced), like the kubelet's status manager."""
        self.dirty.set()
        last: str | None = None
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            st = self.status()
            comparable = json.dumps({**st, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                                          for c in st["conditions"]]}, sort_keys=True)
            if comparable != last:
                try:
                    await self._push_status()
                    last = comparable
                except Exception as exc:  # noqa: BLE001 - retried on the next change or tick
                    log.warning("status of %s/%s: %s", self.ns, self.name, exc)
                    await asyncio.sleep(0.5)
                    self.dirty.set()
            self.node.refresh_network()
            await asyncio.sleep(0.05)

    async def _finish(self) -> None:
        """Confirm deletion (grace 0, uid precondition), release the address, drop emptyDirs."""
        if self.deleting.is_set():
            with contextlib.suppress(Exception):
                await self.node.api.call("DELETE", pod_path(self.obj), {
                    "kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid}}, ok404=True)
        shutil.rmtree(self.dir / "emptydir", ignore_errors=True)
        self.node.workers.pop(self.uid, None)
        self.node.release_ip(self.ip)
        self.node.refresh_network()


class Node:
    """The node and the cluster-level controllers it stands in for (provisioner, pvc-protection, proxy, DNS)."""

    def __init__(self, api_url: str, state: Path, pod_base: str = "127.42.0.0") -> None:
        self.api = Api(api_url)
        self.pod_base = ipaddress.ip_address(pod_base)
        self.state = state
        self.hosts_file = state / "hosts"
        self.pods: dict[str, Obj] = {}
        self.pvcs: dict[tuple[str, str], Obj] = {}
        self.services: dict[tuple[str, str], Obj] = {}
        self.workers: dict[str, PodWorker] = {}
        self.pids: set[int] = set()
        self.ips_used: set[str] = set()
        self.ip_counter = 0
        self.proxies: dict[tuple[str, str], list[asyncio.Server]] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self._events: asyncio.Queue[Obj] = asyncio.Queue()
        self._reclaims: asyncio.Queue[str] = asyncio.Queue()
        # E2E_IMAGE_ENV="K=V;K2=V2": extra environment of every container (the 'image' env), for debugging
        self.image_env = dict(kv.split("=", 1) for kv in os.environ.get("E2E_IMAGE_ENV", "").split(";") if "=" in kv)

    def pod_log(self, namespace: str, name: str, container: str) -> str | None:
        """The newest log of a Pod's container (any container when not named), None if it never ran here."""
        logs = sorted(self.state.glob(f"pods/{namespace}_{name}_*/{container or '*'}.*.log"),
                      key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text(errors="replace") if logs else None

    # ---- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        (self.state / "volumes").mkdir(parents=True, exist_ok=True)
        (self.state / "pods").mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text(self._hosts_text())
        await self.api.open()
        await self.api.call("POST", "/api/v1/nodes", {"metadata": {"name": NODE, "labels": {
            "kubernetes.io/hostname": NODE}}, "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE}],
            "capacity": {"cpu": str(os.cpu_count()), "memory": "8Gi", "pods": "110"}}})
        for path, handler in (("/api/v1/persistentvolumeclaims", self._on_pvc),
                              ("/api/v1/services", self._on_service), ("/api/v1/pods", self._on_pod)):
            self.tasks.append(asyncio.create_task(self._informer(path, handler)))
        self.tasks.append(asyncio.create_task(self._event_sender()))
        self.tasks.append(asyncio.create_task(self._controllers_loop()))

    async def stop(self) -> None:
        """End every Pod process by PID (SIGTERM, 5 s, SIGKILL) and stop watching."""
        for t in self.tasks:
            t.cancel()
        workers = list(self.workers.values())
        for w in workers:
            for c in w.containers:
                c.stopping = True
        await asyncio.gather(*(c.stop(5) for w in workers for c in w.containers), return_exceptions=True)
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for servers in self.proxies.values():
            for s in servers:
                s.close()
        await self.api.close()

    async def _informer(self, path: str, handler: Callable[[str, Obj], None]) -> None:
        """List, then watch from the list's resourceVersion; re-list on any break (a reflector)."""
        while True:
            try:
                lst = await self.api.call("GET", path)
                assert lst is not None
                for item in lst["items"]:
                    handler("ADDED", item)
                rv = lst["metadata"]["resourceVersion"]
                async for ev in self.api.watch(path, rv):
                    if ev["type"] == "ERROR":
                        break
                    handler(ev["type"], ev["object"])
                    rv = ev["object"]["metadata"]["resourceVersion"]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a reflector retries forever
                log.warning("informer %s: %s", path, exc)
                await asyncio.sleep(0.5)

    # ---- pods ----------------------------------------------------------------------------------
    def _on_pod(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            self.pods.pop(uid, None)
            w = self.workers.get(uid)
            if w:
                w.deleting.set()
            self.refresh_network()
            return
        self.pods[uid] = pod
        node = pod["spec"].get("nodeName")
        if node not in (None, NODE):
            return
        w = self.workers.get(uid)
        if w is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            if pod["metadata"].get("deletionTimestamp") and not node:
                return
            w = PodWorker(self, pod)
            self.workers[uid] = w
            self.tasks.append(asyncio.create_task(w.run()))
        if w is not None:
            w.obj = pod
            if pod["metadata"].get("deletionTimestamp"):
                w.deleting.set()
        self.refresh_network()

    def unschedulable_reason(self, pod: Obj) -> str:
        """Why the scheduler would not place this Pod yet (missing, unbound or deleting claims)."""
        for vol in pod["spec"].get("volumes") or []:
            if "persistentVolumeClaim" in vol:
                name = vol["persistentVolumeClaim"]["claimName"]
                pvc = self.pvcs.get((pod["metadata"]["namespace"], name))
                if pvc is None:
                    return f'persistentvolumeclaim "{name}" not found'
                if pvc["metadata"].get("deletionTimestamp"):
                    return f'persistentvolumeclaim "{name}" is being deleted'
                if pvc.get("status", {}).get("phase") != "Bound":
                    return f"pod has unbound immediate PersistentVolumeClaims ({name})"
        return ""

    def allocate_ip(self) -> str:
        while True:
            self.ip_counter += 1
            ip = str(self.pod_base + self.ip_counter)
            if not ip.endswith((".0", ".255")) and ip not in self.ips_used:
                self.ips_used.add(ip)
                return ip

    def release_ip(self, ip: str) -> None:
        self.ips_used.discard(ip)

    # ---- volumes -------------------------------------------------------------------------------
    def claim_dir(self, ns: str, claim: str) -> Path:
        pvc = self.pvcs[(ns, claim)]
        return self.state / "volumes" / pvc["spec"]["volumeName"]

    def _on_pvc(self, kind: str, pvc: Obj) -> None:
        key = (pvc["metadata"]["namespace"], pvc["metadata"]["name"])
        if kind == "DELETED":
            self.pvcs.pop(key, None)
            volume = (pvc.get("spec") or {}).get("volumeName")
            if volume:
                self._reclaims.put_nowait(volume)
            return
        self.pvcs[key] = pvc

    async def _provision(self, pvc: Obj) -> None:
        """Dynamic provisioning with reclaim policy Delete: a directory, a PV, the claim bound."""
        m = pvc["metadata"]
        volume = f"pvc-{m['uid']}"
        d = self.state / "volumes" / volume
        d.mkdir(parents=True, exist_ok=True)
        size = ((pvc["spec"].get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        modes = pvc["spec"].get("accessModes") or ["ReadWriteOnce"]
        await self.api.call("POST", "/api/v1/persistentvolumes", {"metadata": {"name": volume}, "spec": {
            "capacity": {"storage": size}, "accessModes": modes, "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": pvc["spec"].get("storageClassName") or "e2e-local", "local": {"path": str(d)},
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": m["namespace"], "name": m["name"],
                         "uid": m["uid"]}}})
        path = f"/api/v1/namespaces/{m['namespace']}/persistentvolumeclaims/{m['name']}"
        await self.api.call("PATCH", path, [{"op": "test", "path": "/metadata/uid", "value": m["uid"]},
                                            {"op": "add", "path": "/spec/volumeName", "value": volume}],
                            "application/json-patch+json")
        await self.api.call("PATCH", path + "/status", {"status": {
            "phase": "Bound", "accessModes": modes, "capacity": {"storage": size}}}, "application/merge-patch+json")

    async def _reclaim(self, volume: str) -> None:
        shutil.rmtree(self.state / "volumes" / volume, ignore_errors=True)
        await self.api.call("DELETE", f"/api/v1/persistentvolumes/{volume}", ok404=True)

    async def _controllers_loop(self) -> None:
        """Provisioner, pvc-protection and reclaim, driven by the cached claims."""
        provisioning: set[str] = set()
        while True:
            try:
                while not self._reclaims.empty():
                    await self._reclaim(self._reclaims.get_nowait())
                for (ns, name), pvc in list(self.pvcs.items()):
                    m = pvc["metadata"]
                    if not pvc["spec"].get("volumeName") and not m.get("deletionTimestamp") and \
                            m["uid"] not in provisioning:
                        provisioning.add(m["uid"])
                        await self._provision(pvc)
                    if m.get("deletionTimestamp") and "kubernetes.io/pvc-protection" in (m.get("finalizers") or []) \
                            and not self._claim_in_use(ns, name):
                        fins = [f for f in m["finalizers"] if f != "kubernetes.io/pvc-protection"]
                        await self.api.call("PATCH", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}", [
                            {"op": "test", "path": "/metadata/resourceVersion", "value": m["resourceVersion"]},
                            {"op": "replace", "path": "/metadata/finalizers", "value": fins}],
                            "application/json-patch+json")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - controllers retry
                log.info("volume controllers: %s", exc)
            await asyncio.sleep(0.2)

    def _claim_in_use(self, ns: str, claim: str) -> bool:
        for pod in self.pods.values():
            if pod["metadata"]["namespace"] != ns or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                continue
            for vol in pod["spec"].get("volumes") or []:
                if (vol.get("persistentVolumeClaim") or {}).get("claimName") == claim:
                    return True
        return False

    # ---- services, DNS, proxy --------------------------------------------------------------------
    def _on_service(self, kind: str, svc: Obj) -> None:
        key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
        if kind == "DELETED":
            self.services.pop(key, None)
        else:
            self.services[key] = svc
        self.tasks.append(asyncio.create_task(self._sync_proxy(key)))
        self.refresh_network()

    def service_links(self, ns: str) -> dict[str, str]:
        """Docker-link style variables for the namespace's Services (enableServiceLinks)."""
        env: dict[str, str] = {}
        for (sns, name), svc in self.services.items():
            ip = svc["spec"].get("clusterIP")
            if sns != ns or not ip or ip == "None" or not svc["spec"].get("ports"):
                continue
            prefix = name.upper().replace("-", "_")
            first = svc["spec"]["ports"][0]
            env[f"{prefix}_SERVICE_HOST"] = ip
            env[f"{prefix}_SERVICE_PORT"] = str(first["port"])
            env[f"{prefix}_PORT"] = f"tcp://{ip}:{first['port']}"
            for p in svc["spec"]["ports"]:
                base = f"{prefix}_PORT_{p['port']}_TCP"
                if p.get("name"):
                    env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
                env.update({base: f"tcp://{ip}:{p['port']}", f"{base}_PROTO": "tcp", f"{base}_PORT": str(p["port"]),
                            f"{base}_ADDR": ip})
        return env

    def endpoints(self, svc: Obj, all_pods: bool = False) -> list[PodWorker]:
        """Pods a Service selects that are ready (or any with an address if publishNotReadyAddresses)."""
        sel = svc["spec"].get("selector")
        if not sel:
            return []
        out = []
        for w in self.workers.values():
            pod = w.obj
            if pod["metadata"]["namespace"] != svc["metadata"]["namespace"] or not w.ip:
                continue
            if not match_label_selector({"matchLabels": sel}, pod["metadata"].get("labels") or {}):
                continue
            ready = all(c.ready for c in w.containers if not c.init) and bool(w.containers) and \
                not w.deleting.is_set()
            if ready or all_pods or svc["spec"].get("publishNotReadyAddresses"):
                out.append(w)
        return out

    def _hosts_text(self) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback", f"127.0.0.1 {NODE}"]
        for (ns, name), svc in sorted(self.services.items()):
            names = f"{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}"
            ip = svc["spec"].get("clusterIP")
            if ip and ip != "None":
                lines.append(f"{ip} {names}")
            else:
                # A headless name resolves to ONE endpoint here, not all: c-ares (gRPC's resolver) merges
                # hosts lines that share a name, so listing every endpoint would also give each pod's own
                # name every other pod's address.
                for w in self.endpoints(svc)[:1]:
                    lines.append(f"{w.ip} {names}")
            if ip == "None":
                for w in self.endpoints(svc):
                    hn, sub = w.obj["spec"].get("hostname"), w.obj["spec"].get("subdomain")
                    if hn and sub == name:
                        lines.append(f"{w.ip} {hn}.{sub}.{ns}.svc.cluster.local {hn}.{sub}.{ns}.svc "
                                     f"{hn}.{sub}.{ns} {hn}.{sub}")
        return "\n".join(lines) + "\n"

    def refresh_network(self) -> None:
        """Rewrite the hosts file in place (bind mounts pin the inode, so no rename)."""
        text = self._hosts_text()
        if getattr(self, "_hosts_last", None) == text:
            return
        self._hosts_last = text
        with open(self.hosts_file, "r+") as f:
            f.seek(0)
            f.write(text)
            f.truncate()

    async def _sync_proxy(self, key: tuple[str, str]) -> None:
        """kube-proxy: listen on the Service's cluster IP ports and relay to a ready endpoint."""
        for s in self.proxies.pop(key, []):
            s.close()
        svc = self.services.get(key)
        if svc is None or not svc["spec"].get("clusterIP") or svc["spec"]["clusterIP"] == "None":
            return
        servers = []
        for p in svc["spec"].get("ports") or []:
            async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: Obj = p) -> None:
                await self._relay(key, port, reader, writer)
            with contextlib.suppress(OSError):
                servers.append(await asyncio.start_server(relay, svc["spec"]["clusterIP"], p["port"]))
        self.proxies[key] = servers

    async def _relay(self, key: tuple[str, str], port: Obj, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        svc = self.services.get(key)
        eps = self.endpoints(svc) if svc else []
        if not eps:
            writer.close()
            return
        w = random.choice(eps)
        try:
            target = w.port(port.get("targetPort", port["port"]))
            r2, w2 = await asyncio.open_connection(w.ip, target)
        except (OSError, ValueError):
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()
        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))

    # ---- events --------------------------------------------------------------------------------
    def event(self, obj: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        """A core/v1 Event about an object, as kubelets and controllers post them."""
        m = obj["metadata"]
        self._events.put_nowait({"action": "event", "ns": m["namespace"], "body": {
            "metadata": {"generateName": f"{m['name']}."},
            "involvedObject": {"kind": obj.get("kind", "Pod"), "apiVersion": "v1", "name": m["name"],
                               "namespace": m["namespace"], "uid": m["uid"]},
            "reason": reason, "message": message, "type": type_, "source": {"component": "kubelet", "host": NODE},
            "firstTimestamp": now_iso(), "lastTimestamp": now_iso(), "count": 1}})

    async def _event_sender(self) -> None:
        while True:
            await asyncio.sleep(0.3)
            while not self._events.empty():
                ev = self._events.get_nowait()
                with contextlib.suppress(Exception):
                    await self.api.call("POST", f"/api/v1/namespaces/{ev['ns']}/events", ev["body"])
