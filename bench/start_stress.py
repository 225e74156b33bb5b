"""Start and stop etcdpy members many times and record every one that exits abnormally.

Why: members started by the test harness once died at start-up with grpc-core's
``epoll_wait error: Bad file descriptor`` (SIGABRT), about 3 times in 1000 starts under
load. This script repeats what the harness does, with the harness's own `Cluster` and
`Member`: 1- and 3-member clusters started and stopped in a loop while gRPC client
channels in this process carry load (a long-lived member is hammered by threads, and
every started cluster gets a few requests), so the parent forks with live channels
exactly as a pytest run does.

    python bench/start_stress.py --starts 400 --seed 7                    # the harness as it is
    python bench/start_stress.py --starts 400 --parent-fork-support unset  # as before the harness set it

``--parent-fork-support`` sets ``GRPC_ENABLE_FORK_SUPPORT`` in *this* process before grpc
is imported: ``harness`` keeps the harness's own choice (false), ``unset`` leaves it out
(grpc-core's default: fork handlers on), ``true``/``false`` set it.
Members never inherit the override (they get the variable only as the harness would
pass it). The backend is ``--backend`` (default native), passed as $ETCDPY_GRPC_SERVER.

Counts a start as abnormal when the process exits before it is ready, or when a
graceful stop (SIGTERM) does not end with exit code 0; a child still not exec'd 15 s
after the fork is killed (`ForkWatchdog`) and counted too; a start lost to a port race
with another process is counted apart. Prints the seed, the counts and each abnormal
start's exit code with its stderr tail; exits 1 if any start was abnormal. Nothing
is timed: this is an on-demand check, not part of the suites.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _set_fork_support(mode: str) -> None:
    """Before grpc is imported (the harness imports it): what this process's grpc sees.

    grpc reads the variable once, when it is imported, so ``unset`` imports it here with
    the variable absent; the harness's later default then changes nothing in this process.
    ``unset`` is what the harness had before it set the variable (grpc-core's fork handlers
    on); ``true`` also turns on grpcio's Python-level fork handlers, a different setting.
    """
    if mode == "unset":
        os.environ.pop("GRPC_ENABLE_FORK_SUPPORT", None)
        import grpc  # noqa: F401 - imported for its side effect: it reads the variable now
    elif mode != "harness":
        os.environ["GRPC_ENABLE_FORK_SUPPORT"] = mode


@dataclass
class Tally:
    """What happened to every member start."""

    starts: int = 0
    ready: int = 0
    clean_stops: int = 0
    port_races: int = 0
    abnormal: list[str] = field(default_factory=list)
    requests_ok: int = 0
    requests_failed: int = 0


class Load:
    """Threads in this process sending Puts and Ranges over their own channels to one member.

    Why: the aborts were seen with client channels live in the forking process; this
    keeps grpc-core's pollers busy in the parent during every fork.
    """

    def __init__(self, endpoint: str, threads: int, tally: Tally) -> None:
        self.endpoint = endpoint
        self.tally = tally
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self, index: int) -> None:
        import grpc
        from harness import GrpcClient

        client = GrpcClient(self.endpoint)
        try:
            n = 0
            while not self._stop.is_set():
                key = f"load/{index}/{n % 100}".encode()
                try:
                    client.kv.Put(client.pb.PutRequest(key=key, value=b"v" * 64), timeout=5)
                    client.kv.Range(client.pb.RangeRequest(key=key), timeout=5)
                    self.tally.requests_ok += 2
                except grpc.RpcError:
                    self.tally.requests_failed += 1
                    time.sleep(0.1)
                n += 1
        finally:
            client.close()


class ForkWatchdog:
    """Kills children of this process that are still this program (not exec'd) after `grace` s.

    Why: with grpc's fork handlers on, a child can also hang between fork and exec
    (seen: its main thread blocked in grpc-core's after-fork handler), and Popen in the
    parent then waits for the exec forever. Killing the child lets Popen return; the
    member then counts as abnormal (not ready, exit -9) and the stall is counted here.
    """

    def __init__(self, grace: float = 15.0) -> None:
        self.grace = grace
        self.killed: list[int] = []
        self._seen: dict[int, float] = {}
        self._own = Path(f"/proc/{os.getpid()}/cmdline").read_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _children(self) -> list[int]:
        pids: list[int] = []
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            try:
                pids += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
        return pids

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            now = time.monotonic()
            for pid in self._children():
                try:
                    unexeced = Path(f"/proc/{pid}/cmdline").read_bytes() == self._own
                except OSError:
                    continue
                if not unexeced:
                    self._seen.pop(pid, None)
                    continue
                first = self._seen.setdefault(pid, now)
                if now - first > self.grace:
                    print(f"HUNG child {pid}: not exec'd {now - first:.0f} s after fork; killing it", flush=True)
                    self.killed.append(pid)
                    self._seen.pop(pid, None)
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass


def _record(tally: Tally, member: object, what: str, code: int | None) -> None:
    """Note one abnormal start with the member's stderr tail (the abort message is there)."""
    from harness import Member

    assert isinstance(member, Member)
    try:
        tail = "\n".join(member.stderr_path.read_text(errors="replace").splitlines()[-8:])
    except FileNotFoundError:
        tail = "(no stderr file)"
    tally.abnormal.append(f"{member.base_dir} start {member.starts}: {what}, exit code {code}\n{tail}")
    print(f"ABNORMAL {member.base_dir} start {member.starts}: {what}, exit code {code}", flush=True)


def _one_cluster(base: Path, size: int, restart: bool, rng: random.Random, tally: Tally) -> None:
    """Start a cluster (and maybe restart one member), send a few requests, stop it gracefully."""
    import grpc
    from harness import Cluster, MemberStartError

    cluster = Cluster(base, size=size)
    cluster._make_members()
    abnormal_before = len(tally.abnormal)
    try:
        for m in cluster.members:
            m.spawn()
            tally.starts += 1
        deadline = time.monotonic() + 60
        for m in cluster.members:
            try:
                m.wait_ready(max(1.0, deadline - time.monotonic()))
                tally.ready += 1
            except MemberStartError:
                if m.address_in_use():
                    tally.port_races += 1
                else:
                    _record(tally, m, "not ready", m.proc.returncode if m.proc else None)
        running = cluster.running()
        if restart and running and len(running) == size:
            m = rng.choice(running)
            code = m.stop()
            if code != 0:
                _record(tally, m, "stop before restart", code)
            else:
                tally.clean_stops += 1
            tally.starts += 1
            try:
                m.start()
                tally.ready += 1
            except MemberStartError:
                _record(tally, m, "not ready after restart", m.proc.returncode if m.proc else None)
        for m in cluster.running():
            c = m.grpc()
            try:
                c.kv.Put(c.pb.PutRequest(key=b"stress", value=str(rng.random()).encode()), timeout=5)
                tally.requests_ok += 1
            except grpc.RpcError:
                tally.requests_failed += 1
        for m in cluster.members:
            if m.proc is None or m.proc.poll() is not None:
                continue
            code = m.stop()
            if code == 0:
                tally.clean_stops += 1
            else:
                _record(tally, m, "graceful stop", code)
    finally:
        cluster.release()
        if len(tally.abnormal) == abnormal_before:
            # Only the clusters with something to show are kept: each member preallocates a
            # 64 MB WAL segment, so 400 starts would otherwise leave about 25 GB behind.
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=400, help="member starts to make (at least)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--backend", default="native", choices=("native", "grpcio"))
    p.add_argument("--parent-fork-support", default="harness", choices=("harness", "unset", "true", "false"))
    p.add_argument("--load-threads", type=int, default=4)
    p.add_argument("--base", type=Path, default=None, help="directory for member data (default: a temp dir)")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    _set_fork_support(args.parent_fork_support)
    os.environ["ETCDPY_GRPC_SERVER"] = args.backend
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "server")]
    import harness
    from harness import Cluster

    # Members get the variable only as the harness would pass it, never this run's override.
    harness._FORK_SUPPORT_IS_OURS = harness._FORK_SUPPORT_IS_OURS or args.parent_fork_support != "harness"
    parent_setting = "unset" if args.parent_fork_support == "unset" else repr(os.environ.get("GRPC_ENABLE_FORK_SUPPORT"))
    print(
        f"seed={seed} backend={args.backend} parent GRPC_ENABLE_FORK_SUPPORT={parent_setting} "
        f"starts>={args.starts} load={os.getloadavg()[0]:.1f}",
        flush=True,
    )
    tally = Tally()
    base = args.base or Path(tempfile.mkdtemp(prefix="etcdpy-start-stress-"))
    watchdog = ForkWatchdog()
    watchdog.start()
    anchor = Cluster(base / "anchor", size=1).start()
    load = Load(anchor.members[0].endpoint, args.load_threads, tally)
    load.start()
    started = time.monotonic()
    i = 0
    try:
        while tally.starts < args.starts:
            size = rng.choice((1, 3))
            _one_cluster(base / f"c{i}", size, restart=rng.random() < 0.3, rng=rng, tally=tally)
            i += 1
            if i % 20 == 0:
                print(f"  {tally.starts} starts, {len(tally.abnormal)} abnormal, load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        load.stop()
        anchor.release()
        shutil.rmtree(base / "anchor", ignore_errors=True)
        watchdog.stop()
    print(
        f"seed={seed} parent GRPC_ENABLE_FORK_SUPPORT={parent_setting}: "
        f"{tally.starts} member starts in {i} clusters, {tally.ready} ready, {tally.clean_stops} clean stops, "
        f"{tally.port_races} port races, {len(tally.abnormal)} abnormal "
        f"({len(watchdog.killed)} of them hung between fork and exec); "
        f"requests {tally.requests_ok} ok / {tally.requests_failed} failed; "
        f"{time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    for entry in tally.abnormal:
        print("---", entry, sep="\n")
    return 1 if tally.abnormal else 0


if __name__ == "__main__":
    raise SystemExit(main())
