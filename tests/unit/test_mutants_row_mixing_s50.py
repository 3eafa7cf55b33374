"""Mutants of the row-mixing reading that survived session 50's first run (tests/MUTANTS.md, fiftieth
session): each op's axes, defaults and opset boundaries, read exactly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_constant_fold import folded
from server.backends.onnx_mixing_ops import mixed_axes, paired_axes
from server.backends.onnx_mixing_probe import _feeds, _seeded, _without_axis
from server.backends.onnx_row_mixing import row_mixing_outputs

F = TensorProto.FLOAT


def _axes(
    node: onnx.NodeProto, ranks: Sequence[int], opset: int = 17, consts: dict[int, list[int]] | None = None
) -> list[tuple[int, list[int]]]:
    known = consts or {}

    def constant(i: int) -> np.ndarray | None:
        return np.asarray(known[i], np.int64) if i in known else None

    return [(i, list(a)) for i, a in mixed_axes(node, ranks, opset, constant, [None] * len(ranks))]


@pytest.mark.parametrize(
    ("node", "ranks", "opset", "want"),
    [
        (helper.make_node("Softmax", ["x"], ["y"]), [3], 13, [(0, [-1])]),
        (helper.make_node("Softmax", ["x"], ["y"]), [3], 12, [(0, [1, 2])]),  # read as 2-D from axis 1
        (helper.make_node("Softmax", ["x"], ["y"], axis=0), [3], 12, [(0, [0, 1, 2])]),
        (helper.make_node("Softmax", ["x"], ["y"]), [], 12, [(0, [])]),  # no rank known
        (helper.make_node("LayerNormalization", ["x", "s"], ["y"]), [3, 1], 17, [(0, [2])]),
        (helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=1), [3, 1], 17, [(0, [1, 2])]),
        (helper.make_node("MeanVarianceNormalization", ["x"], ["y"]), [4], 17, [(0, [0, 2, 3])]),
        (helper.make_node("BatchNormalization", ["x"], ["y"], training_mode=1), [4], 15, [(0, [0, 2, 3])]),
        (helper.make_node("Conv", ["x", "w"], ["y"]), [4, 4], 17, [(0, [1, 2, 3]), (1, [0, 1, 2, 3])]),
        (helper.make_node("MaxPool", ["x"], ["y"]), [4], 17, [(0, [2, 3])]),
        (helper.make_node("LRN", ["x"], ["y"], size=1), [4], 17, [(0, [1])]),
        (helper.make_node("DFT", ["x"], ["y"]), [3], 17, [(0, [1])]),
        (helper.make_node("DFT", ["x"], ["y"], axis=2), [3], 17, [(0, [2])]),
        (helper.make_node("DFT", ["x"], ["y"]), [3], 20, [(0, [-2])]),
        (helper.make_node("DFT", ["x", "", ""], ["y"]), [3, 0, 0], 20, [(0, [-2])]),
        (helper.make_node("MatMul", ["a", "b"], ["y"]), [2, 2], 17, [(0, [-1]), (1, [-2])]),
        (helper.make_node("MatMul", ["a", "b"], ["y"]), [2, 1], 17, [(0, [-1]), (1, [-1])]),
        (helper.make_node("MatMul", ["a"], ["y"]), [2], 17, [(0, [-1]), (1, [-2])]),
        (helper.make_node("Gemm", ["a", "b"], ["y"]), [2, 2], 17, [(0, [1]), (1, [0])]),
        (helper.make_node("Gemm", ["a", "b"], ["y"], transA=1, transB=1), [2, 2], 17, [(0, [0]), (1, [1])]),
        (helper.make_node("LSTM", ["x"], ["y"]), [3], 17, [(0, [0])]),
        (helper.make_node("LSTM", ["x"], ["y"], layout=1), [3], 17, [(0, [1])]),
        (helper.make_node("Trilu", ["x"], ["y"]), [2], 17, [(0, [-2, -1])]),
        (helper.make_node("Concat", ["a", "b"], ["y"], axis=1), [2, 2], 17, [(0, [1]), (1, [1])]),
        (helper.make_node("Split", ["x"], ["a", "b"], axis=1), [2], 17, [(0, [1])]),
    ],
)
def test_each_op_mixes_along_exactly_these_axes(
    node: onnx.NodeProto, ranks: list[int], opset: int, want: object
) -> None:
    assert _axes(node, ranks, opset) == want


def test_pairs_are_the_rows_of_the_first_and_the_columns_of_the_second() -> None:
    assert paired_axes(helper.make_node("MatMul", ["a", "b"], ["y"])) == ((0, -2), (1, -1))
    assert paired_axes(helper.make_node("Gemm", ["a", "b"], ["y"])) == ((0, 0), (1, 1))
    assert paired_axes(helper.make_node("Gemm", ["a", "b"], ["y"], transA=1)) == ((0, 1), (1, 1))
    assert paired_axes(helper.make_node("Gemm", ["a", "b"], ["y"], transB=1)) == ((0, 0), (1, 0))
    qlinear = helper.make_node("QLinearMatMul", [*"abcdefgh"], ["y"])
    assert paired_axes(qlinear) == ((0, -2), (3, -1))  # its second operand is input 3
    assert paired_axes(helper.make_node("Add", ["a", "b"], ["y"])) is None


def _ints(name: str, values: Sequence[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _model(
    nodes: Sequence[onnx.NodeProto],
    inits: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    x: Sequence[object] = (None, 3),
    extra: Sequence[onnx.ValueInfoProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), "g", [helper.make_tensor_value_info("x", F, list(x)), *extra],
        [helper.make_tensor_value_info("y", F, None)], initializer=list(inits),
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_a_slice_at_opset_10_reads_its_inputs_and_before_its_attributes() -> None:
    inputs = _model(
        [helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])],
        [_ints("s", [0]), _ints("e", [1]), _ints("a", [0])],
        opset=10,
    )
    assert row_mixing_outputs(inputs)
    kept = helper.make_node("Slice", ["x"], ["y"], starts=[0], ends=[1], axes=[1])  # columns only
    assert row_mixing_outputs(_model([kept], opset=9)) == {}


def test_a_slice_to_exactly_the_end_marker_keeps_every_row() -> None:
    inits = [_ints("s", [0]), _ints("e", [2**31 - 1]), _ints("a", [0])]
    assert row_mixing_outputs(_model([helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])], inits)) == {}


def test_a_computed_slice_with_given_axes_reads_those_axes_only() -> None:
    computed = [helper.make_tensor_value_info(n, TensorProto.INT64, [1]) for n in ("s", "e")]
    columns = _model(
        [helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])], [_ints("a", [1])], extra=computed
    )
    assert row_mixing_outputs(columns) == {}
    axes_in = [helper.make_tensor_value_info("a", TensorProto.INT64, [1])]
    unknown = _model(
        [helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])],
        [_ints("s", [0]), _ints("e", [1])],
        extra=axes_in,
    )
    # Which axis is not known: x[0:1] along the batch's picks row 0 (read as none until session 58).
    assert "works along the batch's axis" in row_mixing_outputs(unknown)["y"]


def test_pads_at_opset_11_are_an_input_and_every_axis_begin_and_end_is_read() -> None:
    assert row_mixing_outputs(
        _model([helper.make_node("Pad", ["x", "p"], ["y"])], [_ints("p", [1, 0, 0, 0])], opset=11)
    )
    moved = [
        helper.make_node("Transpose", ["x"], ["t"]),
        helper.make_node("Pad", ["t", "p"], ["y"]),
    ]  # [3, N]
    assert row_mixing_outputs(_model(moved, [_ints("p", [0, 0, 0, 1])], opset=13))  # the batch's end
    assert row_mixing_outputs(_model(moved, [_ints("p", [0, 1, 0, 0])], opset=13))  # the batch's begin
    assert row_mixing_outputs(_model(moved, [_ints("p", [1, 0, 1, 0])], opset=13)) == {}


def test_batch_normalization_training_at_the_opset_boundaries() -> None:
    stats = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "m", "v")]
    feeds = ["x", "s", "b", "m", "v"]
    flagged = helper.make_node("BatchNormalization", feeds, ["y"], training_mode=1)
    assert row_mixing_outputs(_model([flagged], stats, opset=14))
    two = helper.make_node("BatchNormalization", feeds, ["y", "running_mean"])
    assert row_mixing_outputs(_model([two], stats, opset=13))


def test_axes_of_two_values_are_read_whole() -> None:
    reduce = helper.make_node("ReduceSum", ["x", "a"], ["y"])
    assert row_mixing_outputs(_model([reduce], [_ints("a", [1, 0])], opset=13))
    assert row_mixing_outputs(_model([helper.make_node("Tile", ["x", "r"], ["y"])], [_ints("r", [2, 1])]))


def test_a_loops_and_a_scans_feeds() -> None:
    f = helper.make_tensor_type_proto(F, ["N", 3])
    loop = helper.make_node("Loop", ["m", "c", "v"], ["out"])
    body = helper.make_graph([], "b", [onnx.ValueInfoProto(name=n) for n in ("i", "cond", "v_in")], [])
    assert [(i.name, t) for i, t in _feeds(loop, body, {"v": f})] == [("v_in", f)]
    scan = helper.make_node("Scan", ["state", "xs"], ["s_out", "ys"], num_scan_inputs=1, scan_input_axes=[1])
    sbody = helper.make_graph([], "b", [onnx.ValueInfoProto(name=n) for n in ("state_in", "x_in")], [])
    fed = dict((i.name, t) for i, t in _feeds(scan, sbody, {"state": f, "xs": f}))
    assert fed["state_in"] == f
    assert [d.dim_param or d.dim_value for d in fed["x_in"].tensor_type.shape.dim] == ["N"]
    default = helper.make_node("Scan", ["xs"], ["ys"], num_scan_inputs=1)
    only = dict(
        (i.name, t)
        for i, t in _feeds(
            default, helper.make_graph([], "b", [onnx.ValueInfoProto(name="x_in")], []), {"xs": f}
        )
    )
    assert [d.dim_value for d in only["x_in"].tensor_type.shape.dim] == [3]  # axis 0 by default
    custom = helper.make_node("Scan", ["xs"], ["ys"], num_scan_inputs=1, domain="com.example")
    assert list(_feeds(custom, sbody, {"xs": f})) == []
    assert list(_feeds(helper.make_node("If", ["c"], ["y"]), body, {})) == []
    assert _without_axis(f, 2) is None and _without_axis(f, -3) is None
    assert [d.dim_param for d in _without_axis(f, -1).tensor_type.shape.dim] == ["N"]  # type: ignore[union-attr]


def test_a_body_input_is_seeded_where_it_declares_less() -> None:
    fed = helper.make_tensor_type_proto(F, ["N", 3])
    bare = onnx.ValueInfoProto(name="v")
    assert _seeded(bare, fed) and bare.type == fed
    loose = helper.make_tensor_value_info("v", F, [None, 3])
    assert _seeded(loose, fed) and [d.dim_param or d.dim_value for d in loose.type.tensor_type.shape.dim] == [
        "N",
        3,
    ]
    assert not _seeded(loose, fed)  # nothing more to give
    other_rank = helper.make_tensor_value_info("v", F, [None])
    assert not _seeded(other_rank, fed)
    fixed = helper.make_tensor_value_info("v", F, [5, None])
    assert _seeded(fixed, fed) and [d.dim_value for d in fixed.type.tensor_type.shape.dim] == [5, 3]
    unknown = helper.make_tensor_type_proto(F, [None, None])
    assert not _seeded(helper.make_tensor_value_info("v", F, [None, None]), unknown)


def test_folds_of_values_of_several_elements() -> None:
    sliced = folded(
        helper.make_node("Slice", ["d", "s", "e", "a", "p"], ["o"]),
        [
            np.arange(6).reshape(2, 3),
            np.asarray([0, 1]),
            np.asarray([2, 3]),
            np.asarray([0, 1]),
            np.asarray([1, 2]),
        ],
    )
    assert sliced is not None and sliced.tolist() == [[1], [4]]
    four = folded(
        helper.make_node("Slice", ["d", "s", "e", "a"], ["o"]),
        [np.arange(6).reshape(2, 3), np.asarray([1, 0]), np.asarray([2, 2]), np.asarray([0, 1])],
    )
    assert four is not None and four.tolist() == [[3, 4]]
    filled = folded(
        helper.make_node(
            "ConstantOfShape", ["s"], ["o"], value=numpy_helper.from_array(np.asarray([7], np.int32))
        ),
        [np.asarray([2, 2])],
    )
    assert filled is not None and filled.dtype == np.int32 and filled.tolist() == [[7, 7], [7, 7]]
    assert folded(
        helper.make_node("Unsqueeze", ["a", "x"], ["o"]), [np.asarray([1, 2]), np.asarray([0, 2])]
    ).shape == (1, 2, 1)  # type: ignore[union-attr]
    transposed = folded(
        helper.make_node("Transpose", ["a"], ["o"], perm=[0, 2, 1]), [np.arange(4).reshape(1, 2, 2)]
    )
    assert transposed is not None and transposed.tolist() == [[[0, 2], [1, 3]]]
    cast = folded(helper.make_node("Cast", ["a"], ["o"], to=TensorProto.FLOAT), [np.asarray([1])])
    assert cast is not None and cast.dtype == np.float32


def test_a_broadcast_of_inputs_of_two_ranks_names_each_ones_own_axis() -> None:
    # [N, 1, 3] - [N, 3]: broadcast, the first's batch is axis 0 of 3, the second's axis 1 of 3.
    nodes = [helper.make_node("Unsqueeze", ["x", "one"], ["a"]), helper.make_node("Sub", ["a", "x"], ["y"])]
    got = row_mixing_outputs(_model(nodes, [_ints("one", [1])]))
    assert got == {
        "y": "the Sub node making 'y' pairs each row of the batch with every other: it broadcasts axis 0 of "
        "'a' ['batch', 1, 3] against axis 0 of 'x' ['batch', 3], both the batch's axis"
    }


def test_a_scan_reads_each_scan_inputs_own_axis() -> None:
    # Two scan inputs after one state; the second, the batch's, scanned along its axis 1 ([3, N]).
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s_in", "b_in"], ["s_out"]),
            helper.make_node("Identity", ["a_in"], ["a_out"]),
        ],
        "body",
        [onnx.ValueInfoProto(name=n) for n in ("s_in", "a_in", "b_in")],
        [helper.make_tensor_value_info("s_out", F, None), helper.make_tensor_value_info("a_out", F, None)],
    )
    scan = helper.make_node(
        "Scan", ["init", "c", "t"], ["last", "y"], body=body, num_scan_inputs=2, scan_input_axes=[0, 1]
    )
    nodes = [helper.make_node("Transpose", ["x"], ["t"]), scan]
    inits = [
        numpy_helper.from_array(np.zeros(3, np.float32), "init"),
        numpy_helper.from_array(np.zeros((4, 3), np.float32), "c"),
    ]
    got = row_mixing_outputs(_model(nodes, inits, opset=16))
    why = "the Scan node making 'last' carries its state along the batch's axis, axis 1 of 't' [3, 'batch']"
    assert got == {"y": why}


async def test_a_slow_write_before_any_drain_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from server.protocol import side_streams
    from server.protocol.calls import CallTracker, StreamLimits

    monkeypatch.setattr(side_streams, "STALLED_WRITE_S", 0.01)

    class Slow:
        async def write(self, message: object) -> None:
            await asyncio.sleep(0.1)  # slower than STALLED_WRITE_S: a slow client, not a stopped one

        def add_done_callback(self, callback: object) -> None:
            raise AssertionError("a slow write is not a stall")

    calls = CallTracker(StreamLimits(4, 4, 4))
    assert await side_streams._SideStream(calls).write(Slow(), object())
    assert calls.stalled == 0
