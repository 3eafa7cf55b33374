"""torch.broadcast_tensors(x, w) exports Expand(t, Max(Shape(x), Shape(w))): with w [1, 3], max(N, 1)
is the batch's size itself, and each tensor broadcast to [N, 3] keeps its rows. It had been refused
(max(N, 1) read as a length made from the batch's size, and a small weight's Shape not read at all).
A Max or Min of a dim with itself, or a Max of a dim and a number of at most 1, is that dim now
(onnx_partial_arithmetic._kept_dim); a Max with a larger number is still made from it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from server.backends.onnx_partial_arithmetic import Made, symbolic
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import graph_model, ints, node, rows_independent

W = numpy_helper.from_array(np.array([[1.0, 2.0, 3.0]], np.float32), "w")
AS_SHAPE = "as a shape, a size or a count elsewhere than the batch's own axis"
AS_VALUE = "takes the batch's size as a value"


def broadcast(other_shape: list) -> list:
    """x and w broadcast to Max(Shape(x), other's shape), then added."""
    return [
        node("Shape", ["x"], "sx"),
        *other_shape,
        node("Max", ["sx", "sw"], "m"),
        node("Expand", ["w", "m"], "we"),
        node("Expand", ["x", "m"], "xe"),
        node("Add", ["xe", "we"], "y"),
    ]


FORMS = {
    "Shape(w) of a weight": ([node("Shape", ["w"], "sw")], [W]),
    "a folded [1, 3]": ([], [W, ints("sw", [1, 3])]),
    "Shape(Relu(x))": ([node("Relu", ["x"], "r"), node("Shape", ["r"], "sw")], [W]),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_broadcast_tensors_of_the_batch_and_a_row_keeps_rows_and_loads_batched(form: str) -> None:
    made, inits = FORMS[form]
    model = graph_model(broadcast(made), inits, shape=("N", 3))
    assert rows_independent(model)  # what onnxruntime does with it
    assert row_mixing_outputs(model) == {}


@pytest.mark.parametrize("length", [2, 4])
def test_a_max_with_a_longer_length_still_mixes_rows(length: int) -> None:
    """Expand(x, Max(Shape(x), [4, 3])): alone, a row is four copies; batched, N rows unless N < 4."""
    model = graph_model(broadcast([]), [W, ints("sw", [length, 3])], shape=("N", 3))
    assert not rows_independent(model)
    assert AS_SHAPE in row_mixing_outputs(model).get("y", "")


def test_max_of_the_batchs_size_and_one_taken_as_a_value_still_mixes_rows() -> None:
    """x / max(N, 1): the batch's size itself, read as a value."""
    nodes = [
        node("Shape", ["x"], "sx"),
        node("Max", ["sx", "one"], "m"),
        node("Gather", ["m", "zero"], "n", axis=0),
        node("Cast", ["n"], "nf", to=1),
        node("Div", ["x", "nf"], "y"),
    ]
    model = graph_model(nodes, [ints("one", [1, 1]), ints("zero", 0)], shape=("N", 3))
    assert not rows_independent(model)
    assert AS_VALUE in row_mixing_outputs(model).get("y", "")


@pytest.mark.parametrize(
    ("op", "first", "second", "want"),
    [
        ("Max", "N", 1, "N"),
        ("Max", 0, "N", "N"),
        ("Max", "N", -1, "N"),
        ("Max", "N", "N", "N"),
        ("Min", "N", "N", "N"),
        ("Max", "N", 2, Made(frozenset({"N"}))),
        ("Min", "N", 1, Made(frozenset({"N"}))),
        ("Max", "N", "T", Made(frozenset({"N", "T"}))),
    ],
)
def test_which_max_and_min_give_the_dim_back(op: str, first: object, second: object, want: object) -> None:
    made = symbolic(op, [np.array([first], dtype=object), np.array([second], dtype=object)])
    assert made is not None and made.tolist() == [want]
