"""scripts/row_mixing_sweep.py over its counts corpus (scripts/size_count_cases.py) against a real
server: graphs that read the batch's size N (Shape(x)[0]) and use it as a shape, a size, a count, an
axis or a value, their outputs' shapes declared with 'N'. At 098d7b5 nine of them loaded batched and
answered four clients' requests with another width or each other's rows, OK: a Resize to sizes
[N, 1, N] or [N, 1, min(N, 2)], a Reshape to (min(N, 2), -1) before a Softmax, an Expand, an
AffineGrid's, a MaxUnpool's and a CenterCropPad's size from it, a Loop's count over N iterations,
and a constant expanded to [N, 1] through a legacy expand's Where then summed over the batch. Now the
sweep exits 0, the mixing ones are refused naming the op, and N used only as the batch's own axis's
length (a ViT class token expanded or tiled to it, x.view(N, -1), a multi-head fold N * H, DETR's
time-major queries, a Resize keeping Shape(x)[:2]) still batches and answers as alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_row_mixing_sweep import Sweep, run_sweep

pytestmark = [pytest.mark.serial, pytest.mark.timeout(300)]

TABLE_OPS = (  # scripts/table_length_cases.py
    *("gather_by_range", "one_hot", "compress", "max_pool", "flatten"),
    *("reshape_minus_one", "sequence_length"),  # batched wrong, OK, at 05301ef (a tester, session 60)
    *("stft_frames", "squeeze_computed"),  # batched wrong, OK, at 3a1cb79 (a tester, session 60)
)
# What each refusal names: the node taking the size, or the one where a value made from it meets x
# (its input named after the op that made it). The first nine loaded batched and answered WRONG with
# status OK at 098d7b5.
REFUSED = {
    "count_resize_sizes_n_1_n_mixing": ("the Resize node making 'y'", "as a shape, a size or a count"),
    "count_resize_sizes_min_mixing": ("the Resize node making 'y'", "as a shape, a size or a count"),
    "count_reshape_min_softmax_mixing": ("the Reshape node making", "as a shape, a size or a count"),
    "count_expand_min_mixing": ("the Expand node making 'y'", "as a shape, a size or a count"),
    "count_affine_grid_min_mixing": ("the AffineGrid node making 'y'", "as a shape, a size or a count"),
    "count_max_unpool_min_mixing": ("the MaxUnpool node making 'y'", "as a shape, a size or a count"),
    "count_center_crop_pad_n_mixing": ("the CenterCropPad node making 'y'", "as a shape, a size or a count"),
    "count_loop_counter_mixing": ("the Mul node making 'y'", "with 'loop"),
    "count_where_expand_reduce_sum_mixing": ("the ReduceSum node making", "works along the batch's axis"),
    "count_top_k_n_mixing": ("the TopK node making 'y'", "the batch's size as a value"),
    "count_one_hot_depth_n_mixing": ("the OneHot node making 'y'", "the batch's size as a value"),
    "count_trilu_k_n_mixing": ("the Trilu node making 'y'", "the batch's size as a value"),
    "count_cum_sum_axis_n_mixing": ("the CumSum node making 'y'", "the batch's size as a value"),
    "count_pad_by_n_mixing": ("the Pad node making 'y'", "the batch's size as a value"),
    "count_unsqueeze_axes_min_mixing": ("the Unsqueeze node making", "the batch's size as a value"),
    "count_divide_by_n_mixing": ("the Div node making 'y'", "with 'cast"),
    "count_add_range_n_mixing": ("the Add node making 'y'", "the batch's size as a value"),
    "count_reduce_mean_axes_sub_mixing": ("the Sub node making 'y'", "with 'reducemean"),
    "count_reduce_sum_axes_min_mixing": ("the Add node making 'y'", "with 'reducesum"),
    "count_tile_n_by_n_mixing": ("the Concat node making 'y'", "with 'tile"),
    # A tester, session 57: each batched wrong, OK, at 098d7b5 and at 7ecf26c.
    "count_loop_stacked_iterations_mixing": ("the Add node making 'y'", "with 'unsqueeze"),
    "count_if_returns_outer_n_mixing": ("the Mul node making 'y'", "with 'if"),
    "count_split_second_n_mixing": ("the Mul node making 'y'", "with 'split"),
    "count_reshape_constant_by_n_mixing": ("the Add node making 'y'", "with 'reducesum"),
    # A second tester, session 57: batched wrong, OK, at 098d7b5 and at 74ac7d6.
    "count_shape_of_range_n_mixing": ("the Mul node making 'y'", "with 'cast"),
    "count_rnn_steps_n_unnamed_mixing": ("the Mul node making 'y'", "with 'reshape"),
    # A third tester, session 57: batched wrong, OK, at 098d7b5 and at 2d8eeaf.
    "count_seq_first_reshape_2_n_mixing": ("the Reshape node making", "the batch's"),
    "count_pad_truncated_then_n_mixing": ("the Slice node making 'y'", "as a shape, a size or a count"),
    # A tester, session 58 (scripts/unread_cases.py): each batched wrong, OK, at a1132d6.
    "count_cum_sum_axis_rank_minus_2_mixing": ("the CumSum node making 'y'", "works along the batch's axis"),
    "count_reduce_sum_axes_rank_minus_2_mixing": (
        "the ReduceSum node making",
        "works along the batch's axis",
    ),
    "count_reduce_max_axes_cut_empty_mixing": ("the ReduceMax node making", "works along the batch's axis"),
    "count_unsqueeze_axes_computed_softmax_mixing": (
        "the Softmax node making",
        "works along the batch's axis",
    ),
    "count_slice_axes_computed_flip_mixing": ("the Slice node making 'y'", "works along the batch's axis"),
    "count_scatter_elements_into_table_mixing": (
        "the ScatterElements node",
        "which does not carry the batch",
    ),
    "count_scatter_nd_into_table_mixing": ("the ScatterND node making", "which does not carry the batch"),
    "count_gather_elements_table_place_mixing": ("the GatherElements node", "with row i of"),
    "count_function_default_axis_0_mixing": ("the Softmax node making 'y'", "axis 0 of 'x'"),
    "count_declared_transpose_mixing": ("declared ['N', 'K']", "the graph makes it [4, 'N']"),
    "count_detections_counted_mixing": ("the Shape node making", "that the NonMaxSuppression node making"),
    # A second tester, session 58: each batched wrong, OK, at 28ab7d2.
    "count_split_whole_slice_softmax_mixing": ("the Softmax node making 'y'", "works along the batch's axis"),
    "count_detections_counted_flat_mixing": (
        "the Shape node making",
        "that the NonMaxSuppression node making",
    ),
    "count_batch_against_fixed_length_mixing": ("the Add node making", "against a fixed length 4"),
    # A third tester, session 58: each batched wrong, OK, at 2755b63.
    "count_untold_length_table_mixing": ("the Slice node making 'y'", "as a shape, a size or a count"),
    "count_einsum_ellipsis_broadcast_mixing": ("the Einsum node making 'y'", "against a fixed length 4"),
    "count_detections_counted_in_if_mixing": (
        "the Shape node making",
        "NonMaxSuppression node making 'kept_in'",
    ),
    # A fourth tester, session 58 (u2): batched at 8906ad9, the first wrong with status OK, the
    # second INTERNAL. The first's Add is refused, so the Slice after it no longer reads as the batch's.
    "count_loop_table_by_other_axis_mixing": ("the Slice node making 'y'", "as a shape, a size or a count"),
    "count_concat_loop_constant_first_mixing": ("the Concat node making 'y'", "(its shape unknown)"),
    # A tester, session 59: the same table as long as x's unnamed axis 1 or the Size of a row,
    # batched wrong, OK, at ec0a446.
    "count_loop_table_by_unnamed_axis_mixing": ("the Slice node making 'y'", "as a shape, a size or a count"),
    "count_loop_table_by_row_size_mixing": ("the Slice node making 'y'", "as a shape, a size or a count"),
    # A tester, session 59 (scripts/table_length_cases.py): the table as long as a length read off a
    # OneHot, a Compress or a MaxPool batched wrong, OK, at 7abb6dd (the Gather's and Flatten's were
    # refused here; their forms in tests/unit/test_onnx_table_lengths_ops.py were not).
    # Session 63 (scripts/computed_axes_cases.py): x / Shape(Tile(x, [2, 2]))[0] batched wrong, OK, at
    # a25110d (onnx names the tiled axis anew).
    "count_tiled_rows_length_mixing": ("the Div node making 'y'", "the batch's size as a value"),
    # Session 66 (scripts/unplaced_view_cases.py): x viewed as [-1, Cast(Abs(3.0))] loaded batched
    # at a570c1c (a tester, session 65); a view by a length the load cannot compute is refused.
    "count_view_abs_fold_softmax_mixing": ("the Softmax node making", "works along the batch's axis"),
    "count_view_sigmoid_length_softmax_mixing": ("the Reshape node making", "not all known at load"),
    # Session 67 (scripts/shifted_window_cases.py): HF Swin's shifted-window block with the windows
    # viewed back behind H // ws interleaves two requests' rows.
    "count_shifted_windows_reverse_swapped_mixing": ("the Reshape node making", "moves values between"),
    "count_shifted_windows_any_size_swapped_mixing": ("the Reshape node making", "moves values between"),
    **{
        f"count_table_by_{op}_mixing": ("the Slice node making 'y'", "as a shape, a size or a count")
        for op in TABLE_OPS
    },
}
BATCHED = (
    "count_vit_cls_legacy_expand_rowwise",
    "count_tile_cls_repeat_rowwise",
    "count_pos_slice_add_rowwise",
    "count_new_zeros_cat_rowwise",
    "count_view_flat_rowwise",
    "count_multi_head_fold_rowwise",
    "count_flatten_matmul_rowwise",
    "count_repeat_interleave_rowwise",
    "count_detr_time_major_rowwise",
    "count_attention_mask_expand_rowwise",
    "count_resize_sizes_kept_rowwise",
    "count_affine_grid_sample_rowwise",
    "count_max_unpool_shape_rowwise",
    "count_slice_to_n_rowwise",  # refused as computed bounds at 098d7b5
    "count_view_through_where_rowwise",
    "count_split_shape_view_rowwise",  # refused at 74ac7d6 (a second tester, session 57)
    # Kin of a tester's cases, session 58: each keeps rows and must still batch.
    "count_slice_axes_computed_whole_rowwise",
    "count_gather_nd_table_lookup_rowwise",
    "count_scatter_elements_own_rows_rowwise",
    "count_function_default_axis_last_rowwise",
    "count_declared_transpose_back_rowwise",
    "count_split_halves_attention_rowwise",  # refused at 28ab7d2 (a second tester, session 58)
    "count_split_attention_six_deep_rowwise",  # refused at 2755b63 (a third tester, session 58)
    "count_loop_table_by_other_axis_across_rowwise",  # the table across each row (session 59)
    *(f"count_table_by_{op}_rowwise" for op in TABLE_OPS),  # the table across each row (session 60)
    "count_tiled_columns_length_rowwise",  # Shape(Tile(x, [2, 2]))[1] is 6 for every batch (session 63)
    "count_view_abs_fold_softmax_rowwise",  # the fold's Softmax along each row's own axis (session 66)
    "count_shifted_windows_rowwise",  # HF Swin's shifted-window mask (session 67; refused at 3897be1)
    "count_shifted_windows_any_size_rowwise",  # of any image size (session 67; refused at 7e46334)
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    yield run_sweep(tmp_path_factory.mktemp("size-count-sweep"), ["--corpus", "counts"])


def test_the_counts_corpus_exits_zero_with_none_wrong(sweep: Sweep) -> None:
    assert sweep.code == 0, sweep.output[-3000:]
    tested = [r for r in sweep.rows.values() if r["outcome"] != "skipped"]
    assert len(tested) == len(sweep.rows) >= len(REFUSED) + len(BATCHED), sweep.summary
    assert not [r for r in tested if r["outcome"] not in ("refused", "right")], sweep.summary
    assert "| WRONG with status OK | 0 |" in sweep.summary and "| INTERNAL | 0 |" in sweep.summary
    # Every _mixing case is refused (none is answered as alone by being batched), every _rowwise batched.
    for row in tested:
        assert (row["outcome"] == "refused") == row["case"].endswith("_mixing"), row


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_batchs_size_as_a_width_an_axis_or_a_value_is_refused_naming_the_op(
    sweep: Sweep, case: str
) -> None:
    row = sweep.rows[case]
    assert row["outcome"] == "refused" and row["oracle_mixes"] == "True", row
    assert "mixes the rows of a batch" in row["detail"], row
    assert all(part in row["detail"] for part in REFUSED[case]), row


@pytest.mark.parametrize("case", BATCHED)
def test_the_batchs_size_as_its_own_axis_is_batched_and_answers_as_alone(sweep: Sweep, case: str) -> None:
    row = sweep.rows[case]
    assert row["outcome"] == "right" and row["max_batch_size"] == "8", row
    assert row["statuses"] == "OK,OK,OK,OK" and row["coalesced"] == "True", row
    assert row["oracle_mixes"] == "False", row
