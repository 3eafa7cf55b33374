"""A tiny ragged model (Triton's allow_ragged_batch with batch inputs) and its configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# x: each request's FP32 elements, concatenated (1-D). END: BATCH_ACCUMULATED_ELEMENT_COUNT,
# COUNT: BATCH_ELEMENT_COUNT, OFFSETS: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO.
# Outputs per request (one row each): sum = its elements' sum, n = its element count (from OFFSETS).
RAGGED_INPUTS = """
  input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
  batch_input [
    { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "END" data_type: TYPE_INT64 source_input: "x" },
    { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT64 source_input: "x" },
    { kind: BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO target_name: "OFFSETS" data_type: TYPE_INT64
      source_input: "x" }
  ]
"""
# Three requests reach the preferred size and run as one batch at once; fewer wait (60 s, far past
# any test's bound): requests sent together are batched together for certain.
RAGGED_BATCH_OF_THREE = (
    """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 3 ] max_queue_delay_microseconds: 60000000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""
    + RAGGED_INPUTS
)
RAGGED_AT_ONCE = "max_batch_size: 8\n" + RAGGED_INPUTS


def ragged_sum_model(path: Path) -> Path:
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    one = numpy_helper.from_array(np.ones(1, np.int64), "one")
    big = numpy_helper.from_array(np.asarray([2**62], np.int64), "big")
    minus_one = numpy_helper.from_array(np.asarray([-1], np.int64), "minus_one")
    start = numpy_helper.from_array(np.zeros(1, np.int64), "start")
    axis0 = numpy_helper.from_array(np.zeros(1, np.int64), "axis0")
    axis1 = numpy_helper.from_array(np.ones(1, np.int64), "axis1")
    nodes = [
        helper.make_node("CumSum", ["x", "axis0"], ["running"]),
        helper.make_node("Concat", ["zero", "running"], ["prefix"], axis=0),  # prefix[i]: sum of x[:i]
        helper.make_node("Sub", ["END", "COUNT"], ["BEGIN"]),
        helper.make_node("Gather", ["prefix", "END"], ["upto_end"], axis=0),
        helper.make_node("Gather", ["prefix", "BEGIN"], ["upto_begin"], axis=0),
        helper.make_node("Sub", ["upto_end", "upto_begin"], ["sums"]),
        helper.make_node("Unsqueeze", ["sums", "axis1"], ["sum"]),
        helper.make_node("Slice", ["OFFSETS", "one", "big"], ["ends"]),
        helper.make_node("Slice", ["OFFSETS", "start", "minus_one"], ["begins"]),
        helper.make_node("Sub", ["ends", "begins"], ["counts"]),
        helper.make_node("Unsqueeze", ["counts", "axis1"], ["n"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ragged_sum",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T"]),
            helper.make_tensor_value_info("END", TensorProto.INT64, ["R"]),
            helper.make_tensor_value_info("COUNT", TensorProto.INT64, ["R"]),
            helper.make_tensor_value_info("OFFSETS", TensorProto.INT64, ["R1"]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["R", 1]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["R", 1]),
        ],
        initializer=[zero, one, big, minus_one, start, axis0, axis1],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# A ragged model whose outputs follow the rows (a plain input `y` [rows, 1]), not the requests:
# z = y + 0 * (sum(x) + sum(COUNT)), so a request of several rows gets its own rows back.
RAGGED_BY_ROWS_INPUTS = """
  input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true },
          { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
  batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT64 source_input: "x" } ]
"""


def ragged_rows_model(path: Path) -> Path:
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["x_sum"]),
        helper.make_node("Cast", ["COUNT"], ["count_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["count_f"], ["count_sum"]),
        helper.make_node("Add", ["x_sum", "count_sum"], ["both"]),
        helper.make_node("Mul", ["both", "zero"], ["nothing"]),
        helper.make_node("Add", ["y", "nothing"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ragged_rows",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T"]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["R", 1]),
            helper.make_tensor_value_info("COUNT", TensorProto.INT64, ["Q"]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["R", 1])],
        initializer=[zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
