"""Servers for the tritonclient tests: the demo repository, and one with tight limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.utils.shared_memory as shm

from tests.support.models import SLOW_QUEUE_OF_TWO, slow_model
from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="session")
def demo_repo() -> Path:
    return demo_repository()


@pytest.fixture(scope="session")
def demo_server(demo_repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess("--model-repository", str(demo_repo)) as server:
        yield server


@pytest.fixture(scope="session")
def shm_server(demo_repo: Path) -> Iterator[ServerProcess]:
    """The demo repository with client shared memory allowed (README "Shared memory")."""
    with ServerProcess("--model-repository", str(demo_repo), "--allow-client-shm") as server:
        yield server


MLP_TWO_VERSIONS = """
name: "mlp_versions"
max_batch_size: 8
version_policy: { all { } }
dynamic_batching { }
"""


@pytest.fixture(scope="session")
def limits_server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("limits-repo")
    slow = slow_model(tmp_path_factory.mktemp("files") / "slow.onnx", matmuls=40)
    write_model(repo, "slow_q2", slow, SLOW_QUEUE_OF_TWO)
    write_model(
        repo,
        "resnet",
        demo_repo / "resnet" / "1" / "model.onnx",
        (demo_repo / "resnet" / "config.pbtxt").read_text(),
    )
    write_model(
        repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", (demo_repo / "mlp" / "config.pbtxt").read_text()
    )
    write_model(
        repo, "mlp_versions", demo_repo / "mlp" / "1" / "model.onnx", MLP_TWO_VERSIONS, versions=(1, 3)
    )
    with ServerProcess(
        "--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "*"
    ) as server:
        yield server


@pytest.fixture
def regions() -> Iterator[list[object]]:
    """System shared-memory regions a test creates (tritonclient's handles), destroyed after it."""
    handles: list[object] = []
    yield handles
    for handle in handles:
        shm.destroy_shared_memory_region(handle)
