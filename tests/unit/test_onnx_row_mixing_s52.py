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
from tests.support.onnx_graphs import graph_model, ints, node

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


def _sizes() -> list[onnx.NodeProto]:
    """'n', 't': x's batch and steps; 'n1', 't1' the same as one value."""
    return [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "zero"], "n", axis=0),
        node("Gather", ["s", "one"], "t", axis=0),
        node("Unsqueeze", ["n", "axis0"], "n1"),
        node("Unsqueeze", ["t", "axis0"], "t1"),
    ]


def _heads() -> list[onnx.NodeProto]:
    """x [N, T, 16] viewed as [N, T, 4, 4] and back to 'h' [N, T, 16], by shapes read from x."""
    return [
        *_sizes(),
        node("Concat", ["n1", "t1", "four", "four"], "heads", axis=0),
        node("Reshape", ["x", "heads"], "q"),
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
        *_sizes(),
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
