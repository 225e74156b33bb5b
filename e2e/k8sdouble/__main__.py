"""`python -m k8sdouble STATE_DIR`: the API double and the test node in one process.

Why one process outside the test runner: the node runs real processes and relays traffic; keeping it
(and the API server's watches) off the test process's interpreter lock keeps timings honest. It
writes `STATE_DIR/kubeconfig` (plain HTTP on 127.0.0.1, no credentials) once serving, and on
SIGTERM/SIGINT ends every Pod process it started, by PID, before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import logging
import os
import random
import signal
import sys
import tempfile
from pathlib import Path

from .apiserver import ApiServer, Store
from .kubelet import Node


def kubeconfig(port: int) -> str:
    """A kubeconfig for the double: one cluster, one context, no user credentials."""
    return (f"apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: http://127.0.0.1:{port}\n"
            "users:\n- name: e2e\n  user: {}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: e2e\n"
            "    namespace: default\ncurrent-context: e2e\n")


def reserve_network() -> tuple[int, int]:
    """A loopback /16 (127.N.0.0) no other test cluster on this machine uses, held by an flock.

    Why: several sessions (and people) run clusters at once; two Pods on one address collide on
    their ports. Pods get 127.N.0-127.x, Service cluster IPs 127.N.128-255.x. Returns (N, fd).
    """
    lock_dir = Path(tempfile.gettempdir()) / "etcdpy-e2e-nets"
    lock_dir.mkdir(exist_ok=True)
    for n in random.sample(range(100, 250), 150):
        fd = os.open(lock_dir / f"{n}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return n, fd
        except OSError:
            os.close(fd)
    raise SystemExit("k8sdouble: no free loopback /16 in 127.100-249")


async def serve(state: Path, port: int) -> None:
    """Run until signalled, then stop the node (ending its Pods) and the server."""
    net, _lock = reserve_network()
    server = ApiServer(Store(service_base=f"127.{net}.128.0"))
    port = await server.start(port=port)
    node = Node(f"http://127.0.0.1:{port}", state, pod_base=f"127.{net}.0.0")
    await node.start()
    server.pod_logs = node.pod_log
    tmp = state / "kubeconfig.tmp"
    tmp.write_text(kubeconfig(port))
    tmp.rename(state / "kubeconfig")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="k8sdouble", description=__doc__)
    parser.add_argument("state", type=Path, help="directory for the kubeconfig, volumes, pod logs and hosts file")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--die-with-parent", action="store_true", help="exit when the parent process dies")
    args = parser.parse_args()
    if args.die_with_parent:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    args.state.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.state, args.port))


if __name__ == "__main__":
    main()
