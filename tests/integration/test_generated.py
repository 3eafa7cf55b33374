"""The committed generated modules match what protos/generate.py makes from the .proto text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.support.server_process import REPO_ROOT


def test_generated_modules_match_the_proto_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", REPO_ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.generate(tmp_path)
    produced = sorted(p.name for p in (tmp_path / "protos").iterdir())
    assert produced == sorted(
        f"{stem}{suffix}"
        for stem in ("grpc_service", "model_config", "admin")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    )
    for name in produced:
        committed = (REPO_ROOT / "protos" / name).read_text()
        assert (tmp_path / "protos" / name).read_text() == committed, (
            f"protos/{name} drifted: run python protos/generate.py"
        )
