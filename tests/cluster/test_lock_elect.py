"""etcdctl lock and elect end to end on a 3-member cluster (the v3lock and v3election services, or
the client-side recipes etcdctl 3.4 builds on KV, Lease and Watch).

What is checked, each client on a different member so the coordination crosses the cluster:
mutual exclusion of `etcdctl lock name -- command`, release of the lock when its holder exits
(gracefully or by kill -9, then through its session lease's expiry), and `etcdctl elect` with
`elect -l` observing the leader, a second candidate taking over once the first goes away.

No sleep is used to synchronise: every wait polls an observable condition (a line of output, a
key under the lock or election prefix, a process exit) with a deadline. The only sleep is the
critical section inside the locked command, which is the workload, not a synchronisation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster, Member, etcdctl_binary, wait_until

DEADLINE = 30.0


class Ctl:
    """A long-running etcdctl (lock or elect) whose stdout lines are collected by a thread.

    Why a thread: the test must wait for a given line with a deadline, and a blocking
    readline cannot be given one.
    """

    def __init__(self, member: Member, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))}
        env["ETCDCTL_API"] = "3"
        self.args = args
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [etcdctl_binary(), f"--endpoints={member.endpoint}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float = DEADLINE, count: int = 1) -> None:
        """Until `text` has been printed `count` times (fails with the output if the process died first)."""

        def seen() -> bool:
            if self.lines.count(text) >= count:
                return True
            assert self.proc.poll() is None, f"{self.args} exited {self.proc.returncode}: {self.lines}"
            return False

        wait_until(seen, timeout, f"{self.args} to print {text!r}")

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.args} still running after {timeout}s: {self.lines}") from None

    def stderr(self) -> str:
        """What etcdctl wrote to stderr (read once it has exited): why it failed, for the assert message."""
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def procs() -> Iterator[list[Ctl]]:
    """Every etcdctl a test starts; all are killed at the end, whatever happened."""
    started: list[Ctl] = []
    yield started
    for p in started:
        p.kill()


def keys_under(cluster: Cluster, prefix: str) -> list[str]:
    out = cluster.etcdctl("get", "--prefix", "--keys-only", prefix, json=False)
    return [line for line in out.splitlines() if line]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("lock-elect"), size=3)
    c.start()
    yield c
    c.release()


def test_lock_mutual_exclusion(cluster: Cluster, procs: list[Ctl], tmp_path: Path) -> None:
    """Four commands under one lock, two per client member: their critical sections never interleave."""
    log = tmp_path / "cs.log"
    n = 4
    for i in range(n):
        script = f'echo "start {i}" >> {log}; sleep 0.2; echo "end {i}" >> {log}'
        procs.append(Ctl(cluster.members[i % 2], "lock", "mutex", "--", "sh", "-c", script))
    for p in procs:
        assert p.wait_exit(60) == 0, p.proc.stderr.read() if p.proc.stderr else ""
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * n, lines
    holders = []
    for start, end in zip(lines[::2], lines[1::2]):
        who = start.removeprefix("start ")
        assert start.startswith("start ") and end == f"end {who}", f"interleaved critical sections: {lines}"
        holders.append(who)
    assert sorted(holders) == [str(i) for i in range(n)], "each command ran exactly once"
    assert keys_under(cluster, "mutex") == [], "every holder released the lock"


def test_lock_released_when_holder_exits(cluster: Cluster, procs: list[Ctl], tmp_path: Path) -> None:
    """A waiter gets the lock when the holder stops (SIGINT: unlock), and when it is killed (lease expiry)."""
    marker = tmp_path / "waiter-ran"
    holder = Ctl(cluster.members[0], "lock", "held")
    procs.append(holder)
    wait_until(lambda: holder.lines and holder.lines[0].startswith("held/"), DEADLINE, "the holder to take the lock")
    waiter = Ctl(cluster.members[1], "lock", "held", "--", "sh", "-c", f"echo ran > {marker}")
    procs.append(waiter)
    wait_until(lambda: len(keys_under(cluster, "held/")) == 2, DEADLINE, "the waiter to queue on the lock")
    assert waiter.proc.poll() is None and not marker.exists(), "the waiter ran while the lock was held"
    holder.stop(signal.SIGINT)
    assert holder.wait_exit() == 0
    assert waiter.wait_exit() == 0
    assert marker.read_text() == "ran\n"

    # kill -9: nobody unlocks; the holder's session lease (--ttl) expires and the lock goes with it
    marker.unlink()
    holder = Ctl(cluster.members[2], "lock", "--ttl=3", "held")
    procs.append(holder)
    wait_until(lambda: holder.lines and holder.lines[0].startswith("held/"), DEADLINE, "the holder to take the lock")
    waiter = Ctl(cluster.members[0], "lock", "held", "--", "sh", "-c", f"echo ran > {marker}")
    procs.append(waiter)
    wait_until(lambda: len(keys_under(cluster, "held/")) == 2, DEADLINE, "the waiter to queue on the lock")
    assert waiter.proc.poll() is None and not marker.exists(), "the waiter ran while the lock was held"
    holder.kill()
    assert waiter.wait_exit(DEADLINE) == 0
    assert marker.read_text() == "ran\n"
    wait_until(lambda: keys_under(cluster, "held/") == [], DEADLINE, "the lock to be free")


def test_elect_leader_and_takeover(cluster: Cluster, procs: list[Ctl]) -> None:
    """p1 leads, `elect -l` shows it; p2 waits; when p1 exits, p2 leads and the observer shows it."""
    p1 = Ctl(cluster.members[0], "elect", "myelection", "p1")
    procs.append(p1)
    p1.wait_line("p1")
    observer = Ctl(cluster.members[2], "elect", "-l", "myelection")
    procs.append(observer)
    observer.wait_line("p1")
    assert observer.lines[0].startswith("myelection/"), observer.lines
    p2 = Ctl(cluster.members[1], "elect", "myelection", "p2")
    procs.append(p2)
    wait_until(lambda: len(keys_under(cluster, "myelection/")) == 2, DEADLINE, "p2 to campaign")
    assert "p2" not in p2.lines and "p2" not in observer.lines, "p2 leads while p1 still does"
    p1.stop(signal.SIGINT)  # etcdctl resigns on SIGINT
    assert p1.wait_exit() == 0, p1.stderr()
    p2.wait_line("p2")
    observer.wait_line("p2")
    assert observer.lines.index("p2") > observer.lines.index("p1")
    assert observer.proc.poll() is None, "the observer keeps watching"
    p2.stop(signal.SIGINT)
    assert p2.wait_exit() == 0, p2.stderr()
    wait_until(lambda: keys_under(cluster, "myelection/") == [], DEADLINE, "the election to be empty")
