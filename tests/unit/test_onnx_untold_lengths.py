"""The batch's axis broadcast against a length the load cannot tell (onnx_broadcast_pairs.py).

A tester, session 60: a table t of positions 0..L-1, L the length of x's axis 1 read off an op of
dims the reading cannot tell (an STFT's frames, a CenterCropPad's output, a Squeeze or ReduceMean at
computed axes), then (x + t)[:N], loaded batched, wrong, OK: L's lineage reached x, and such a
length was read only of a table made from no batched input. Session 61's tester made the same table
13 ways (a Range, a Loop's turns, a CumSum of ones, a constant cut to L, an EyeLike's ArgMax, a
Range through a TopK or a computed Tile, ...): 39 models, all batched wrong at 3a1cb79. Now every
input's length the load cannot tell is read against the batch's, and the names onnx made up for the
batch where it lost it are the batch's (onnx_batch_names.BatchNames.renamed, a MatMul's stacks
carried): session 60's tester's row-wise forms (an FPN's merge, an Upsample's, a view(-1, D) and
back, a bmm) still batch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_batch_names import BatchNames
from server.backends.onnx_row_mixing import row_mixing_outputs

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
N = helper.make_node
UNTOLD = "broadcasts axis 0 of 'x' {x} against a length the load cannot tell of axis 0 of 't'"
INITS = [
    numpy_helper.from_array(np.asarray(value, dtype), name)
    for name, value, dtype in (
        ("i0", 0, np.int64),
        ("i1", 1, np.int64),
        ("z0", [0], np.int64),
        ("z1", [1], np.int64),
        ("z2", [2], np.int64),
        ("yes", True, np.bool_),
        ("column", np.arange(64, dtype=np.float32)[:, None], np.float32),
    )
]


def _of(src: str, axis: str = "i1") -> list[onnx.NodeProto]:
    return [N("Shape", [src], ["s_" + src]), N("Gather", ["s_" + src, axis], ["L"])]


# L, the length of x's axis 1 (4 columns sent), read off an op of dims the reading cannot tell.
LENGTHS: dict[str, tuple[list[onnx.NodeProto], int]] = {
    "stft_frames": (
        [
            N("Unsqueeze", ["x", "z2"], ["xa"]),
            N("STFT", ["xa", "i1", "", "i1"], ["frames"]),  # step 1, length 1: as many frames as columns
            *_of("frames"),
        ],
        17,
    ),
    "center_crop_pad_all": (
        [N("Shape", ["x"], ["sx"]), N("CenterCropPad", ["x", "sx"], ["c"]), *_of("c")],
        18,
    ),
    "center_crop_pad_axis": (
        [
            N("Shape", ["x"], ["w1"], start=1, end=2),
            N("CenterCropPad", ["x", "w1"], ["c"], axes=[1]),
            *_of("c"),
        ],
        18,
    ),
    "squeeze_computed": (
        [
            N("Unsqueeze", ["x", "z1"], ["xu"]),
            N("Shape", ["x"], ["n1"], start=0, end=1),
            N("Div", ["n1", "n1"], ["at"]),  # 1, computed
            N("Squeeze", ["xu", "at"], ["xs"]),
            *_of("xs"),
        ],
        18,
    ),
    "reduce_mean_computed": (
        [N("Identity", ["z0"], ["at"]), N("ReduceMean", ["x", "at"], ["m"], keepdims=1), *_of("m")],
        18,
    ),
}
L1 = [N("Unsqueeze", ["L", "z0"], ["L1"])]  # [L]


def _turns_body() -> onnx.GraphProto:
    nodes = [N("Identity", ["c_in"], ["c_out"]), N("Cast", ["it"], ["turn"], to=F)]
    given = [helper.make_tensor_value_info("it", I64, []), helper.make_tensor_value_info("c_in", BOOL, [])]
    made = [helper.make_tensor_value_info("c_out", BOOL, []), helper.make_tensor_value_info("turn", F, [])]
    return helper.make_graph(nodes, "turns", given, made)


RANGE = [N("Range", ["i0", "L", "i1"], ["r"]), N("Cast", ["r"], ["rf"], to=F)]
# The table t [L, 1] of positions 0..L-1 (1..L for the CumSum), made each way.
TABLES: dict[str, list[onnx.NodeProto]] = {
    "range": [*RANGE, N("Unsqueeze", ["rf", "z1"], ["t"])],
    "loop_turns": [
        N("Loop", ["L", "yes"], ["turns"], body=_turns_body()),
        N("Unsqueeze", ["turns", "z1"], ["t"]),
    ],
    "cumsum_of_ones": [
        *L1,
        N("Concat", ["L1", "z1"], ["shape"], axis=0),
        N("ConstantOfShape", ["shape"], ["ones"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
        N("CumSum", ["ones", "i0"], ["t"]),
    ],
    "constant_cut": [*L1, N("Slice", ["column", "z0", "L1", "z0"], ["t"])],  # torch's pe[:L]
    "eye_like_argmax": [
        *L1,
        N("Concat", ["L1", "L1"], ["square"], axis=0),
        N("ConstantOfShape", ["square"], ["zeros"]),
        N("EyeLike", ["zeros"], ["eye"]),
        N("ArgMax", ["eye"], ["diagonal"], axis=1, keepdims=1),
        N("Cast", ["diagonal"], ["t"], to=F),
    ],
    "range_topk": [
        *RANGE,
        *L1,
        N("TopK", ["rf", "L1"], ["top", "where"], largest=0),
        N("Unsqueeze", ["top", "z1"], ["t"]),
    ],
    "range_tile_computed": [
        *RANGE,
        *L1,
        N("Unsqueeze", ["rf", "z1"], ["t0"]),
        N("Div", ["L1", "L1"], ["one"]),
        N("Concat", ["one", "one"], ["repeats"], axis=0),
        N("Tile", ["t0", "repeats"], ["t"]),
    ],
}


def _model(nodes: list[onnx.NodeProto], x: list[int | str | None], opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, x)],
        [helper.make_tensor_value_info("y", F, None)],
        INITS,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _spread(
    length: str, table: str, x: list[int | str | None], tail: list[onnx.NodeProto]
) -> onnx.ModelProto:
    made, opset = LENGTHS[length]
    return _model([*made, *TABLES[table], N("Add", ["x", "t"], ["z"]), *tail], x, opset)


FIRST_ROWS = [N("Shape", ["x"], ["rows"], start=0, end=1), N("Slice", ["z", "z0", "rows", "z0"], ["y"])]
WHOLE = [N("Identity", ["z"], ["y"])]


def _rows_differ(model: onnx.ModelProto, requests: list[np.ndarray]) -> bool:
    """Whether onnxruntime answers some request batched with the others otherwise than alone."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    alone = [session.run(None, {"x": r})[0] for r in requests]
    batched = session.run(None, {"x": np.concatenate(requests)})[0]
    return any(
        a.shape != batched[i : i + 1].shape or not np.allclose(a, batched[i : i + 1])
        for i, a in enumerate(alone)
    )


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_a_table_as_long_as_a_length_the_reading_cannot_tell_is_refused(length: str, table: str) -> None:
    for x in (["N", "T"], ["N", None]):
        assert "y" in row_mixing_outputs(_spread(length, table, x, WHOLE))  # {} at 3a1cb79
        assert "y" in row_mixing_outputs(_spread(length, table, x, FIRST_ROWS))


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_the_broadcast_is_named(length: str) -> None:
    for x in (["N", "T"], ["N", None]):
        assert UNTOLD.format(x=x) in row_mixing_outputs(_spread(length, "range", x, WHOLE))["y"]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_those_tables_do_give_a_request_another_row_batched(table: str) -> None:
    requests = [np.full((1, 4), 10.0 * (k + 1), np.float32) for k in range(4)]
    assert _rows_differ(_spread("center_crop_pad_axis", table, ["N", "T"], FIRST_ROWS), requests)


@pytest.mark.parametrize("table", sorted(set(TABLES) - {"range_tile_computed"}))
def test_the_same_table_across_each_row_still_batches(table: str) -> None:
    # (A Tile by repeats computed of L leaves both its dims unknown: read against the batch, refused.)
    made, opset = LENGTHS["center_crop_pad_axis"]
    across = [N("Transpose", ["t"], ["tt"], perm=[1, 0]), N("Add", ["x", "tt"], ["y"])]  # [1, L]: columns
    assert row_mixing_outputs(_model([*made, *TABLES[table], *across], ["N", "T"], opset)) == {}


def test_a_table_of_positions_along_the_sequence_still_batches() -> None:
    # GPT-2's position embedding: wpe[arange(T)] [T, D] added to x [N, T, D]: T against T, not N.
    nodes = [*_of("x"), *RANGE[:1], N("Gather", ["wpe", "r"], ["pos"]), N("Add", ["x", "pos"], ["y"])]
    model = _model(nodes, ["N", "T", 3], 18)
    model.graph.initializer.append(numpy_helper.from_array(np.ones((16, 3), np.float32), "wpe"))
    assert row_mixing_outputs(model) == {}


def test_a_stack_of_matrices_as_long_as_such_a_length_is_read_as_broadcast() -> None:
    # x[:, None] [N, 1, T] @ t[:, :, None] * ones [L, T, 1]: each request's row spread over L matrices.
    made, opset = LENGTHS["center_crop_pad_axis"]
    nodes = [
        *made,
        *TABLES["range"],
        N("Unsqueeze", ["x", "z1"], ["x3"]),
        N("Unsqueeze", ["t", "z2"], ["t3"]),
        N("Mul", ["t3", "ones"], ["stack"]),
        N("MatMul", ["x3", "stack"], ["y"]),
    ]
    model = _model(nodes, ["N", "T"], opset)
    model.graph.initializer.append(numpy_helper.from_array(np.ones((1, 4, 1), np.float32), "ones"))
    reason = row_mixing_outputs(model)["y"]
    assert "the MatMul node making 'y' broadcasts axis 0 of 'x3'" in reason
    assert "against a length the load cannot tell of axis 0 of 'stack'" in reason


def test_a_name_onnx_made_up_for_an_axis_refined_as_the_batchs_is_the_batchs() -> None:
    names = BatchNames({"N"})
    names.renamed(["unk__3", 4, "unk__4"], ["N", 4, "unk__4"])
    assert names.batch == {"N", "unk__3"}
    names.renamed(["T", 4], ["N", 4])  # a name a graph input declares: not onnx's to remake
    names.renamed(["unk__7"], ["N", 1])  # ranks differ: nothing said
    assert names.batch == {"N", "unk__3"}


def test_a_matmuls_stacks_carry_the_batch_and_its_matrices_do_not() -> None:
    names = BatchNames({"N"})
    dims = {"p": ["N", "T", "T"], "v": ["N", "T", 8], "o": ["unk__15", "unk__13", 8]}
    names.carry(N("MatMul", ["p", "v"], ["o"]), dims.get)
    assert names.batch == {"N", "unk__15"}


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_each_model_here_is_valid(length: str, table: str) -> None:
    model = _spread(length, table, ["N", "T"], FIRST_ROWS)  # one maker for each name: onnxruntime loads it
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# A table whose rank onnx cannot tell: given its axis at a computed place (a third tester, session 61:
# read as a scalar, {} at 3a1cb79 and ec2b801, request i batched given the table's row i).
UNPLACED: dict[str, list[onnx.NodeProto]] = {
    "unsqueeze_computed": [
        N("Shape", ["x"], ["cols"], start=1, end=2),
        N("Div", ["cols", "cols"], ["at"]),  # [1], computed
        N("Unsqueeze", ["rf", "at"], ["t"]),
    ],
    "cast_like_x": [  # x only lends its type (a fifth tester, session 61)
        N("Shape", ["x"], ["cols"], start=1, end=2),
        N("Div", ["cols", "cols"], ["at"]),
        N("Unsqueeze", ["rf", "at"], ["t0"]),
        N("CastLike", ["t0", "x"], ["t"]),
    ],
    "reshape_by_a_shape_of_computed_length": [
        N("Shape", ["x"], ["cols"], start=1, end=2),
        N("Div", ["cols", "cols"], ["one"]),  # [1], computed
        N("Add", ["one", "one"], ["two"]),
        N("Slice", ["minus_one_one_one", "z0", "two"], ["shape"]),  # [-1, 1], of a length computed
        N("Reshape", ["rf", "shape"], ["t"]),
    ],
}


@pytest.mark.parametrize("form", sorted(UNPLACED))
def test_a_table_of_no_known_rank_is_read_against_the_batch(form: str) -> None:
    made, opset = LENGTHS["center_crop_pad_axis"]
    nodes = [*made, *RANGE, *UNPLACED[form], N("Add", ["x", "t"], ["y"])]
    model = _model(nodes, ["N", "T"], opset)
    model.graph.initializer.extend(
        [numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "minus_one_one_one")]
    )
    requests = [np.full((1, 4), 10.0 * (k + 1), np.float32) for k in range(4)]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": requests[0]})[0].shape == (4, 4)  # alone: spread over the table
    assert "whose shape the load cannot tell" in row_mixing_outputs(model)["y"]


def test_a_loop_carrying_x_of_no_known_shape_is_read_by_its_rows() -> None:
    # Its values reach x not only through a Shape: not a table (tests/unit/test_onnx_value_lineage.py).
    body = helper.make_graph(
        [N("Identity", ["go"], ["go_out"]), N("Add", ["c_in", "c_in"], ["c_out"])],
        "body",
        [
            helper.make_tensor_value_info("turn", TensorProto.INT64, []),
            helper.make_tensor_value_info("go", BOOL, []),
            helper.make_tensor_value_info("c_in", F, None),
        ],
        [helper.make_tensor_value_info("go_out", BOOL, []), helper.make_tensor_value_info("c_out", F, None)],
    )
    nodes = [N("Loop", ["i1", "yes", "x"], ["c"], body=body), N("Add", ["x", "c"], ["y"])]
    assert row_mixing_outputs(_model(nodes, ["N", "T"], 18)) == {}


@pytest.mark.parametrize(("rows", "refused"), [(2, True), (1, False)])
def test_the_batch_against_a_fixed_length_above_one_is_read(rows: int, refused: bool) -> None:
    # (A mutant reading only lengths above 2 survived: session 61's mutation run.)
    nodes = [N("Add", ["x", "table"], ["y"])]
    model = _model(nodes, ["N", 3], 18)
    model.graph.initializer.append(numpy_helper.from_array(np.ones((rows, 1), np.float32), "table"))
    assert ("y" in row_mixing_outputs(model)) is refused


def test_gpt2_positions_after_a_past_still_batch() -> None:
    # position_ids = arange(P, P + T).unsqueeze(0).view(-1, T); x + wpe[position_ids]: Range(P, P + T)
    # is T long, the view's -1 is 1, the lookup [1, T, D] (a tester, session 61: refused at 3a1cb79).
    nodes = [
        N("Shape", ["x"], ["sx"]),
        N("Gather", ["sx", "i1"], ["t_len"]),
        N("Shape", ["past"], ["sp"]),
        N("Gather", ["sp", "i1"], ["p_len"]),
        N("Add", ["p_len", "t_len"], ["end"]),
        N("Range", ["p_len", "end", "i1"], ["positions"]),
        N("Unsqueeze", ["positions", "z0"], ["positions1"]),
        N("Unsqueeze", ["t_len", "z0"], ["t1"]),
        N("Concat", ["minus_one", "t1"], ["view"], axis=0),
        N("Reshape", ["positions1", "view"], ["ids"]),
        N("Constant", [], ["wpe"], value=numpy_helper.from_array(np.ones((64, 3), np.float32), "wpe_v")),
        N("Gather", ["wpe", "ids"], ["pe"]),
        N("Add", ["x", "pe"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", F, ["N", "T", 3]),
            helper.make_tensor_value_info("past", F, ["N", "P", 3]),
        ],
        [helper.make_tensor_value_info("y", F, ["N", "T", 3])],
        [*INITS, numpy_helper.from_array(np.array([-1], np.int64), "minus_one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert row_mixing_outputs(model) == {}
