"""Restore gate (etcdpy_operator.restore): nothing is created until the snapshot was found and checked."""

from __future__ import annotations

from typing import Any

import pytest

from etcdpy_operator.restore import GateObserved, GKind, RestoreSpec, Source, init_container, plan_gate, resolve
from etcdpy_operator.restoreexec import verdict

SRC = Source("vol", "c-20261203T100000Z-r42.db")


def gate(**kw: Any) -> GateObserved:
    base: dict[str, Any] = {"spec": RestoreSpec(backup="b"), "status": {}, "fresh": True, "source": SRC,
                            "source_problem": "", "claim_exists": True}
    base.update(kw)
    return GateObserved(**base)


@pytest.mark.parametrize(
    ("name", "o", "kind"),
    [
        ("no spec.restore", gate(spec=None), GKind.PASS),
        ("verified", gate(status={"phase": "Verified"}), GKind.PASS),
        ("verified, check Pod left", gate(status={"phase": "Verified"}, check_pod_phase="Succeeded"), GKind.DELETE_CHECK),
        ("running cluster is never gated", gate(fresh=False), GKind.PASS),
        ("failed", gate(status={"phase": "Failed", "message": "bad"}), GKind.BLOCKED),
        ("failed, check Pod left", gate(status={"phase": "Failed"}, check_pod_phase="Failed"), GKind.DELETE_CHECK),
        ("source missing", gate(source=None, source_problem="EtcdBackup 'b' not found"), GKind.BLOCKED),
        ("volume missing", gate(claim_exists=False), GKind.BLOCKED),
        ("check", gate(), GKind.CHECK),
        ("checking", gate(status={"phase": "Verifying"}, check_pod_phase="Running"), GKind.WAIT),
        ("check done", gate(status={"phase": "Verifying"}, check_pod_phase="Succeeded"), GKind.COLLECT),
        ("check failed", gate(status={"phase": "Verifying"}, check_pod_phase="Failed"), GKind.COLLECT),
    ],
)
def test_plan_gate(name: str, o: GateObserved, kind: GKind) -> None:
    assert plan_gate(o).kind is kind, name


def test_blocked_messages_say_nothing_was_created() -> None:
    g = plan_gate(gate(source=None, source_problem="EtcdBackup 'b' not found"))
    assert g.reason == "RestoreSourceMissing" and "nothing was created" in g.message
    g = plan_gate(gate(status={"phase": "Failed", "message": "snapshot x is corrupt"}))
    assert g.reason == "RestoreFailed" and "corrupt" in g.message


@pytest.mark.parametrize(
    ("spec", "obj", "source", "problem"),
    [
        (RestoreSpec(backup="b"), None, None, "not found"),
        (RestoreSpec(backup="b"), {"status": {"phase": "Running"}}, None, "has not succeeded"),
        (RestoreSpec(backup="b"), {"status": {"phase": "Succeeded"}}, None, "does not name"),
        (RestoreSpec(backup="b"), {"status": {"phase": "Succeeded", "claim": "vol", "fileName": SRC.file}}, SRC, ""),
        (RestoreSpec(claim_name="vol", file_name=SRC.file), None, SRC, ""),
        (RestoreSpec(claim_name="vol"), None, None, "needs either"),
        (RestoreSpec(claim_name="vol", file_name="../x.db"), None, None, "plain file name"),
    ],
)
def test_resolve(spec: RestoreSpec, obj: dict[str, Any] | None, source: Source | None, problem: str) -> None:
    got, why = resolve(spec, obj)
    assert got == source and problem in why


def test_verdict() -> None:
    ok = verdict('{"hash":1,"revision":42,"totalKey":3,"totalSize":8192}\n', "Succeeded", SRC)
    assert ok["phase"] == "Verified" and ok["revision"] == 42 and ok["fileName"] == SRC.file
    bad = verdict("snapshot file /x is corrupt: sha256 mismatch\n", "Failed", SRC)
    assert bad["phase"] == "Failed" and "corrupt" in bad["message"]
    assert verdict("", "Failed", SRC)["phase"] == "Failed"


def test_init_container_restores_only_into_an_empty_data_dir() -> None:
    c = init_container("img", "IfNotPresent", SRC, "c-0", "/var/lib/etcd/data", "http://c-0.c-peers.ns.svc:2380",
                       "tok", "/var/lib/etcd")
    script = c["command"][-1]
    assert script.startswith('if [ -e "/var/lib/etcd/data/member" ]')
    assert f"/var/lib/etcd-restore/{SRC.file}" in script and '--initial-cluster-token "tok"' in script
    assert '--initial-cluster "c-0=http://c-0.c-peers.ns.svc:2380"' in script
    assert {m["name"] for m in c["volumeMounts"]} == {"data", "restore-source"}
