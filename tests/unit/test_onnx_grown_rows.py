"""Pads and Tiles of computed amounts, and Expands copying the batch (server/backends/onnx_grown_rows.py),
read alone: which amounts on which axes keep the batch's rows, and the messages."""

from __future__ import annotations

import pytest
from onnx import helper

from server.backends.onnx_grown_rows import computed_amounts, copied_batch

BATCH = {"N"}
TILE = helper.make_node("Tile", ["x", "r"], ["y"])
PAD = helper.make_node("Pad", ["x", "p"], ["y"])
DIMS: list[int | str | None] = ["N", 4]


@pytest.mark.parametrize(
    ("amounts", "kept"),
    [((1, None), True), ((2, 1), False), ((None, 1), False), (None, False), ((), False)],
)
def test_a_tile_keeps_rows_where_its_repeat_on_the_batchs_axis_is_known_one(
    amounts: tuple[int | None, ...] | None, kept: bool
) -> None:
    got = computed_amounts(TILE, DIMS, amounts, None, BATCH)
    want = (
        "the Tile node making 'y' may add rows to the batch's axis 0: its repeats are computed at run "
        "time: the load cannot tell it adds no rows"
    )
    assert got == (None if kept else want)


@pytest.mark.parametrize(
    ("pads", "axes", "kept"),
    [
        ((0, None, 0, None), None, True),  # begins (0, ?) ends (0, ?): the batch's axis padded by 0
        ((1, 0, 0, 0), None, False),
        ((0, 0, 1, 0), None, False),  # an end pad on the batch's axis
        ((None, 0, 0, 0), None, False),
        (None, None, False),
        ((0, 0), None, True),  # one axis, the batch's: pads (0, 0)
        ((2, 2), (1,), True),  # axes name only axis 1: the batch's axis is not padded
        ((2, 2), (-1,), True),
        ((2, 2), (0,), False),
        ((0, 0), (None,), False),  # an axis not known
        ((2, 2), (-2,), False),  # -2 of two axes is the batch's
        ((0, 0, 0, 5), (1, 0), False),  # axes [1, 0]: the batch's end pad is the last
        ((0, 0, 5, 0), (1, 0), True),
    ],
)
def test_a_pad_keeps_rows_where_the_batchs_axis_is_padded_by_zero(
    pads: tuple[int | None, ...] | None, axes: tuple[int | None, ...] | None, kept: bool
) -> None:
    dims = DIMS if axes is not None or pads is None or len(pads) != 2 else ["N"]
    got = computed_amounts(PAD, dims, pads, axes, BATCH)
    assert (got is None) is kept, got
    if got is not None:
        tail = "may add rows to the batch's axis 0: its pads are computed at run time"
        assert got.startswith("the Pad node making 'y' ") and tail in got


def test_amounts_on_axes_that_do_not_carry_the_batch_are_not_read() -> None:
    assert computed_amounts(TILE, [3, 4], None, None, BATCH) is None
    assert computed_amounts(TILE, None, None, None, BATCH) is None
    got = computed_amounts(TILE, [4, "N"], (1, 3), None, BATCH)  # the batch on axis 1, repeated 3 times
    assert got is not None and "axis 1" in got


def test_an_expand_copying_the_batch_along_another_axis() -> None:
    expand = helper.make_node("Expand", ["u", "s"], ["e"])
    got = copied_batch(expand, [1, "N", 4], ["N", "N", 4], BATCH)
    assert got == (
        "the Expand node making 'e' copies the whole batch along axis 0 of its output ['N', 'N', 4]: "
        "its input carries the batch's rows on axis 1"
    )
    ahead = copied_batch(expand, ["N", 4], ["N", "N", 4], BATCH)  # a new leading axis of N
    assert ahead is not None and "along axis 0" in ahead and "on axis 1" in ahead
    assert copied_batch(expand, ["N", 1], ["N", 4], BATCH) is None  # widening a per-row axis
    assert copied_batch(expand, [1, 4], ["N", 4], BATCH) is None  # a constant broadcast to the batch
    assert copied_batch(expand, ["N", 4], ["N", 4], BATCH) is None
    assert copied_batch(expand, None, ["N", 4], BATCH) is None
    assert copied_batch(expand, ["N", 4], None, BATCH) is None
    assert copied_batch(expand, [1, "N", 4], ["N", 4], BATCH) is None  # more axes in than out
    assert copied_batch(expand, ["T", 1], ["T", "N"], BATCH) is None  # its input carries no batch
    behind = copied_batch(expand, ["N", 1], [3, "N", "N"], BATCH)  # a new axis ahead, then widened
    assert behind is not None and "along axis 2" in behind and "on axis 1" in behind
