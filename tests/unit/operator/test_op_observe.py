"""How a member Pod is read: readiness, the spec hash, and when its container counts as crash-looping."""

from __future__ import annotations

from typing import Any

import pytest
from etcdpy_operator.model import ANN_SPEC_HASH, ANN_STATE, ANN_VERSION
from etcdpy_operator.observe import pod_obs


def _pod(restarts: int, state: dict[str, Any], last: dict[str, Any] | None = None, ready: bool = False) -> dict:
    return {
        "metadata": {
            "name": "c-1",
            "annotations": {ANN_SPEC_HASH: "h", ANN_VERSION: "0.1.0", ANN_STATE: "existing"},
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [
                {"name": "etcd", "restartCount": restarts, "state": state, "lastState": last or {}}
            ],
        },
    }


BACKOFF = {"waiting": {"reason": "CrashLoopBackOff"}}
FAILED = {"terminated": {"exitCode": 1, "message": "line 1\netcdpy: wal: crc mismatch"}}
RUNNING = {"running": {"startedAt": "x"}}


@pytest.mark.parametrize(
    "pod,looping",
    [
        (_pod(0, BACKOFF, FAILED), False),  # one crash (kill -9, OOM) is not a loop
        (_pod(1, RUNNING, FAILED), False),  # restarted and running again
        (_pod(2, BACKOFF, FAILED), True),
        (_pod(5, {}, FAILED), True),
        (_pod(5, RUNNING, FAILED, ready=True), False),
        (_pod(3, RUNNING, {"terminated": {"exitCode": 0}}), False),
    ],
)
def test_crash_loop(pod: dict, looping: bool) -> None:
    obs = pod_obs(pod)
    assert obs.crash_looping is looping
    assert obs.spec_hash == "h" and obs.version == "0.1.0" and obs.initial_state == "existing"


def test_message_is_the_last_log_line() -> None:
    obs = pod_obs(_pod(3, BACKOFF, FAILED))
    assert obs.message == "exit 1: etcdpy: wal: crc mismatch"


def test_deleting_and_ready() -> None:
    body = _pod(0, RUNNING, ready=True)
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    obs = pod_obs(body)
    assert obs.ready and obs.deleting
