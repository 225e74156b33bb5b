"""The container image's recipe and its smoke-test scripts.

Why these run in the default suite: building the image needs podman and a few minutes, so CI
builds and smoke-tests it once from .ci/run (scripts/image-smoke). What can go wrong without a
build is checked here in milliseconds: the Dockerfile keeps its promises (multi-stage, non-root,
volume, ports, PID 1, base as an ARG), the build context lets through everything `pip install .`
reads, and the smoke script skips loudly (never silently) where podman is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["scripts/image-build", "scripts/image-smoke", "scripts/podman-env", "scripts/k8s-tools", "scripts/e2e-kind"]


def dockerfile_stages() -> tuple[list[str], list[list[str]]]:
    """(instructions before the first FROM, [instructions of each stage]) with continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    preamble: list[str] = []
    stages: list[list[str]] = []
    for ln in lines:
        if ln.upper().startswith("FROM "):
            stages.append([ln])
        elif stages:
            stages[-1].append(ln)
        else:
            preamble.append(ln)
    return preamble, stages


def instr(stage: list[str], name: str) -> list[str]:
    """Arguments of every `name` instruction in a stage."""
    return [ln.split(None, 1)[1] for ln in stage if ln.split(None, 1)[0].upper() == name]


def test_dockerfile_is_multi_stage_with_the_base_as_a_build_arg() -> None:
    preamble, stages = dockerfile_stages()
    assert any(re.fullmatch(r"ARG BASE_IMAGE=\S*python:3\.1[1-9]\S*", ln) for ln in preamble), preamble
    assert len(stages) >= 2
    assert all("${BASE_IMAGE}" in s[0] for s in stages), [s[0] for s in stages]
    final = stages[-1]
    copies = instr(final, "COPY")
    assert copies == ["--from=builder /opt/etcdpy /opt/etcdpy"], "the final stage must take only the venv"
    assert not any("pip install" in r for r in instr(final, "RUN")), "no pip (or its cache) in the final stage"


def test_final_stage_runs_unprivileged_with_volume_ports_and_pid1() -> None:
    final = dockerfile_stages()[1][-1]
    user = instr(final, "USER")[-1]
    assert user.split(":")[0] not in ("0", "root")
    assert '"/var/lib/etcd"' in instr(final, "VOLUME")[-1]
    assert set(" ".join(instr(final, "EXPOSE")).split()) >= {"2379", "2380", "2381"}
    assert instr(final, "ENTRYPOINT")[-1] == '["/usr/bin/tini", "--"]'
    assert instr(final, "CMD")[-1] == '["etcdpy"]'
    labels = " ".join(instr(final, "LABEL"))
    for key in ("title", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_build_context_lets_through_what_pip_install_reads() -> None:
    """The .dockerignore is a whitelist: a package folder added to pyproject must be let in too."""
    allowed = {ln.strip()[1:].rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip().startswith("!")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = {"pyproject.toml", project["project"]["readme"]}
    wanted |= set(project["tool"]["setuptools"]["packages"]["find"]["where"])
    assert wanted <= allowed, f"missing from .dockerignore's whitelist: {sorted(wanted - allowed)}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


@pytest.mark.parametrize("script", ["scripts/image-build", "scripts/image-smoke"])
def test_shell_scripts_refuse_unknown_arguments(script: str) -> None:
    p = subprocess.run([str(ROOT / script), "--no-such-flag"], check=False, capture_output=True, text=True)
    assert p.returncode == 2 and "unknown" in p.stderr, p.stderr


def run_smoke_without_podman(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The smoke script with a PATH on which no podman exists."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k != "ETCDPY_REQUIRE_PODMAN"}
    environ.update(PATH=str(bindir), **env)
    return subprocess.run([sys.executable, str(ROOT / "scripts/image_smoke.py"), "etcdpy:0"],
                          check=False, capture_output=True, text=True, env=environ)


def test_smoke_skips_loudly_without_podman(tmp_path: Path) -> None:
    p = run_smoke_without_podman(tmp_path)
    assert p.returncode == 0
    assert "image-smoke: SKIPPED: podman is not installed" in p.stderr


def test_smoke_fails_without_podman_when_required(tmp_path: Path) -> None:
    p = run_smoke_without_podman(tmp_path, ETCDPY_REQUIRE_PODMAN="1")
    assert p.returncode == 1
    assert "FAILED: podman is not installed" in p.stderr


@pytest.mark.skipif(os.environ.get("ETCDPY_IMAGE_SMOKE") != "1",
                    reason="builds the image (about a minute): CI runs scripts/image-smoke from .ci/run; "
                           "set ETCDPY_IMAGE_SMOKE=1 to run it from pytest")
def test_image_builds_and_passes_the_smoke_test() -> None:
    p = subprocess.run([str(ROOT / "scripts/image-smoke")], check=False, capture_output=True, text=True,
                       timeout=900, env=dict(os.environ, ETCDPY_REQUIRE_PODMAN="1"))
    assert p.returncode == 0 and "image-smoke: PASSED" in p.stderr, p.stderr[-4000:]
