"""Regenerate the committed Python modules from the .proto files in this folder.

Run from anywhere: ``python protos/generate.py``. The generated files are never edited by hand;
``tests/integration/test_generated.py`` fails when they drift from this script's output.

The *_pb2.py modules are protoc's, with one change made here: they build their descriptors in
`protos.pool.POOL`, not protobuf's default pool, so that tritonclient's generated modules (same
package `inference`) can be imported in the same process. Names on the wire are unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
PROTO_FILES = ("protos/model_config.proto", "protos/grpc_service.proto", "protos/admin.proto")


def generate(out_dir: Path) -> None:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every .proto into out_dir/protos/."""
    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for proto in PROTO_FILES:
        module = out_dir / proto.replace(".proto", "_pb2.py")
        module.write_text(in_private_pool(module.read_text(), module.name))


# protoc's lines that name the default pool, and what they become.
_POOL_EDITS = (
    (
        "from google.protobuf import descriptor_pool as _descriptor_pool\n",
        "from protos.pool import POOL as _private_pool  # not the default pool: see protos/pool.py\n",
    ),
    (
        "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
        "DESCRIPTOR = _private_pool.AddSerializedFile(",
    ),
)


def in_private_pool(source: str, name: str) -> str:
    """protoc's module with its file added to protos.pool.POOL instead of the default pool.

    Fails when protoc's output no longer has the expected lines (a new protoc release), rather
    than quietly leaving the default pool in place."""
    for old, new in _POOL_EDITS:
        if source.count(old) != 1:
            raise SystemExit(f"{name}: expected protoc's line {old.strip()!r} exactly once")
        source = source.replace(old, new)
    if "_descriptor_pool" in source:
        raise SystemExit(f"{name}: protoc's module still uses the default descriptor pool")
    return source


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT)
