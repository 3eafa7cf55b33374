"""A tester, session 60 (at 05301ef): the table t = Range(0, L)[:, None] broadcast against x's batch
axis, then (x + t)[:N], still loaded batched, wrong, OK, where L was read off an op whose output
dims the reading did not trace (a Reshape with -1, a SplitToSequence, a Loop stacking x's columns,
an If, a DFT, a CenterCropPad, ...: 14 forms, also at 7abb6dd). Now a dim beside the batch's in a
tensor carrying the batch at one axis is another length (onnx_told_dims.beside_batch), and a
SplitToSequence's count is the dim it splits (onnx_value_lineage.py): such a table is made from no
batched input, and its length, which the load cannot tell, is refused against the batch. A
Range(0, N) is known N long (onnx_partial_dims.py). And Unique along another axis than the batch's
compares whole slices, which span the batch: batched, each answer depended on its batch mates, OK
(onnx_mixing_ops.py). A CenterCropPad's output, of no dims in onnx's inference, was left open:
session 61 reads a Range's length against the batch whatever it is made of."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_partial_dims import partial_dims
from server.backends.onnx_partial_ints import PartialInts
from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_told_dims import beside_batch

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
N = helper.make_node
UNTOLD = "against a length the load cannot tell of axis 0 of 't'"
INITS = [
    numpy_helper.from_array(np.asarray(value, dtype), name)
    for name, value, dtype in (
        ("i0", 0, np.int64),
        ("i1", 1, np.int64),
        ("i2", 2, np.int64),
        ("z0", [0], np.int64),
        ("z1", [1], np.int64),
        ("z2", [2], np.int64),
        ("two", 2, np.int64),
        ("yes", True, np.bool_),
        ("shape_0_2_m1", [0, 2, -1], np.int64),
    )
]


def _of(src: str, axis: str = "i1", out: str = "L") -> list[onnx.NodeProto]:
    return [N("Shape", [src], ["s_" + src]), N("Gather", ["s_" + src, axis], [out])]


def _columns_body() -> onnx.GraphProto:
    """A Loop's body returning x's column `it` (x read from outside)."""
    nodes = [N("Identity", ["c_in"], ["c_out"]), N("Gather", ["x", "it"], ["col"], axis=1)]
    given = [helper.make_tensor_value_info("it", I64, []), helper.make_tensor_value_info("c_in", BOOL, [])]
    made = [helper.make_tensor_value_info("c_out", BOOL, []), helper.make_tensor_value_info("col", F, None)]
    return helper.make_graph(nodes, "columns", given, made)


def _branch(name: str, nodes: list[onnx.NodeProto], out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, F, ["N", None])])


WIDTH = N("Shape", ["x"], ["w1"], start=1, end=2)
# L, the length of x's axis 1 (4 columns sent), read off an op the lineage did not trace.
LENGTHS: dict[str, list[onnx.NodeProto]] = {
    "reshape_minus_one": [
        N("Reshape", ["x", "shape_0_2_m1"], ["xr"]),
        *_of("xr", "i2", "half"),
        N("Mul", ["half", "two"], ["L"]),
    ],
    "sequence_length": [
        N("SplitToSequence", ["x"], ["sq"], axis=1, keepdims=0),
        N("SequenceLength", ["sq"], ["L"]),
    ],
    "loop_of_columns": [
        WIDTH,
        N("Squeeze", ["w1", "z0"], ["width"]),
        N("Loop", ["width", "yes"], ["cols"], body=_columns_body()),
        *_of("cols", "i0"),
    ],
    "if_branch": [
        N(
            "If",
            ["yes"],
            ["kept"],
            then_branch=_branch("whole", [N("Identity", ["x"], ["o1"])], "o1"),
            else_branch=_branch("first", [N("Slice", ["x", "z0", "z1", "z1"], ["o2"])], "o2"),
        ),
        *_of("kept"),
    ],
}
OPEN = {"center_crop_pad": [WIDTH, N("CenterCropPad", ["x", "w1"], ["cropped"], axes=[1]), *_of("cropped")]}
TABLE = [
    N("Range", ["i0", "L", "i1"], ["r"]),
    N("Cast", ["r"], ["rf"], to=F),
    N("Unsqueeze", ["rf", "z1"], ["t"]),
]
FIRST_ROWS = [N("Shape", ["x"], ["n1"], start=0, end=1), N("Slice", ["z", "z0", "n1", "z0"], ["y"])]


def _model(nodes: list[onnx.NodeProto], x: list[int | str | None], opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, x)],
        [helper.make_tensor_value_info("y", F, ["N", None])],
        INITS,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _spread(length: str, x: list[int | str | None], tail: list[onnx.NodeProto]) -> onnx.ModelProto:
    made = LENGTHS.get(length) or OPEN[length]
    return _model([*made, *TABLE, N("Add", ["x", "t"], ["z"]), *tail], x)


def _rows_differ(model: onnx.ModelProto, requests: list[np.ndarray]) -> bool:
    """Whether onnxruntime answers some request batched with the others otherwise than alone."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    alone = [session.run(None, {"x": r})[0] for r in requests]
    batched = session.run(None, {"x": np.concatenate(requests)})[0]
    return any(
        a.shape != batched[i : i + 1].shape or not np.allclose(a, batched[i : i + 1])
        for i, a in enumerate(alone)
    )


@pytest.mark.parametrize("x", [["N", "T"], ["N", None]], ids=["named", "unnamed"])
@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_a_table_as_long_as_a_length_read_off_an_untraced_op_is_refused(
    length: str, x: list[int | str | None]
) -> None:
    assert "y" in row_mixing_outputs(_spread(length, x, FIRST_ROWS))  # {} at 05301ef
    assert UNTOLD in row_mixing_outputs(_spread(length, x, [N("Identity", ["z"], ["y"])]))["y"]


def test_a_table_as_long_as_a_center_crop_pads_length_is_refused() -> None:
    # Open at 3a1cb79 (a strict xfail): the CenterCropPad's output has no dims in onnx's inference;
    # a Range's length is read against the batch since (test_onnx_ranged_lengths.py).
    assert "y" in row_mixing_outputs(_spread("center_crop_pad", ["N", "T"], FIRST_ROWS))


@pytest.mark.parametrize("length", ["reshape_minus_one", "sequence_length", "loop_of_columns"])
def test_those_tables_do_give_a_request_another_row_batched(length: str) -> None:
    requests = [np.full((1, 4), 10.0 * (k + 1), np.float32) for k in range(4)]
    assert _rows_differ(_spread(length, ["N", "T"], FIRST_ROWS), requests)


@pytest.mark.parametrize("length", sorted({*LENGTHS, *OPEN}))
def test_the_same_table_across_each_row_still_batches(length: str) -> None:
    across = [N("Transpose", ["t"], ["tt"], perm=[1, 0]), N("Add", ["x", "tt"], ["y"])]
    made = LENGTHS.get(length) or OPEN[length]
    assert row_mixing_outputs(_model([*made, *TABLE, *across], ["N", "T"])) == {}


@pytest.mark.parametrize(
    ("axis", "x"), [(1, ["N", "T"]), (1, ["N", 4]), (1, ["N", None]), (2, ["N", 2, "T"])]
)
def test_unique_along_another_axis_than_the_batchs_mixes_rows(axis: int, x: list[int | str | None]) -> None:
    model = _model([N("Unique", ["x"], ["y"], axis=axis, sorted=1)], x)
    assert row_mixing_outputs(model) == {
        "y": f"the Unique node making 'y' works along the batch's axis, axis 0 of 'x' {x}"
    }


def test_unique_columns_do_depend_on_batch_mates() -> None:
    # Alone [[1, 1, 2, 2]] keeps columns 0 and 2: [[1, 2]]; beside [[1, 2, 1, 2]] every column differs.
    model = _model([N("Unique", ["x"], ["y"], axis=1, sorted=1)], ["N", 4])
    assert _rows_differ(model, [np.array([[1, 1, 2, 2]], np.float32), np.array([[1, 2, 1, 2]], np.float32)])


def test_a_range_from_0_by_1_is_as_long_as_its_limit() -> None:
    partial = PartialInts()
    partial.known["n"] = np.array(["N"], dtype=object).reshape(())
    constants = {0: np.array(0), 2: np.array(1)}
    rng = N("Range", ["start", "n", "step"], ["r"])
    shapes = {"r": ["unk__0"]}.get
    assert partial_dims(rng, partial, shapes, constants.get) == ["N"]  # torch's arange(N): the batch's
    assert partial_dims(rng, partial, {"r": ["N"]}.get, constants.get) is None  # onnx named it already
    numbers = {0: np.array(2), 1: np.array(9), 2: np.array(3)}
    assert partial_dims(rng, PartialInts(), shapes, numbers.get) == [3]  # 2, 5, 8
    from_one = {0: np.array(1), 2: np.array(1)}
    assert partial_dims(rng, partial, shapes, from_one.get) is None  # N - 1: not told


def test_a_dim_beside_the_batchs_is_another_length() -> None:
    batch = {"N", "unk__9"}  # (a name the batch goes by after a Reshape, too)
    assert beside_batch(["N", 2, "unk__0"], batch) == {"unk__0"}
    assert beside_batch(["unk__1", "N"], batch) == {"unk__1"}  # a Loop's stack of rows: [turns, N]
    assert beside_batch(["N", "unk__9", "unk__0"], batch) == set()  # the batch twice: rows paired, no say
    assert beside_batch(["unk__0", "unk__1"], batch) == set()  # the batch renamed where: not known
    assert beside_batch(None, batch) == set()
