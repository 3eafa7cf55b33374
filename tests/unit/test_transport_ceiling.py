"""loadtest/transport_ceiling.py's model: resnet's input, next to no compute (one ReduceMean), a
config the server accepts, answers onnxruntime agrees with. (The measurement itself needs
perf_analyzer and a spawned server: `python -m loadtest.transport_ceiling`, BENCHMARKS.md 16.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest.transport_ceiling import MODEL, tree_cpu_s, write_model
from server.models.config import parse_config, validate_config


def test_the_model_averages_a_resnet_sized_input(tmp_path: Path) -> None:
    write_model(tmp_path)
    where = tmp_path / MODEL / "config.pbtxt"
    config = parse_config(where.read_text(), str(where))
    validate_config(config, str(where))
    assert config.max_batch_size == 64
    session = ort.InferenceSession(
        str(tmp_path / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    image = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    (mean,) = session.run(None, {"image": image})
    np.testing.assert_allclose(mean[:, 0], image.reshape(3, -1).mean(axis=1), rtol=1e-4, atol=1e-5)


def test_cpu_of_a_process_tree_counts_this_process() -> None:
    import os

    total, host = tree_cpu_s(os.getpid())
    assert total > 0 and host == 0  # no session host under a test process
