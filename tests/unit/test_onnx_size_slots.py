"""The batch's size as a shape, a size or a count (server/backends/onnx_size_slots.py): it keeps
rows only as the length of the batch's own axis. A tester, session 56, had a Resize to sizes
[N, 1, N], a Reshape to (min(N, 2), -1), an Expand to [N, min(N, 2)], an AffineGrid's, a
MaxUnpool's and a CenterCropPad's sizes computed from it, and a Loop's count over N iterations all
batched and answered with other widths or batch mates' values, OK; each is refused now, and the
exports that use the size as the batch's own length (a legacy expand through Equal and Where, a
multi-head fold N * H, a constant row tiled to the batch) still batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_partial_ints import Made
from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_size_slots import Site, placed, size_slots

F, I64 = TensorProto.FLOAT, TensorProto.INT64
SIZE = [
    helper.make_node("Shape", ["x"], ["shape"]),
    helper.make_node("Gather", ["shape", "zero"], ["n"]),  # [N]
    helper.make_node("Min", ["n", "two"], ["m"]),  # min(N, 2): 1 alone, 2 batched
]
SHAPE_TAKEN = "as a shape, a size or a count elsewhere than the batch's own axis"


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _floats(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def _model(
    nodes: list[onnx.NodeProto],
    dims: tuple[int | str, ...],
    inits: list[onnx.TensorProto] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", F, ["N", *dims])
    y = helper.make_value_info("y", onnx.TypeProto())
    base = [_ints("zero", [0]), _ints("one", [1]), _ints("two", [2]), _ints("minus", [-1])]
    graph = helper.make_graph([*SIZE, *nodes], "g", [x], [y], [*base, *(inits or [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _concat(name: str, parts: list[str]) -> onnx.NodeProto:
    return helper.make_node("Concat", parts, [name], axis=0)


@pytest.mark.parametrize(
    ("nodes", "dims", "inits", "opset", "op"),
    [
        (  # sizes [N, 1, N]: each request as wide as its batch
            [_concat("s", ["n", "one", "n"]), helper.make_node("Resize", ["x", "", "", "s"], ["y"])],
            (1, 2),
            [],
            17,
            "Resize",
        ),
        (  # sizes [N, 1, min(N, 2)]
            [_concat("s", ["n", "one", "m"]), helper.make_node("Resize", ["x", "", "", "s"], ["y"])],
            (1, 2),
            [],
            17,
            "Resize",
        ),
        (  # x.reshape(min(N, 2), -1): two requests' rows in one
            [
                _concat("s", ["m", "minus"]),
                helper.make_node("Reshape", ["x", "s"], ["r"]),
                helper.make_node("Softmax", ["r"], ["y"], axis=-1),
            ],
            (6,),
            [],
            17,
            "Reshape",
        ),
        (
            [_concat("s", ["n", "m"]), helper.make_node("Expand", ["x", "s"], ["y"])],
            (1,),
            [],
            17,
            "Expand",
        ),
        (
            [_concat("s", ["n", "one", "two", "m"]), helper.make_node("AffineGrid", ["x", "s"], ["y"])],
            (2, 3),
            [],
            20,
            "AffineGrid",
        ),
        (  # the crop on axis 1, to the batch's size
            [helper.make_node("CenterCropPad", ["x", "n"], ["y"], axes=[1])],
            (6,),
            [],
            18,
            "CenterCropPad",
        ),
        (
            [
                helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2], strides=[2]),
                helper.make_node("Mul", ["m", "two"], ["w"]),
                _concat("s", ["n", "one", "w"]),
                helper.make_node("MaxUnpool", ["p", "i", "s"], ["y"], kernel_shape=[2], strides=[2]),
            ],
            (1, 4),
            [],
            17,
            "MaxUnpool",
        ),
        (  # a constant tiled by (N, N): as wide as the batch
            [_concat("r", ["n", "n"]), helper.make_node("Tile", ["c", "r"], ["y"])],
            (1,),
            [_floats("c", (1, 1))],
            17,
            "Tile",
        ),
    ],
)
def test_a_size_made_from_the_batchs_elsewhere_than_its_axis_mixes(
    nodes: list[onnx.NodeProto], dims: tuple[int, ...], inits: list[onnx.TensorProto], opset: int, op: str
) -> None:
    got = row_mixing_outputs(_model(nodes, dims, inits, opset))
    assert set(got) == {"y"}, got
    unread = "two of its dims the load cannot work out"  # a Reshape to [min(N, 2), -1] is read so first
    assert f"the {op} node making" in got["y"] and (SHAPE_TAKEN in got["y"] or unread in got["y"]), got


def test_a_count_carried_over_as_many_iterations_as_the_batch_has_rows_mixes() -> None:
    """A Loop run N times carrying a count, x * count: x * 4 batched with three others, OK."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["c_in", "unit"], ["c_out"]),
            helper.make_node("Identity", ["go_in"], ["go_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", I64, []),
            helper.make_tensor_value_info("go_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("c_in", F, [1]),
        ],
        [
            helper.make_tensor_value_info("go_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("c_out", F, [1]),
        ],
        [numpy_helper.from_array(np.ones(1, np.float32), "unit")],
    )
    nodes = [
        helper.make_node("Squeeze", ["n"], ["count"]),
        helper.make_node("Loop", ["count", "", "start"], ["carried"], body=body),
        helper.make_node("Mul", ["x", "carried"], ["y"]),
    ]
    got = row_mixing_outputs(_model(nodes, (4,), [numpy_helper.from_array(np.zeros(1, np.float32), "start")]))
    assert "the Mul node making 'y' takes the batch's size as a value: it meets 'x'" in got["y"], got


def test_the_size_as_the_batchs_own_length_still_batches() -> None:
    """A legacy expand(N, -1, -1) through Equal and Where; N * 2 folded and back; a constant row
    tiled to (N, 1); a Resize's sizes of Shape(x)[:2] and two fixed; an AffineGrid of [N, 1, 4, 4]."""
    legacy = [
        _concat("s", ["n", "minus", "minus"]),
        helper.make_node(
            "ConstantOfShape", ["three"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.int64))
        ),
        helper.make_node("Equal", ["s", "minus"], ["eq"]),
        helper.make_node("Where", ["eq", "ones", "s"], ["to"]),
        helper.make_node("Expand", ["cls", "to"], ["c"]),
        helper.make_node("Concat", ["c", "x"], ["y"], axis=1),
    ]
    assert row_mixing_outputs(_model(legacy, (3, 4), [_ints("three", [3]), _floats("cls", (1, 1, 4))])) == {}
    fold = [
        helper.make_node("Mul", ["n", "two"], ["n2"]),
        _concat("s", ["n2", "three"]),
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("Softmax", ["r"], ["p"], axis=-1),
        _concat("back", ["n", "minus"]),
        helper.make_node("Reshape", ["p", "back"], ["y"]),
    ]
    assert row_mixing_outputs(_model(fold, (6,), [_ints("three", [3])])) == {}
    tiled = [_concat("r", ["n", "one"]), helper.make_node("Tile", ["c", "r"], ["t"])]
    tiled.append(helper.make_node("Concat", ["x", "t"], ["y"], axis=1))
    assert row_mixing_outputs(_model(tiled, (2,), [_floats("c", (1, 1))])) == {}
    head = [helper.make_node("Slice", ["shape", "zero", "two"], ["nc"]), _concat("s", ["nc", "hw"])]
    resized = [*head, helper.make_node("Resize", ["x", "", "", "s"], ["y"], mode="nearest")]
    assert row_mixing_outputs(_model(resized, (1, 2, 2), [_ints("hw", [4, 4])])) == {}
    grid = [_concat("s", ["n", "one", "four", "four"]), helper.make_node("AffineGrid", ["x", "s"], ["y"])]
    assert row_mixing_outputs(_model(grid, (2, 3), [_ints("four", [4])], opset=20)) == {}


def test_a_reduction_over_copies_of_a_row_expanded_to_the_batch_mixes() -> None:
    """cls expanded to the batch through a legacy Where (onnx names no dim), summed over them:
    N * cls, other for every batch. The expanded axis is read as the batch's."""
    nodes = [
        _concat("s", ["n", "minus"]),
        helper.make_node("Equal", ["s", "minus"], ["eq"]),
        helper.make_node("Where", ["eq", "ones", "s"], ["to"]),
        helper.make_node("Expand", ["cls", "to"], ["c"]),
        helper.make_node("ReduceSum", ["c", "zero"], ["total"], keepdims=1),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    got = row_mixing_outputs(_model(nodes, (4,), [_ints("ones", [1, 1]), _floats("cls", (1, 4))]))
    assert "the ReduceSum node making 'total' works along the batch's axis" in got["y"], got


def test_slots_are_read_from_the_entries_where_the_positions_are_not_known() -> None:
    batch = {"N"}
    assert size_slots(frozenset({0, 2}), None, batch) == {0: True, 2: True}
    entries = ("N", 3, Made(frozenset({"N"})), Made(frozenset({"T"})), None, "T")
    assert size_slots(None, entries, batch) == {0: True, 2: False, 4: False}
    assert size_slots(None, None, batch) is None


@pytest.mark.parametrize(
    ("op", "index", "slots", "site", "attrs", "want"),
    [
        ("Expand", 1, {0: True}, Site([1, 1, 4], [None, 1, 4], 3), {}, [0]),  # a row made the batch's
        ("Expand", 1, {0: True}, Site(["N", 1], ["N", 1], 2), {}, []),  # the data's own batch
        ("Expand", 1, {1: True}, Site(["N", 1], ["N", None], 2), {}, None),  # copies along axis 1
        ("Expand", 1, {0: True, 1: True}, Site([1, 1], [None, None], 2), {}, None),
        ("Expand", 1, {0: True}, Site([4], [None, 4], 2), {}, [0]),  # a shape longer than the data
        ("Expand", 1, {0: True}, Site(None, None, 2), {}, None),
        ("Expand", 1, {0: False}, Site([1, 4], [None, 4], 2), {}, None),
        ("ConstantOfShape", 0, {0: True}, Site(None, ["N", 1], 2), {}, [0]),
        ("ConstantOfShape", 0, {0: True, 1: True}, Site(None, None, 2), {}, None),
        ("Tile", 1, {0: True}, Site([1, 4], [None, 4], 2), {}, [0]),
        ("Tile", 1, {0: True}, Site(["N", 4], [None, 4], 2), {}, None),  # the batch copied
        ("Tile", 1, {1: True}, Site([1, 4], [1, None], 2), {}, None),  # an axis of 4 repeated
        ("Reshape", 1, {0: True}, Site(["N", 6], None, 2), {}, []),  # the reshape's own reading
        ("Reshape", 1, {0: False}, Site(["N", 6], ["F", 3], 2), {}, []),  # F: a fold of the batch
        ("Reshape", 1, {0: False}, Site(["N", 6], ["u", 3], 2), {}, None),
        ("Reshape", 1, {1: True}, Site(["N", 6], ["u", "N", "v"], 3), {}, []),  # its dims: `unread`'s
        ("Reshape", 1, {0: True}, Site(["N", 6], ["N", "u"], 2), {}, []),  # one: worked out
        ("Resize", 3, {0: True}, Site(["N", 1, 2], None, 3), {}, []),
        ("Resize", 3, {2: True}, Site(["N", 1, 2], None, 3), {}, None),
        ("Resize", 3, {0: True}, Site([1, "N", 2], None, 2), {"axes": [1, 2]}, []),
        ("Resize", 2, {0: True}, Site(["N", 1, 2], None, 3), {}, None),  # a scale of N
        ("Upsample", 1, {0: True}, Site(["N", 1, 2], None, 3), {}, None),
        ("CenterCropPad", 1, {0: True}, Site(["N", 6], None, 1), {"axes": [0]}, []),
        ("CenterCropPad", 1, {0: True}, Site(["N", 6], None, 1), {"axes": [1]}, None),
        ("CenterCropPad", 1, {1: True}, Site(["N", 6], None, 2), {}, None),
        ("MaxUnpool", 2, {0: True}, Site(["N", 1, 2], None, 3), {}, []),
        ("MaxUnpool", 2, {2: True}, Site(["N", 1, 2], None, 3), {}, None),
        ("AffineGrid", 1, {0: True}, Site(["N", 2, 3], None, 4), {}, []),
        ("AffineGrid", 1, {0: True, 3: True}, Site(["N", 2, 3], None, 4), {}, None),
        ("Loop", 0, {0: True}, Site(None, None, 1), {}, []),
        ("Shape", 0, None, Site(None, None, None), {}, []),
        ("Expand", 1, None, Site([1, 4], None, None), {}, None),  # not known which entries
        ("Expand", 1, {}, Site([1, 4], None, 2), {}, []),  # none made from the size
        ("Size", 0, {0: True}, Site(None, None, 1), {}, []),
        ("Reshape", 1, {0: False}, Site(["N", 6], None, 2), {}, None),  # computed, its output unnamed
        ("Reshape", 1, {2: True}, Site(["N", 6], ["N", 6], 3), {}, None),  # past the output's rank
        ("CenterCropPad", 1, {1: True}, Site(["N", 6], None, 2), {"axes": [0]}, None),  # past its axes
        ("CenterCropPad", 1, {0: True}, Site([], None, 1), {"axes": [0]}, None),
        ("AffineGrid", 1, {0: True}, Site([1, 2, 3], None, 4), {}, []),  # its theta is not read
        ("MaxUnpool", 2, {0: True}, Site([1, "N", 2], None, 3), {}, None),  # the data's batch not first
        ("Tile", 1, {2: True}, Site([1, 4], None, 2), {}, None),  # past the data's rank
        ("Expand", 1, {1: True}, Site([1, 1, 1], None, 2), {}, [2]),  # aligned from the end
        ("Expand", 1, {1: True}, Site(["N", 1], None, 3), {}, []),  # the data's batch, aligned
    ],
)
def test_where_each_op_keeps_the_size_as_the_batchs_own_axis(
    op: str,
    index: int,
    slots: dict[int, bool] | None,
    site: Site,
    attrs: dict[str, list[int]],
    want: list[int] | None,
) -> None:
    node = helper.make_node(op, ["x", "s", "t", "u"][: index + 1], ["y"], **attrs)
    assert placed(node, index, slots, site, {"N", "F"}) == want


def test_a_slice_from_0_to_the_batchs_size_keeps_every_row() -> None:
    """x[:N] (`hidden[: x.size(0)]`, the legacy form and the dynamo form with steps) was refused as
    bounds computed at run time; one from 1, with a step of N, or of N - 1 rows still is."""
    for extra in ([], ["zero", "one"]):
        inputs = ["x", "zero", "n", *extra] if extra else ["x", "zero", "n"]
        kept = row_mixing_outputs(_model([helper.make_node("Slice", inputs, ["y"])], (4,)))
        assert kept == {}, kept
    cases = {
        "from_one": (["x", "one", "n", "zero"], []),
        "step_n": (["x", "zero", "n", "zero", "n"], []),
        "n_less_one": (["x", "zero", "less", "zero"], [helper.make_node("Sub", ["n", "one"], ["less"])]),
    }
    for name, (inputs, before) in cases.items():
        got = row_mixing_outputs(_model([*before, helper.make_node("Slice", inputs, ["y"])], (4,)))
        assert "the Slice node making 'y' works along the batch's axis" in got.get("y", ""), (name, got)


def test_a_reshape_whose_shape_comes_through_a_where_is_read_with_its_size_named() -> None:
    """x.view(N, -1) with its shape through an Equal and a Where (onnx names no output dim): the
    size names the batch's axis and the reshape is read; [2, N, 3] so made is read from its entries
    as the same shape written plainly: moving rows."""

    def through_where(parts: list[str]) -> list[onnx.NodeProto]:
        return [
            _concat("s", parts),
            helper.make_node("Equal", ["s", "minus"], ["eq"]),
            helper.make_node("Where", ["eq", "minus", "s"], ["to"]),
            helper.make_node("Reshape", ["x", "to"], ["y"]),
        ]

    assert row_mixing_outputs(_model(through_where(["n", "minus"]), (6,))) == {}
    got = row_mixing_outputs(_model(through_where(["two", "n", "three"]), (6,), [_ints("three", [3])]))
    assert "the Reshape node making 'y' moves values between the batch's rows" in got["y"], got
    plain = [_concat("s", ["two", "n", "three"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    got = row_mixing_outputs(_model(plain, (6,), [_ints("three", [3])]))
    assert "the Reshape node making 'y' moves values between the batch's rows" in got["y"], got
