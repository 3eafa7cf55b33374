"""Axes and bounds a graph computes from shapes it knows (a tester, session 61, both refused with
rows independent): a LayerNorm written with axes Size(Shape(x)) - 1 (the rank, folded at load from
the Shape's own dims: onnx_constant_fold.py; the reduction's output dims then filled:
onnx_filled_shapes.py), and torch's opset-9 F.interpolate(size=...) whose Upsample scales are
Shape(x)[2:4] / Shape(low)[2:4] cut by an opset-9 Slice of attributes (onnx_size_positions.py,
onnx_partial_ints.py). Their counterparts along the batch's axis stay refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_filled_shapes import filled_dims
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import graph_model, ints, node, rows_independent

F = TensorProto.FLOAT


def floats(name: str, values: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def layer_norm(less: int) -> onnx.ModelProto:
    """x [N, T, 8] normalised along axis rank - `less` (opset 18: ReduceMean's axes an input)."""
    nodes = [
        node("Shape", ["x"], "sx"),
        node("Size", ["sx"], "rank"),
        node("Sub", ["rank", "less"], "axis"),
        node("Unsqueeze", ["axis", "ax0"], "axes"),
        node("ReduceMean", ["x", "axes"], "mu", keepdims=1),
        node("Sub", ["x", "mu"], "d"),
        node("Pow", ["d", "two"], "d2"),
        node("ReduceMean", ["d2", "axes"], "var", keepdims=1),
        node("Add", ["var", "eps"], "ve"),
        node("Sqrt", ["ve"], "sd"),
        node("Div", ["d", "sd"], "y"),
    ]
    inits = [ints("less", less), ints("ax0", [0]), floats("two", 2.0), floats("eps", 1e-5)]
    return graph_model(nodes, inits, shape=("batch", "seq", 8), opset=18)


def test_a_layer_norm_along_the_last_axis_computed_from_the_rank_batches() -> None:
    model = layer_norm(1)
    assert rows_independent(model, (5, 8))
    assert row_mixing_outputs(model) == {}


def test_the_same_rank_arithmetic_landing_on_the_batchs_axis_is_refused() -> None:
    model = layer_norm(3)  # rank - 3: axis 0, the batch's
    assert not rows_independent(model, (5, 8))
    refused = row_mixing_outputs(model)
    assert "along the batch's axis" in refused.get("y", ""), refused


def upsampled(start: int, end: int) -> onnx.ModelProto:
    """Opset 9: up = Upsample(Conv_s2(x), [1, 1] + Shape(x)[start:end] / Shape(low)[start:end])
    (Slices of attributes), then up + Conv_1x1(x)."""
    rng = np.random.default_rng(2)
    nodes = [
        node("Conv", ["x", "wd"], "low", strides=[2, 2], pads=[1, 1, 1, 1]),
        node("Shape", ["x"], "sx"),
        node("Shape", ["low"], "sl"),
        node("Slice", ["sx"], "hx", starts=[start], ends=[end], axes=[0]),
        node("Slice", ["sl"], "hl", starts=[start], ends=[end], axes=[0]),
        node("Cast", ["hx"], "hxf", to=F),
        node("Cast", ["hl"], "hlf", to=F),
        node("Div", ["hxf", "hlf"], "sc"),
        node("Concat", ["ones", "sc"], "scales", axis=0),
        node("Upsample", ["low", "scales"], "up", mode="nearest"),
        node("Conv", ["x", "wl"], "lat"),
        node("Add", ["up", "lat"], "y"),
    ]
    inits = [
        floats("wd", rng.standard_normal((4, 4, 3, 3)) * 0.3),
        floats("wl", rng.standard_normal((4, 4, 1, 1)) * 0.3),
        floats("ones", [1.0, 1.0]),
    ]
    return graph_model(nodes, inits, shape=("batch", 4, 8, 8), opset=9)


def test_an_opset_9_upsample_to_the_inputs_size_by_attribute_slices_batches() -> None:
    model = upsampled(2, 4)
    assert rows_independent(model, (4, 8, 8))
    assert row_mixing_outputs(model) == {}


@pytest.mark.parametrize(("start", "end", "refused"), [(0, 1, True), (1, 2, False)])
def test_an_attribute_slice_of_the_batchs_size_is_still_the_batchs_size(
    start: int, end: int, refused: bool
) -> None:
    """x * Shape(x)[start:end] as floats: the batch's size taken as a value where the Slice keeps
    position 0, the channels' count (a constant of the model) where it does not."""
    nodes = [
        node("Shape", ["x"], "sx"),
        node("Slice", ["sx"], "picked", starts=[start], ends=[end], axes=[0]),
        node("Cast", ["picked"], "scale", to=F),
        node("Mul", ["x", "scale"], "y"),
    ]
    model = graph_model(nodes, shape=("batch", 3), opset=9)
    assert rows_independent(model, (3,)) is not refused
    assert bool(row_mixing_outputs(model)) is refused


@pytest.mark.parametrize(
    ("attrs", "axes", "out"),
    [
        ({"keepdims": 1}, [-1], ["N", "T", 1]),
        ({"keepdims": 0}, [1], ["N", 8]),
        ({"keepdims": 1}, [], [1, 1, 1]),  # no axes: every axis
        ({"keepdims": 1, "noop_with_empty_axes": 1}, [], ["N", "T", 8]),
        ({"keepdims": 1}, [3], None),  # out of range: not said
    ],
)
def test_a_reductions_dims_follow_its_axes(
    attrs: dict[str, int], axes: list[int], out: list[object] | None
) -> None:
    dims = {"x": ["N", "T", 8]}
    values = {"axes": np.asarray(axes, np.int64)}
    made = helper.make_node("ReduceMean", ["x", "axes"] if axes else ["x"], ["m"], **attrs)
    [filled] = filled_dims(made, dims.get, lambda i: values.get(made.input[i]))  # type: ignore[arg-type]
    assert filled == out


def test_an_opset_9_slice_along_the_batch_is_refused_without_calling_its_bounds_computed() -> None:
    model = graph_model(
        [node("Slice", ["x"], "y", starts=[1], ends=[2], axes=[0])], shape=("batch", 3), opset=9
    )
    said = row_mixing_outputs(model)["y"]
    assert said.startswith("the Slice node making 'y' works along the batch's axis, axis 0 of 'x'")
    assert "computed at run time" not in said  # its bounds are attributes (a tester, session 62)
