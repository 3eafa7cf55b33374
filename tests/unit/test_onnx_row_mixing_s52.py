"""The row-mixing reading after session 52: an opset-13 graph read through its computed views, and
picks from hidden states whose steps onnx named apart from the ids' (positions added from a
Range, views with a -1). Each per-row model here had been refused for dynamic batching (GPT-2's
sequence-classification pooling at opset 13, R-BERT's entity pooling), and each mixing one had
loaded batched at opset 13 (a Softmax over the batch, a pick past a row's steps: wrong answers OK
on a real server)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import graph_model, ints, leading_sizes, node, own_view

F = TensorProto.FLOAT
X = [helper.make_tensor_value_info("x", F, ["N", "T", 16])]
CONSTANTS = [
    ints("zero", 0),
    ints("one", 1),
    ints("axis0", [0]),
    ints("four", [4]),
    ints("c16", [16]),
    ints("m1", [-1]),
    ints("steps_axis", [2]),
    ints("from0", [0]),
    ints("to2", [2]),
]
TABLE = numpy_helper.from_array(np.zeros((32, 16), np.float32), "table")


def _heads() -> list[onnx.NodeProto]:
    """x [N, T, 16] viewed as [N, T, 4, 4] and back to 'h' [N, T, 16], by shapes read from x."""
    return [
        *own_view("q", ["four", "four"]),
        node("Concat", ["n1", "t1", "c16"], "whole", axis=0),
        node("Reshape", ["q", "whole"], "h"),
    ]


def _pick(source: str, index: str) -> list[onnx.NodeProto]:
    """source[arange(N), index] as torch's legacy export writes it, for `source` [N, T, 16]."""
    return [
        node("Shape", [source], "hs"),
        node("Gather", ["hs", "zero"], "hn", axis=0),
        node("Gather", ["hs", "one"], "ht", axis=0),
        node("Flatten", [source], "flat", axis=2),
        node("Range", ["zero", "hn", "one"], "rows"),
        node("Mul", ["rows", "ht"], "starts"),
        node("Add", [index, "starts"], "at"),
        node("Gather", ["flat", "at"], "y", axis=0),
    ]


def _top(past: int) -> list[onnx.NodeProto]:
    """'idx': the ArgMax over x's steps of each row's sums, plus `past`."""
    return [
        node("ReduceSum", ["x", "steps_axis"], "sums", keepdims=0),
        node("ArgMax", ["sums"], "top", axis=1, keepdims=0),
        node("Add", ["top", "past"], "idx"),
    ]


def _model(nodes: Sequence[onnx.NodeProto], past: int = 0, opset: int = 17) -> onnx.ModelProto:
    return graph_model(nodes, [*CONSTANTS, TABLE, ints("past", past)], inputs=X, opset=opset)


def test_at_opset_13_a_softmax_over_the_batch_after_a_computed_view_mixes() -> None:
    # onnx's Reshape-13 inference gave the view no shape: the Softmax was not read.
    nodes = [*_heads()[:-2], node("Softmax", ["q"], "y", axis=0)]
    got = row_mixing_outputs(_model(nodes, opset=13))
    assert (
        "the Softmax node making 'y' works along the batch's axis, axis 0 of 'q' ['N', 'T', 4, 4]" in got["y"]
    )


def test_at_opset_13_a_pick_at_an_argmax_after_views_is_per_row_and_one_past_it_mixes() -> None:
    # GPT-2's sequence-classification pooling after attention's views (refused at 13 only).
    assert row_mixing_outputs(_model([*_heads(), *_top(0), *_pick("h", "idx")], opset=13)) == {}
    # ArgMax + 1 reaches the next row's first step (alone, onnxruntime refuses the index).
    got = row_mixing_outputs(_model([*_heads(), *_top(1), *_pick("h", "idx")], past=1, opset=13))
    assert "the Gather node making 'y' picks from 'flat'" in got["y"], got


def _positioned() -> list[onnx.NodeProto]:
    """'h' = x + table[arange(x.shape[1])]: onnx named h's steps anew."""
    return [
        *leading_sizes(),
        node("Range", ["zero", "t", "one"], "pos"),
        node("Gather", ["table", "pos"], "pe", axis=0),
        node("Add", ["x", "pe"], "h"),
    ]


def test_a_pick_from_hidden_states_with_positions_added_is_per_row() -> None:
    # R-BERT's entity pooling: the ArgMax's bound is x's steps, the rows' width h's.
    assert row_mixing_outputs(_model([*_positioned(), *_top(0), *_pick("h", "idx")])) == {}
    got = row_mixing_outputs(_model([*_positioned(), *_top(1), *_pick("h", "idx")], past=1))
    assert "the Gather node making 'y' picks from 'flat'" in got["y"], got


def test_a_pick_after_a_view_with_a_minus_one_is_per_row() -> None:
    # BERT's attention: view(N, -1, 4, 4), then view(shape[:2] + (16,)).
    nodes = [
        *_positioned(),
        node("Concat", ["n1", "m1", "four", "four"], "heads", axis=0),
        node("Reshape", ["h", "heads"], "q"),
        node("Shape", ["q"], "qs"),
        node("Slice", ["qs", "from0", "to2"], "lead"),
        node("Concat", ["lead", "c16"], "whole", axis=0),
        node("Reshape", ["q", "whole"], "merged"),
    ]
    assert row_mixing_outputs(_model([*nodes, *_top(0), *_pick("merged", "idx")])) == {}
    got = row_mixing_outputs(_model([*nodes, *_top(1), *_pick("merged", "idx")], past=1))
    assert "picks from 'flat'" in got["y"], got


LENS = [
    helper.make_tensor_value_info("x", F, ["N", "T", 16]),
    helper.make_tensor_value_info("lens", TensorProto.INT64, ["N"]),
]
PUT = [
    ints("zero", 0),
    ints("one", 1),
    ints("minus", -1),
    ints("last", [-1]),
    ints("from0", [0]),
    ints("to2", [2]),
    ints("shift", 0),
    numpy_helper.from_array(np.array(1.0, np.float32), "mark"),
]


def _index_put(
    *, shift: int = 0, fill: int = 1, updates: str = "mark", tile: Sequence[int] = ()
) -> onnx.ModelProto:
    """y = x * m[..., None], m = zeros(N, T); m[arange(N) (+ shift), lens - 1] = updates, as torch's
    legacy export writes it (Wav2Vec2's feature-vector mask): the two indices broadcast to the
    shape of their sum, an Expand by where(shape == -1, `fill`, shape), then stacked."""
    rows = "rows_tiled" if tile else "rows"
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "zero"], "n", axis=0),
        node("Slice", ["s", "from0", "to2"], "nt"),
        node("ConstantOfShape", ["nt"], "blank", value=numpy_helper.from_array(np.zeros(1, np.float32))),
        node("Range", ["zero", "n", "one"], "places"),
        node("Add", ["places", "shift"], "rows"),
        *([node("Tile", ["rows", "repeats"], "rows_tiled")] if tile else []),
        node("Sub", ["lens", "one"], "idx"),
        node("Add", [rows, "idx"], "both"),
        node("Shape", ["both"], "bshape"),
        node("Shape", ["bshape"], "blen"),
        node("ConstantOfShape", ["blen"], "fills", value=numpy_helper.from_array(np.array([fill], np.int64))),
        node("Mul", ["fills", "minus"], "negatives"),
        node("Equal", ["bshape", "negatives"], "unset"),
        node("Where", ["unset", "fills", "bshape"], "to"),
        node("Expand", [rows, "to"], "row_index"),
        node("Expand", ["idx", "to"], "col_index"),
        node("Unsqueeze", ["row_index", "last"], "row_col"),
        node("Unsqueeze", ["col_index", "last"], "col_col"),
        node("Concat", ["row_col", "col_col"], "at", axis=-1),
        node("Expand", [updates, "to"], "marks"),
        node("ScatterND", ["blank", "at", "marks"], "m"),
        node("Unsqueeze", ["m", "last"], "m3"),
        node("Mul", ["x", "m3"], "y"),
    ]
    inits = [*PUT[:-2], ints("shift", shift), PUT[-1], ints("repeats", list(tile) or [1])]
    return graph_model(nodes, inits, inputs=LENS)


def test_an_index_put_at_each_rows_own_place_is_per_row() -> None:
    # m[arange(N), lens - 1] = 1: index row i writes data row i only, whatever lens is.
    assert row_mixing_outputs(_index_put()) == {}
    assert row_mixing_outputs(_index_put(tile=[1])) == {}  # arange(N).repeat(1): rows as they are


def test_an_index_put_that_reaches_another_row_mixes() -> None:
    for model, why in (
        (_index_put(shift=1), "shift"),  # m[arange(N) + 1, ...]: the next row's
        (_index_put(tile=[2]), "tile"),  # arange(N).repeat(2): rows written twice, by others
        (_index_put(fill=2), "fill"),  # an Expand by where(shape == -1, 2, shape): rows copied
    ):
        assert "y" in row_mixing_outputs(model), why


def test_an_index_put_of_values_made_from_the_batchs_size_mixes() -> None:
    # m[arange(N), lens - 1] = arange(N): each row's mark its place in the batch.
    model = _index_put(updates="place_values")
    model.graph.node.insert(5, node("Cast", ["places"], "place_values", to=F))
    assert "y" in row_mixing_outputs(model)


def _where_put(*, ones: str, cond_to: str = "minus") -> onnx.ModelProto:
    """The index put of `_index_put`, its where(shape == `cond_to`, `ones`, shape) written with
    constants (a `ones` initializer, not a ConstantOfShape)."""
    model = _index_put()
    kept = [n for n in model.graph.node if n.output[0] not in ("blen", "fills", "negatives", "unset", "to")]
    at = next(i for i, n in enumerate(kept) if n.output[0] == "bshape") + 1
    kept[at:at] = [
        node("Equal", ["bshape", cond_to], "unset"),
        node("Where", ["unset", ones, "bshape"], "to"),
    ]
    model.graph.ClearField("node")
    model.graph.node.extend(kept)
    model.graph.initializer.extend([ints("one1", [1]), ints("two1", [2]), ints("minus2", [-1, -1])])
    return model


def test_a_where_of_constant_ones_as_long_as_the_shape_keeps_the_rows() -> None:
    assert row_mixing_outputs(_where_put(ones="one1")) == {}
    assert "y" in row_mixing_outputs(_where_put(ones="two1"))  # twos: rows copied where N is 1
    assert "y" in row_mixing_outputs(_where_put(ones="one1", cond_to="minus2"))  # a condition of two


def test_an_exact_row_column_reads_no_bound_and_a_stride_from_another_input_does() -> None:
    # m[arange(N), argmax(b)] = 1, b another input: the first column is each row's own place
    # whatever b is; flatten(x)[arange(N) * b.shape[1]] reads b's width, which a client may send.
    inputs = [*LENS, helper.make_tensor_value_info("b", F, ["N", "T"])]
    model = _index_put()
    model.graph.input.append(inputs[-1])
    for made in model.graph.node:
        if made.output[0] == "idx":
            made.CopyFrom(node("ArgMax", ["b"], "idx", axis=1, keepdims=0))
    assert row_mixing_outputs(model) == {}
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "zero"], "n", axis=0),
        node("Shape", ["b"], "bs"),
        node("Gather", ["bs", "one"], "width", axis=0),
        node("Flatten", ["x"], "flat", axis=2),
        node("Range", ["zero", "n", "one"], "rows"),
        node("Mul", ["rows", "width"], "y_at"),
        node("Gather", ["flat", "y_at"], "y", axis=0),
    ]
    model = graph_model(nodes, [ints("zero", 0), ints("one", 1)], inputs=inputs)
    assert "y" in row_mixing_outputs(model)
