#!/usr/bin/env python3
"""Regenerate the committed protobuf / gRPC modules from server/etcdpy/pb/*.proto.

The generated ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` files are committed so that
installing or running etcdpy never needs grpcio-tools. Run this script (it needs
grpcio-tools) after editing a .proto file, then commit the .proto and the generated files
together; ``tests/unit/test_pb_fresh.py`` fails while they disagree.

Protos are compiled with ``-I server`` so imports read ``etcdpy/pb/kv.proto`` and the
generated code imports ``from etcdpy.pb import kv_pb2``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_DIR = REPO_ROOT / "server"
PB_DIR = SERVER_DIR / "etcdpy" / "pb"


def proto_files() -> list[Path]:
    """All .proto sources, sorted so runs are reproducible."""
    return sorted(PB_DIR.glob("*.proto"))


def protoc_include_dir() -> str:
    """grpc_tools ships the well-known types; pass them so protoc behaves like a full install."""
    import grpc_tools  # imported lazily: only this script and the tests need grpcio-tools

    return str(Path(grpc_tools.__file__).resolve().parent / "_proto")


def run_protoc(args: list[str]) -> None:
    """Run grpc_tools' bundled protoc in-process; raise if it reports an error."""
    from grpc_tools import protoc

    rc = protoc.main(["grpc_tools.protoc", f"-I{SERVER_DIR}", f"-I{protoc_include_dir()}", *args])
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit status {rc}: {' '.join(args)}")


def relative_sources() -> list[str]:
    """Source paths as protoc must see them: relative to the include root ``server``."""
    return [str(p.relative_to(SERVER_DIR)) for p in proto_files()]


def generate() -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py next to each .proto."""
    out = str(SERVER_DIR)
    # Start from a clean slate so a deleted or renamed .proto leaves no orphaned module behind.
    for old in [*PB_DIR.glob("*_pb2.py"), *PB_DIR.glob("*_pb2.pyi"), *PB_DIR.glob("*_pb2_grpc.py")]:
        old.unlink()
    run_protoc([f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *relative_sources()])
    # Files without services still get an (empty) *_pb2_grpc.py; drop those to keep the tree small.
    for grpc_file in PB_DIR.glob("*_pb2_grpc.py"):
        if not re.search(r"^class \w+Stub\b", grpc_file.read_text(), re.MULTILINE):
            grpc_file.unlink()


def main() -> int:
    generate()
    for p in sorted(PB_DIR.glob("*_pb2*.py*")):
        print(p.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
