"""Models dividing integers, for the tests of the integer division guard
(server/backends/int_division_guard.py): its unit tests and a real server's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from tests.support.repositories import write_model

DIV_CONFIG = """
max_batch_size: 0
input [ { name: "x" data_type: TYPE_INT32 dims: [ 3 ] }, { name: "y" data_type: TYPE_INT32 dims: [ 3 ] } ]
output [ { name: "q" data_type: TYPE_INT32 dims: [ 3 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8  # onnxruntime 1.31 loads IR 13 at most; onnx 1.23 writes 14 (README)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _value(name: str, elem: int, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def mixed_divisions(path: Path, *, bf16: bool = False) -> Path:
    """q = x / y (int32, node 'Div_3'); r = a % b (int64, 'Mod_int64'); h = x / [2, -3, 5] (a
    constant with no zero: left alone); f = u / v (float: left alone). `bf16`: also w = s, a BF16
    pass-through (so that the backend runs it through OrtValues)."""
    nonzero = numpy_helper.from_array(np.asarray([2, -3, 5], np.int32), "nonzero")
    nodes = [
        helper.make_node("Div", ["x", "y"], ["q"], name="Div_3"),
        helper.make_node("Mod", ["a", "b"], ["r"], name="Mod_int64"),
        helper.make_node("Div", ["x", "nonzero"], ["h"], name="Div_const"),
        helper.make_node("Div", ["u", "v"], ["f"], name="Div_float"),
    ]
    inputs = [
        _value("x", TensorProto.INT32, ["N", 3]),
        _value("y", TensorProto.INT32, ["N", 3]),
        _value("a", TensorProto.INT64, ["N", 3]),
        _value("b", TensorProto.INT64, ["N", 3]),
        _value("u", TensorProto.FLOAT, ["N", 3]),
        _value("v", TensorProto.FLOAT, ["N", 3]),
    ]
    outputs = [
        _value("q", TensorProto.INT32, ["N", 3]),
        _value("r", TensorProto.INT64, ["N", 3]),
        _value("h", TensorProto.INT32, ["N", 3]),
        _value("f", TensorProto.FLOAT, ["N", 3]),
    ]
    if bf16:
        nodes.append(helper.make_node("Identity", ["s"], ["w"]))
        inputs.append(_value("s", TensorProto.BFLOAT16, ["N", 2]))
        outputs.append(_value("w", TensorProto.BFLOAT16, ["N", 2]))
    graph = helper.make_graph(nodes, "divisions", inputs, outputs, initializer=[nonzero])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def narrow_mods(path: Path, opset: int = 13) -> Path:
    """r8 = a8 % b8 (int8), r16 = a16 % b16 (uint16), and k = a8 % [3] as a Constant node (no zero:
    left alone): types Where has no kernel for in onnxruntime 1.23."""
    three = numpy_helper.from_array(np.asarray([3], np.int8), "three")
    graph = helper.make_graph(
        [
            helper.make_node("Mod", ["a8", "b8"], ["r8"], name="Mod_int8"),
            helper.make_node("Mod", ["a16", "b16"], ["r16"], name="Mod_uint16"),
            helper.make_node("Constant", [], ["three"], value=three),
            helper.make_node("Mod", ["a8", "three"], ["k"], name="Mod_const"),
        ],
        "narrow",
        [
            _value("a8", TensorProto.INT8, ["N"]),
            _value("b8", TensorProto.INT8, ["N"]),
            _value("a16", TensorProto.UINT16, ["N"]),
            _value("b16", TensorProto.UINT16, ["N"]),
        ],
        [
            _value("r8", TensorProto.INT8, ["N"]),
            _value("r16", TensorProto.UINT16, ["N"]),
            _value("k", TensorProto.INT8, ["N"]),
        ],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)


def constant_zero_divisor(path: Path) -> Path:
    """z = x / [2, 0, 5], the divisor an initializer holding a zero (int64): always guarded."""
    with_zero = numpy_helper.from_array(np.asarray([2, 0, 5], np.int64), "with_zero")
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "with_zero"], ["z"], name="Div_const_zero")],
        "const_zero",
        [_value("x", TensorProto.INT64, ["N", 3])],
        [_value("z", TensorProto.INT64, ["N", 3])],
        initializer=[with_zero],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def int_div(path: Path, opset: int = 13) -> Path:
    """q = x / y on int32 [3] tensors, nothing else (node 'Div_xy')."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "y"], ["q"], name="Div_xy")],
        "int_div",
        [_value("x", TensorProto.INT32, [3]), _value("y", TensorProto.INT32, [3])],
        [_value("q", TensorProto.INT32, [3])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)


def int_div_repository(repo: Path, files: Path) -> Path:
    """A repository with `div` (int_div, no batching, two instances)."""
    write_model(repo, "div", int_div(files / "div.onnx"), DIV_CONFIG)
    return repo


def int_mod64(path: Path) -> Path:
    """r = a % b on int64 [3] tensors (node 'Mod_ab', fmod 0: the divisor's sign)."""
    graph = helper.make_graph(
        [helper.make_node("Mod", ["a", "b"], ["r"], name="Mod_ab")],
        "int_mod64",
        [_value("a", TensorProto.INT64, [3]), _value("b", TensorProto.INT64, [3])],
        [_value("r", TensorProto.INT64, [3])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def subgraph_divisions(path: Path) -> Path:
    """Integer Div inside subgraphs, on int32 [3] x and y: q = If(sum(x) > 0, then: x / y (node
    'Div_then'), else: x - y), and l = Loop twice over acc = x: acc / y (node 'Div_loop')."""
    x, y = _value("x", TensorProto.INT32, [3]), _value("y", TensorProto.INT32, [3])
    then_branch = helper.make_graph(
        [helper.make_node("Div", ["x", "y"], ["then_q"], name="Div_then")],
        "then",
        [],
        [_value("then_q", TensorProto.INT32, [3])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["x", "y"], ["else_q"], name="Sub_else")],
        "else",
        [],
        [_value("else_q", TensorProto.INT32, [3])],
    )
    body = helper.make_graph(
        [
            helper.make_node("Div", ["acc_in", "y"], ["acc_out"], name="Div_loop"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            _value("i", TensorProto.INT64, []),
            _value("cond_in", TensorProto.BOOL, []),
            _value("acc_in", TensorProto.INT32, [3]),
        ],
        [_value("cond_out", TensorProto.BOOL, []), _value("acc_out", TensorProto.INT32, [3])],
    )
    two = numpy_helper.from_array(np.asarray(2, np.int64), "two")
    yes = numpy_helper.from_array(np.asarray(True), "yes")
    zero = numpy_helper.from_array(np.asarray(0, np.int32), "zero")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
            helper.make_node("Greater", ["sum", "zero"], ["positive"]),
            helper.make_node(
                "If", ["positive"], ["q"], name="If_q", then_branch=then_branch, else_branch=else_branch
            ),
            helper.make_node("Loop", ["two", "yes", "x"], ["l"], name="Loop_l", body=body),
        ],
        "subgraphs",
        [x, y],
        [_value("q", TensorProto.INT32, [3]), _value("l", TensorProto.INT32, [3])],
        initializer=[two, yes, zero],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


SUBGRAPH_CONFIG = """
max_batch_size: 0
input [ { name: "x" data_type: TYPE_INT32 dims: [ 3 ] }, { name: "y" data_type: TYPE_INT32 dims: [ 3 ] } ]
output [ { name: "q" data_type: TYPE_INT32 dims: [ 3 ] }, { name: "l" data_type: TYPE_INT32 dims: [ 3 ] } ]
"""


def batched_div(path: Path) -> Path:
    """q = x / y on int32 [N, 3] tensors, for dynamic batching (node 'Div_batched')."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "y"], ["q"], name="Div_batched")],
        "batched_div",
        [_value("x", TensorProto.INT32, ["N", 3]), _value("y", TensorProto.INT32, ["N", 3])],
        [_value("q", TensorProto.INT32, ["N", 3])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


BATCHED_CONFIG = """
max_batch_size: 64
input [ { name: "x" data_type: TYPE_INT32 dims: [ 3 ] }, { name: "y" data_type: TYPE_INT32 dims: [ 3 ] } ]
output [ { name: "q" data_type: TYPE_INT32 dims: [ 3 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""


def external_data_div(path: Path) -> Path:
    """q = (x * w) / y on int32 [3] tensors (node 'Div_ext'), w = [2, 3, 3] saved in an external
    data file `w.bin` beside the model."""
    weight = numpy_helper.from_array(np.asarray([2, 3, 3], np.int32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "w"], ["xw"]),
            helper.make_node("Div", ["xw", "y"], ["q"], name="Div_ext"),
        ],
        "external_div",
        [_value("x", TensorProto.INT32, [3]), _value("y", TensorProto.INT32, [3])],
        [_value("q", TensorProto.INT32, [3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def ai_onnx_div(path: Path, imports: str = "") -> Path:
    """q = x / y on int32 [3] tensors, the Div's domain spelt "ai.onnx" while the model imports
    only `imports` (node 'Div_ai'): onnxruntime runs it; with "", onnx's type inference refuses it."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "y"], ["q"], name="Div_ai", domain="ai.onnx")],
        "ai_onnx_div",
        [_value("x", TensorProto.INT32, [3]), _value("y", TensorProto.INT32, [3])],
        [_value("q", TensorProto.INT32, [3])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid(imports, 13)]), path)


def external_constant_div(path: Path) -> Path:
    """q = x / c on int32 [3] tensors (node 'Div_ext_const'), c = [2, -1, 4] a Constant node whose
    tensor is in the external data file `c.bin` beside the model (-1: MIN / -1 traps)."""
    tensor = numpy_helper.from_array(np.asarray([2, -1, 4], np.int32), "c")
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "c.bin").write_bytes(tensor.raw_data)
    external_data_helper.set_external_data(tensor, "c.bin", 0, len(tensor.raw_data))
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")  # onnx.save leaves a Constant's tensor inline: moved by hand
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=tensor),
            helper.make_node("Div", ["x", "c"], ["q"], name="Div_ext_const"),
        ],
        "external_constant_div",
        [_value("x", TensorProto.INT32, [3])],
        [_value("q", TensorProto.INT32, [3])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def sequence_map_div(path: Path) -> Path:
    """q = each row of x (int32 [N, 3]) / y (int32 [3]) through SequenceMap (opset 17; its body's
    node 'Div_row'): x split into a sequence of rows, mapped, the rows stacked again."""
    body = helper.make_graph(
        [helper.make_node("Div", ["row", "divisor"], ["row_q"], name="Div_row")],
        "row_body",
        [_value("row", TensorProto.INT32, [3]), _value("divisor", TensorProto.INT32, [3])],
        [_value("row_q", TensorProto.INT32, [3])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("SplitToSequence", ["x"], ["rows"], axis=0, keepdims=0),
            helper.make_node("SequenceMap", ["rows", "y"], ["rows_q"], name="Map_rows", body=body),
            helper.make_node("ConcatFromSequence", ["rows_q"], ["q"], axis=0, new_axis=1),
        ],
        "sequence_map_div",
        [_value("x", TensorProto.INT32, ["N", 3]), _value("y", TensorProto.INT32, [3])],
        [_value("q", TensorProto.INT32, ["N", 3])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def opset_div(path: Path, opset: int, elem: int) -> Path:
    """q = x / y on [N] tensors of type `elem` at `opset` (node 'Div_old'): below 9 there is no
    Where, and Div takes only 32/64-bit types (Mod is opset 10)."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "y"], ["q"], name="Div_old")],
        "opset_div",
        [_value("x", elem, ["N"]), _value("y", elem, ["N"])],
        [_value("q", elem, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3  # opset 7 and 8's IR
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def function_if_div(path: Path) -> Path:
    """q = Halve(x, y) on int64 [3] tensors, a model-local function whose If (always true) divides
    in its then branch (node 'Div_fn'): a Div in a function's subgraph had gone unguarded (s58)."""
    then = helper.make_graph(
        [helper.make_node("Div", ["a", "b"], ["t"], name="Div_fn")],
        "then",
        [],
        [_value("t", TensorProto.INT64, [3])],
    )
    other = helper.make_graph(
        [helper.make_node("Sub", ["a", "b"], ["e"])], "else", [], [_value("e", TensorProto.INT64, [3])]
    )
    truth = numpy_helper.from_array(np.asarray(True), "truth")
    function = helper.make_function(
        "local",
        "Halve",
        ["a", "b"],
        ["o"],
        [
            helper.make_node("Constant", [], ["c"], value=truth),
            helper.make_node("If", ["c"], ["o"], name="If_fn", then_branch=then, else_branch=other),
        ],
        [helper.make_opsetid("", 13)],
    )
    graph = helper.make_graph(
        [helper.make_node("Halve", ["x", "y"], ["q"], domain="local")],
        "function_if_div",
        [_value("x", TensorProto.INT64, [3]), _value("y", TensorProto.INT64, [3])],
        [_value("q", TensorProto.INT64, [3])],
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("local", 1)]
    return save(helper.make_model(graph, opset_imports=opsets, functions=[function]), path)
