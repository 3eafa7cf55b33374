"""Ops that move rows along the batch's axis (server/backends/onnx_mixing_ops.py `_moved`): a tester
of session 50 exported `x - x[:1]`, `x.flip(0)`, `torch.roll(x, 1, 0)`, a chunk-then-cat and a pad
along the batch from torch; each loaded batched and every request batched with others got another's
rows, OK. Also BatchNormalization in training mode as opset 13 writes it (its statistics as outputs)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import COMPUTED_SLICE, row_mixing_outputs

F = TensorProto.FLOAT
X = [helper.make_tensor_value_info("x", F, [None, 3])]
Y = [helper.make_tensor_value_info("y", F, None)]
END = 2**63 - 1  # torch's "to the end"


def _model(
    nodes: Sequence[onnx.NodeProto],
    inits: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    inputs: Sequence[onnx.ValueInfoProto] = X,
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(Y), initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _ints(name: str, values: Sequence[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _why(op: str, made: str, axis: int = 0) -> str:
    return f"the {op} node making '{made}' works along the batch's axis, axis {axis} of 'x' ['batch', 3]"


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps", "mixes"),
    [
        ([0], [1], [0], [1], True),  # x[:1]
        ([-1], [-END], [0], [-1], True),  # x.flip(0)
        ([1], [END], [0], [1], True),  # x[1:]
        ([0], [END], [0], [1], False),  # x[:] along the batch: every row, in order
        ([0], [2], [1], [1], False),  # x[:, :2]
        ([0, 0], [END, 2], [0, 1], [1, 1], False),
        ([0], [END], [0], [2], True),  # every other row
    ],
)
def test_a_slice_mixes_unless_it_keeps_the_batch_whole(
    starts: list[int], ends: list[int], axes: list[int], steps: list[int], mixes: bool
) -> None:
    inits = [_ints("s", starts), _ints("e", ends), _ints("a", axes), _ints("p", steps)]
    picked = helper.make_node("Slice", ["x", "s", "e", "a", "p"], ["r"])
    model = _model([picked, helper.make_node("Sub", ["x", "r"], ["y"])], inits)
    assert row_mixing_outputs(model) == ({"y": _why("Slice", "r")} if mixes else {})


def test_a_slice_before_opset_10_reads_its_attributes_and_without_axes_every_one_it_names() -> None:
    old = helper.make_node("Slice", ["x"], ["r"], starts=[0], ends=[1], axes=[0])
    assert row_mixing_outputs(_model([old, helper.make_node("Sub", ["x", "r"], ["y"])], opset=9))
    whole = helper.make_node("Slice", ["x"], ["r"], starts=[0], ends=[END], axes=[0])
    assert not row_mixing_outputs(_model([whole, helper.make_node("Sub", ["x", "r"], ["y"])], opset=9))
    implied = helper.make_node("Slice", ["x", "s", "e"], ["r"])  # axes: 0 .. len(starts) - 1
    got = row_mixing_outputs(
        _model([implied, helper.make_node("Sub", ["x", "r"], ["y"])], [_ints("s", [1]), _ints("e", [END])])
    )
    assert got == {"y": _why("Slice", "r")}


def test_a_slice_with_bounds_computed_at_run_time_mixes_along_the_axes_it_names() -> None:
    # torch's chunk(2, 0): the bounds are half the batch's size, read from its shape.
    half = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["rows"]),
        helper.make_node("Div", ["rows", "two"], ["h"]),
    ]
    inits = [_ints("zero", [0]), _ints("two", [2]), _ints("a", [0]), _ints("start", [0])]
    chunk = helper.make_node("Slice", ["x", "start", "h", "a"], ["first"])
    got = row_mixing_outputs(_model([*half, chunk, helper.make_node("Identity", ["first"], ["y"])], inits))
    assert got == {"y": _why("Slice", "first") + COMPUTED_SLICE}
    # Along axis 1, x[:, :N // 2] makes each request as wide as half its batch (session 56: taken
    # as a count that keeps rows, TopK's K, Trilu's k and Pad's, Tile's and Slice's sizes so too).
    sized = "the Slice node making 'first' takes 'h', made from the batch's size by the Shape node"
    along = helper.make_node("Slice", ["x", "start", "h", "one"], ["first"])
    wide = _model([*half, along, helper.make_node("Identity", ["first"], ["y"])], [*inits, _ints("one", [1])])
    assert row_mixing_outputs(wide)["y"].startswith(sized)
    computed_axes = [helper.make_tensor_value_info("axes", TensorProto.INT64, [1])]
    unknown = helper.make_node("Slice", ["x", "start", "h", "axes"], ["first"])
    model = _model(
        [*half, unknown, helper.make_node("Identity", ["first"], ["y"])], inits, inputs=[*X, *computed_axes]
    )
    assert row_mixing_outputs(model)["y"].startswith(sized)  # which axis, not known: either mixes


def test_a_split_and_a_concat_along_the_batch_mix() -> None:
    split = helper.make_node("Split", ["x"], ["a", "b"], axis=0, num_outputs=2)
    swapped = helper.make_node("Concat", ["b", "a"], ["y"], axis=0)
    assert row_mixing_outputs(_model([split, swapped], opset=18)) == {"y": _why("Split", "a")}
    columns = helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2])
    beside = helper.make_node("Concat", ["b", "a"], ["y"], axis=1)
    assert row_mixing_outputs(_model([columns, beside], opset=13)) == {}
    doubled = helper.make_node("Concat", ["x", "x"], ["y"], axis=0)
    assert row_mixing_outputs(_model([doubled])) == {"y": _why("Concat", "y")}
    assert row_mixing_outputs(_model([helper.make_node("Concat", ["x"], ["y"], axis=0)])) == {}


@pytest.mark.parametrize(
    ("pads", "mixes"), [([1, 0, 0, 0], True), ([0, 0, 1, 0], True), ([0, 1, 0, 1], False)]
)
def test_a_pad_along_the_batch_mixes(pads: list[int], mixes: bool) -> None:
    model = _model([helper.make_node("Pad", ["x", "p"], ["y"])], [_ints("p", pads)], opset=13)
    assert row_mixing_outputs(model) == ({"y": _why("Pad", "y")} if mixes else {})
    old = _model([helper.make_node("Pad", ["x"], ["y"], pads=pads)], opset=10)
    assert bool(row_mixing_outputs(old)) is mixes


def test_a_pad_of_chosen_axes_and_of_pads_computed_at_run_time() -> None:
    chosen = _model(
        [helper.make_node("Pad", ["x", "p", "", "a"], ["y"])], [_ints("p", [1, 0]), _ints("a", [0])], opset=18
    )
    assert row_mixing_outputs(chosen) == {"y": _why("Pad", "y")}
    other = _model(
        [helper.make_node("Pad", ["x", "p", "", "a"], ["y"])], [_ints("p", [1, 0]), _ints("a", [1])], opset=18
    )
    assert row_mixing_outputs(other) == {}
    # Pads a client sends (or the graph computes) may add rows: refused since session 51 (a tester's
    # pads [x.shape[1] // 4, 0, 0, 0] gave each request the row before it).
    computed = [helper.make_tensor_value_info("p", TensorProto.INT64, [4])]
    got = row_mixing_outputs(
        _model([helper.make_node("Pad", ["x", "p"], ["y"])], opset=13, inputs=[*X, *computed])
    )
    assert got == {
        "y": "the Pad node making 'y' may add rows to the batch's axis 0: its pads are computed at run "
        "time: the load cannot tell it adds no rows"
    }


def test_a_tile_that_repeats_rows_mixes() -> None:
    assert row_mixing_outputs(
        _model([helper.make_node("Tile", ["x", "r"], ["y"])], [_ints("r", [2, 1])])
    ) == {"y": _why("Tile", "y")}
    assert (
        row_mixing_outputs(_model([helper.make_node("Tile", ["x", "r"], ["y"])], [_ints("r", [1, 2])])) == {}
    )


def test_batch_normalization_in_training_mode_as_opset_13_writes_it() -> None:
    stats = [numpy_helper.from_array(np.ones(3, np.float32), n) for n in ("s", "b", "m", "v")]
    feeds = ["x", "s", "b", "m", "v"]
    training = helper.make_node("BatchNormalization", feeds, ["y", "running_mean", "running_var"])
    assert row_mixing_outputs(_model([training], stats, opset=13)) == {"y": _why("BatchNormalization", "y")}
    inference = helper.make_node("BatchNormalization", feeds, ["y"])
    assert row_mixing_outputs(_model([inference], stats, opset=13)) == {}
    skipped = helper.make_node("BatchNormalization", feeds, ["y", "", ""])  # outputs not asked for
    assert row_mixing_outputs(_model([skipped], stats, opset=13)) == {}


def test_pads_and_axes_written_through_constant_chains_are_read() -> None:
    # torch's legacy F.pad: pads made by Constant -> Unsqueeze -> Concat -> Cast; a Slice's axes
    # as an Unsqueeze of a Constant (exported without constant folding). Both had read as computed.
    nodes = [
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.asarray(1, np.int64))),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.asarray(0, np.int64))),
        helper.make_node("Unsqueeze", ["one", "ax"], ["one1"]),
        helper.make_node("Unsqueeze", ["zero", "ax"], ["zero1"]),
        helper.make_node("Concat", ["one1", "zero1", "zero1", "zero1"], ["pads64"], axis=0),
        helper.make_node("Cast", ["pads64"], ["pads"], to=TensorProto.INT64),
        helper.make_node("Pad", ["x", "pads"], ["y"]),
    ]
    assert row_mixing_outputs(_model(nodes, [_ints("ax", [0])], opset=13)) == {"y": _why("Pad", "y")}
    sliced = [
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.asarray(0, np.int64))),
        helper.make_node("Unsqueeze", ["zero", "ax"], ["axes"]),
        helper.make_node("Slice", ["x", "s", "e", "axes"], ["r"]),
        helper.make_node("Sub", ["x", "r"], ["y"]),
    ]
    got = row_mixing_outputs(_model(sliced, [_ints("ax", [0]), _ints("s", [0]), _ints("e", [1])], opset=13))
    assert got == {"y": _why("Slice", "r")}


def test_trilu_and_a_split_into_a_sequence_along_the_batch_mix() -> None:
    assert row_mixing_outputs(_model([helper.make_node("Trilu", ["x"], ["y"])])) == {"y": _why("Trilu", "y")}
    seq = [
        helper.make_node("SplitToSequence", ["x"], ["rows"]),
        helper.make_node("SequenceAt", ["rows", "i"], ["y"]),
    ]
    assert row_mixing_outputs(_model(seq, [_ints("i", 0)])) == {"y": _why("SplitToSequence", "rows")}
    along = [
        helper.make_node("SplitToSequence", ["x"], ["cols"], axis=1),
        helper.make_node("ConcatFromSequence", ["cols"], ["y"], axis=1),
    ]
    assert row_mixing_outputs(_model(along)) == {}


def test_a_pairwise_broadcast_pairs_each_row_with_every_other() -> None:
    # x[:, None] - x[None]: [N, 1, 3] - [1, N, 3] -> [N, N, 3], a request's rows against the batch's.
    nodes = [
        helper.make_node("Unsqueeze", ["x", "one"], ["a"]),
        helper.make_node("Unsqueeze", ["x", "zero"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["y"]),
    ]
    got = row_mixing_outputs(_model(nodes, [_ints("one", [1]), _ints("zero", [0])]))
    assert got == {
        "y": "the Sub node making 'y' pairs each row of the batch with every other: it broadcasts axis 0 of "
        "'a' ['batch', 1, 3] against axis 1 of 'b' [1, 'batch', 3], both the batch's axis"
    }
    same = [helper.make_node("Unsqueeze", ["x", "one"], ["a"]), helper.make_node("Mul", ["a", "a"], ["y"])]
    assert row_mixing_outputs(_model(same, [_ints("one", [1])])) == {}
    bias = _model(
        [helper.make_node("Add", ["x", "b"], ["y"])], [numpy_helper.from_array(np.ones(3, np.float32), "b")]
    )
    assert row_mixing_outputs(bias) == {}


def test_a_slice_with_computed_bounds_and_no_axes_names_as_many_axes_as_its_starts() -> None:
    computed = [helper.make_tensor_value_info(n, TensorProto.INT64, [1]) for n in ("s", "e")]
    model = _model(
        [helper.make_node("Slice", ["x", "s", "e"], ["r"]), helper.make_node("Sub", ["x", "r"], ["y"])],
        inputs=[*X, *computed],
    )
    assert row_mixing_outputs(model) == {"y": _why("Slice", "r") + COMPUTED_SLICE}
