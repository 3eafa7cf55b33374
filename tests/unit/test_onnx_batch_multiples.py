"""A Reshape led by N * K, K made of lengths of other axes, folds the batch into its first axis
(onnx_batch_multiples.py): HF transformers' MobileViT with a dynamic image size batches (refused at
57d13e7, a real export, session 68), and the views that look alike but move rows stay refused."""

from __future__ import annotations

import onnx
import pytest

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import F, node, rows_independent
from tests.support.patch_graphs import C, led_by, patch_block

I64 = onnx.TensorProto.INT64
DYNAMIC = ("N", C, "H", "W")


def test_mobilevits_unfolding_and_folding_of_a_dynamic_image_size_batches() -> None:
    model = patch_block(shape=DYNAMIC)
    assert rows_independent(model, (C, 8, 8)) and rows_independent(model, (C, 8, 12))
    assert row_mixing_outputs(model) == {}  # at 57d13e7: "takes the batch's size as a value"


def test_mobilevit_of_a_fixed_image_size_still_batches() -> None:
    model = patch_block(shape=("N", C, 8, 12))
    assert rows_independent(model, (C, 8, 12)) and row_mixing_outputs(model) == {}


def test_patches_folded_back_as_p_images_of_n_are_refused() -> None:
    # view(P, N, np, C) of the [N * P, np, C] patches: each image gets patches of other images.
    model = patch_block("pb", DYNAMIC)
    assert not rows_independent(model, (C, 8, 8))
    found = row_mixing_outputs(model)["y"]
    assert "'r3' moves values between the batch's rows" in found and "becoming axis 1" in found


def test_a_softmax_along_the_folded_axis_is_refused() -> None:
    model = led_by([node("Mul", ["n", "two1"], "first")], axis=0)
    assert not rows_independent(model, (8,))
    assert "Softmax node making 'w' works along the batch's axis" in row_mixing_outputs(model)["y"]


def test_a_view_led_by_n_times_k_with_a_softmax_per_row_batches() -> None:
    model = led_by([node("Mul", ["n", "two1"], "first")])
    assert rows_independent(model, (8,)) and row_mixing_outputs(model) == {}


def _data_sized() -> list[onnx.NodeProto]:
    """K = 1 + (max(x) > 0.5): 2 for a batch whose largest value is, 1 for a row alone that is not."""
    return [
        node("ReduceMax", ["x"], "top", keepdims=0),
        node("Greater", ["top", "half"], "over"),
        node("Cast", ["over"], "overi", to=I64),
        node("Add", ["overi", "one"], "k"),
        node("Unsqueeze", ["k", "zero1"], "k1"),
        node("Mul", ["n", "k1"], "first"),
    ]


def _cast() -> list[onnx.NodeProto]:
    """int(N * 1.5): 1 for a row alone, 6 for four rows (not a multiple of N)."""
    return [
        node("Cast", ["n"], "nf", to=F),
        node("Mul", ["nf", "three_halves"], "nf3"),
        node("Cast", ["nf3"], "first", to=I64),
    ]


@pytest.mark.parametrize(
    ("model", "row", "rows"),
    [
        (led_by([node("Mul", ["n", "n"], "first")]), (8,), 4),  # N * N: [16, 2] for four rows
        (led_by(_data_sized(), shape=("N", 2)), (2,), 4),  # K from the rows' values
        (led_by(_cast(), shape=("N", 6)), (6,), 4),  # through a Cast of floats
        (led_by([node("Mul", ["n", "two1"], "first")], others=("n", "minus1")), (8,), 2),  # [2N, N, -1]
        (  # the batch not leading the data: x [N, 4, 2] transposed to [4, N, 2], viewed [4N, -1]
            led_by(
                [node("Mul", ["n", "four1"], "first")],
                shape=("N", 4, 2),
                source=[node("Transpose", ["x"], "data", perm=[1, 0, 2])],
            ),
            (4, 2),
            4,
        ),
    ],
    ids=["n_times_n", "k_from_values", "through_a_cast", "n_in_another_entry", "batch_not_leading"],
)
def test_views_led_by_a_size_that_is_not_n_times_a_length_are_refused(
    model: onnx.ModelProto, row: tuple[int, ...], rows: int
) -> None:
    assert not rows_independent(model, row, rows)
    assert "y" in row_mixing_outputs(model)
