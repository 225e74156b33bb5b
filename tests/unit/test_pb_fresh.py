"""Fail when the committed generated protobuf modules no longer match the .proto sources.

The generated modules are committed (see docs/ARCHITECTURE.md, "Protocol buffers"), so a
.proto edit without re-running ``scripts/genproto.py`` would silently ship stale code. The
check compares *descriptors*, not generated text: the .proto files are compiled to a
descriptor set and each FileDescriptorProto is compared with the one embedded in the
committed ``*_pb2.py``. That keeps the test independent of the grpcio-tools version that
happens to be installed (code generators change their output format between releases,
descriptors of the same source do not).
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_DIR = REPO_ROOT / "server"
PB_DIR = SERVER_DIR / "etcdpy" / "pb"

protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is needed to compile .proto files")
from google.protobuf import descriptor_pb2  # noqa: E402  (after the importorskip on purpose)

if str(SERVER_DIR) not in sys.path:
    sys.path.insert(0, str(SERVER_DIR))

REGEN_HINT = "generated protobuf modules are stale: run `python scripts/genproto.py` and commit the result"


def _proto_sources() -> list[str]:
    """Source paths relative to the include root, as the generated modules name them."""
    return sorted(str(p.relative_to(SERVER_DIR)) for p in PB_DIR.glob("*.proto"))


def _module_name(proto_path: str) -> str:
    """``etcdpy/pb/kv.proto`` -> ``etcdpy.pb.kv_pb2``: protoc's naming rule."""
    return proto_path[: -len(".proto")].replace("/", ".") + "_pb2"


def _normalize(fdp: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """Drop the parts that depend on protoc flags rather than on the .proto source."""
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fdp)
    out.ClearField("source_code_info")

    def strip_json_names(messages) -> None:  # json_name is filled by some protoc outputs only
        for msg in messages:
            for field in msg.field:
                field.ClearField("json_name")
            for ext in msg.extension:
                ext.ClearField("json_name")
            strip_json_names(msg.nested_type)

    strip_json_names(out.message_type)
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Compile every .proto to one descriptor set and index it by file name."""
    sources = _proto_sources()
    assert sources, f"no .proto files under {PB_DIR}"
    out = tmp_path_factory.mktemp("pb") / "descriptors.pb"
    import grpc_tools

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"  # same includes as genproto.py
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{SERVER_DIR}",
            f"-I{well_known}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *sources,
        ]
    )
    assert rc == 0, "protoc failed to compile the .proto sources"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: f for f in fds.file}


def test_every_proto_has_a_generated_module() -> None:
    generated = {p.name.removesuffix("_pb2.py") for p in PB_DIR.glob("*_pb2.py")}
    sources = {p.stem for p in PB_DIR.glob("*.proto")}
    assert generated == sources, REGEN_HINT
    stubs = {p.name.removesuffix("_pb2.pyi") for p in PB_DIR.glob("*_pb2.pyi")}
    assert stubs == sources, REGEN_HINT


@pytest.mark.parametrize("proto_path", _proto_sources())
def test_generated_descriptor_matches_source(
    proto_path: str, compiled: dict[str, descriptor_pb2.FileDescriptorProto]
) -> None:
    module = importlib.import_module(_module_name(proto_path))
    committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    expected = compiled[proto_path]
    assert _normalize(committed) == _normalize(expected), f"{proto_path}: {REGEN_HINT}"


@pytest.mark.parametrize("proto_path", _proto_sources())
def test_grpc_module_covers_every_method(
    proto_path: str, compiled: dict[str, descriptor_pb2.FileDescriptorProto]
) -> None:
    """The *_pb2_grpc.py files carry no descriptor, so check their method paths directly."""
    fdp = compiled[proto_path]
    grpc_file = PB_DIR / (Path(proto_path).stem + "_pb2_grpc.py")
    if not fdp.service:
        assert not grpc_file.exists(), f"{grpc_file.name} exists but {proto_path} has no service: {REGEN_HINT}"
        return
    assert grpc_file.exists(), f"{grpc_file.name} missing: {REGEN_HINT}"
    text = grpc_file.read_text()
    expected = {f"/{fdp.package}.{svc.name}/{m.name}" for svc in fdp.service for m in svc.method}
    present = set(re.findall(r"'(/[\w.]+/\w+)'", text))
    assert present == expected, f"{grpc_file.name}: {REGEN_HINT}"


@pytest.mark.parametrize("proto_path", _proto_sources())
def test_type_stubs_name_every_message(
    proto_path: str, compiled: dict[str, descriptor_pb2.FileDescriptorProto]
) -> None:
    """The .pyi files are for editors and type checkers; a stale one misleads them quietly."""
    fdp = compiled[proto_path]
    text = (PB_DIR / (Path(proto_path).stem + "_pb2.pyi")).read_text()
    declared = set(re.findall(r"^class (\w+)\(_message\.Message\)", text, re.MULTILINE))
    assert declared == {m.name for m in fdp.message_type}, f"{proto_path}: {REGEN_HINT}"
