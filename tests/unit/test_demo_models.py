"""Demo repository: deterministic, cached, atomic, and both models load and compute."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from server.backends.onnxruntime_backend import OrtBackend, OrtOptions, inspect_onnx
from server.models.config import complete_from_onnx
from server.models.demo import IMAGENET_MEAN, IMAGENET_STD, build_demo_repository
from server.models.repository import scan_repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("cache"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_concurrent_builds_are_identical_and_atomic(repo: Path, tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(build_demo_repository, [tmp_path, tmp_path]))
    assert paths[0] == paths[1]
    assert _files(paths[0]) == _files(repo)  # same bytes as the build in another directory
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]  # no staging directory left


def test_a_built_repository_is_reused(repo: Path) -> None:
    model = repo / "resnet" / "1" / "model.onnx"
    before = model.stat().st_mtime_ns
    assert build_demo_repository(repo.parent) == repo
    assert model.stat().st_mtime_ns == before


def test_configs_load_and_agree_with_the_models(repo: Path) -> None:
    models, errors = scan_repository(repo)
    assert errors == {}
    assert sorted(models) == ["mlp", "resnet", "resnet_u8"]
    mlp = models["mlp"].config
    assert mlp.max_batch_size == 128
    assert mlp.dynamic_batching.default_queue_policy.max_queue_size == 1024
    assert models["resnet"].config.max_batch_size == 16
    for source in models.values():
        inputs, outputs = inspect_onnx(source.versions[1])
        done = complete_from_onnx(source.config, inputs, outputs, source=source.name)
        assert done.input == source.config.input  # the configs list exactly what the graphs have
        assert done.output == source.config.output
        assert done.max_batch_size == source.config.max_batch_size


def _run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    backend = OrtBackend(path, OrtOptions(), [("CPUExecutionProvider", {})], ThreadPoolExecutor(1))
    try:
        return dict(asyncio.run(backend.run(feed)))  # type: ignore[arg-type]
    finally:
        backend.close()


def test_mlp_scores_are_finite(repo: Path) -> None:
    features = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    scores = _run(repo / "mlp" / "1" / "model.onnx", {"features": features})["scores"]
    assert scores.shape == (4, 2) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert not np.allclose(scores[0], scores[1])


def test_resnet_logits_are_finite_and_varied(repo: Path) -> None:
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    logits = _run(repo / "resnet" / "1" / "model.onnx", {"image": image})["logits"]
    assert logits.shape == (1, 1000)
    assert np.isfinite(logits).all()
    assert logits.std() > 1e-3


def test_resnet_u8_is_resnet_on_normalized_frames(repo: Path) -> None:
    # The same weights behind a Cast/Transpose/normalize prefix: a UINT8 NHWC frame must give the
    # logits resnet gives for that frame scaled to [0, 1], made NCHW and normalized in numpy.
    frames = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    image = (frames.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    image = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    from_frames = _run(repo / "resnet_u8" / "1" / "model.onnx", {"frame": frames})["logits"]
    from_images = _run(repo / "resnet" / "1" / "model.onnx", {"image": image})["logits"]
    assert from_frames.shape == (2, 1000)
    tolerance = 1e-3 * float(np.abs(from_images).max())
    np.testing.assert_allclose(from_frames, from_images, rtol=1e-3, atol=tolerance)
    assert not np.allclose(from_frames[0], from_frames[1])
