"""A zoo of small ONNX models as a Triton user brings them: outputs whose first dim is not the
batch, variable sequence lengths, every element type, optional inputs, no inputs, odd names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Dim = int | str


def _vi(name: str, elem: int, shape: list[Dim] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializer: list[onnx.TensorProto] | None = None,
    opset: int = 17,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=initializer or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def column_sums(path: Path, width: Dim = "M", declared: list[Dim | None] | None = None) -> Path:
    """y = ReduceSum(x, axis 0, keepdims 0): x [N, width] -> y [width]. Every tensor's first dim is
    variable, so it looks batchable; its output's first dim is the input's second, not the batch.
    `declared`: y's shape as the graph declares it (an exporter's `[None]`), when not [width]."""
    axes = numpy_helper.from_array(np.zeros(1, np.int64), "axes")
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)]
    y = _vi("y", TensorProto.FLOAT, declared if declared is not None else [width])
    return _save(path, nodes, [_vi("x", TensorProto.FLOAT, ["N", width])], [y], [axes])


def nonzero_rows(path: Path, first: str = "nnz") -> Path:
    """idx = Transpose(NonZero(x)): x [N, 4] -> idx [nnz, 2] INT64; nnz depends on the values.
    `first`: the name the graph gives idx's first dim ("N" declares it the batch, wrongly)."""
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Transpose", ["nz"], ["idx"], perm=[1, 0]),
    ]
    return _save(
        path, nodes, [_vi("x", TensorProto.FLOAT, ["N", 4])], [_vi("idx", TensorProto.INT64, [first, 2])]
    )


def nonzero(path: Path) -> Path:
    """idx = NonZero(x): x [N, 4] -> idx [2, nnz] INT64."""
    nodes = [helper.make_node("NonZero", ["x"], ["idx"])]
    return _save(
        path, nodes, [_vi("x", TensorProto.FLOAT, ["N", 4])], [_vi("idx", TensorProto.INT64, [2, "nnz"])]
    )


def shape_of(path: Path) -> Path:
    """s = Shape(x) and a scalar t = ReduceSum(x) over all: x [N, M] -> s [2] INT64, t []."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ReduceSum", ["x"], ["t"], keepdims=0),
    ]
    outputs = [_vi("s", TensorProto.INT64, [2]), _vi("t", TensorProto.FLOAT, [])]
    return _save(path, nodes, [_vi("x", TensorProto.FLOAT, ["N", "M"])], outputs)


def token_pool(path: Path) -> Path:
    """An NLP-like model: ids INT64 [N, S] and mask INT64 [N, S]; pooled FP32 [N, 4] is the masked
    mean of an embedding table's rows, top INT64 [N, S] each token's argmax over that table row."""
    table = np.arange(64 * 4, dtype=np.float32).reshape(64, 4) % 7 - 3.0
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(np.ones(1, np.int64), "axis1"),
        numpy_helper.from_array(np.asarray(1e-3, np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),  # [N, S, 4]
        helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),  # [N, S]
        helper.make_node("Unsqueeze", ["maskf", "axis1_2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),  # [N, 4]
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),  # [N, 1]
        helper.make_node("Add", ["count", "eps"], ["count_eps"]),
        helper.make_node("Div", ["total", "count_eps"], ["pooled"]),
        helper.make_node("ArgMax", ["emb"], ["top"], axis=2, keepdims=0),  # [N, S]
    ]
    inits.append(numpy_helper.from_array(np.asarray([2], np.int64), "axis1_2"))
    inputs = [_vi("ids", TensorProto.INT64, ["N", "S"]), _vi("mask", TensorProto.INT64, ["N", "S"])]
    outputs = [_vi("pooled", TensorProto.FLOAT, ["N", 4]), _vi("top", TensorProto.INT64, ["N", "S"])]
    return _save(path, nodes, inputs, outputs, inits)


def all_types(path: Path) -> Path:
    """One input per element type, each answered by a batch-wise op: h FP16 -> h2 = h * 2, u UINT8
    -> u1 = u + 1, i INT8 -> ineg = -i, b BOOL -> bnot = !b, s STRING -> s2 = s, and from h:
    arg INT64 [N] = ArgMax, top INT64 [N, 2] = TopK's indices."""
    inits = [
        numpy_helper.from_array(np.asarray(2, np.float16), "two"),
        numpy_helper.from_array(np.asarray(1, np.uint8), "one_u8"),
        numpy_helper.from_array(np.asarray([2], np.int64), "k"),
    ]
    nodes = [
        helper.make_node("Mul", ["h", "two"], ["h2"]),
        helper.make_node("Add", ["u", "one_u8"], ["u1"]),
        helper.make_node("Neg", ["i"], ["ineg"]),
        helper.make_node("Not", ["b"], ["bnot"]),
        helper.make_node("Identity", ["s"], ["s2"]),
        helper.make_node("ArgMax", ["h"], ["arg"], axis=1, keepdims=0),
        helper.make_node("TopK", ["h", "k"], ["topv", "top"], axis=1),
    ]
    inputs = [
        _vi("h", TensorProto.FLOAT16, ["N", 3]),
        _vi("u", TensorProto.UINT8, ["N", 3]),
        _vi("i", TensorProto.INT8, ["N", 3]),
        _vi("b", TensorProto.BOOL, ["N", 3]),
        _vi("s", TensorProto.STRING, ["N", 2]),
    ]
    outputs = [
        _vi("h2", TensorProto.FLOAT16, ["N", 3]),
        _vi("u1", TensorProto.UINT8, ["N", 3]),
        _vi("ineg", TensorProto.INT8, ["N", 3]),
        _vi("bnot", TensorProto.BOOL, ["N", 3]),
        _vi("s2", TensorProto.STRING, ["N", 2]),
        _vi("arg", TensorProto.INT64, ["N"]),
        _vi("top", TensorProto.INT64, ["N", 2]),
    ]
    return _save(path, nodes, inputs, outputs, inits)


def overridable_bias(path: Path) -> Path:
    """y = x + bias, with `bias` [3] an initializer also listed as a graph input (overridable)."""
    bias = numpy_helper.from_array(np.asarray([1.0, 2.0, 3.0], np.float32), "bias")
    nodes = [helper.make_node("Add", ["x", "bias"], ["y"])]
    inputs = [_vi("x", TensorProto.FLOAT, ["N", 3]), _vi("bias", TensorProto.FLOAT, [3])]
    return _save(path, nodes, inputs, [_vi("y", TensorProto.FLOAT, ["N", 3])], [bias])


def constant_only(path: Path) -> Path:
    """No inputs: c = a Constant [2, 3] FP32."""
    value = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "value")
    nodes = [helper.make_node("Constant", [], ["c"], value=value)]
    return _save(path, nodes, [], [_vi("c", TensorProto.FLOAT, [2, 3])])


def mixed_outputs(path: Path) -> Path:
    """Two outputs of different batch-ness: row = x * 2 [N, 3], col = ReduceSum(x, 0) [3]."""
    inits = [
        numpy_helper.from_array(np.asarray(2, np.float32), "two"),
        numpy_helper.from_array(np.zeros(1, np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["row"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["col"], keepdims=0),
    ]
    outputs = [_vi("row", TensorProto.FLOAT, ["N", 3]), _vi("col", TensorProto.FLOAT, [3])]
    return _save(path, nodes, [_vi("x", TensorProto.FLOAT, ["N", 3])], outputs, inits)


def odd_names(path: Path) -> Path:
    """PyTorch-style names: input "input.1"; outputs "logits/Add:0" (x + 1) and "out put" = the
    input itself (the graph output IS the graph input, no node)."""
    one = numpy_helper.from_array(np.asarray(1, np.float32), "one")
    nodes = [
        helper.make_node("Add", ["input.1", "one"], ["logits/Add:0"]),
        helper.make_node("Identity", ["input.1"], ["out put"]),
    ]
    outputs = [_vi("logits/Add:0", TensorProto.FLOAT, ["N", 3]), _vi("out put", TensorProto.FLOAT, ["N", 3])]
    return _save(path, nodes, [_vi("input.1", TensorProto.FLOAT, ["N", 3])], outputs, [one])


def passthrough(path: Path) -> Path:
    """A graph whose output is its input (no node at all): x [N, 3] -> x."""
    return _save(path, [], [_vi("x", TensorProto.FLOAT, ["N", 3])], [_vi("x", TensorProto.FLOAT, ["N", 3])])


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "column_sums": column_sums,
    "nonzero_rows": nonzero_rows,
    "nonzero": nonzero,
    "shape_of": shape_of,
    "token_pool": token_pool,
    "all_types": all_types,
    "overridable_bias": overridable_bias,
    "constant_only": constant_only,
    "mixed_outputs": mixed_outputs,
    "odd_names": odd_names,
    "passthrough": passthrough,
}


def _largest(source: str) -> list[onnx.NodeProto]:
    """limit = the largest value of `source` (int64 [N, 1]) over the whole batch."""
    return [helper.make_node("ReduceMax", [source], ["limit"], keepdims=0)]


def loop_until(path: Path) -> Path:
    """y [k, 1] = 0, 1, ..., k - 1 with k = the largest n: a Loop of 100 turns at most (a constant)
    that its body's condition (turn + 1 < limit) stops, so the data's values say how many."""
    body = helper.make_graph(
        [
            helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.int64(1))),
            helper.make_node("Add", ["turn", "one"], ["next"]),
            helper.make_node("Less", ["next", "limit"], ["cond_out"]),
            helper.make_node("Constant", [], ["row"], value=numpy_helper.from_array(np.array([1], np.int64))),
            helper.make_node("Reshape", ["turn", "row"], ["step"]),
        ],
        "body",
        [_vi("turn", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, [])],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("step", TensorProto.INT64, [1])],
    )
    trips = numpy_helper.from_array(np.int64(100), "trips")
    go = numpy_helper.from_array(np.bool_(True), "go")
    nodes = [*_largest("n"), helper.make_node("Loop", ["trips", "go"], ["y"], name="until", body=body)]
    return _save(
        path,
        nodes,
        [_vi("n", TensorProto.INT64, ["N", 1])],
        [_vi("y", TensorProto.INT64, [None, 1])],
        [trips, go],
    )


def range_to_overridable(path: Path) -> Path:
    """y [k, 1] = 0 .. k - 1 with k = the largest n, where n is an overridable initializer ([[2]]
    unless a client sends it); x passes through as xo."""
    nodes = [
        *_largest("n"),
        helper.make_node("Range", ["zero", "limit", "one"], ["counted"], name="count"),
        helper.make_node("Unsqueeze", ["counted", "axis"], ["y"]),
        helper.make_node("Identity", ["x"], ["xo"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([[2]], np.int64), "n"),
        numpy_helper.from_array(np.int64(0), "zero"),
        numpy_helper.from_array(np.int64(1), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
    ]
    inputs = [_vi("x", TensorProto.FLOAT, ["N", 1]), _vi("n", TensorProto.INT64, ["N", 1])]
    outputs = [_vi("y", TensorProto.INT64, [None, 1]), _vi("xo", TensorProto.FLOAT, ["N", 1])]
    return _save(path, nodes, inputs, outputs, inits)


def softmax_rows(path: Path, axis: int = 0) -> Path:
    """y = Softmax(x, axis): x [N, 3] -> y [N, 3]. Over axis 0, each column is spread over the
    batch's rows, so a row's answer depends on the rows beside it; over axis 1, row by row."""
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=axis)]
    return _save(
        path, nodes, [_vi("x", TensorProto.FLOAT, ["N", 3])], [_vi("y", TensorProto.FLOAT, ["N", 3])]
    )


def centered(path: Path) -> Path:
    """y = x - ReduceMean(x, axes [0]): the batch's column means taken from every row."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["x", "mean"], ["y"]),
    ]
    x, y = _vi("x", TensorProto.FLOAT, [None, 3]), _vi("y", TensorProto.FLOAT, [None, 3])
    return _save(path, nodes, [x], [y], opset=13)


def time_major(path: Path) -> Path:
    """A Softmax over axis 0 that is not the batch's: x [N, T] read time-major ([T, N] after a
    Transpose), a Softmax over the T steps of each row, then back to [N, T]."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["steps"], perm=[1, 0]),
        helper.make_node("Softmax", ["steps"], ["weights"], axis=0),
        helper.make_node("Transpose", ["weights"], ["y"], perm=[1, 0]),
    ]
    x, y = _vi("x", TensorProto.FLOAT, ["N", "T"]), _vi("y", TensorProto.FLOAT, ["N", "T"])
    return _save(path, nodes, [x], [y])


def reshaped_rows(path: Path) -> Path:
    """y = x.t().reshape(x.shape): x [N, 3] -> y [N, 3], each output row made of values from three
    input rows (the batch's axis moved by a Reshape)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["columns"], perm=[1, 0]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Reshape", ["columns", "shape"], ["y"]),
    ]
    x, y = _vi("x", TensorProto.FLOAT, ["N", 3]), _vi("y", TensorProto.FLOAT, ["N", 3])
    return _save(path, nodes, [x], [y])


def divided_by_batch(path: Path) -> Path:
    """y = x / x.shape[0] as torch exports it: the batch's size read from the shape as a value."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["rows"], axis=0),
        helper.make_node("Cast", ["rows"], ["count"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x", "count"], ["y"]),
    ]
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    x, y = _vi("x", TensorProto.FLOAT, ["N", 3]), _vi("y", TensorProto.FLOAT, ["N", 3])
    return _save(path, nodes, [x], [y], [zero])


def folded_time_major(path: Path) -> Path:
    """Per row, through a fold: x [N, 3] read time-major ([3, N]), folded to one axis of 3N values,
    doubled, unfolded to [3, N] by its own shape and turned back: y = 2x."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["steps"], perm=[1, 0]),
        helper.make_node("Reshape", ["steps", "flat"], ["folded"]),
        helper.make_node("Mul", ["folded", "two"], ["doubled"]),
        helper.make_node("Shape", ["steps"], ["shape"]),
        helper.make_node("Reshape", ["doubled", "shape"], ["unfolded"]),
        helper.make_node("Transpose", ["unfolded"], ["y"], perm=[1, 0]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
        numpy_helper.from_array(np.array(2, np.float32), "two"),
    ]
    x, y = _vi("x", TensorProto.FLOAT, ["N", 3]), _vi("y", TensorProto.FLOAT, ["N", 3])
    return _save(path, nodes, [x], [y], inits)


def _viewed(source: str = "x") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`source` [N, 3] viewed as 'h' [N, 3, 1] by a shape read from it (torch's legacy export of
    x.view(x.size(0), 3, 1)): at opset 13, onnx's Reshape inference gives 'h' no shape."""
    nodes = [
        helper.make_node("Shape", [source], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["rows"], axis=0),
        helper.make_node("Unsqueeze", ["rows", "axis0"], ["rows1"]),
        helper.make_node("Concat", ["rows1", "three", "one"], ["view"], axis=0),
        helper.make_node("Reshape", [source, "view"], ["h"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([3], np.int64), "three"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    return nodes, inits


def viewed_op13(path: Path, axis: int = 0) -> Path:
    """x [N, 3] viewed as [N, 3, 1] at opset 13, then a Softmax over `axis` (0: the batch's)."""
    nodes, inits = _viewed()
    nodes.append(helper.make_node("Softmax", ["h"], ["y"], axis=axis))
    x, y = _vi("x", TensorProto.FLOAT, ["N", 3]), _vi("y", TensorProto.FLOAT, ["N", 3, 1])
    return _save(path, nodes, [x], [y], inits, opset=13)


def _row_step_pick() -> list[onnx.NodeProto]:
    """y = h[arange(N), index] as torch's legacy export writes it: a Gather from h flattened to
    [N*T, ...] at arange(N) * T + index (initializers 'zero' and 'step' hold 0 and 1)."""
    return [
        helper.make_node("Shape", ["h"], ["hshape"]),
        helper.make_node("Gather", ["hshape", "zero"], ["hrows"], axis=0),
        helper.make_node("Gather", ["hshape", "step"], ["steps"], axis=0),
        helper.make_node("Flatten", ["h"], ["flat"], axis=2),
        helper.make_node("Range", ["zero", "hrows", "step"], ["places"]),
        helper.make_node("Mul", ["places", "steps"], ["starts"]),
        helper.make_node("Add", ["index", "starts"], ["at"]),
        helper.make_node("Gather", ["flat", "at"], ["y"], axis=0),
    ]


def picked_op13(path: Path, past: int = 0) -> Path:
    """h = x viewed as [N, 3, 1] at opset 13, then h[arange(N), argmax(x, 1) + past] as torch's
    legacy export writes it: a Gather from h flattened to [3N, 1] at arange(N) * 3 + the index.
    Past 0, each row picks from its own three steps; past 1, a row whose largest value is its last
    picks the next row's first (alone, onnxruntime refuses the index)."""
    nodes, inits = _viewed()
    nodes += [
        helper.make_node("ArgMax", ["x"], ["top"], axis=1, keepdims=0),
        helper.make_node("Add", ["top", "past"], ["index"]),
        *_row_step_pick(),
    ]
    inits += [
        numpy_helper.from_array(np.array(past, np.int64), "past"),
        numpy_helper.from_array(np.array(1, np.int64), "step"),
    ]
    x, y = _vi("x", TensorProto.FLOAT, ["N", 3]), _vi("y", TensorProto.FLOAT, ["Gather_y_dim_0", 1])
    return _save(path, nodes, [x], [y], inits, opset=13)


def tied_steps(path: Path, state: bool = False, default_steps: int = 0) -> Path:
    """x [N, T, 4] and ids [N, T], both steps named 'T', and nothing in the graph ties their sizes:
    y = h[arange(N), argmax(ids, 1)] with h = x + max(ids), a pick bounded by ids's steps from a
    tensor with x's. Sent ids with more steps than x, a row picks the next row's steps of x in a
    batch (alone, onnxruntime refuses the index). `state`: h is made from an input st [N, T, 4]
    instead, and x is returned as st_out (a sequence's implicit state: the last request's x).
    `default_steps`: ids is also an initializer of zeros [1, default_steps] (an input with a default)."""
    nodes = [
        helper.make_node("ReduceMax", ["ids"], ["top"], axes=[1], keepdims=1),
        helper.make_node("Unsqueeze", ["top", "last"], ["top3"]),
        helper.make_node("Add", ["st" if state else "x", "top3"], ["h"]),
        helper.make_node("ArgMax", ["ids"], ["index"], axis=1, keepdims=0),
        *_row_step_pick(),
    ]
    inits = [
        numpy_helper.from_array(np.array([2], np.int64), "last"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "step"),
    ]
    x, ids = _vi("x", TensorProto.FLOAT, ["N", "T", 4]), _vi("ids", TensorProto.FLOAT, ["N", "T"])
    inputs, outputs = [x, ids], [_vi("y", TensorProto.FLOAT, ["N", 4])]
    if default_steps:
        inits.append(numpy_helper.from_array(np.zeros((1, default_steps), np.float32), "ids"))
    if state:
        nodes.append(helper.make_node("Identity", ["x"], ["st_out"]))
        inputs.append(_vi("st", TensorProto.FLOAT, ["N", "T", 4]))
        outputs.append(_vi("st_out", TensorProto.FLOAT, ["N", "T", 4]))
    return _save(path, nodes, inputs, outputs, inits, opset=13)
