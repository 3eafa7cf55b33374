"""Tiny ONNX models and configs for sequence batching tests (implicit state, control inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from clients import tensors
from protos import grpc_service_pb2 as pb


def _save(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    path: Path,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def accumulator_model(path: Path, width: int = 4) -> Path:
    """x f32[B,width] + implicit state acc f32[B,width] -> out (= acc + x) and acc_out (the same)."""
    f32 = TensorProto.FLOAT
    return _save(
        [helper.make_node("Add", ["x", "acc"], ["out"]), helper.make_node("Identity", ["out"], ["acc_out"])],
        [
            helper.make_tensor_value_info("x", f32, ["B", width]),
            helper.make_tensor_value_info("acc", f32, ["B", width]),
        ],
        [
            helper.make_tensor_value_info("out", f32, ["B", width]),
            helper.make_tensor_value_info("acc_out", f32, ["B", width]),
        ],
        path,
    )


def accumulator_axis1_model(path: Path) -> Path:
    """Its state batched on axis 1, as Silero VAD's: s f32[2,B,3]; out = x + s[0] + s[1],
    s_out = [out, x] (so both halves of the state matter)."""
    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("ReduceSum", ["s", "axis0"], ["s_sum"], keepdims=0),
        helper.make_node("Add", ["x", "s_sum"], ["out"]),
        helper.make_node("Unsqueeze", ["out", "axis0"], ["out_u"]),
        helper.make_node("Unsqueeze", ["x", "axis0"], ["x_u"]),
        helper.make_node("Concat", ["out_u", "x_u"], ["s_out"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "axis1",
        [
            helper.make_tensor_value_info("x", f32, ["B", 3]),
            helper.make_tensor_value_info("s", f32, [2, "B", 3]),
        ],
        [
            helper.make_tensor_value_info("out", f32, ["B", 3]),
            helper.make_tensor_value_info("s_out", f32, [2, "B", 3]),
        ],
        [helper.make_tensor("axis0", TensorProto.INT64, [1], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def controls_model(path: Path) -> Path:
    """Echoes the control inputs the server fills: START int32, END fp32, READY bool, CORRID uint64."""
    specs = [
        ("start", TensorProto.INT32),
        ("end", TensorProto.FLOAT),
        ("ready", TensorProto.BOOL),
        ("corrid", TensorProto.UINT64),
    ]
    nodes = [helper.make_node("Identity", ["x"], ["x_out"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1])]
    outputs = [helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["B", 1])]
    for name, elem in specs:
        inputs.append(helper.make_tensor_value_info(name, elem, ["B", 1]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", elem, ["B", 1]))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    return _save(nodes, inputs, outputs, path)


def accumulator_config(idle_us: int = 60_000_000, width: int = 4, initial_file: str = "") -> str:
    initial = (
        f'initial_state {{ data_type: TYPE_FP32 dims: [ {width} ] data_file: "{initial_file}" name: "init" }}'
        if initial_file
        else f'initial_state {{ data_type: TYPE_FP32 dims: [ {width} ] zero_data: true name: "zeros" }}'
    )
    return f"""
max_batch_size: 8
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  oldest {{ max_candidate_sequences: 8 }}
  state [ {{ input_name: "acc" output_name: "acc_out" data_type: TYPE_FP32 dims: [ {width} ] {initial} }} ]
}}
"""


AXIS1_CONFIG = """
max_batch_size: 8
sequence_batching {
  state [ { input_name: "s" output_name: "s_out" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
}
parameters { key: "sequence_state_batch_axis" value: { string_value: "s:1" } }
"""

CONTROLS_CONFIG = """
max_batch_size: 8
sequence_batching {
  control_input [
    { name: "start" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "end" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0.5, 2.5 ] } ] },
    { name: "ready" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "corrid" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
}
"""


def double_model(path: Path, width: int = 4) -> Path:
    """x f32[B,width] -> out = 2 x (an ensemble's first step before the accumulator)."""
    f32 = TensorProto.FLOAT
    two = helper.make_tensor("two", f32, [1], [2.0])
    nodes = [helper.make_node("Constant", [], ["c"], value=two), helper.make_node("Mul", ["x", "c"], ["out"])]
    return _save(
        nodes,
        [helper.make_tensor_value_info("x", f32, ["B", width])],
        [helper.make_tensor_value_info("out", f32, ["B", width])],
        path,
    )


DOUBLE_THEN_ACC = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "out" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "double" model_version: -1
    input_map { key: "x" value: "x" } output_map { key: "out" value: "t" } },
  { model_name: "accumulate" model_version: -1
    input_map { key: "x" value: "t" } output_map { key: "out" value: "out" } }
] }
"""


def dividing_accumulator_model(path: Path) -> Path:
    """x, y int32[B,3] + implicit state acc int32[B,3] -> out = acc + x / y (node 'Div_seq', an
    integer Div by the request's own y: a zero there is refused by the server's division guard)
    and acc_out (the same)."""
    i32 = TensorProto.INT32
    return _save(
        [
            helper.make_node("Div", ["x", "y"], ["q"], name="Div_seq"),
            helper.make_node("Add", ["acc", "q"], ["out"]),
            helper.make_node("Identity", ["out"], ["acc_out"]),
        ],
        [helper.make_tensor_value_info(name, i32, ["B", 3]) for name in ("x", "y", "acc")],
        [helper.make_tensor_value_info(name, i32, ["B", 3]) for name in ("out", "acc_out")],
        path,
    )


def dividing_accumulator_config(strategy: str, batch: int, delay_us: int) -> str:
    """Batches of `batch` rows, each formed at once when full, else after `delay_us`, with the
    `strategy` ("oldest" or "direct") of Triton's sequence batcher."""
    preferred = f"preferred_batch_size: [ {batch} ]" if strategy == "oldest" else ""
    return f"""
max_batch_size: {batch}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
sequence_batching {{
  max_sequence_idle_microseconds: 60000000
  {strategy} {{ max_queue_delay_microseconds: {delay_us} {preferred} }}
  state [ {{ input_name: "acc" output_name: "acc_out" data_type: TYPE_INT32 dims: [ 3 ]
            initial_state {{ data_type: TYPE_INT32 dims: [ 3 ] zero_data: true name: "zeros" }} }} ]
}}
"""


def dividing_step(seq: int, step: int, zero_at: tuple[int, int]) -> dict[str, np.ndarray]:
    """Inputs of one step of `dividing_accumulator_model`, values of their own for each sequence and
    step (positive: Div truncates as // does); the divisor holds a zero at `zero_at` (seq, step)."""
    x = np.asarray([[60 * (seq + 1) + step, 9 * step + seq, 100 + seq]], np.int32)
    y = np.asarray([[2, 3, 0 if (seq, step) == zero_at else 7]], np.int32)
    return {"x": x, "y": y}


def dividing_request(
    model: str, sequence_id: int, seq: int, step: int, steps: int, zero_at: tuple[int, int]
) -> pb.ModelInferRequest:
    """Step `step` of `steps` of sequence `sequence_id` (index `seq`), its id "seq-step"."""
    request = tensors.build_request(model, dividing_step(seq, step, zero_at), request_id=f"{seq}-{step}")
    request.parameters["sequence_id"].int64_param = sequence_id
    request.parameters["sequence_start"].bool_param = step == 0
    request.parameters["sequence_end"].bool_param = step == steps - 1
    return request


def string_corrid_model(path: Path) -> Path:
    """x f32[B,1] + implicit state acc f32[B,1] -> out (= acc + x), acc_out (the same), and
    corrid_out: the STRING CORRID control input the server fills, echoed."""
    f32 = TensorProto.FLOAT
    return _save(
        [
            helper.make_node("Add", ["x", "acc"], ["out"]),
            helper.make_node("Identity", ["out"], ["acc_out"]),
            helper.make_node("Identity", ["corrid"], ["corrid_out"]),
        ],
        [
            helper.make_tensor_value_info("x", f32, ["B", 1]),
            helper.make_tensor_value_info("acc", f32, ["B", 1]),
            helper.make_tensor_value_info("corrid", TensorProto.STRING, ["B", 1]),
        ],
        [
            helper.make_tensor_value_info("out", f32, ["B", 1]),
            helper.make_tensor_value_info("acc_out", f32, ["B", 1]),
            helper.make_tensor_value_info("corrid_out", TensorProto.STRING, ["B", 1]),
        ],
        path,
    )


STRING_CORRID_CONFIG = """
max_batch_size: 8
sequence_batching {
  control_input [ { name: "corrid" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] } ]
  state [ { input_name: "acc" output_name: "acc_out" data_type: TYPE_FP32 dims: [ 1 ]
            initial_state { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true name: "zeros" } } ]
}
"""
