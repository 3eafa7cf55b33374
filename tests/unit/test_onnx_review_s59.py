"""A tester's review of the value lineage (session 59, on 39bc7ff): a one-row table made by a Tile, a
Pad or an Expand from amounts read off another axis's length has every dim `unk__` in onnx's
inference; counted as made from no batched input, its first dim (1 at run time) read as a length the
load cannot tell against the batch's axis, and x + table was refused batching where each row is its
own. Now those dims are read from the amounts' known entries (onnx_partial_dims.py), the op's form
fills dims onnx named `unk__` (onnx_filled_shapes.filled_where_unsure), and an Equal and a Where of
constants fold (torch's legacy expand's -1s)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_constant_fold import folded
from server.backends.onnx_filled_shapes import filled_where_unsure
from server.backends.onnx_partial_dims import partial_dims
from server.backends.onnx_partial_ints import PartialInts
from server.backends.onnx_row_mixing import row_mixing_outputs

F = TensorProto.FLOAT
N = helper.make_node
C = 8


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _floats(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", F, ["N", "T", C])
    y = helper.make_tensor_value_info("y", F, ["N", "T", C])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


T1 = N("Shape", ["x"], ["t1"], start=1, end=2)  # x's length T, as a 1-element tensor


def test_a_bias_tiled_to_the_sequences_length_is_added_to_each_row() -> None:
    """torch's bias.repeat(1, x.shape[1], 1) + x."""
    nodes = [T1, N("Concat", ["one", "t1", "one"], ["rep"], axis=0), N("Tile", ["bias", "rep"], ["tb"])]
    nodes.append(N("Add", ["x", "tb"], ["y"]))
    assert row_mixing_outputs(_model(nodes, [_floats("bias", (1, 1, C)), _ints("one", [1])])) == {}
    # Tiled along the batch's axis by T: T rows, read by place against the batch's.
    nodes[1] = N("Concat", ["t1", "one", "one"], ["rep"], axis=0)
    why = row_mixing_outputs(_model(nodes, [_floats("bias", (1, 1, C)), _ints("one", [1])]))["y"]
    assert "broadcasts axis 0 of 'x'" in why


def test_a_position_table_padded_to_the_sequences_length_is_added_to_each_row() -> None:
    nodes = [
        T1,
        N("Sub", ["t1", "three"], ["extra"]),
        N("Concat", ["zeros4", "extra", "zero"], ["pads"], axis=0),  # [0, 0, 0, 0, T - 3, 0]
        N("Pad", ["pos", "pads"], ["pp"]),
        N("Add", ["x", "pp"], ["y"]),
    ]
    inits = [
        _floats("pos", (1, 3, C)),
        _ints("three", [3]),
        _ints("zeros4", [0, 0, 0, 0]),
        _ints("zero", [0]),
    ]
    assert row_mixing_outputs(_model(nodes, inits)) == {}
    # Padded on the batch's axis by T - 3 rows before: refused.
    nodes[2] = N("Concat", ["extra", "zeros4", "zero"], ["pads"], axis=0)
    assert "y" in row_mixing_outputs(_model(nodes, inits))


@pytest.mark.parametrize("minus_ones_read_from", ["a shape", "ones"])
def test_a_sliced_table_expanded_with_torchs_legacy_minus_ones_is_added_to_each_row(
    minus_ones_read_from: str,
) -> None:
    """pos[:, :T].expand(1, -1, -1): the -1s replaced by Where(Equal(shape, -1), ..., shape)."""
    filler = "ss" if minus_ones_read_from == "a shape" else "ones"
    nodes = [
        T1,
        N("Slice", ["table", "zero", "t1", "axis1"], ["s"]),
        N("Equal", ["shp", "minus1"], ["is_m1"]),
        N("Shape", ["s"], ["ss"]),
        N("Where", ["is_m1", filler, "shp"], ["fixed"]),
        N("Expand", ["s", "fixed"], ["e"]),
        N("Add", ["x", "e"], ["y"]),
    ]
    inits = [_floats("table", (1, 16, C)), _ints("zero", [0]), _ints("axis1", [1]), _ints("ones", [1])]
    inits += [_ints("shp", [1, -1, -1]), _ints("minus1", [-1])]
    assert row_mixing_outputs(_model(nodes, inits)) == {}


def _dims(known: dict[str, list[int | str | None]]):  # type: ignore[no-untyped-def]
    return lambda name: known.get(name)


def test_partial_dims_fill_only_what_the_amounts_make_certain() -> None:
    partial = PartialInts()
    partial.known["rep"] = np.array([1, "T", 1], dtype=object)
    tile = N("Tile", ["b", "rep"], ["t"])
    dims = _dims({"b": [1, 1, C], "t": ["unk__0", "unk__1", "unk__2"]})
    assert partial_dims(tile, partial, dims, lambda i: None) == [1, "T", C]
    dims = _dims({"b": [2, 1, C], "t": ["unk__0", "unk__1", 9]})  # 2 * 1; a dim onnx named is kept
    assert partial_dims(tile, partial, dims, lambda i: None) == [2, "T", 9]
    partial.known["rep"] = np.array([None, 3, 1], dtype=object)
    dims = _dims({"b": [2, 2, C], "t": None})  # an unknown repeat: that dim unknown
    assert partial_dims(tile, partial, dims, lambda i: None) == [None, 6, C]
    pad = N("Pad", ["b", "pads"], ["p"])
    partial.known["pads"] = np.array([0, 1, 0, 0, "T", 0], dtype=object)
    dims = _dims({"b": ["N", 2, C], "p": ["unk__0", "unk__1", "unk__2"]})
    assert partial_dims(pad, partial, dims, lambda i: None) == ["N", "unk__1", C]  # 2 + 1 + T: unsure
    with_axes = N("Pad", ["b", "pads", "", "axes"], ["p"])  # opset 18: pads for `axes` alone
    assert partial_dims(with_axes, partial, dims, lambda i: None) is None
    expand = N("Expand", ["b", "shape"], ["e"])
    partial.known["shape"] = np.array([1, -1, "T", 1], dtype=object)
    dims = _dims({"b": [1, 1, 1], "e": None})  # a -1 or 0 in Expand's shape is no certain length
    assert partial_dims(expand, partial, dims, lambda i: None) == [1, None, "T", 1]
    partial.known["shape"] = np.array([1, 1, "T", 1], dtype=object)
    dims = _dims({"b": [5, 1, 1], "e": ["unk__0", "unk__1", "unk__2", "unk__3"]})
    assert partial_dims(expand, partial, dims, lambda i: None) == [1, 5, "T", 1]
    assert partial_dims(N("Add", ["b", "shape"], ["e"]), partial, dims, lambda i: None) is None
    held = {"w": np.ones((1, 1, 1), np.float32)}  # an initializer: its dims from its value
    dims = _dims({"e": None})
    made = partial_dims(N("Expand", ["w", "shape"], ["e"]), partial, dims, lambda i: None, held.get)
    assert made == [1, 1, "T", 1]


def test_the_ops_form_fills_the_dims_onnx_named_unk_only() -> None:
    node = N("Slice", ["table", "z", "t1", "axis1"], ["s"])
    known = {"table": [1, 16, C], "s": ["unk__0", "unk__1", 5]}
    constant = {1: np.array([0]), 3: np.array([1])}
    filled = filled_where_unsure(node, _dims(known), lambda i: constant.get(i))  # type: ignore[arg-type]
    assert filled == [[1, "unk__1", 5]]  # the cut axis as onnx had it; a dim onnx knew kept
    known["s"] = [1, "S", C]
    assert filled_where_unsure(node, _dims(known), lambda i: constant.get(i)) == [None]  # type: ignore[arg-type]


def test_an_equal_and_a_where_of_constants_fold() -> None:
    equal = folded(N("Equal", ["a", "b"], ["c"]), [np.array([1, -1, -1]), np.array([-1])])
    assert equal is not None and equal.tolist() == [False, True, True]
    where = folded(N("Where", ["c", "d", "e"], ["f"]), [equal, np.array([1]), np.array([1, -1, -1])])
    assert where is not None and where.tolist() == [1, 1, 1]


# A third tester's review (session 59, on 23610a4): a one-row position table resized by scales read
# off the input (torch's F.interpolate(pos, scale_factor=(h / 4, w / 4))) had every dim unk__; made
# from no batched input, its 1 read as a length the load could not tell against the batch's axis.
def test_a_position_table_resized_by_scales_read_off_the_input_is_added_to_each_row() -> None:
    nodes = [
        N("Shape", ["x"], ["t"], start=1, end=2),
        N("Cast", ["t"], ["tf"], to=F),
        N("Div", ["tf", "four"], ["r"]),
        N("Concat", ["ones", "r"], ["scales"], axis=0),  # [1, 1, T / 4]
        N("Resize", ["table", "", "scales"], ["resized"], mode="nearest"),  # [1, C, T]
        N("Transpose", ["resized"], ["pos"], perm=[0, 2, 1]),
        N("Add", ["x", "pos"], ["y"]),
    ]
    inits = [_floats("table", (1, C, 4)), numpy_helper.from_array(np.array([4.0], np.float32), "four")]
    inits.append(numpy_helper.from_array(np.array([1.0, 1.0], np.float32), "ones"))
    assert row_mixing_outputs(_model(nodes, inits)) == {}
    # The table's first scale computed: its length is not known, nor that it is 1.
    nodes[3] = N("Concat", ["r", "ones"], ["scales"], axis=0)
    assert "against a length the load cannot tell" in row_mixing_outputs(_model(nodes, inits))["y"]


def test_resized_dims_are_read_from_sizes_or_scales_where_certain() -> None:
    partial, none = PartialInts(), lambda i: None
    held = {"s": np.array([1.0, 1.0, 2.0, 0.5], np.float32), "ones": np.array([1.0, 1.0], np.float32)}
    maker = {"mixed": N("Concat", ["ones", "r"], ["mixed"]), "early": N("Concat", ["r", "ones"], ["early"])}
    data: list[int | str | None] = ["N", 3, 5, 8]

    def dims_of(scales: str, **attrs: object) -> list[int | str | None] | None:
        node = N("Resize", ["x", "", scales], ["y"], **attrs)
        return partial_dims(node, partial, _dims({"x": data}), none, held.get, maker.get)

    assert dims_of("s") == ["N", 3, 10, 4]
    assert dims_of("mixed") == ["N", 3, None, None]  # the constant 1s, then what is computed
    assert dims_of("early") is None  # a computed part first: where the constants go is unknown
    assert dims_of("s", axes=[2, 3]) is None  # opset 18's axes: the scales are for those alone
    partial.known["sizes"] = np.array(["N", 3, "H", -1], dtype=object)
    by_sizes = N("Resize", ["x", "", "", "sizes"], ["y"])
    assert partial_dims(by_sizes, partial, _dims({"x": data}), none) == ["N", 3, "H", None]
