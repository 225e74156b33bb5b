"""The kind runner (scripts/e2e-kind): what CI can check without Docker, kind or a cluster.

Why: the runner only runs where Docker and kind exist, so here its syntax, its argument handling,
its refusal to start without prerequisites, and its scenario selection (the same scenarios the default
e2e run collects) are checked; the cluster steps themselves are exercised where kind is available.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "scripts" / "e2e-kind"


def run(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """The runner with arguments (and optionally a restricted PATH)."""
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([str(RUNNER), *args], check=False, capture_output=True, text=True, env=env, timeout=60)


def test_runner_parses() -> None:
    subprocess.run(["bash", "-n", str(RUNNER)], check=True)


def test_help_states_the_prerequisites() -> None:
    p = run("--help")
    assert p.returncode == 0
    for word in ("kind", "Docker", "kubectl", "helm", "--keep", "--print-pytest-command"):
        assert word in p.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--bogus"], "unknown argument: --bogus"),
    (["-k", "scale"], "unknown argument: -k (pytest arguments go after --)"),
    (["--name", "Not_A_Label"], "--name must be a DNS label"),
    (["--image", "etcdpy"], "--image must be NAME:TAG"),
])
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    p = run(*args)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_pytest_arguments_after_double_dash_are_passed_through() -> None:
    p = run("--print-pytest-command", "--", "-k", "scale and not tls", "-x")
    assert p.returncode == 0, p.stderr
    argv = shlex.split(p.stdout)
    assert Path(argv[0]).name.startswith("python") and argv[1:4] == ["-m", "pytest", "e2e/"]
    assert any(a.startswith("--kubeconfig=/") and a.endswith("/kubeconfig") for a in argv)
    assert argv[-3:] == ["-k", "scale and not tls", "-x"]


def test_refuses_to_start_without_kind(tmp_path: Path) -> None:
    """With no kind (and no container engine) on PATH it says what is missing and stops."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "od", "tr", "sed"):
        (bindir / tool).symlink_to(subprocess.check_output(["bash", "-c", f"command -v {tool}"], text=True).strip())
    (bindir / "python3").symlink_to(sys.executable)
    for fake in ("kubectl", "helm"):
        (bindir / fake).write_text("#!/bin/sh\nexit 0\n")
        (bindir / fake).chmod(0o755)
    p = run(path=str(bindir))
    assert p.returncode == 1
    assert "cannot run here, missing: kind docker" in p.stderr, p.stderr


def collected(argv: list[str]) -> list[str]:
    """Node ids pytest collects for a command line (run from the repository root)."""
    cmd = [sys.executable, *argv[1:], "--collect-only", "-q", "-p", "no:kmock"]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode in (0, 5), p.stdout[-2000:] + p.stderr[-2000:]
    return sorted(ln for ln in p.stdout.splitlines() if "::" in ln)


def test_runner_selects_the_same_scenarios_as_the_default_e2e_run() -> None:
    if not any((ROOT / "e2e").rglob("test_*.py")):
        pytest.skip("no e2e/ scenario suite in this tree yet (op-e2e's issue lands it)")
    runner_argv = shlex.split(run("--print-pytest-command").stdout)
    default = collected(["python3", "-m", "pytest", "e2e/"])
    assert default, "the default e2e run collects no scenarios"
    assert collected(runner_argv) == default


@pytest.mark.parametrize(("ref", "name"), [
    ("etcdpy:0.1.0", "docker.io/library/etcdpy:0.1.0"),
    ("team/etcdpy:1", "docker.io/team/etcdpy:1"),
    ("registry.example.com/etcdpy:1", "registry.example.com/etcdpy:1"),
    ("localhost:5000/etcdpy:1", "localhost:5000/etcdpy:1"),
    ("localhost/etcdpy:1", "localhost/etcdpy:1"),
])
def test_podman_images_are_saved_under_the_name_kind_nodes_resolve(ref: str, name: str) -> None:
    """With podman, the image is saved as containerd will look the Pods' image up (docker.io/library/...)."""
    script = f"eval \"$(sed -n '/^docker_name() {{/,/^}}/p' {shlex.quote(str(RUNNER))})\"; docker_name {shlex.quote(ref)}"
    out = subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout.strip()
    assert out == name
