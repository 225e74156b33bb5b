"""A new member killed the moment its WAL appears still starts afterwards.

The WAL of a new member is created with its bootstrap entries (the AddNode conf changes of
--initial-cluster) already in it, in the same atomic rename. Before, they were written with
the first Ready, a few hundred milliseconds later on a busy machine: a member stopped in
between restarted from a WAL with no entries, knew no voter (not even itself), never
campaigned and never became ready. etcd 3.5.1 has the same window (about a millisecond
there): killed as its WAL directory appeared, it failed to serve after a restart in 4 of 5
tries on the development machine, so this test is etcdpy's only.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest
from harness import Member, reserve_port, target

WAL_WAIT_S = 30.0


@pytest.mark.skipif(target() != "etcdpy", reason="etcd 3.5.1 does not survive this (see the module docstring)")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_as_its_wal_appears(tmp_path: Path, sig: int) -> None:
    m = Member(name="a", base_dir=tmp_path / "a", client=reserve_port(), peer=reserve_port())
    wal = m.data_dir / "member" / "wal"
    try:
        m.spawn()
        deadline = time.monotonic() + WAL_WAIT_S
        while not wal.exists():
            assert m.running(), m.log_tail()
            assert time.monotonic() < deadline, f"no WAL after {WAL_WAIT_S}s\n{m.log_tail()}"
            time.sleep(0.002)
        m.kill(sig)
        m.start()  # waits for a linearizable read: a leader, the log applied
        m.etcdctl("put", "after", "restart")
        assert m.etcdctl("get", "after", "--print-value-only", json=False).strip() == "restart"
    finally:
        m.release()
        shutil.rmtree(m.base_dir, ignore_errors=True)
