"""A tester, session 59 (at 23610a4): the table t = Range(0, L)[:, None] broadcast against x's
batch axis, then (x + t)[:N], still loaded batched, wrong, OK, where L was read off a dim onnx
made up (`unk__`) for a Concat along axis 1, a Flatten, a MaxPool, a Gather by Range(0, T), a
OneHot of depth T, a Compress by a constant condition or a Split: 15 of 28 forms. A batch of four
gave request i the table's row i, alone its row 0. onnx_told_dims.py traces each such op's dims to
the input dims or values they are worked out from (session 60)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_told_dims import dims_made_apart

F, I64 = TensorProto.FLOAT, TensorProto.INT64
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
        ("on", [0, 1], np.float32),
        ("keep", [True, True, True, True], np.bool_),
    )
]


def _length_of(src: str, axis: str = "i1") -> list[onnx.NodeProto]:
    return [N("Shape", [src], ["s_" + src]), N("Gather", ["s_" + src, axis], ["L"])]


# L read off each op's output, x [N, T] (4 columns sent); the table as long as L has 4 rows or more.
LENGTHS: dict[str, list[onnx.NodeProto]] = {
    "concat_along_axis_1": [N("Concat", ["x", "x"], ["xx"], axis=1), *_length_of("xx")],
    "flatten": [
        N("Unsqueeze", ["x", "z1"], ["x3"]),
        N("Flatten", ["x3"], ["flat"], axis=1),
        *_length_of("flat"),
    ],
    "max_pool": [
        N("Unsqueeze", ["x", "z1"], ["x3"]),
        N("MaxPool", ["x3"], ["pooled"], kernel_shape=[1]),
        *_length_of("pooled", "i2"),
    ],
    "gather_by_range": [
        N("Shape", ["x"], ["sx"], start=1, end=2),
        N("Squeeze", ["sx"], ["width"]),
        N("Range", ["i0", "width", "i1"], ["idx"]),
        N("Gather", ["x", "idx"], ["picked"], axis=1),
        *_length_of("picked"),
    ],
    "one_hot_of_depth_t": [
        N("Shape", ["x"], ["depth"], start=1, end=2),
        N("Cast", ["x"], ["xi"], to=I64),
        N("OneHot", ["xi", "depth", "on"], ["hot"], axis=-1),
        *_length_of("hot", "i2"),
    ],
    "compress_by_a_constant": [N("Compress", ["x", "keep"], ["kept"], axis=1), *_length_of("kept")],
    "split_in_halves": [N("Split", ["x"], ["h0", "h1"], axis=1, num_outputs=2), *_length_of("h0")],
}
TABLE = [
    N("Range", ["i0", "L", "i1"], ["r"]),
    N("Cast", ["r"], ["rf"], to=F),
    N("Unsqueeze", ["rf", "z1"], ["t"]),
]
FIRST_ROWS = [N("Shape", ["x"], ["n1"], start=0, end=1), N("Slice", ["z", "z0", "n1", "z0"], ["y"])]


def _model(nodes: list[onnx.NodeProto], x: list[int | str | None]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, x)],
        [helper.make_tensor_value_info("y", F, ["N", None])],
        INITS,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _spread(length: str, x: list[int | str | None], tail: list[onnx.NodeProto]) -> onnx.ModelProto:
    return _model([*LENGTHS[length], *TABLE, N("Add", ["x", "t"], ["z"]), *tail], x)


def _rows_differ(model: onnx.ModelProto) -> bool:
    """Whether onnxruntime gives some request batched with three others another row than alone."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    requests = [np.full((1, 4), float(k + 1), np.float32) for k in range(4)]
    alone = [session.run(None, {"x": r})[0] for r in requests]
    batched = session.run(None, {"x": np.concatenate(requests)})[0]
    return any(not np.allclose(a, batched[i : i + 1]) for i, a in enumerate(alone))


@pytest.mark.parametrize("x", [["N", "T"], ["N", None]], ids=["named", "unnamed"])
@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_a_table_as_long_as_a_length_an_op_made_of_no_batch_is_refused(
    length: str, x: list[int | str | None]
) -> None:
    assert "y" in row_mixing_outputs(_spread(length, x, FIRST_ROWS))  # {} at 23610a4 (split: 4 refused)
    assert UNTOLD in row_mixing_outputs(_spread(length, x, [N("Identity", ["z"], ["y"])]))["y"]


@pytest.mark.parametrize("length", ["compress_by_a_constant", "gather_by_range", "one_hot_of_depth_t"])
def test_the_refused_forms_do_give_a_request_another_row_batched(length: str) -> None:
    assert _rows_differ(_spread(length, ["N", "T"], FIRST_ROWS))


@pytest.mark.parametrize("length", sorted(set(LENGTHS) - {"split_in_halves"}))  # (2 columns)
def test_the_same_table_across_each_row_still_batches(length: str) -> None:
    # t [1, L] added across each row's values where L is at least the row's own length (4 columns
    # here, 8 for the Concat: cut to the row's length first). Rows kept: loaded batched.
    across = [
        N("Transpose", ["t"], ["tt"], perm=[1, 0]),
        N("Shape", ["x"], ["cols"], start=1, end=2),
        N("Slice", ["tt", "z0", "cols", "z1"], ["cut"]),
        N("Add", ["x", "cut"], ["y"]),
    ]
    model = _model([*LENGTHS[length], *TABLE, *across], ["N", "T"])
    assert row_mixing_outputs(model) == {}
    assert not _rows_differ(model)


def test_a_position_table_gathered_by_range_of_the_row_length_still_batches() -> None:
    # GPT-2's positions: wpe[Range(0, T)] added to each row's tokens, x [N, T, 3].
    wpe = numpy_helper.from_array(np.arange(48, dtype=np.float32).reshape(16, 3), "wpe")
    nodes = [
        N("Shape", ["x"], ["sx"], start=1, end=2),
        N("Squeeze", ["sx"], ["tokens"]),
        N("Range", ["i0", "tokens", "i1"], ["pos"]),
        N("Gather", ["wpe", "pos"], ["pe"]),
        N("Add", ["x", "pe"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, ["N", None, 3])],
        [helper.make_tensor_value_info("y", F, ["N", None, 3])],
        [*INITS, wpe],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert row_mixing_outputs(model) == {}


def _apart(dims: dict[str, list[int | str | None]], node: onnx.NodeProto, free: bool = True) -> set[str]:
    return dims_made_apart(node, dims.get, {"T"}.__contains__, lambda name: free)


def test_a_dim_made_of_the_batch_is_not_apart() -> None:
    # Concat along the batch's axis, a Gather by batched indices, a Flatten from the batch's axis.
    along_batch = {"x": ["N", "T"], "xx": ["unk__0", "T"]}
    assert _apart(along_batch, N("Concat", ["x", "x"], ["xx"], axis=0)) == {"T"}  # (told already)
    assert _apart({"x": ["N", "T"], "xx": ["N", "unk__0"]}, N("Concat", ["x", "x"], ["xx"], axis=1)) == {
        "unk__0"
    }
    by_rows = {"w": [16, 3], "ids": ["N", "unk__1"], "e": ["N", "unk__1", 3]}
    assert _apart(by_rows, N("Gather", ["w", "ids"], ["e"])) == set()
    flat = {"x": ["N", "T", 2], "f": ["unk__0", "unk__1"]}
    assert _apart(flat, N("Flatten", ["x"], ["f"], axis=1)) == {"unk__1"}  # N; T * 2
    assert _apart(flat, N("Flatten", ["x"], ["f"], axis=-1)) == {"unk__1"}  # N * T; 2
    whole = {"x": ["N", "T", 2], "f": [1, "unk__1"]}
    assert _apart(whole, N("Flatten", ["x"], ["f"], axis=0)) == set()  # 1; N * T * 2


def test_a_dim_made_of_values_counts_only_where_they_are_of_no_batch() -> None:
    ranged = {"a": [], "b": [], "c": [], "r": ["unk__0"]}
    assert _apart(ranged, N("Range", ["a", "b", "c"], ["r"])) == {"unk__0"}
    assert _apart(ranged, N("Range", ["a", "b", "c"], ["r"]), free=False) == set()
    hot = {"i": ["N", "T"], "d": [], "v": [2], "h": ["N", "T", "unk__2"]}
    assert _apart(hot, N("OneHot", ["i", "d", "v"], ["h"], axis=-1)) == {"unk__2", "T"}
    assert _apart(hot, N("OneHot", ["i", "d", "v"], ["h"]), free=False) == set()
    kept = {"x": ["N", "T"], "k": [4], "o": ["N", "unk__3"]}
    assert _apart(kept, N("Compress", ["x", "k"], ["o"], axis=1)) == {"unk__3"}
    assert _apart(kept, N("Compress", ["x", "k"], ["o"])) == set()  # flattened: N's rows counted
