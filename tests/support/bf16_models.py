"""A tiny BF16 model and its repository, for the BF16 tests (ours and tritonclient's)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tests.support.repositories import write_model

# 4 rows in the queue run as one batch at once; fewer wait (60 s, far past any test's bound), so
# requests sent together are batched together for certain.
BATCH_OF_FOUR = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""


def bf16_model(path: Path) -> Path:
    """x BF16 [N,4] -> y = x (BF16), doubled = 2x (BF16, computed in FP32: onnxruntime's CPU Add
    has no bfloat16 kernel), wide = x as FP32. One BF16 output keeps its input's bits exactly."""
    nodes = [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["wide", "wide"], ["sum"]),
        helper.make_node("Cast", ["sum"], ["doubled"], to=TensorProto.BFLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 4]),
            helper.make_tensor_value_info("doubled", TensorProto.BFLOAT16, ["N", 4]),
            helper.make_tensor_value_info("wide", TensorProto.FLOAT, ["N", 4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def bf16_with_string_model(path: Path) -> Path:
    """A BF16 input beside a string input: refused at load (see server/backends/bf16.py)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["s"], ["t"])],
        "bf16_str",
        [
            helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 4]),
            helper.make_tensor_value_info("s", TensorProto.STRING, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 4]),
            helper.make_tensor_value_info("t", TensorProto.STRING, ["N", 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def bf16_repository(repo: Path, files: Path) -> Path:
    """bf16 (no config: completed from the graph), bf16_batched (BATCH_OF_FOUR), bf16_str (refused)."""
    model = bf16_model(files / "bf16.onnx")
    write_model(repo, "bf16", model, None)
    write_model(repo, "bf16_batched", model, BATCH_OF_FOUR)
    write_model(repo, "bf16_str", bf16_with_string_model(files / "bf16_str.onnx"), None)
    return repo
