"""A length read off a Shape as a value where onnx could not tell it (session 63's open items): a
ConcatFromSequence of the batch's rows names the axis it joins anew (`unk__`) and a Loop's output
has no known rank, so x / Shape(t)[k] (N, 3N, ...) had loaded batched, the ConcatFromSequence's
values alone read as mixing. Now a mixing op's axes named anew are made from the batch's size
(BatchNames.carry), and a Shape of a Loop's or Scan's output of no known rank made from a batched
input holds it (BatchSizeValues._follow)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import ONCE, carried_once, graph_model, ints, node, rows_independent

SIZE_AS_VALUE = "takes the batch's size as a value"


def divided_by_length(made: list[onnx.NodeProto], at: int, inits: tuple = ()) -> onnx.ModelProto:
    """x [N, 3] divided by entry `at` of the Shape of 't' (made by `made`)."""
    nodes = [
        *made,
        node("Shape", ["t"], "sh"),
        node("Gather", ["sh", "at"], "n", axis=0),
        node("Cast", ["n"], "nf", to=onnx.TensorProto.FLOAT),
        node("Div", ["x", "nf"], "y"),
    ]
    return graph_model(nodes, [*inits, ints("at", at)], shape=("N", 3))


def joined(split_axis: int, keepdims: int, axis: int, new_axis: int) -> list[onnx.NodeProto]:
    return [
        helper.make_node("SplitToSequence", ["x"], ["s"], axis=split_axis, keepdims=keepdims),
        helper.make_node("ConcatFromSequence", ["s"], ["t"], axis=axis, new_axis=new_axis),
    ]


@pytest.mark.parametrize(
    ("keepdims", "axis", "new_axis", "at"),
    [(0, 1, 1, 1), (0, 0, 1, 0), (1, 1, 0, 1), (1, 0, 0, 0)],
    ids=["[3, N]", "[N, 3]", "[1, 3N]", "[N, 3] again"],
)
def test_a_length_joined_from_the_batchs_rows_read_as_a_value_mixes_rows(
    keepdims: int, axis: int, new_axis: int, at: int
) -> None:
    model = divided_by_length(joined(0, keepdims, axis, new_axis), at)
    assert not rows_independent(model)  # what onnxruntime does with it
    why = row_mixing_outputs(model).get("y", "")
    assert SIZE_AS_VALUE in why and "the Shape node making 'sh'" in why, why


def test_columns_split_and_joined_back_keep_rows_and_their_length() -> None:
    """SplitToSequence along the columns, joined along them: [N, 3], rows kept; its width read as a
    value is 3 whatever the batch."""
    model = divided_by_length(joined(1, 1, 1, 0), 1)
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_the_first_length_of_a_loops_output_of_no_known_rank_made_from_the_batch_mixes_rows() -> None:
    model = divided_by_length([carried_once("x", "t")], 0, tuple(ONCE))
    assert not rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_any_length_of_such_a_loops_output_is_read_as_the_batchs_size() -> None:
    """Refused though rows are independent (its second length is 3): onnx tells no rank, so the load
    cannot tell which entry is the batch's."""
    model = divided_by_length([carried_once("x", "t")], 1, tuple(ONCE))
    assert rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_a_loops_output_made_from_no_batched_input_is_not_the_batchs_size() -> None:
    table = numpy_helper.from_array(np.ones((2, 3), np.float32), "table")
    model = divided_by_length([carried_once("table", "t")], 0, (*ONCE, table))
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}
