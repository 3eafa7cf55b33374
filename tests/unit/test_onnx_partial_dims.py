"""onnx_partial_dims.py at its mutation survivors (session 59): each dim rule at its edges."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from server.backends.onnx_partial_dims import (
    _broadcast,
    _float_entries,
    _padded,
    _times,
    _worked,
    partial_dims,
)
from server.backends.onnx_partial_ints import PartialInts

N = helper.make_node


def test_a_tiles_dims() -> None:
    assert _times("T", 1) == "T" and _times(3, 1) == 3  # a repeat of 1 keeps the dim
    assert _times(1, 2) == 2 and _times(1, "T") == "T"
    assert _times(1, 0) == 0 and _times(1, -1) is None  # a repeat of 0 empties the axis
    assert _times(2, 3) == 6 and _times("T", 2) is None and _times(2, None) is None
    assert _worked("Tile", [1, 2], (3, 1)) == [3, 2]
    assert _worked("Tile", [1, 2], (3,)) is None  # repeats must be as many as the dims


def test_a_pads_dims() -> None:
    assert _padded("T", 0, 0) == "T" and _padded(4, 1, 2) == 7 and _padded(4, -1, 0) == 3
    assert _padded(4, -4, 0) == 0 and _padded(4, -3, -2) is None  # no negative length
    assert _padded(4, 2, -1) == 5 and _padded("T", 1, 0) is None and _padded(4, None, 0) is None
    assert _worked("Pad", [1, 4], (0, 1, 0, 2)) == [1, 7]  # begins, then ends
    assert _worked("Pad", [1, 4], (0, 1)) is None


def test_an_expands_dims() -> None:
    assert _broadcast("T", 1) == "T" and _broadcast(1, "T") == "T" and _broadcast(1, 3) == 3
    assert _broadcast(1, 1) == 1 and _broadcast(1, 0) is None and _broadcast(1, -1) is None
    assert _broadcast(3, 3) == 3 and _broadcast(3, 4) is None and _broadcast(2, "T") is None
    assert _broadcast("T", "T") is None  # a name against the same name: not certain here
    assert _worked("Expand", [3, 1], (2, 1, 4)) == [2, 3, 4]  # new axes in front are the shape's
    assert _worked("Expand", [1, 3, 1], (4,)) == [1, 3, 4]


def test_a_pad_with_axes_and_a_changed_dim_only() -> None:
    partial = PartialInts()
    partial.known["pads"] = np.array([0, 0, 0, 0], dtype=object)
    dims = {"x": ["N", 4], "y": ["N", 4]}
    pad = N("Pad", ["x", "pads"], ["y"])
    assert partial_dims(pad, partial, dims.get, lambda i: None) is None  # nothing to add
    pad3 = N("Pad", ["x", "pads", "value"], ["y"])  # a constant value, no axes: read
    dims["y"] = ["unk__0", "unk__1"]
    assert partial_dims(pad3, partial, dims.get, lambda i: None) == ["N", 4]


def test_float_entries_read_constants_and_a_concats_leading_constants() -> None:
    held = {"c": np.array([1.0, 2.0], np.float32), "a": np.array([1.0], np.float32)}
    held["b"] = np.array([3.0], np.float32)
    makers = {"cat": N("Concat", ["a", "b", "r"], ["cat"]), "neg": N("Neg", ["a"], ["neg"])}
    assert _float_entries("c", held.get, makers.get, 2) == [1.0, 2.0]
    assert _float_entries("c", held.get, makers.get, 3) is None
    assert _float_entries("cat", held.get, makers.get, 4) == [1.0, 3.0, None, None]
    assert _float_entries("cat", held.get, makers.get, 1) is None  # more constants than the rank
    assert (
        _float_entries("neg", held.get, makers.get, 1) is None
        and _float_entries("z", held.get, makers.get, 1) is None
    )
    matrix = {"m": np.ones((2, 2), np.float32)}
    assert _float_entries("m", matrix.get, makers.get, 4) == [1.0] * 4


@pytest.mark.parametrize("attr", ["keep_aspect_ratio_policy", "axes"])
def test_a_resize_whose_amounts_are_not_per_axis_is_not_read(attr: str) -> None:
    partial = PartialInts()
    partial.known["sizes"] = np.array(["N", 3, 8, 8], dtype=object)
    value = "not_larger" if attr == "keep_aspect_ratio_policy" else [2, 3]
    node = N("Resize", ["x", "", "", "sizes"], ["y"], **{attr: value})
    assert partial_dims(node, partial, {"x": ["N", 3, 4, 4]}.get, lambda i: None) is None


def test_a_resizes_sizes_and_its_opset_10_scales() -> None:
    partial = PartialInts()
    partial.known["sizes"] = np.array(["N", 0, 8, 1], dtype=object)
    by_sizes = N("Resize", ["x", "", "", "sizes"], ["y"])
    dims = {"x": ["N", 3, 4, 4]}.get
    assert partial_dims(by_sizes, partial, dims, lambda i: None) == ["N", None, 8, 1]  # a 0: unsure
    partial.known["sizes"] = np.array(["N", 3], dtype=object)
    assert partial_dims(by_sizes, partial, dims, lambda i: None) is None  # not one a dim
    held = {"s": np.array([1.0, 1.0, 2.0, 2.0], np.float32)}
    opset10 = N("Resize", ["x", "s"], ["y"])  # scales are input 1 at opset 10
    assert partial_dims(opset10, partial, dims, lambda i: None, held.get) == ["N", 3, 8, 8]
    no_scales = N("Resize", ["x", "", ""], ["y"])
    assert partial_dims(no_scales, partial, dims, lambda i: None, held.get) is None
