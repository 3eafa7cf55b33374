"""The GPU provider options a config implies (server/backends/tensorrt_options.py), as pure
functions: TensorRT's engine cache and optimization profile, CUDA graphs, the notes for the load
warning, the engine-building warm-up, and how an instance plan applies them on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.backends.instance_groups import plan_instances
from server.backends.onnxruntime_backend import CPU, CUDA, TENSORRT
from server.backends.provider_choice import providers_for
from server.backends.tensorrt_options import (
    cuda_field_notes,
    engine_build_feeds,
    engine_cache_dir,
    gpu_provider_options,
    graph_blocker,
    profile,
)
from server.models.warmup import build_engines

ACCEL = 'execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" %s } ] }'
TRT_ACCEL = "optimization { " + ACCEL + " }"
GRAPHS_TRT = "optimization { cuda { graphs: true } " + ACCEL + " }"
FP16 = 'parameters { key: "precision_mode" value: "FP16" }'
RESNET = """
max_batch_size: 16
input { name: "image" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }
output { name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] }
dynamic_batching { preferred_batch_size: [ 4, 8 ] }
"""
FIXED = """
max_batch_size: 0
input { name: "x" data_type: TYPE_FP16 dims: [ 1, 3, 64, 64 ] }
output { name: "y" data_type: TYPE_FP16 dims: [ 1, 10 ] }
"""
GRAPHS = "optimization { cuda { graphs: true } }"


def config(text: str) -> mc.ModelConfig:
    parsed: mc.ModelConfig = text_format.Parse(text, mc.ModelConfig(name="m"))
    return parsed


def test_the_profile_spans_batch_1_to_max_optimised_for_the_largest_preferred_size() -> None:
    found, why = profile(config(RESNET))
    assert found is not None and why == ""
    assert found.options() == {
        "trt_profile_min_shapes": "image:1x3x224x224",
        "trt_profile_opt_shapes": "image:8x3x224x224",
        "trt_profile_max_shapes": "image:16x3x224x224",
    }
    two = config(
        "max_batch_size: 32 "
        'input { name: "a" data_type: TYPE_UINT8 dims: [ 2, 6 ] reshape { shape: [ 12 ] } } '
        'input { name: "b" data_type: TYPE_INT64 dims: [ 1 ] }'
    )
    found, _ = profile(two)  # no preferred sizes: optimised for max_batch_size; reshape: the model's dims
    assert found is not None
    assert found.options()["trt_profile_opt_shapes"] == "a:32x12,b:32x1"
    assert found.options()["trt_profile_min_shapes"] == "a:1x12,b:1x1"


def test_no_profile_where_the_shapes_are_not_known_ahead() -> None:
    assert profile(config(FIXED)) == (None, "")  # no batch dimension: TensorRT's static shapes
    cases = {
        'input { name: "t" data_type: TYPE_FP32 dims: [ -1, 80 ] }': "variable dims [-1, 80]",
        'input { name: "t" data_type: TYPE_FP32 dims: [ 4 ] allow_ragged_batch: true }': "ragged",
        'input { name: "a:b" data_type: TYPE_FP32 dims: [ 4 ] }': "cannot be written",
        "sequence_batching { }": "sequence_batching",
    }
    for text, why in cases.items():
        found, reason = profile(config("max_batch_size: 8 " + text))
        assert found is None and why in reason, text


def test_tensorrt_gets_an_engine_cache_a_timing_cache_and_the_profile(tmp_path: Path) -> None:
    cfg = config(RESNET + TRT_ACCEL % FP16 + " instance_group [ { kind: KIND_GPU gpus: [ 1 ] } ]")
    cache = engine_cache_dir(tmp_path, "resnet", "1")
    assert cache == tmp_path / "resnet" / "1"
    providers = gpu_provider_options(cfg, providers_for(cfg, [CPU]), engine_cache=cache)
    assert [name for name, _ in providers] == [TENSORRT, CUDA, CPU]
    assert providers[0][1] == {
        "device_id": "1",
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": "image:1x3x224x224",
        "trt_profile_opt_shapes": "image:8x3x224x224",
        "trt_profile_max_shapes": "image:16x3x224x224",
    }
    assert providers[1][1] == {"device_id": "1"} and providers[2] == (CPU, {})
    int8 = config(RESNET + TRT_ACCEL % 'parameters { key: "precision_mode" value: "INT8" }')
    assert (
        gpu_provider_options(int8, providers_for(int8, [CPU]), engine_cache=None)[0][1]["trt_int8_enable"]
        == "1"
    )


def test_the_configs_own_tensorrt_parameters_win(tmp_path: Path) -> None:
    own = (
        'parameters { key: "trt_engine_cache_enable" value: "false" } '
        'parameters { key: "trt_profile_max_shapes" value: "image:4x3x224x224" }'
    )
    cfg = config(RESNET + TRT_ACCEL % own)
    options = gpu_provider_options(cfg, providers_for(cfg, [CPU]), engine_cache=tmp_path)[0][1]
    assert options == {
        "device_id": "0",
        "trt_engine_cache_enable": "false",
        "trt_profile_max_shapes": "image:4x3x224x224",
    }


def test_cuda_graphs_for_fixed_shapes_only() -> None:
    cfg = config(FIXED + GRAPHS_TRT % "")
    options = dict(gpu_provider_options(cfg, providers_for(cfg, [CPU]), engine_cache=None))
    assert options[TENSORRT]["trt_cuda_graph_enable"] == "1"
    assert "enable_cuda_graph" not in options[CUDA]  # behind TensorRT, CUDA runs only what it leaves
    on_cuda = config(FIXED + GRAPHS + " instance_group [ { kind: KIND_GPU } ]")
    options = dict(gpu_provider_options(on_cuda, providers_for(on_cuda, [CPU]), engine_cache=None))
    assert options[CUDA] == {"device_id": "0", "enable_cuda_graph": "1"}
    assert cuda_field_notes(on_cuda, on_gpu=True) == []
    batched = config(RESNET + GRAPHS + " instance_group [ { kind: KIND_GPU } ]")
    options = dict(gpu_provider_options(batched, providers_for(batched, [CPU]), engine_cache=None))
    assert options[CUDA] == {"device_id": "0"}
    (note,) = cuda_field_notes(batched, on_gpu=True)
    assert "optimization.cuda.graphs (CUDA graphs not used: it batches (max_batch_size 16)" in note
    (note,) = cuda_field_notes(on_cuda, on_gpu=False)
    assert "it runs on the CPU" in note


def test_what_stops_cuda_graphs_is_named() -> None:
    base = 'max_batch_size: 0 output { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } '
    cases = {
        'input { name: "x" data_type: TYPE_FP32 dims: [ -1 ] }': "input 'x' has variable dims [-1]",
        'input { name: "x" data_type: TYPE_STRING dims: [ 2 ] }': "input 'x' is string",
        'input { name: "x" data_type: TYPE_BF16 dims: [ 2 ] }': "input 'x' is BF16",
        'input { name: "x" data_type: TYPE_FP32 dims: [ 2 ] optional: true }': "input 'x' is optional",
    }
    for text, why in cases.items():
        blocker = graph_blocker(config(base + text))
        assert blocker is not None and why in blocker, text
    assert graph_blocker(config(base + 'input { name: "x" data_type: TYPE_FP32 dims: [ 2 ] }')) is None
    others = config(
        FIXED + "optimization { cuda { graphs: true busy_wait_events: true output_copy_stream: true } }"
    )
    notes = cuda_field_notes(others, on_gpu=True)
    assert [n.split(" ")[0] for n in notes] == [
        "optimization.cuda.busy_wait_events",
        "optimization.cuda.output_copy_stream",
    ]


def test_engine_build_feeds_cover_the_profile() -> None:
    feeds = engine_build_feeds(config(RESNET))
    assert [f["image"].shape for f in feeds] == [(1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224)]
    assert all(f["image"].dtype == np.float32 and not f["image"].any() for f in feeds)
    (one,) = engine_build_feeds(config(FIXED))
    assert one["x"].shape == (1, 3, 64, 64) and one["x"].dtype == np.float16
    assert (
        engine_build_feeds(config('max_batch_size: 4 input { name: "t" data_type: TYPE_FP32 dims: [ -1 ] }'))
        == []
    )


class FakeInstance:
    def __init__(self, providers: list[str]) -> None:
        self.active_providers = providers
        self.shapes: list[tuple[int, ...]] = []

    async def run(self, inputs: Any) -> Any:
        self.shapes.append(inputs["image"].shape)
        return {}


async def test_warm_up_builds_engines_on_tensorrt_instances_only() -> None:
    trt, cpu = FakeInstance([TENSORRT, CUDA, CPU]), FakeInstance([CPU])
    await build_engines(config(RESNET), [trt, cpu])
    assert [s[0] for s in trt.shapes] == [1, 8, 16] and cpu.shapes == []


def test_the_plan_on_this_machine(tmp_path: Path) -> None:
    """Without onnxruntime-gpu (this CI): TensorRT is dropped, no cache directory is made, and a
    config asking for CUDA graphs says once why they are not used."""
    cfg = config(FIXED + GRAPHS_TRT % FP16)
    cache = tmp_path / "tensorrt" / "m" / "1"
    plan = plan_instances(cfg, [CPU], engine_cache=cache)
    if TENSORRT in {name for name, _ in plan.providers}:  # a GPU build: the cache is made
        assert cache.is_dir() and plan.engine_cache == cache
        return
    assert plan.providers == [(CPU, {})] and not cache.exists() and plan.engine_cache is None
    assert any("optimization.cuda.graphs (CUDA graphs not used" in note for note in plan.unapplied)


def test_off_a_gpu_the_graphs_note_gives_every_reason_that_applies() -> None:
    # On a CPU box the note said only "no CUDA or TensorRT instance"; a batching model would not
    # replay graphs on a GPU either, and the one warning says so too.
    batched = config(RESNET + GRAPHS + " instance_group [ { kind: KIND_GPU } ]")
    (note,) = cuda_field_notes(batched, on_gpu=False)
    assert "no CUDA or TensorRT instance: it runs on the CPU" in note
    assert "it batches (max_batch_size 16)" in note
    (note,) = cuda_field_notes(config(FIXED + GRAPHS), on_gpu=False)  # only the machine stops it
    assert (
        note
        == "optimization.cuda.graphs (CUDA graphs not used: no CUDA or TensorRT instance: it runs on the CPU)"
    )
    several = config(
        'max_batch_size: 4 input { name: "a" data_type: TYPE_FP32 dims: [ -1 ] } '
        'input { name: "b" data_type: TYPE_STRING dims: [ 1 ] optional: true } '
        'output { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ' + GRAPHS
    )
    (note,) = cuda_field_notes(several, on_gpu=True)
    for why in (
        "it batches",
        "input 'a' has variable dims [-1]",
        "input 'b' is string",
        "input 'b' is optional",
    ):
        assert why in note, (why, note)
