"""`y = x.clone(); y[..., :2] += r` as torch's legacy exporter writes it (ConditionalDETR's boxes,
`tmp[..., :2] += reference_before_sigmoid`): a ScatterND at every place, its columns arange(N)
.reshape(-1, 1, 1), arange(Q).reshape(-1, 1) and arange(4)[:2], each expanded to the shape of their
sum (torch's where(shape == -1, 1, shape)). Row n writes only row n: the rows' column is arange(N)
reshaped with trailing ones, the sum's other terms a Range's values, alike in every row wherever a
Reshape or a Slice puts them (onnx_row_positions.py, onnx_row_offsets.py). An ArgMax's values
moved by a Reshape bound nothing (each row's own), and a reshape that moves the rows' axis, or
rows written at another row's place, stay refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_row_positions import Bound, RowIndex, RowPositions


def _size(axis: int) -> list[onnx.NodeProto]:
    """n{axis}: x's size along `axis`, an int64 scalar."""
    return [
        helper.make_node("Shape", ["x"], [f"s{axis}"]),
        helper.make_node("Gather", [f"s{axis}", f"at{axis}"], [f"g{axis}"], axis=0),
        helper.make_node("Cast", [f"g{axis}"], [f"n{axis}"], to=TensorProto.INT64),
    ]


def _expanded(column: str, name: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Expand", [column, "wide"], [f"e_{name}"]),
        helper.make_node("Unsqueeze", [f"e_{name}", "last"], [f"u_{name}"]),
    ]


def _scatter(rows_shape: tuple[int, ...] = (-1, 1, 1), shift: int = 0) -> onnx.ModelProto:
    """y = x with y[..., :2] = x[..., :2] + r, the rows' column arange(N).reshape(rows_shape) + shift."""
    nodes = [
        *_size(0),
        *_size(1),
        *_size(2),
        helper.make_node("Range", ["zero", "n0", "one"], ["rn"]),
        helper.make_node("Reshape", ["rn", "rows_shape"], ["rn3"]),
        helper.make_node("Add", ["rn3", "shift"], ["rows"]),
        helper.make_node("Range", ["zero", "n1", "one"], ["rq"]),
        helper.make_node("Reshape", ["rq", "col"], ["rq2"]),
        helper.make_node("Range", ["zero", "n2", "one"], ["rk"]),
        helper.make_node("Slice", ["rk", "begin", "two", "axis0"], ["rk1"]),
        helper.make_node("Add", ["rows", "rq2"], ["sum1"]),
        helper.make_node("Add", ["sum1", "rk1"], ["sum2"]),
        helper.make_node("Shape", ["sum2"], ["bshape"]),
        helper.make_node("Shape", ["bshape"], ["brank"]),
        helper.make_node("ConstantOfShape", ["brank"], ["ones"], value=helper.make_tensor("v", 7, [1], [1])),
        helper.make_node("Mul", ["ones", "minus"], ["negs"]),
        helper.make_node("Equal", ["bshape", "negs"], ["eq"]),
        helper.make_node("Where", ["eq", "ones", "bshape"], ["wide"]),
        *_expanded("rows", "n"),
        *_expanded("rq2", "q"),
        *_expanded("rk1", "k"),
        helper.make_node("Concat", ["u_n", "u_q", "u_k"], ["idx"], axis=-1),
        helper.make_node("Slice", ["x", "begin", "two", "axis2"], ["head"]),
        helper.make_node("Add", ["head", "r"], ["upd"]),
        helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"]),
    ]
    values = {
        "zero": 0,
        "one": 1,
        "minus": -1,
        "shift": shift,
        "at0": 0,
        "at1": 1,
        "at2": 2,
        "rows_shape": list(rows_shape),
        "col": [-1, 1],
        "begin": [0],
        "two": [2],
        "axis0": [0],
        "axis2": [2],
        "last": [-1],
    }
    inits = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in values.items()]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4]),
        helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 5, 2]),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 4])
    graph = helper.make_graph(nodes, "g", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _rows_mix(model: onnx.ModelProto, batch: int = 3) -> bool:
    """onnxruntime's truth: a batch against each row alone."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((batch, 5, 4)).astype(np.float32),
        "r": rng.standard_normal((batch, 5, 2)).astype(np.float32),
    }
    batched = session.run(None, feeds)[0]
    for row in range(batch):
        alone = session.run(None, {name: value[row : row + 1] for name, value in feeds.items()})[0]
        if not np.allclose(batched[row : row + 1], alone):
            return True
    return False


def test_the_slice_assignment_at_every_place_is_batched() -> None:
    model = _scatter()
    assert not _rows_mix(model)
    assert row_mixing_outputs(model) == {}


def test_rows_written_at_the_row_before_stay_refused() -> None:
    # arange(N) - 1: row n's update lands on row n - 1 (row 0's on the last row).
    model = _scatter(shift=-1)
    assert _rows_mix(model)
    assert "y" in row_mixing_outputs(model)


def _positions(
    nodes: list[onnx.NodeProto], dims: dict[str, list[int | str | None]], values: dict
) -> RowPositions:
    arrays = {name: np.asarray(v, np.int64) for name, v in values.items()}
    positions = RowPositions({"N"}, {"N"})
    for node in nodes:

        def constant(i: int, n: onnx.NodeProto = node) -> np.ndarray | None:
            return arrays.get(n.input[i]) if i < len(n.input) else None

        positions.see(node, dims.get, constant)
    return positions


_ARANGE_N = [
    helper.make_node("Shape", ["x"], ["s"]),
    helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
    helper.make_node("Range", ["zero", "n", "one"], ["rows"]),
]
_DIMS: dict[str, list[int | str | None]] = {"x": ["N", "T", 8], "n": [], "rows": ["N"], "t": []}


def test_only_a_reshape_to_trailing_ones_keeps_the_rows_place() -> None:
    for shape, rank in (([-1, 1, 1], 3), ([-1, 1], 2), ([1, -1], None), ([-1, 2], None), ([2, -1, 1], None)):
        nodes = [*_ARANGE_N, helper.make_node("Reshape", ["rows", "shape"], ["moved"])]
        found = _positions(nodes, _DIMS, {"zero": 0, "one": 1, "shape": shape}).found.get("moved")
        assert found == (RowIndex(1, Bound(0, None, 0), rank) if rank else None), shape


def test_a_reshape_or_slice_keeps_a_ranges_bound_not_an_argmaxs() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
        helper.make_node("Range", ["zero", "t", "one"], ["steps"]),
        helper.make_node("Reshape", ["steps", "col"], ["steps2"]),
        helper.make_node("Slice", ["steps2", "zeros", "twos"], ["cut"]),
        helper.make_node("ArgMax", ["x"], ["picked"], axis=1),
        helper.make_node("Reshape", ["picked", "col"], ["moved"]),
        helper.make_node("Range", ["zero", "n", "one"], ["rows"]),
    ]
    values = {"zero": 0, "one": 1, "col": [-1, 1], "zeros": [0], "twos": [2]}
    dims = {**_DIMS, "n": [], "steps": ["T"]}
    got = _positions([*_ARANGE_N[:2], *nodes], dims, values)
    assert got.bounds["steps"] == got.bounds["steps2"] == got.bounds["cut"] == Bound(0, "T", -1)
    assert "picked" in got.bounds and "moved" not in got.bounds  # each row's own pick, moved
    assert "rows" not in got.bounds  # arange(N) is the rows' place, no offset within a row
