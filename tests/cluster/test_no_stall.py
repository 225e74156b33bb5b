"""Nothing stalls Raft: whole-store work on a big store costs no election and no slow read.

The scenario (tests/cluster/nostall.py) fills a 3-member cluster with 100k keys x 5
versions, then runs a compaction, an unpaginated range of everything, HashKV on every
member, a follower defrag and a snapshot catch-up of a wiped (removed, re-added)
member, each while a prober does linearizable gets through another member.

Asserted, for every operation: no member's raft term changes (no election), every
probe succeeds, and no probe takes longer than the election timeout — a member whose
loop is held that long would be deposed (leader) or would campaign (follower). No
other wall-clock bound is asserted: the machine is shared.

`ETCDPY_NOSTALL_KEYS` overrides the key count (e.g. a quick local run).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

import pytest
from harness import Cluster

from .conftest import ELECTION_TIMEOUT
from .nostall import SERVER_ARGS, scenario

pytestmark = pytest.mark.slow

KEYS = int(os.environ.get("ETCDPY_NOSTALL_KEYS", "100000"))
VERSIONS = 5


@pytest.mark.timeout(900)
def test_nothing_stalls_raft(make_cluster: Callable[..., Cluster]) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}, load average {os.getloadavg()}")
    cluster = make_cluster(3, extra_args=SERVER_ARGS)
    t0 = time.monotonic()
    results = scenario(cluster, KEYS, VERSIONS, seed)
    print(f"scenario took {time.monotonic() - t0:.0f} s; load average {os.getloadavg()}")
    for r in results:
        assert not r.term_changed, f"{r.name}: raft term changed {r.terms_before} -> {r.terms_after}"
        assert r.failed_probes == 0, f"{r.name}: {r.failed_probes} probes failed"
        assert r.probes > 0, f"{r.name}: no probe ran"
        assert r.worst_probe < ELECTION_TIMEOUT, (
            f"{r.name}: a linearizable get took {r.worst_probe:.2f} s (> election timeout {ELECTION_TIMEOUT} s)"
        )
