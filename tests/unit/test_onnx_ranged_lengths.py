"""A tester, session 60 (open at 3a1cb79): the table t = Range(0, L)[:, None] broadcast against x's
batch axis, then x + t, loaded batched, wrong, OK, where L was read off an op whose output dims the
reading cannot tell (an STFT's frames, a CenterCropPad's output, a Squeeze or a ReduceMean at axes
the graph computes): L's lineage reached x, so the table read as made from the batch, and its
length, a name onnx made up, was not read against the batch's axis. A Range's length is now read
there whatever it is made of (onnx_value_lineage.ValueLineage.ranged): a table of positions spread
over the batch's axis gives each request another row of it than alone. arange(N), the batch's own
length (onnx_partial_dims.py), and a Range along another axis than the batch's are not."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs

F = TensorProto.FLOAT
N = helper.make_node
RANGED = "broadcasts axis 0 of 'x' {x} against a Range's length the load cannot tell of axis 0 of 't'"
INITS = [
    numpy_helper.from_array(np.asarray(value, np.int64), name)
    for name, value in (("i0", 0), ("i1", 1), ("z0", [0]), ("z1", [1]), ("z2", [2]))
]


def _of(src: str, axis: str = "i1") -> list[onnx.NodeProto]:
    return [N("Shape", [src], ["s_" + src]), N("Gather", ["s_" + src, axis], ["L"])]


WIDTH = N("Shape", ["x"], ["w1"], start=1, end=2)
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
    "center_crop_pad_axis": ([WIDTH, N("CenterCropPad", ["x", "w1"], ["c"], axes=[1]), *_of("c")], 18),
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
TABLE = [
    N("Range", ["i0", "L", "i1"], ["r"]),
    N("Cast", ["r"], ["rf"], to=F),
    N("Unsqueeze", ["rf", "z1"], ["t"]),
]


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


def _spread(length: str, x: list[int | str | None]) -> onnx.ModelProto:
    made, opset = LENGTHS[length]
    return _model([*made, *TABLE, N("Add", ["x", "t"], ["y"])], x, opset)


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
def test_a_table_as_long_as_a_length_the_reading_cannot_tell_is_refused(
    length: str, x: list[int | str | None]
) -> None:
    assert RANGED.format(x=x) in row_mixing_outputs(_spread(length, x))["y"]  # {} at 3a1cb79


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_those_tables_do_give_a_request_another_row_batched(length: str) -> None:
    # (x + t)[:N]: alone a request gets t's row 0, batched request i gets row i.
    made, opset = LENGTHS[length]
    first_rows = [N("Shape", ["x"], ["rows"], start=0, end=1), N("Slice", ["z", "z0", "rows", "z0"], ["y"])]
    model = _model([*made, *TABLE, N("Add", ["x", "t"], ["z"]), *first_rows], ["N", "T"], opset)
    requests = [np.full((1, 4), 10.0 * (k + 1), np.float32) for k in range(4)]
    assert "y" in row_mixing_outputs(model)
    assert _rows_differ(model, requests)


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_the_same_table_across_each_row_still_batches(length: str) -> None:
    made, opset = LENGTHS[length]
    across = [N("Transpose", ["t"], ["tt"], perm=[1, 0]), N("Add", ["x", "tt"], ["y"])]  # [1, L]: columns
    assert row_mixing_outputs(_model([*made, *TABLE, *across], ["N", "T"], opset)) == {}


def test_a_table_of_positions_along_the_sequence_still_batches() -> None:
    # GPT-2's position embedding: wpe[arange(T)] [T, D] added to x [N, T, D]: T against T, not N.
    emb = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32), "wpe")
    nodes = [
        N("Shape", ["x"], ["sx"]),
        N("Gather", ["sx", "i1"], ["L"]),
        N("Range", ["i0", "L", "i1"], ["r"]),
        N("Gather", ["wpe", "r"], ["pos"]),
        N("Add", ["x", "pos"], ["y"]),
    ]
    model = _model(nodes, ["N", "T", 3], 18)
    model.graph.initializer.append(emb)
    assert row_mixing_outputs(model) == {}


def test_a_table_of_each_rows_place_is_not_read_as_a_ranges_length() -> None:
    # arange(N)[:, None] + x: a Range as long as the batch, named N (onnx_partial_dims.py); it gives
    # each row its place, which other readings answer for, not this one.
    nodes = [N("Shape", ["x"], ["sx"]), N("Gather", ["sx", "i0"], ["L"]), *TABLE, N("Add", ["x", "t"], ["y"])]
    assert "Range's" not in str(row_mixing_outputs(_model(nodes, ["N", "T"], 18)))
