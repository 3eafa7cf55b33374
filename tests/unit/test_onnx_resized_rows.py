"""A Resize (or Upsample) read for the batch's rows (server/backends/onnx_grown_rows.py
`resized_batch`, `grown_rows`): its scales where the graph holds them, by opset; a size kept only
where it is a Shape's entry for the batch; a crop by `roi` only over the batch's whole axis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from onnx import helper

from server.backends.onnx_grown_rows import Resizing, grown_rows, resized_batch
from server.backends.onnx_partial_ints import PartialInts

BATCH = {"N", "batch"}
GIVEN = ["N", 3, 4, 4]
RESIZED = "may resize the batch's axis 0"


def _resize(**attributes: object) -> object:
    return helper.make_node("Resize", ["x", "roi", "scales", "sizes"], ["y"], **attributes)


@pytest.mark.parametrize(
    ("told", "made", "kept"),
    [
        (Resizing([1, 1, 2, 2], None, None), None, True),
        (Resizing([2, 1, 1, 1], None, None), None, False),
        (Resizing([1.0], None, None), None, True),  # the batch's scale given, the rest not
        (Resizing([], None, None), None, False),  # none for the batch's axis
        (Resizing(None, ("N", 3, 8, 8), None), None, True),  # a Shape's entry for the batch
        (Resizing(None, ("batch", 3, 8, 8), None), None, True),  # under another of its names
        (Resizing(None, (None, 3, 8, 8), None), None, False),  # computed: no proof
        (Resizing(None, (4, 3, 8, 8), None), None, False),  # written
        (Resizing(None, (), None), None, False),
        (Resizing(None, None, None), ["N", 3, 8, 8], True),  # onnx's inference names it so
        (Resizing(None, None, None), [4, 3, 8, 8], False),
        (Resizing(None, None, None), ["unk__0", 3, 8, 8], False),
        (Resizing(None, None, None), None, False),
        (Resizing(None, None, None), [], False),
    ],
)
def test_the_batchs_axis_kept_or_not(told: Resizing, made: Sequence[object] | None, kept: bool) -> None:
    found = resized_batch(_resize(), GIVEN, made, told, BATCH)  # type: ignore[arg-type]
    assert (found is None) == kept, found
    if not kept:
        assert found == f"the Resize node making 'y' {RESIZED}: its rows are not kept one for one"


def test_axes_that_leave_the_batchs_out_keep_it_whatever_the_scales() -> None:
    told = Resizing([3, 3], None, None)
    assert resized_batch(_resize(axes=[2, 3]), GIVEN, None, told, BATCH) is None  # type: ignore[arg-type]
    assert resized_batch(_resize(axes=[-4, 3]), GIVEN, None, told, BATCH)  # type: ignore[arg-type]
    assert resized_batch(_resize(axes=[3, 0]), GIVEN, None, Resizing([3, 1], None, None), BATCH) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("roi", "kept"),
    [
        ([0, 0, 0, 0, 1, 1, 1, 1], True),
        ([0, 0.2, 0.2, 0, 1, 0.8, 0.8, 1], True),  # cropped along the others only
        ([0.5, 0, 0, 0, 1, 1, 1, 1], False),
        ([0, 0, 0, 0, 0.5, 1, 1, 1], False),
        ([0, 0, 1, 1], False),  # not one pair for each axis
        (None, False),  # computed
    ],
)
def test_a_crop_keeps_rows_only_over_the_batchs_whole_axis(roi: list[float] | None, kept: bool) -> None:
    node = _resize(coordinate_transformation_mode="tf_crop_and_resize")
    told = Resizing([1, 1, 2, 2], None, None if roi is None else np.asarray(roi, np.float32))
    assert (resized_batch(node, GIVEN, None, told, BATCH) is None) == kept  # type: ignore[arg-type]


def test_without_the_batch_or_a_shape_nothing_to_say() -> None:
    told = Resizing([2, 2, 2, 2], None, None)
    assert resized_batch(_resize(), [4, 3, 4, 4], None, told, BATCH) is None  # type: ignore[arg-type]
    assert resized_batch(_resize(), None, None, told, BATCH) is None  # type: ignore[arg-type]


def _read(node: object, opset: int, values: dict[int, list[float]]) -> str | None:
    def constant(index: int) -> np.ndarray | None:
        kind = np.int64 if index == 3 else np.float32  # sizes are integers
        return np.asarray(values[index], kind) if index in values else None

    return grown_rows(
        node, lambda name: GIVEN if name == "x" else None, constant, PartialInts(), BATCH, opset
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("node", "opset", "values", "kept"),
    [
        (helper.make_node("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 2.0]), 7, {}, True),
        (helper.make_node("Upsample", ["x"], ["y"], scales=[2.0, 1.0, 2.0, 2.0]), 7, {}, False),
        (helper.make_node("Upsample", ["x", "s"], ["y"]), 9, {1: [1, 1, 2, 2]}, True),
        (helper.make_node("Upsample", ["x", "s"], ["y"]), 9, {1: [2, 1, 2, 2]}, False),
        (helper.make_node("Resize", ["x", "s"], ["y"]), 10, {1: [1, 1, 2, 2]}, True),  # scales second
        (helper.make_node("Resize", ["x", "s"], ["y"]), 10, {1: [3, 1, 1, 1]}, False),
        (helper.make_node("Resize", ["x", "r", "s"], ["y"]), 13, {2: [1, 1, 2, 2]}, True),  # third
        (helper.make_node("Resize", ["x", "r", "s"], ["y"]), 13, {1: [1, 1, 2, 2], 2: [2, 1, 1, 1]}, False),
        (
            helper.make_node("Resize", ["x", "", "", "z"], ["y"]),
            13,
            {3: [4, 3, 8, 8]},
            False,
        ),  # written sizes
        (helper.make_node("Resize", ["x", "", ""], ["y"]), 13, {}, False),  # nothing known
    ],
)
def test_grown_rows_reads_a_resizes_scales_by_its_opset(
    node: object, opset: int, values: dict[int, list[float]], kept: bool
) -> None:
    found = _read(node, opset, values)
    assert (found is None) == kept, found


def _read_with(
    node: object, opset: int, values: dict[int, np.ndarray], known: dict[str, list[object]]
) -> str | None:
    partial = PartialInts()
    for name, entries in known.items():
        partial.known[name] = np.asarray(entries, dtype=object)

    def constant(index: int) -> np.ndarray | None:
        return values.get(index)

    dims = {"x": GIVEN, "y": ["N", 3, 8, 8]}
    return grown_rows(node, dims.get, constant, partial, BATCH, opset)  # type: ignore[arg-type]


def test_opset_11_reads_its_scales_after_its_roi() -> None:
    node = helper.make_node("Resize", ["x", "r", "s"], ["y"])
    values = {1: np.asarray([2, 1, 1, 1], np.float32), 2: np.asarray([1, 1, 2, 2], np.float32)}
    assert _read_with(node, 11, values, {}) is None  # was read as its roi's values below opset 12


def test_opset_11_reads_a_crops_roi() -> None:
    node = helper.make_node(
        "Resize", ["x", "r", "s"], ["y"], coordinate_transformation_mode="tf_crop_and_resize"
    )
    values = {1: np.asarray([0, 0, 0, 0, 1, 1, 1, 1], np.float32), 2: np.asarray([1, 1, 2, 2], np.float32)}
    assert _read_with(node, 11, values, {}) is None


def test_one_scale_for_one_named_axis() -> None:
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], axes=[0])
    assert _read_with(node, 18, {2: np.asarray([1.0], np.float32)}, {}) is None
    assert _read_with(node, 18, {2: np.asarray([2.0], np.float32)}, {})


def test_computed_scales_read_by_the_output_the_graph_declares() -> None:
    """Scales a client sends: no proof but the output's dims as onnx gives them (here [N, 3, 8, 8])."""
    node = helper.make_node("Resize", ["x", "", "s"], ["y"])
    assert _read_with(node, 13, {}, {}) is None


@pytest.mark.parametrize(
    ("node", "opset", "known", "grown"),
    [
        # Computed pads on the batch's axis (begin of axis 0): rows may be added.
        (helper.make_node("Pad", ["x", "p"], ["y"]), 11, {"p": [None, 0, 0, 0, 0, 0, 0, 0]}, True),
        (helper.make_node("Pad", ["x", "p"], ["y"]), 11, {"p": [0, 0, 0, 0, 0, 0, 0, 0]}, False),
        # Computed pads over the axes input, which leaves the batch's out (opset 18).
        (helper.make_node("Pad", ["x", "p", "", "a"], ["y"]), 18, {"p": [None, None], "a": [2, 3]}, False),
        (helper.make_node("Pad", ["x", "p", "", "a"], ["y"]), 18, {"p": [None, None], "a": [0, 3]}, True),
        # Before opset 11 a Pad's pads are its attribute, read by onnx_mixing_ops.py.
        (helper.make_node("Pad", ["x", "p"], ["y"]), 10, {"p": [None, 0, 0, 0, 0, 0, 0, 0]}, False),
    ],
)
def test_a_pad_of_computed_amounts(
    node: object, opset: int, known: dict[str, list[object]], grown: bool
) -> None:
    assert bool(_read_with(node, opset, {}, known)) == grown
