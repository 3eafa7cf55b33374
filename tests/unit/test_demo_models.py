"""Demo repository: deterministic, cached, atomic; the models are the networks they describe
(checked against numpy computations from their own weights)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from server.backends.onnx_inspect import inspect_onnx
from server.backends.onnxruntime_backend import OrtBackend, OrtOptions
from server.models.demo import IMAGENET_MEAN, IMAGENET_STD, build_demo_repository
from server.models.onnx_completion import complete_from_onnx
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


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_mlp_is_the_described_network(repo: Path) -> None:
    # 64 -> 256 -> 256 -> 2: Gemm (x @ W + b), Relu between layers, computed here in float64 from
    # the model's own initializers.
    path = repo / "mlp" / "1" / "model.onnx"
    weights = _initializers(path)
    assert sorted(weights) == sorted(f"fc{i}.{p}" for i in range(3) for p in ("weight", "bias"))
    assert [weights[f"fc{i}.weight"].shape for i in range(3)] == [(64, 256), (256, 256), (256, 2)]
    features = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    x = features.astype(np.float64)
    for i in range(3):
        x = x @ weights[f"fc{i}.weight"] + weights[f"fc{i}.bias"]
        if i < 2:
            x = np.maximum(x, 0.0)
    scores = _run(path, {"features": features})["scores"]
    assert scores.shape == (4, 2) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, x, rtol=1e-4, atol=1e-4 * float(np.abs(x).max()))
    assert not np.allclose(x[0], x[1])  # the inputs differ, so must the scores


def _conv(x: np.ndarray, weights: dict[str, np.ndarray], name: str, stride: int) -> np.ndarray:
    """NCHW convolution with `name`.weight [O, C, k, k] and `name`.bias, padding k // 2."""
    w, b = weights[f"{name}.weight"], weights[f"{name}.bias"]
    k, pad = w.shape[-1], w.shape[-1] // 2
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # N, C, H, W, k, k
    out = np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3]))  # N, H, W, O
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) + b[None, :, None, None]


def _resnet18(image: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """ResNet-18 (batch norm folded into conv biases, residual branch scaled at build time) in numpy."""
    relu = partial(np.maximum, 0.0)
    x = relu(_conv(image, weights, "conv1", 2))
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    x = sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))  # MaxPool 3x3/2
    for stage in range(1, 5):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = _conv(relu(_conv(x, weights, f"{prefix}.conv1", stride)), weights, f"{prefix}.conv2", 1)
            downsample = f"{prefix}.downsample.weight" in weights
            assert downsample == (stage > 1 and block == 0)
            shortcut = _conv(x, weights, f"{prefix}.downsample", stride) if downsample else x
            x = relu(y + shortcut)
    pooled = x.mean(axis=(2, 3))  # GlobalAveragePool + Flatten
    logits: np.ndarray = pooled @ weights["fc.weight"] + weights["fc.bias"]
    return logits


def test_resnet_is_the_described_network(repo: Path) -> None:
    path = repo / "resnet" / "1" / "model.onnx"
    weights = _initializers(path)
    assert weights["conv1.weight"].shape == (64, 3, 7, 7)
    assert weights["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert weights["fc.weight"].shape == (512, 1000)
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    expected = _resnet18(image, weights)
    logits = _run(path, {"image": image})["logits"]
    assert logits.shape == (1, 1000) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    assert expected.std() > 1e-3  # not a constant network


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


def test_a_build_removes_the_staging_left_by_a_builder_that_is_gone(repo: Path, tmp_path: Path) -> None:
    """A start-up signal landing in an import during a build ends the process with os._exit, past
    the build's clean-up: its `.demo-building-PID-*` directory stayed in the cache for good. A
    later build removes those whose process is gone, never a running builder's."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)  # exited: as a build ended by os._exit
    cache = tmp_path  # nothing built yet: this build runs beside the leftovers
    killed = cache / f".demo-building-{dead_pid}-abc123"
    (killed / "mlp" / "1").mkdir(parents=True)  # what a build had written when it was stopped
    (killed / "mlp" / "config.pbtxt").write_text("name: 'mlp'\n")
    from_before = cache / ".demo-building-x1y2z3"  # a name from before pids were in it
    from_before.mkdir()
    running = cache / f".demo-building-{os.getppid()}-def456"  # a concurrent builder, still running
    running.mkdir()
    # A fresh one whose pid looks dead: another pid namespace's builder on a shared cache volume.
    fresh = cache / f".demo-building-{dead_pid}-ghi789"
    fresh.mkdir()
    hour_ago = time.time() - 3600
    for left in (killed, from_before, running):
        os.utime(left, (hour_ago, hour_ago))
    built = build_demo_repository(cache)
    assert _files(built) == _files(repo)
    assert not killed.exists() and not from_before.exists()
    assert running.is_dir() and fresh.is_dir()
    running.rmdir()
    fresh.rmdir()
    assert [p.name for p in cache.iterdir()] == [built.name]  # nor did this build leave its own
    assert build_demo_repository(cache) == built  # reused
