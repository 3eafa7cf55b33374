"""Servers and helpers for the client tests (test_client_*.py).

Test modules bind the fixtures they use by assignment (`limits_server = client_fixtures.limits_server`)
so that each server starts once per session, whichever module asks first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.models import SLOW_QUEUE_OF_TWO, slow_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

# A 1-row request waits for a second row (or for 60 s) before it runs: the server holds it until the
# test sends the partner, so the test, not a timing, decides when it is answered.
HELD_FOR_A_PAIR = """
max_batch_size: 2
dynamic_batching { preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 60000000 }
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""


@pytest.fixture(scope="session")
def client_limits_server(
    demo_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """slow_q2 (queue of 2), pair (held for a pair), mlp, and `spare` (an mlp copy that tests
    unload and load again)."""
    repo = tmp_path_factory.mktemp("client-limits")
    files = tmp_path_factory.mktemp("client-files")
    write_model(repo, "slow_q2", slow_model(files / "slow.onnx", matmuls=40), SLOW_QUEUE_OF_TWO)
    write_model(repo, "pair", slow_model(files / "quick.onnx", matmuls=1, size=8), HELD_FOR_A_PAIR)
    mlp_config = (demo_repo / "mlp" / "config.pbtxt").read_text()
    write_model(repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", mlp_config)
    write_model(repo, "spare", demo_repo / "mlp" / "1" / "model.onnx", mlp_config.replace('"mlp"', '"spare"'))
    with ServerProcess(
        "--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "*"
    ) as server:
        yield server


@pytest.fixture()
def start_demo_server(demo_repo: Path) -> Iterator[Callable[[], ServerProcess]]:
    """Start demo-model servers for one test (they may be terminated in it); killed after it."""
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        server = ServerProcess("--model-repository", str(demo_repo)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def mlp_reference(demo_repo: Path) -> Callable[[np.ndarray], np.ndarray]:
    """features -> expected scores, computed by onnxruntime in the test process."""
    session = ort.InferenceSession(
        str(demo_repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def scores(features: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(["scores"], {"features": features})[0])

    return scores


def features(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)
