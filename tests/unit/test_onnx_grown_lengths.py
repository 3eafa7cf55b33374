"""A length an op computes from the batch's, read as a value (a tester, session 62, then the same
form through four more ops): Tile(x, [2, 1]) is 2N rows, so x / Shape(it)[0] divides each request's
rows by twice the size of the batch it was coalesced into. onnx names such an axis anew (`unk__`),
so the Shape's entry had not been read as made from the batch's size and the model loaded batched.
Now an axis onnx names anew where the op's input has the batch's axis counts as made from it
(onnx_batch_names.BatchNames.grew); one the op takes from another axis does not."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import graph_model, ints, node, rows_independent

SIZE_AS_VALUE = "takes the batch's size as a value"
BIG = 1 << 40
TABLE = numpy_helper.from_array(np.array([[1.0, 2.0, 3.0]], np.float32), "table")


def divided_by_length(
    made: list[onnx.NodeProto], inits: list[onnx.TensorProto], at: int = 0
) -> onnx.ModelProto:
    """x [N, 3] divided by entry `at` of the Shape of 't' (made by `made`)."""
    nodes = [
        *made,
        node("Shape", ["t"], "sh"),
        node("Gather", ["sh", "at"], "n", axis=0),
        node("Cast", ["n"], "nf", to=onnx.TensorProto.FLOAT),
        node("Div", ["x", "nf"], "y"),
    ]
    return graph_model(nodes, [*inits, ints("at", at)], shape=("N", 3), opset=18)


GROWN = {
    "Tile(x, [2, 1])": ([node("Tile", ["x", "twice"], "t")], [ints("twice", [2, 1])]),
    "Concat(x, x)": ([node("Concat", ["x", "x"], "t", axis=0)], []),
    "Pad(x) by a row": ([node("Pad", ["x", "pads"], "t")], [ints("pads", [1, 0, 0, 0])]),
    "Concat(a table, x)": ([node("Concat", ["table", "x"], "t", axis=0)], [TABLE]),
    "x[1:]": (
        [node("Slice", ["x", "one", "big", "axis0"], "t")],
        [ints("one", [1]), ints("big", [BIG]), ints("axis0", [0])],
    ),
}


@pytest.mark.parametrize("form", list(GROWN))
def test_a_length_made_from_the_batchs_read_as_a_value_mixes_rows(form: str) -> None:
    made, inits = GROWN[form]
    model = divided_by_length(made, inits)
    assert not rows_independent(model)  # what onnxruntime does with it
    why = row_mixing_outputs(model)
    assert SIZE_AS_VALUE in why.get("y", ""), why
    assert "the Shape node making 'sh'" in why["y"], why


def test_a_half_of_the_batch_read_as_a_value_mixes_rows() -> None:
    model = divided_by_length([onnx.helper.make_node("Split", ["x"], ["t", "u"], axis=0, num_outputs=2)], [])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((4, 3), np.float32)
    assert session.run(None, {"x": x})[0][0, 0] == 0.5 and session.run(None, {"x": x[:2]})[0][0, 0] == 1.0
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_a_length_through_an_op_after_it_is_still_made_from_the_batchs() -> None:
    made = [node("Tile", ["x", "twice"], "grown"), node("Relu", ["grown"], "t")]  # onnx keeps its name
    model = divided_by_length(made, [ints("twice", [2, 1])])
    assert not rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


@pytest.mark.parametrize(
    ("form", "made", "inits"),
    [
        ("Tile(x, [1, 2])", [node("Tile", ["x", "twice"], "t")], [ints("twice", [1, 2])]),
        ("Concat(x, x, axis 1)", [node("Concat", ["x", "x"], "t", axis=1)], []),
        (
            "x[:, 1:]",
            [node("Slice", ["x", "one", "big", "axis1"], "t")],
            [ints("one", [1]), ints("big", [BIG]), ints("axis1", [1])],
        ),
    ],
)
def test_a_length_of_another_axis_read_as_a_value_keeps_rows(
    form: str, made: list[onnx.NodeProto], inits: list[onnx.TensorProto]
) -> None:
    model = divided_by_length(made, inits, at=1)  # 6, 6 and 2: the same for every batch
    assert rows_independent(model), form
    assert row_mixing_outputs(model) == {}, form


def test_a_length_of_another_named_axis_read_as_a_value_keeps_rows() -> None:
    # x [N, T]: Tile(x, [1, 2]) is [N, 2T], its axis 1 named anew by onnx, the same for every row.
    nodes = [
        node("Tile", ["x", "twice"], "t"),
        node("Shape", ["t"], "sh"),
        node("Gather", ["sh", "at"], "n", axis=0),
        node("Cast", ["n"], "nf", to=onnx.TensorProto.FLOAT),
        node("Div", ["x", "nf"], "y"),
    ]
    model = graph_model(nodes, [ints("twice", [1, 2]), ints("at", 1)], shape=("N", "T"), opset=18)
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_a_length_made_from_the_batchs_read_inside_an_if_branch_mixes_rows() -> None:
    f = onnx.TensorProto.FLOAT
    inside = [
        node("Shape", ["t"], "sh"),
        node("Gather", ["sh", "at"], "n", axis=0),
        node("Cast", ["n"], "nf", to=f),
        node("Div", ["x", "nf"], "out"),
    ]
    branch = onnx.helper.make_graph(inside, "then", [], [onnx.helper.make_tensor_value_info("out", f, None)])
    other = onnx.helper.make_graph(
        [node("Identity", ["x"], "same")], "else", [], [onnx.helper.make_tensor_value_info("same", f, None)]
    )
    nodes = [
        node("Tile", ["x", "twice"], "t"),
        node("Constant", [], "yes", value=onnx.helper.make_tensor("v", onnx.TensorProto.BOOL, [], [True])),
        onnx.helper.make_node("If", ["yes"], ["y"], then_branch=branch, else_branch=other),
    ]
    model = graph_model(nodes, [ints("twice", [2, 1]), ints("at", 0)], shape=("N", 3), opset=18)
    assert not rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", ""), row_mixing_outputs(model)
