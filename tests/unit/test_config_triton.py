"""Triton's config fields: the README table covers every field of the schema; reshape, format,
optional and label_filename rules; the onnxruntime backend's parameters and TensorRT values;
instance groups per GPU; the per-level queue policies a config maps to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batcher.types import LevelQueuePolicy, TimeoutAction
from protos import model_config_pb2 as mc
from server.backends.instance_groups import InstanceSlot, instance_slots
from server.models.config import ConfigError, batching_policy, parse_config, validate_config
from server.models.config_backend import backend_parameters, tensorrt_options
from server.models.config_fields import (
    FIELDS,
    all_fields,
    markdown_table,
    status_of,
    unapplied_fields,
    unhandled_fields,
)
from server.models.config_tensors import ReshapePlan, load_labels
from server.models.onnx_completion import complete_from_onnx

README = Path(__file__).resolve().parents[2] / "README.md"


def _parse(text: str) -> mc.ModelConfig:
    return parse_config(f'name: "m"\n{text}', "models/m/config.pbtxt")


def test_every_field_of_the_schema_has_a_status_and_a_readme_row() -> None:
    fields = all_fields()
    assert len(fields) > 150 and "dynamic_batching.priority_queue_policy" in fields
    assert set(FIELDS) <= set(fields)  # no stale entry names a field the schema lacks
    readme = README.read_text(encoding="utf-8")
    missing = [f for f in fields if f"| `{f}` |" not in readme]
    assert not missing, f"README's config field table lacks {missing[:5]}...: paste markdown_table()"
    assert markdown_table() in readme, "README's config field table is out of date: paste markdown_table()"


def test_children_take_their_parents_status() -> None:
    assert status_of("model_operations.op_library_filename") == ("refused", "as `model_operations`")
    assert status_of("ensemble_scheduling.step.model_name") == ("honoured", "as `ensemble_scheduling.step`")
    assert status_of("input.reshape.shape")[0] == "honoured"


def test_refused_and_warned_fields_are_named_per_instance() -> None:
    config = _parse(
        'input { name: "x" is_shape_tensor: true }\n'
        "instance_group { rate_limiter { priority: 1 } }\ninstance_group { passive: true }\n"
        'metric_tags { key: "a" value: "b" }\noptimization { eager_batching: true }\n'
    )
    assert unhandled_fields(config) == ["input 'x': is_shape_tensor", "instance_group[1].passive"]
    warned = unapplied_fields(config)
    assert [w.split(" (")[0] for w in warned] == [
        "instance_group[0].rate_limiter",
        "optimization.eager_batching",
    ]  # metric_tags is honoured: Prometheus labels


# "_" and "_name__" made the labels `__` and `__name__` (Prometheus's own): the page's parsers
# refused the whole page, every model's series with it.
@pytest.mark.parametrize("key", ["team-name", "a.b", "", "caf\u00e9", "_", "_name__", "_x"])
def test_a_metric_tag_that_cannot_be_a_label_is_refused_naming_it(key: str) -> None:
    config = _parse(f'metric_tags {{ key: "{key}" value: "v" }}\n')
    with pytest.raises(ConfigError, match=r"metric_tags key .* cannot be a Prometheus label"):
        validate_config(config, "models/m/config.pbtxt")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('input { name: "x" dims: [ 2, 3 ] reshape { shape: [ 5 ] } }', "holds 5 elements but dims"),
        ('input { name: "x" dims: [ -1 ] reshape { shape: [ -1, -1 ] } }', "more than one variable"),
        ('input { name: "x" dims: [ -1, 2 ] reshape { shape: [ 4 ] } }', "as many variable"),
        ('input { name: "x" dims: [ 3, 2 ] format: FORMAT_NHWC }', "format FORMAT_NHWC needs 3 dims"),
    ],
)
def test_tensor_rules_name_the_tensor(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(_parse(text), "models/m/config.pbtxt")


def test_image_format_with_three_dims_and_a_matching_reshape_load() -> None:
    text = 'input { name: "x" dims: [ 3, 2, 2 ] format: FORMAT_NCHW reshape { shape: [ 12 ] } }'
    validate_config(_parse(text), "models/m/config.pbtxt")


def test_the_graph_is_checked_against_reshape_shape_not_dims() -> None:
    config = _parse(
        "max_batch_size: 4\n"
        'input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } }\n'
    )
    graph_in, graph_out = [("x", "tensor(float)", ["N", 2, 2])], [("y", "tensor(float)", ["N", 2, 2])]
    done = complete_from_onnx(config, graph_in, graph_out)
    assert list(done.input[0].dims) == [4]
    with pytest.raises(ConfigError, match=r"reshape.shape \[2, 2\] do not match the ONNX model's \[4\]"):
        complete_from_onnx(config, [("x", "tensor(float)", ["N", 4])], graph_out)


def test_reshape_plan_keeps_the_batch_dimension() -> None:
    config = _parse(
        "max_batch_size: 4\n"
        'input { name: "x" dims: [ 4 ] reshape { shape: [ 2, 2 ] } }\n'
        'output { name: "t" dims: [ 1 ] reshape { shape: [ ] } }\n'
    )
    plan = ReshapePlan.from_config(config)
    assert plan is not None
    assert plan.to_model({"x": np.zeros((3, 4))})["x"].shape == (3, 2, 2)
    assert plan.to_wire({"t": np.zeros(3)})["t"].shape == (3, 1)
    assert plan.to_model({}) == {}  # an optional input left out
    assert ReshapePlan.from_config(_parse('input { name: "x" dims: [ 4 ] }')) is None


def test_optional_inputs_must_be_initializers_the_model_can_run_without() -> None:
    text = 'input { name: "x" data_type: TYPE_FP32 dims: [ 2 ] optional: true }'
    graph = [("x", "tensor(float)", [2])]
    with pytest.raises(ConfigError, match="input 'x' is optional but the ONNX model cannot run without it"):
        complete_from_onnx(_parse(text), graph, [("y", "tensor(float)", [2])])
    done = complete_from_onnx(_parse(text), [], [("y", "tensor(float)", [2])], initializers=graph)
    assert [t.name for t in done.input] == ["x"]
    # An initializer is never added to the inputs by completion, only accepted where listed.
    done = complete_from_onnx(_parse(""), [], [("y", "tensor(float)", [2])], initializers=graph)
    assert list(done.input) == []


def test_labels_are_read_from_the_model_directory_only(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    config = _parse('output { name: "y" label_filename: "labels.txt" }')
    assert load_labels(config, tmp_path, "src") == {"y": ("cat", "dog")}
    with pytest.raises(ConfigError, match=r"label_filename '\.\./x\.txt' is outside the model directory"):
        load_labels(_parse('output { name: "y" label_filename: "../x.txt" }'), tmp_path, "src")
    with pytest.raises(ConfigError, match=r"label_filename 'nope\.txt' cannot be read"):
        load_labels(_parse('output { name: "y" label_filename: "nope.txt" }'), tmp_path, "src")


def _params(**values: str) -> mc.ModelConfig:
    config = _parse("")
    for key, value in values.items():
        config.parameters[key.replace("__", ".")].string_value = value
    return config


def test_backend_parameters_map_to_session_and_run_settings() -> None:
    params = backend_parameters(
        _params(
            enable_mem_arena="0",
            enable_mem_pattern="true",
            memory__enable_memory_arena_shrinkage="cpu:0;gpu:0",
            session__use_device_allocator_for_initializers="1",
            gpu_mem_limit="1024",
            execution_mode="1",
        ),
        has_gpu=False,
    )
    assert params.session_attrs == (("enable_cpu_mem_arena", False), ("enable_mem_pattern", True))
    assert params.session_entries == (("session.use_device_allocator_for_initializers", "1"),)
    assert params.run_entries == (("memory.enable_memory_arena_shrinkage", "cpu:0"),)
    assert params.cuda == {"gpu_mem_limit": "1024"}
    assert params.options == {"execution_mode": "parallel"}
    assert len(params.unapplied) == 2  # the gpu shrinkage entry and the CUDA key: no GPU
    assert backend_parameters(_params(gpu_mem_limit="1"), has_gpu=True).unapplied == ()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("enable_mem_pattern", "maybe"),
        ("memory__enable_memory_arena_shrinkage", "cpu"),
        ("cudnn_conv_algo_search", "3"),
        ("gpu_mem_limit", "-1"),
        ("arena_extend_strategy", "2"),
        ("intra_op_thread_count", "x"),
        ("share_session_between_instances", "yes"),
    ],
)
def test_bad_backend_parameter_values_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"parameters '{key.replace('__', '.')}' value '{value}' is not"):
        backend_parameters(_params(**{key: value}), has_gpu=False)


def test_every_documented_backend_key_is_accepted_by_validation() -> None:
    config = _params(
        intra_op_thread_count="1",
        inter_op_thread_count="1",
        execution_mode="0",
        enable_mem_arena="1",
        enable_mem_pattern="1",
        memory__enable_memory_arena_shrinkage="cpu:0",
        session__use_device_allocator_for_initializers="0",
        share_session_between_instances="false",
        cudnn_conv_algo_search="2",
        gpu_mem_limit="4294967200",
        arena_extend_strategy="0",
        do_copy_in_default_stream="1",
    )
    validate_config(config, "src")
    with pytest.raises(ConfigError, match="parameters 'gpu_mem_limit' value 'lots' is not bytes"):
        validate_config(_params(gpu_mem_limit="lots"), "src")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_workspace_size_bytes", "abc", "'max_workspace_size_bytes' value 'abc' is not bytes"),
        ("precision_mode", "fp16", "precision_mode 'fp16' is not one of"),
        ("trt_engine_cache_enable", "perhaps", "'trt_engine_cache_enable' value 'perhaps' is not a boolean"),
        ("trt_builder_optimization_level", "high", "is not an integer"),
        ("trt_bogus", "1", "parameter 'trt_bogus' is not supported"),
    ],
)
def test_tensorrt_values_are_checked_as_triton_does(key: str, value: str, message: str) -> None:
    text = (
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" '
        f'parameters {{ key: "{key}" value: "{value}" }} }} ] }} }}'
    )
    with pytest.raises(ConfigError, match=message):
        validate_config(_parse(text), "src")


@pytest.mark.parametrize(
    ("key", "value", "good"),
    [
        ("trt_max_partition_iterations", "1000000000", False),
        ("max_partition_iterations", "1000", True),  # Triton's name, onnxruntime's bounds
        ("trt_auxiliary_streams", "100000", False),
        ("trt_auxiliary_streams", "-1", True),
        ("trt_auxiliary_streams", "-2", False),
        ("trt_builder_optimization_level", "6", False),
        ("trt_builder_optimization_level", " +5 ", True),
        ("trt_dla_core", "\u0663", False),  # an Arabic-Indic three: \d had taken it
        ("minimum_segment_size", "0", False),
        ("trt_ep_context_embed_mode", "1", True),
        ("trt_ep_context_embed_mode", "-", False),
    ],
)
def test_tensorrt_integer_keys_are_bounded(key: str, value: str, good: bool) -> None:
    """A config can come from a client's RepositoryModelLoad: a billion partition iterations or a
    hundred thousand auxiliary streams had loaded. Each integer key takes onnxruntime's range."""
    if good:
        assert tensorrt_options({key: value}, "m")
        return
    with pytest.raises(ConfigError, match=rf"parameter '{key}' value .* is not an integer from -?\d+ to \d+"):
        tensorrt_options({key: value}, "m")


def test_a_long_bad_value_is_cut_in_the_error() -> None:
    with pytest.raises(ConfigError) as raised:
        tensorrt_options({"trt_dla_core": "9" * 5000}, "m")
    assert "... (5000 characters)" in str(raised.value) and len(str(raised.value)) < 300


def test_tensorrt_maps_precision_as_triton() -> None:
    assert tensorrt_options({"precision_mode": "INT8", "trt_engine_cache_path": "/c"}, "m") == {
        "trt_int8_enable": "1",
        "trt_engine_cache_path": "/c",
    }
    assert tensorrt_options({"precision_mode": "FP32"}, "m") == {}


def test_gpu_groups_count_instances_per_listed_gpu() -> None:
    config = _parse(
        'instance_group [ { name: "a" count: 2 kind: KIND_GPU gpus: [ 0, 1 ] }, { count: 1 kind: KIND_CPU } ]'
    )
    slots, unapplied = instance_slots(config, gpus=[0, 1])
    assert slots == [InstanceSlot("a", 0)] * 2 + [InstanceSlot("a", 1)] * 2 + [InstanceSlot("m_1", None, 1)]
    assert unapplied == []
    slots, unapplied = instance_slots(config, gpus=())
    assert [s.device_id for s in slots] == [None] * 5
    assert unapplied == [
        "instance_group 'a' KIND_GPU gpus [0, 1] (no GPU: 4 CPU instances, served as KIND_CPU)"
    ]
    # None: Triton's group named after the model, its onnxruntime KIND_CPU count (2).
    assert instance_slots(_parse(""), gpus=()) == ([InstanceSlot("m", None)] * 2, [])


def test_priority_queue_policy_maps_to_level_policies() -> None:
    config = _parse(
        "max_batch_size: 8\n"
        "dynamic_batching { priority_levels: 3 default_priority_level: 3\n"
        "  default_queue_policy { max_queue_size: 7 }\n"
        "  priority_queue_policy { key: 2 value { max_queue_size: 3 timeout_action: DELAY "
        "default_timeout_microseconds: 2000000 } }\n"
        "  priority_queue_policy { key: 1 value { } } }"
    )
    validate_config(config, "src")
    policy = batching_policy(config, default_max_queue_size=100, max_batches_in_flight=1)
    assert policy.max_queue_size == 7
    assert policy.level_policies == (
        (1, LevelQueuePolicy(max_queue_size=100)),
        (2, LevelQueuePolicy(3, 2.0, TimeoutAction.DELAY, allow_timeout_override=False)),
    )
