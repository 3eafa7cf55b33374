"""Tiny ONNX models with Triton-style configs (reshape, optional inputs, densenet_onnx's layout,
queue policies, backend parameters), written into one test repository (onnx.helper only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.support.repositories import write_model

# densenet_onnx's output: 1000 classes; the tiny model's weights, so tests can compute the answer.
DENSENET_CLASSES = 1000
DENSENET_WEIGHTS = np.random.default_rng(7).standard_normal((3, DENSENET_CLASSES)).astype(np.float32)

DENSENET = """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "data_0" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] } ]
output [ {
  name: "fc6_1" data_type: TYPE_FP32 dims: [ 1000 ]
  reshape { shape: [ 1000, 1, 1 ] }
  label_filename: "densenet_labels.txt"
} ]
dynamic_batching { }
optimization { input_pinned_memory { enable: true } output_pinned_memory { enable: true } }
"""

RESHAPE = """
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } },
        { name: "s" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } },
         { name: "t" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } } ]
dynamic_batching { }
"""

# `b` is an initializer listed as a graph input: a request may leave it out (its value: 1, 1).
OPTIONAL = """
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] },
        { name: "b" data_type: TYPE_FP32 dims: [ 2 ] optional: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""

# A long queue-policy timeout; the request's own `timeout` may shorten it only where allowed.
QUEUE_POLICY = """
max_batch_size: 8
dynamic_batching {{
  default_queue_policy {{ default_timeout_microseconds: 60000000 allow_timeout_override: {allow} }}
  priority_levels: 2
  default_priority_level: 2
  priority_queue_policy {{ key: 1 value {{ max_queue_size: 4 allow_timeout_override: true
                                         default_timeout_microseconds: 60000000 }} }}
}}
"""

BACKEND_PARAMETERS = """
max_batch_size: 8
instance_group [ { name: "pair" count: 2 kind: KIND_CPU } ]
parameters { key: "enable_mem_arena" value { string_value: "1" } }
parameters { key: "enable_mem_pattern" value { string_value: "0" } }
parameters { key: "memory.enable_memory_arena_shrinkage" value { string_value: "cpu:0" } }
parameters { key: "session.use_device_allocator_for_initializers" value { string_value: "1" } }
parameters { key: "cudnn_conv_algo_search" value { string_value: "1" } }
parameters { key: "gpu_mem_limit" value { string_value: "4294967200" } }
parameters { key: "arena_extend_strategy" value { string_value: "1" } }
parameters { key: "share_session_between_instances" value { string_value: "true" } }
metric_tags { key: "team" value: "vision" }
"""

# Triton makes `count` instances per listed GPU; without a GPU they run on the CPU (one warning).
GPU_GROUPS = """
max_batch_size: 8
instance_group [ { name: "g" count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]
optimization { execution_accelerators { gpu_execution_accelerator [ {
  name: "tensorrt"
  parameters { key: "precision_mode" value: "FP16" }
  parameters { key: "max_workspace_size_bytes" value: "1073741824" }
  parameters { key: "trt_engine_cache_enable" value: "1" }
} ] } }
"""


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def densenet_like(path: Path) -> Path:
    """data_0 FP32 [N,3,224,224] -> fc6_1 FP32 [N,1000,1,1]: channel means times a [3,1000] matrix."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["scores"]),
        helper.make_node("Reshape", ["scores", "shape"], ["fc6_1"]),
    ]
    inits = [
        numpy_helper.from_array(DENSENET_WEIGHTS, "W"),
        numpy_helper.from_array(np.array([-1, DENSENET_CLASSES, 1, 1], np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "densenet_like",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, ["N", DENSENET_CLASSES, 1, 1])],
        inits,
    )
    return _save(graph, path)


def densenet_scores(data: np.ndarray) -> np.ndarray:
    """What densenet_like computes, as [N, 1000] (the wire shape)."""
    return data.mean(axis=(2, 3)).astype(np.float32) @ DENSENET_WEIGHTS


def reshape_model(path: Path) -> Path:
    """x [N,2,2] -> y = x; s [N] -> t = s * 2."""
    two = numpy_helper.from_array(np.float32(2.0), "two")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Mul", ["s", "two"], ["t"])],
        "reshape",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 2]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 2]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N"]),
        ],
        [two],
    )
    return _save(graph, path)


def initializer_input_model(path: Path) -> Path:
    """x [2] + b [2] -> y, where b is an initializer (1, 1) also listed as a graph input."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        "optional",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "b")],
    )
    return _save(graph, path)


def triton_repository(repo: Path, files: Path, mlp: Path) -> Path:
    """densenet_onnx, reshape, optional, queue_strict / queue_override, backend_params, gpu_groups."""
    model_dir = write_model(repo, "densenet_onnx", densenet_like(files / "densenet.onnx"), DENSENET)
    labels = [f"class_{i}" for i in range(DENSENET_CLASSES)]
    (model_dir / "densenet_labels.txt").write_text("\n".join(labels) + "\n")
    write_model(repo, "reshape", reshape_model(files / "reshape.onnx"), RESHAPE)
    write_model(repo, "optional", initializer_input_model(files / "optional.onnx"), OPTIONAL)
    write_model(repo, "queue_strict", mlp, QUEUE_POLICY.format(allow="false"))
    write_model(repo, "queue_override", mlp, QUEUE_POLICY.format(allow="true"))
    write_model(repo, "backend_params", mlp, BACKEND_PARAMETERS)
    write_model(repo, "gpu_groups", mlp, GPU_GROUPS)
    return repo
