"""The TensorRT accelerator's path parameters kept inside the model's directory or the server's
cache directory (server/models/tensorrt_paths.py). Found by a tester: a RepositoryModelLoad `config`
could point `trt_extra_plugin_lib_paths` (libraries TensorRT loads into the server) and the cache
paths (written) anywhere, where every other file a config names stays inside the model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.models.config import ConfigError
from server.models.manager import ModelManager
from server.models.tensorrt_paths import check_tensorrt_paths
from server.settings import ServerSettings
from tests.support.repositories import demo_repository, write_model


def config(**params: str) -> mc.ModelConfig:
    entries = " ".join(f'parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
    text = (
        'name: "m" max_batch_size: 8 optimization { execution_accelerators { '
        f'gpu_execution_accelerator [ {{ name: "tensorrt" {entries} }} ] }} }}'
    )
    return text_format.Parse(text, mc.ModelConfig())


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    model, cache = tmp_path / "repo" / "m", tmp_path / "cache"
    model.mkdir(parents=True)
    cache.mkdir()
    return model, cache


def test_paths_inside_the_model_or_the_cache_directory_pass(dirs: tuple[Path, Path]) -> None:
    model, cache = dirs
    ok = config(
        trt_engine_cache_path=str(cache / "engines"),
        trt_timing_cache_path=str(model / "timing"),
        trt_extra_plugin_lib_paths=f"{model / 'a.so'};{cache / 'b.so'};",
        trt_engine_cache_prefix="resnet",
        int8_calibration_table_name="calibration.flatbuffers",
    )
    check_tensorrt_paths(ok, model, cache, "m/config.pbtxt")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trt_extra_plugin_lib_paths", "/tmp/evil.so"),
        ("trt_extra_plugin_lib_paths", "{model}/a.so;/usr/lib/evil.so"),
        ("trt_engine_cache_path", "/etc"),
        ("trt_timing_cache_path", "{model}/../elsewhere"),
        ("trt_ep_context_file_path", "relative/ctx.onnx"),  # onnxruntime would read it from the cwd
    ],
)
def test_a_path_elsewhere_is_refused_naming_the_key(dirs: tuple[Path, Path], key: str, value: str) -> None:
    model, cache = dirs
    bad = config(**{key: value.format(model=model)})
    with pytest.raises(ConfigError, match=f"parameter '{key}' path .* must be an absolute path inside"):
        check_tensorrt_paths(bad, model, cache, "m/config.pbtxt")


@pytest.mark.parametrize("key", ["trt_engine_cache_prefix", "int8_calibration_table_name"])
def test_a_name_parameter_may_not_be_a_path(dirs: tuple[Path, Path], key: str) -> None:
    model, cache = dirs
    with pytest.raises(ConfigError, match=f"parameter '{key}' value '../../etc/x' is a file name"):
        check_tensorrt_paths(config(**{key: "../../etc/x"}), model, cache, "m/config.pbtxt")


async def test_a_load_with_a_plugin_library_elsewhere_fails_naming_it(tmp_path: Path) -> None:
    """Through a real load (KIND_CPU here: the accelerator is only warned unused, yet still checked)."""
    repo = tmp_path / "repo"
    accel = (
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
        'parameters { key: "trt_extra_plugin_lib_paths" value: "/tmp/evil.so" } } ] } }'
    )
    write_model(
        repo, "m", demo_repository() / "mlp" / "1" / "model.onnx", f'name: "m"\nmax_batch_size: 8\n{accel}\n'
    )
    manager = ModelManager(
        repo, ServerSettings(cache_dir=tmp_path / "cache", metrics=False), lambda n, r: None
    )
    await manager.load_all()
    try:
        (entry,) = manager.entries()
        assert "trt_extra_plugin_lib_paths" in entry.reason and "/tmp/evil.so" in entry.reason, entry.reason
    finally:
        await manager.stop(drain_timeout_s=1.0)
