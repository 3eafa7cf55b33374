"""Identity models that sleep a fixed time each run, one-step ensembles over them, and their
one-row request, for deadline tests over a real server.

A sleep, not compute: CPU contention from other tests barely moves a run's time. The identity
backend needs no model file, so a model is its config alone (x -> y, FP32 [N, 1], one instance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from protos import grpc_service_pb2 as pb


def slow_identity(name: str, delay_ms: int, extra: str = "", max_batch_size: int = 4) -> str:
    """The config of identity model `name` sleeping `delay_ms` each run; `extra`: more config lines."""
    return f"""
name: "{name}"
backend: "identity"
max_batch_size: {max_batch_size}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_ms" value: {{ string_value: "{delay_ms}" }} }}
{extra}"""


def one_step_ensemble(name: str, step: str) -> str:
    """The config of ensemble `name`, one step: model `step` (its newest version), x -> y."""
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 4
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "{step}" model_version: -1
    input_map {{ key: "x" value: "x" }} output_map {{ key: "y" value: "y" }} }}
] }}
"""


def chain_ensemble(name: str, steps: Sequence[str], max_batch_size: int = 4) -> str:
    """The config of ensemble `name` running `steps` (model names, a model may repeat) one after
    another, each step's y the next one's x: x -> ... -> y."""
    tensors = ["x", *(f"t{i}" for i in range(1, len(steps))), "y"]
    listed = ",\n".join(
        f'  {{ model_name: "{model}" model_version: -1 input_map {{ key: "x" value: "{tensors[i]}" }}'
        f' output_map {{ key: "y" value: "{tensors[i + 1]}" }} }}'
        for i, model in enumerate(steps)
    )
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: {max_batch_size}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
ensemble_scheduling {{ step [
{listed}
] }}
"""


def write_repository(repo: Path, configs: Mapping[str, str]) -> Path:
    """`repo` with each model's config (name -> config.pbtxt text) and an empty version 1."""
    for name, config in configs.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
    return repo


def one_row(model: str, timeout_us: int | None = None) -> pb.ModelInferRequest:
    """A request of one row, x = 1, for `model`; `timeout_us`: its `timeout` parameter."""
    r = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
        raw_input_contents=[np.ones((1, 1), np.float32).tobytes()],
    )
    if timeout_us is not None:
        r.parameters["timeout"].int64_param = timeout_us
    return r
