"""Exact behaviour of server/backends/tensorrt_options.py at its edges: the profile's batch bounds and
shape strings, the full text of the CUDA graph blockers and notes, and which feeds warm-up builds."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.backends.tensorrt_options import (
    Profile,
    cuda_field_notes,
    engine_build_feeds,
    gpu_provider_options,
    graph_blocker,
    graph_blockers,
    profile,
)

BATCHES = (
    "it batches (max_batch_size {}): the batch dimension varies, "
    "and onnxruntime's CUDA graphs replay fixed shapes"
)
SEQUENCE = "sequence_batching feeds state and control inputs"
BATCH_INPUT = "batch_input tensors are made per batch"
OUT_Y = 'output { name: "y" data_type: TYPE_FP32 dims: [ 2 ] }'


def config(text: str) -> mc.ModelConfig:
    parsed: mc.ModelConfig = text_format.Parse(text, mc.ModelConfig(name="m"))
    return parsed


def fp32(name: str, dims: str, extra: str = "") -> str:
    return f'input {{ name: "{name}" data_type: TYPE_FP32 dims: [ {dims} ] {extra} }}'


BATCH_IN = 'batch_input { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 source_input: "x" }'


# --- Profile.options -------------------------------------------------------------------------------


def test_a_profile_without_exactly_three_batch_sizes_is_refused() -> None:
    """A malformed Profile (two or four batch sizes) raises instead of writing a partial profile."""
    bad = Profile((1, 4), {"x": (3,)})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bad.options()
    four = Profile((1, 4, 8, 16), {"x": (3,)})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        four.options()


# --- profile ---------------------------------------------------------------------------------------


def test_max_batch_size_one_still_gets_a_profile_of_batch_one() -> None:
    """max_batch_size 1 has a batch dimension: min, opt and max are all batch 1."""
    found, why = profile(config("max_batch_size: 1 " + fp32("x", "3")))
    assert why == ""
    assert found == Profile((1, 1, 1), {"x": (3,)})
    assert found.options() == {
        "trt_profile_min_shapes": "x:1x3",
        "trt_profile_opt_shapes": "x:1x3",
        "trt_profile_max_shapes": "x:1x3",
    }


def test_a_zero_sized_dim_is_fixed_and_goes_into_the_profile() -> None:
    """A dim of 0 is a fixed (empty) dim, not a variable one: the profile keeps it."""
    found, why = profile(config("max_batch_size: 4 " + fp32("x", "0, 5")))
    assert why == ""
    assert found is not None
    assert found.options() == {
        "trt_profile_min_shapes": "x:1x0x5",
        "trt_profile_opt_shapes": "x:4x0x5",
        "trt_profile_max_shapes": "x:4x0x5",
    }


def test_an_input_name_with_x_is_written_into_the_profile() -> None:
    """Only ',' and ':' stop a name being written: 'X' and 'xX' are fine names."""
    found, why = profile(config("max_batch_size: 2 " + fp32("X", "1") + fp32("xX", "2")))
    assert why == "" and found is not None
    assert found.options()["trt_profile_max_shapes"] == "X:2x1,xX:2x2"


def test_a_name_with_a_comma_or_colon_gets_no_profile_and_says_why() -> None:
    """The full reason for a name a profile string cannot hold."""
    assert profile(config("max_batch_size: 2 " + fp32("a,b", "1"))) == (
        None,
        "input name 'a,b' cannot be written in a profile (',' or ':')",
    )


def test_preferred_batch_size_one_optimises_for_batch_one() -> None:
    """A preferred size of 1 is kept: the profile is optimised for batch 1, not max_batch_size."""
    found, _ = profile(
        config("max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 1 ] } " + fp32("x", "2"))
    )
    assert found == Profile((1, 1, 8), {"x": (2,)})


def test_preferred_batch_size_zero_is_ignored() -> None:
    """A preferred size of 0 is not a batch: the profile is optimised for max_batch_size."""
    found, _ = profile(
        config("max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 0 ] } " + fp32("x", "2"))
    )
    assert found == Profile((1, 8, 8), {"x": (2,)})


def test_preferred_batch_size_equal_to_max_is_the_opt_batch() -> None:
    """The largest preferred size may equal max_batch_size, and then it is the opt batch."""
    cfg = config("max_batch_size: 16 dynamic_batching { preferred_batch_size: [ 4, 16 ] } " + fp32("x", "2"))
    found, _ = profile(cfg)
    assert found == Profile((1, 16, 16), {"x": (2,)})
    assert found.options()["trt_profile_opt_shapes"] == "x:16x2"


def test_unlisted_input_reasons_are_given_in_full() -> None:
    """The exact reasons a sequence model or one with batch inputs gets no profile."""
    assert profile(config("max_batch_size: 4 sequence_batching { } " + fp32("x", "2"))) == (None, SEQUENCE)
    assert profile(config("max_batch_size: 4 " + fp32("x", "2") + BATCH_IN)) == (None, BATCH_INPUT)
    assert profile(config("max_batch_size: 4 " + fp32("r", "2", "allow_ragged_batch: true"))) == (
        None,
        "input 'r' is ragged",
    )


# --- graph_blockers / graph_blocker ----------------------------------------------------------------


def test_max_batch_size_one_blocks_cuda_graphs_with_the_full_reason() -> None:
    """A model with max_batch_size 1 still batches; the reason is given word for word."""
    cfg = config("max_batch_size: 1 " + fp32("x", "2") + OUT_Y)
    assert graph_blockers(cfg) == [BATCHES.format(1)]
    assert graph_blocker(cfg) == BATCHES.format(1)


def test_unlisted_inputs_block_cuda_graphs_without_a_batch_dimension() -> None:
    """Sequence batching and batch inputs are named as blockers even at max_batch_size 0."""
    seq = config("max_batch_size: 0 sequence_batching { } " + fp32("x", "2") + OUT_Y)
    assert graph_blockers(seq) == [SEQUENCE]
    assert graph_blocker(seq) == SEQUENCE
    batch_in = config("max_batch_size: 0 " + fp32("x", "2") + OUT_Y + BATCH_IN)
    assert graph_blockers(batch_in) == [BATCH_INPUT]


def test_an_output_with_variable_dims_is_named_as_an_output() -> None:
    """The tensor kind in the reason is 'output' for an output."""
    cfg = config(
        "max_batch_size: 0 " + fp32("x", "2") + 'output { name: "y" data_type: TYPE_FP32 dims: [ -1 ] }'
    )
    assert graph_blockers(cfg) == ["output 'y' has variable dims [-1]"]


def test_an_output_of_an_odd_type_is_named_as_an_output() -> None:
    """A string output is an 'output' that is not kept in a device buffer."""
    cfg = config(
        "max_batch_size: 0 " + fp32("x", "2") + 'output { name: "s" data_type: TYPE_STRING dims: [ 1 ] }'
    )
    assert graph_blockers(cfg) == ["output 's' is string, which is not kept in a device buffer"]


def test_zero_sized_dims_do_not_block_cuda_graphs() -> None:
    """A dim of 0 is fixed: a model with zero-sized dims can still replay CUDA graphs."""
    cfg = config(
        "max_batch_size: 0 " + fp32("x", "0, 2") + 'output { name: "y" data_type: TYPE_FP32 dims: [ 0 ] }'
    )
    assert graph_blockers(cfg) == []
    assert graph_blocker(cfg) is None


def test_several_blockers_are_joined_with_semicolons() -> None:
    """graph_blocker joins every reason with '; ' in order."""
    cfg = config("max_batch_size: 2 " + fp32("x", "-1", "optional: true") + OUT_Y)
    assert graph_blocker(cfg) == (
        BATCHES.format(2)
        + "; input 'x' has variable dims [-1]"
        + "; input 'x' is optional: a graph needs every input each run"
    )


# --- cuda_field_notes ------------------------------------------------------------------------------


def test_graphs_note_joins_its_reasons_with_semicolons() -> None:
    """Off a GPU, the graphs note names the machine and the model's own blocker, '; '-joined."""
    cfg = config("max_batch_size: 3 " + fp32("x", "2") + OUT_Y + " optimization { cuda { graphs: true } }")
    assert cuda_field_notes(cfg, on_gpu=False) == [
        "optimization.cuda.graphs (CUDA graphs not used: no CUDA or TensorRT instance: it runs on the CPU; "
        + BATCHES.format(3)
        + ")"
    ]


def test_tensorrt_only_cuda_fields_are_noted_word_for_word() -> None:
    """busy_wait_events, output_copy_stream and graph_spec each get their exact note."""
    cfg = config(
        "max_batch_size: 0 "
        + fp32("x", "2")
        + OUT_Y
        + " optimization { cuda { busy_wait_events: true output_copy_stream: true"
        + " graph_spec { batch_size: 1 } } }"
    )
    assert cuda_field_notes(cfg, on_gpu=True) == [
        "optimization.cuda.busy_wait_events (the TensorRT backend's event polling; onnxruntime has none)",
        "optimization.cuda.output_copy_stream (the TensorRT backend's separate output copy stream; "
        "onnxruntime has none)",
        "optimization.cuda.graph_spec (per-shape graphs of the TensorRT backend; not built)",
    ]


# --- gpu_provider_options --------------------------------------------------------------------------


def test_no_providers_give_no_provider_options() -> None:
    """An empty provider list comes back empty (no provider to add defaults to)."""
    cfg = config("max_batch_size: 0 " + fp32("x", "2") + OUT_Y + " optimization { cuda { graphs: true } }")
    assert gpu_provider_options(cfg, [], engine_cache=None) == []


# --- engine_build_feeds ----------------------------------------------------------------------------


def test_max_batch_size_one_builds_one_feed_with_a_batch_dimension() -> None:
    """max_batch_size 1: one feed of batch 1 (the profile's only size), with the batch dimension."""
    (feed,) = engine_build_feeds(config("max_batch_size: 1 " + fp32("x", "3")))
    assert feed["x"].shape == (1, 3) and feed["x"].dtype == np.float32


def test_a_model_without_batch_dimension_and_unlisted_inputs_builds_nothing() -> None:
    """Sequence state or batch inputs make the shapes unknown ahead, even with fixed dims."""
    assert engine_build_feeds(config("max_batch_size: 0 sequence_batching { } " + fp32("x", "3"))) == []
    assert engine_build_feeds(config("max_batch_size: 0 " + fp32("x", "3") + BATCH_IN)) == []


def test_a_model_without_batch_dimension_and_variable_dims_builds_nothing() -> None:
    """A variable dim at max_batch_size 0 means no warm-up feed."""
    assert engine_build_feeds(config("max_batch_size: 0 " + fp32("x", "-1, 3"))) == []


def test_a_zero_sized_dim_without_batch_dimension_still_builds_one_feed() -> None:
    """A dim of 0 is fixed: one run with an empty tensor of exactly the config's dims."""
    (feed,) = engine_build_feeds(config("max_batch_size: 0 " + fp32("x", "0, 3")))
    assert feed["x"].shape == (0, 3) and feed["x"].dtype == np.float32
