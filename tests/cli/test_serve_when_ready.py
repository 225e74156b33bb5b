"""The client URLs are served once the member is ready, as etcd serves them.

etcd binds its client listeners at start-up but answers on them only after the member has
published itself through the log (`ReadyNotify`): a client that connects early waits in
the accept queue rather than getting an error. So a write sent the moment the port takes
connections succeeds, on a new member and on a restarted one, and a member that can never
become ready (no quorum) answers nothing on its client port while its metrics listener
reports it unhealthy. Both targets, the same assertions.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import Member, _raw_range, reserve_port, wait_until

PORT_WAIT_S = 30.0


def _wait_for_port(m: Member) -> None:
    """Return as soon as the client port accepts a TCP connection (long before the member is ready)."""
    deadline = time.monotonic() + PORT_WAIT_S
    while time.monotonic() < deadline:
        assert m.running(), m.log_tail()
        try:
            socket.create_connection((m.host, m.client.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.01)
    raise AssertionError(f"client port never opened\n{m.log_tail()}")


def _put_at_once(m: Member, value: str) -> None:
    """One etcdctl put, no retry of ours, sent as soon as the port is open: it must succeed."""
    _wait_for_port(m)
    proc = m.etcdctl("put", "early", value, json=False, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK", proc.stdout


@pytest.fixture
def member(tmp_path: Path) -> Iterator[Member]:
    m = Member(name="a", base_dir=tmp_path / "a", client=reserve_port(), peer=reserve_port())
    yield m
    m.release()
    shutil.rmtree(m.base_dir, ignore_errors=True)


def test_a_write_sent_as_the_port_opens_waits_for_the_new_member(member: Member) -> None:
    member.spawn()
    _put_at_once(member, "1")
    assert member.etcdctl("get", "early", "--print-value-only", json=False).strip() == "1"


def test_a_write_sent_as_the_port_opens_waits_for_the_restarted_member(member: Member) -> None:
    member.start()
    member.etcdctl("put", "early", "1")
    member.stop()
    member.spawn()
    _put_at_once(member, "2")
    assert member.etcdctl("get", "early", "--print-value-only", json=False).strip() == "2"


def test_a_member_that_is_never_ready_serves_metrics_but_not_clients(tmp_path: Path) -> None:
    """Two-member cluster whose peer never starts: no leader, so never ready.

    A serializable Range needs no leader, so a member serving its port would answer it at
    once; neither server answers anything there (the call runs into its deadline), while
    the metrics listener says why.
    """
    absent, metrics = reserve_port(), reserve_port()
    m = Member(name="a", base_dir=tmp_path / "a", client=reserve_port(), peer=reserve_port(),
               extra_args=[f"--listen-metrics-urls=http://127.0.0.1:{metrics.port}"])
    m.initial_cluster = f"a={m.peer_url},b=http://127.0.0.1:{absent.port}"
    try:
        m.spawn()
        _wait_for_port(m)

        def unhealthy() -> bool:
            assert m.running(), m.log_tail()
            conn = http.client.HTTPConnection("127.0.0.1", metrics.port, timeout=2)
            try:
                conn.request("GET", "/health")
                return conn.getresponse().status == 503
            except OSError:
                return False
            finally:
                conn.close()

        wait_until(unhealthy, 60, "503 from /health on the metrics listener")
        with grpc.insecure_channel(m.endpoint) as channel:
            with pytest.raises(grpc.RpcError) as info:
                _raw_range(channel, b"k", timeout=2.0, serializable=True)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
        assert m.running()
    finally:
        m.release()
        absent.release()
        metrics.release()
        shutil.rmtree(m.base_dir, ignore_errors=True)
