"""The GPU check's copy of the demo repository: each config asking for one provider on GPU 0 (a
KIND_GPU group, or KIND_CPU for the CPU series), max_batch_size the largest raw batch, warm-up
batches, and for TensorRT the accelerator with an engine cache and one optimisation profile."""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import text_format

from loadtest.gpu_plan import Plan, Provider
from protos import model_config_pb2 as mc

MODELS = ("resnet", "resnet_u8", "mlp")


def load_config(path: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse(path.read_text(encoding="utf-8"), config)
    return config


def profile_shapes(config: mc.ModelConfig, rows: int) -> str:
    """TensorRT's shape list for `rows` rows of every input, e.g. 'image:64x3x224x224'."""
    return ",".join(f"{i.name}:" + "x".join(str(d) for d in (rows, *i.dims)) for i in config.input)


def tensorrt_parameters(config: mc.ModelConfig, max_rows: int, cache: Path) -> dict[str, str]:
    """One profile from 1 to `max_rows` rows (no engine rebuild as batches vary) and an engine cache
    that the raw runs fill and the server then loads."""
    return {
        "precision_mode": "FP16",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": profile_shapes(config, 1),
        "trt_profile_opt_shapes": profile_shapes(config, max_rows),
        "trt_profile_max_shapes": profile_shapes(config, max_rows),
    }


def write_copy(demo: Path, target: Path, provider: Provider, plan: Plan, trt_cache: Path) -> None:
    """The demo repository with each config asking for `provider` on GPU 0."""
    for model in MODELS:
        (target / model / "1").mkdir(parents=True)
        os.symlink((demo / model / "1" / "model.onnx").resolve(), target / model / "1" / "model.onnx")
        config = load_config(demo / model / "config.pbtxt")
        config.max_batch_size = plan.max_rows  # the server's largest batch is raw's largest
        del config.instance_group[:]
        if provider.key == "cpu":
            config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=plan.instances)
        else:
            config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=plan.instances, gpus=[0])
        if provider.key == "tensorrt":
            accel = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accel.parameters.update(tensorrt_parameters(config, plan.max_rows, trt_cache))
        add_warmup(config, plan.max_rows)
        header = f"# gpu_check: the demo's {model} for {provider.label}\n"
        (target / model / "config.pbtxt").write_text(header + text_format.MessageToString(config))


def add_warmup(config: mc.ModelConfig, max_rows: int) -> None:
    """Random batches of 1 and `max_rows` rows, twice each, before the server is ready: the first
    runs of a session (cuDNN's algorithm search, onnxruntime's arena, a cold cache) are slower and
    must not land in the first measured point (a dry run's 1-in-flight resnet once served 0 rows in
    its window beside CI's other worker)."""
    for rows in sorted({1, max_rows}):
        sample = config.model_warmup.add(name=f"gpu_check {rows} rows", batch_size=rows, count=2)
        for tensor in config.input:
            spec = sample.inputs[tensor.name]
            spec.data_type = tensor.data_type
            spec.dims.extend(tensor.dims)
            spec.random_data = True
