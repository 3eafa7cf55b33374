"""A Div of a product of dims by a number it divides is the quotient, and floats are followed only
while whole (onnx_partial_arithmetic.py). Original Swin's window_reverse takes the batch back as
B = int(windows.shape[0] / (H * W / ws / ws)), the windows' axis the batch folded with nW, and
views the windows as (B, H / ws, W / ws, ws, ws, -1): refused before as "takes the batch's size as
a value" (a tester, session 61), rows independent in onnxruntime. The B so taken back, used as a
value (x * B), is still the batch's size as a value: refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_partial_arithmetic import whole_floats
from server.backends.onnx_partial_ints import PartialInts
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import rows_independent

N = helper.make_node
F, I64 = TensorProto.FLOAT, TensorProto.INT64
C, WS, H = 8, 2, 4  # channels, window, grid side: (H / WS) ** 2 = 4 windows per image


def ints(name: str, values: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def window_reverse(divisor: float | int, floats: bool, scaled_by_b: bool = False) -> onnx.ModelProto:
    """x [N, H*H, C] -> windows [N*4, WS, WS, C] (a view with -1) -> per-window scale -> B from the
    windows' count / `divisor` (through float as int(a / b) when `floats`, else an int64 Div) ->
    view(B, H/WS, H/WS, WS, WS, -1) -> permute -> view(B, H, H, -1) -> view(N, H*H, C) + x
    (`scaled_by_b`: times B, the batch's size taken as a value)."""
    grid = H // WS
    count = ["Cast", ["nw"], ["nwf"]] if floats else ["Identity", ["nw"], ["nwf"]]
    nodes = [
        N("Shape", ["x"], ["sx"]),
        N("Gather", ["sx", "i0"], ["n"]),
        N("Unsqueeze", ["n", "ax0"], ["n1"]),
        N("Concat", ["n1", "grid6"], ["s6"], axis=0),
        N("Reshape", ["x", "s6"], ["x6"]),
        N("Transpose", ["x6"], ["x6t"], perm=[0, 1, 3, 2, 4, 5]),
        N("Reshape", ["x6t", "windows"], ["win"]),
        N("Mul", ["win", "scale"], ["scaled"]),  # each window's own values, no mixing
        N("Shape", ["scaled"], ["sw"]),
        N("Gather", ["sw", "i0"], ["nw"]),
        N(count[0], count[1], count[2], **({"to": F} if floats else {})),
        N("Div", ["nwf", "per_image"], ["bf"]),
        *([N("Cast", ["bf"], ["b"], to=I64)] if floats else [N("Identity", ["bf"], ["b"])]),
        N("Unsqueeze", ["b", "ax0"], ["b1"]),
        N("Concat", ["b1", "back6"], ["r6"], axis=0),
        N("Reshape", ["scaled", "r6"], ["y6"]),
        N("Transpose", ["y6"], ["y6t"], perm=[0, 1, 3, 2, 4, 5]),
        N("Concat", ["b1", "back4"], ["r4"], axis=0),
        N("Reshape", ["y6t", "r4"], ["y4"]),
        N("Concat", ["n1", "flat"], ["r3"], axis=0),
        N("Reshape", ["y4", "r3"], ["y3"]),
        *([N("Cast", ["b"], ["b_f"], to=F), N("Mul", ["y3", "b_f"], ["y3b"])] if scaled_by_b else []),
        N("Add", ["x", "y3b" if scaled_by_b else "y3"], ["y"]),
    ]
    per_image = (
        numpy_helper.from_array(np.asarray(divisor, np.float32), "per_image")
        if floats
        else ints("per_image", int(divisor))
    )
    inits = [
        ints("i0", 0),
        ints("ax0", [0]),
        ints("grid6", [grid, WS, grid, WS, C]),
        ints("windows", [-1, WS, WS, C]),
        numpy_helper.from_array(np.linspace(0.5, 1.5, C, dtype=np.float32), "scale"),
        per_image,
        ints("back6", [grid, grid, WS, WS, -1]),
        ints("back4", [H, H, -1]),
        ints("flat", [H * H, C]),
    ]
    x = helper.make_tensor_value_info("x", F, ["batch", H * H, C])
    y = helper.make_tensor_value_info("y", F, None)
    model = helper.make_model(
        helper.make_graph(nodes, "swin", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


@pytest.mark.parametrize("floats", [True, False], ids=["int(a / b) in float", "int64 Div"])
def test_swins_window_reverse_takes_the_batch_back_and_batches(floats: bool) -> None:
    model = window_reverse((H * H) / WS / WS, floats)
    assert rows_independent(model, (H * H, C))
    assert row_mixing_outputs(model) == {}


@pytest.mark.parametrize("floats", [True, False], ids=["int(a / b) in float", "int64 Div"])
def test_the_batch_taken_back_is_still_the_batchs_size_as_a_value(floats: bool) -> None:
    # x * B: each request's answer scaled by the size of the batch it was coalesced into.
    model = window_reverse((H * H) / WS / WS, floats, scaled_by_b=True)
    assert not rows_independent(model, (H * H, C))
    refused = row_mixing_outputs(model)
    assert "takes the batch's size as a value" in refused.get("y", ""), refused


def _seen(nodes: list[onnx.NodeProto], dims: dict[str, list[int | str | None]]) -> PartialInts:
    partial = PartialInts()
    values = {"two_f": np.asarray(2.0, np.float32), "half": np.asarray(0.5, np.float32)}
    values["two_i"] = np.asarray(2, np.int64)
    for made in nodes:
        partial.see(made, dims.get, lambda i, made=made: values.get(made.input[i]))
    return partial


def test_a_float_division_is_followed_only_where_it_is_exact() -> None:
    # x [N, 7, 6]: 7.0 / 2.0 is 3.5, not ONNX's integer 3; 6.0 / 2.0 is 3.
    dims: dict[str, list[int | str | None]] = {"x": ["N", 7, 6]}
    nodes = [
        N("Shape", ["x"], ["s"], start=1),
        N("Cast", ["s"], ["sf"], to=F),
        N("Div", ["sf", "two_f"], ["halved"]),
        N("Mul", ["halved", "two_f"], ["back"]),
        N("Cast", ["back"], ["back_i"], to=I64),
        N("Div", ["s", "two_i"], ["int_halved"]),  # an int64 Div truncates, as ONNX's
        N("Mul", ["sf", "half"], ["by_half"]),  # 0.5: not a whole float, not read
    ]
    partial = _seen(nodes, dims)
    assert partial.entries("halved", None) == (None, 3)
    assert partial.entries("back_i", None) == (None, 6)
    assert partial.entries("int_halved", None) == (3, 3)  # 7 / 2 in int64 is 3
    assert partial.entries("by_half", None) is None  # not followed
    assert "back" in partial.floats and "back_i" not in partial.floats


def test_a_folds_count_over_a_number_it_divides_is_its_dims_quotient() -> None:
    spelled = {"w": ["N", 2, 2]}

    def spell(dims: list[int | str | None]) -> list[int | str | None]:
        return [part for dim in dims for part in (spelled.get(dim, [dim]) if isinstance(dim, str) else [dim])]

    partial = PartialInts()
    dims: dict[str, list[int | str | None]] = {"win": ["w", 8]}
    four = {"four": np.asarray(4, np.int64), "two": np.asarray(2, np.int64), "three": np.asarray(3, np.int64)}
    for made in [
        N("Shape", ["win"], ["s"]),
        N("Gather", ["s", "i0"], ["count"]),
        N("Div", ["count", "four"], ["b"]),
        N("Div", ["count", "two"], ["twice_b"]),
        N("Div", ["count", "three"], ["third"]),
    ]:
        partial.see(
            made,
            dims.get,
            lambda i, made=made: four.get(
                made.input[i], np.asarray(0, np.int64) if made.input[i] == "i0" else None
            ),
            spell,
        )
    assert partial.named("b", None) == ("N",)
    [twice] = partial.named("twice_b", None) or (None,)
    assert getattr(twice, "factors", None) == (2, ("N",))
    [third] = partial.named("third", None) or (None,)
    assert third is not None and getattr(third, "factors", "") is None  # made from N, not a product


def test_whole_floats_are_read_exactly_or_not_at_all() -> None:
    assert (whole_floats(np.asarray([4.0, -2.0], np.float32)) == np.asarray([4, -2], object)).all()
    assert whole_floats(np.asarray([4.0, 0.5], np.float32)) is None
    assert whole_floats(np.asarray([2.0**25], np.float32)) is None  # past float32's exact whole numbers
    assert whole_floats(np.asarray([np.nan], np.float32)) is None
    assert whole_floats(np.zeros(65, np.float32)) is None  # larger tensors are not followed


def test_a_float_mod_is_not_followed_and_whole_floats_reach_their_bounds() -> None:
    dims: dict[str, list[int | str | None]] = {"x": ["N", 7, 6]}
    nodes = [
        N("Shape", ["x"], ["s"], start=1),
        N("Cast", ["s"], ["sf"], to=F),
        N("Mod", ["sf", "two_f"], ["m"], fmod=1),
    ]
    assert _seen(nodes, dims).entries("m", None) == (None, None)  # 7.0 fmod 2.0: not followed
    assert whole_floats(np.asarray([2.0**24], np.float32)) is not None  # still exact
    assert whole_floats(np.zeros(64, np.float32)) is not None  # as many as followed


def test_a_folds_quotient_that_is_not_one_dim_is_made_from_its_dims() -> None:
    partial = PartialInts()
    spelled = {"w": ["N", 2, 2]}
    values = {"two": np.asarray(2, np.int64), "i0": np.asarray(0, np.int64)}
    for made in [
        N("Shape", ["win"], ["s"]),
        N("Gather", ["s", "i0"], ["count"]),
        N("Div", ["count", "two"], ["b"]),
    ]:
        partial.see(
            made,
            {"win": ["w", 8]}.get,
            lambda i, made=made: values.get(made.input[i]),
            lambda dims: [p for d in dims for p in (spelled.get(d, [d]) if isinstance(d, str) else [d])],
        )
    [twice] = partial.named("b", None) or (None,)
    assert getattr(twice, "names", None) == frozenset({"N"})
