"""Model config: parse errors, completion from the ONNX graph, validation, batching policy."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import grpc
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from batcher.types import BatchingPolicy, TimeoutAction
from protos import model_config_pb2 as mc
from protos import regular_files
from server.errors import STATUS_BY_EXCEPTION, LoadOutOfResources, RepositoryError, load_failure
from server.models.config import (
    MAX_CONFIG_FILE_BYTES,
    ConfigError,
    batching_policy,
    dynamic_batching_enabled,
    load_config_file,
    parse_config,
    validate_config,
)
from server.models.onnx_completion import OnnxTensor, complete_from_onnx

BATCHING_IN = [("x", "tensor(float)", ["batch", 4]), ("ids", "tensor(int64)", [None, "seq"])]
BATCHING_OUT = [("y", "tensor(float)", ["batch", 2])]
FIXED_IN = [OnnxTensor("x", "tensor(float)", [3, 4])]
FIXED_OUT = [OnnxTensor("y", "tensor(float)", [3, 2])]


def _parse(text: str) -> mc.ModelConfig:
    return parse_config(text, "models/m/config.pbtxt")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    return path


# --- parsing -----------------------------------------------------------------------------------


def test_unknown_top_level_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name: "m"\nmax_batch_size: 8\nsequence_batcher {\n}\n')
    with pytest.raises(ConfigError) as err:
        load_config_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3:1: unsupported field 'sequence_batcher'")
    assert "inference.ModelConfig" in message


def test_unknown_nested_field_names_its_message(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name: "m"\ndynamic_batching {\n  max_queue_delay: 5\n}\n')
    with pytest.raises(
        ConfigError, match=r":3:\d+: unsupported field 'max_queue_delay'.*ModelDynamicBatching"
    ):
        load_config_file(path)


def test_bad_value_names_line() -> None:
    with pytest.raises(ConfigError, match=r"^models/m/config.pbtxt:2:\d+: .*TYPE_FLOAT"):
        _parse('name: "m"\ninput [{ name: "x" data_type: TYPE_FLOAT }]\n')


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "nope.pbtxt")


def test_a_config_that_is_no_regular_file_or_too_large_is_refused_unread(tmp_path: Path) -> None:
    """A FIFO had blocked the read (the repository frozen, SIGTERM unheard); a link to /dev/zero
    grew without end (1.6 GB in 6 s); both found by a tester."""
    fifo = tmp_path / "fifo.pbtxt"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config_file(fifo)  # returns at once: nothing is written to it
    zero = tmp_path / "zero.pbtxt"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config_file(zero)
    big = _write(tmp_path, 'name: "m"\n' + "#" * MAX_CONFIG_FILE_BYTES)
    with pytest.raises(ConfigError, match=f"larger than {MAX_CONFIG_FILE_BYTES} bytes"):
        load_config_file(big)
    linked = tmp_path / "linked.pbtxt"
    linked.symlink_to(_write(tmp_path, 'name: "m"\r\nmax_batch_size: 8\r\n'))  # followed, as Triton
    assert load_config_file(linked).max_batch_size == 8


def test_parses_triton_style_config() -> None:
    config = _parse(
        """
        name: "m"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]
        output [{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }]
        instance_group [{ count: 2 kind: KIND_GPU gpus: [ 0 ] }]
        dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
        """
    )
    validate_config(config, "m")
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]


# --- completion from ONNX ------------------------------------------------------------------------


def test_complete_batching_model_from_nothing() -> None:
    config = mc.ModelConfig(name="m")
    done = complete_from_onnx(config, BATCHING_IN, BATCHING_OUT, default_max_batch_size=32)
    assert done.max_batch_size == 32
    assert done.platform == "onnxruntime_onnx" and done.backend == "onnxruntime"
    assert [(i.name, i.data_type, list(i.dims)) for i in done.input] == [
        ("x", mc.TYPE_FP32, [4]),
        ("ids", mc.TYPE_INT64, [-1]),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in done.output] == [("y", mc.TYPE_FP32, [2])]
    assert not config.input and config.max_batch_size == 0  # the argument is left alone


def test_a_graph_left_to_batch_gets_the_dynamic_batcher() -> None:
    """As Triton's onnxruntime backend completes it: without it each request ran alone."""
    done = complete_from_onnx(mc.ModelConfig(name="m"), BATCHING_IN, BATCHING_OUT, default_max_batch_size=32)
    assert done.HasField("dynamic_batching")
    sequence = complete_from_onnx(_parse("sequence_batching { }"), BATCHING_IN, BATCHING_OUT)
    assert not sequence.HasField("dynamic_batching")
    said = complete_from_onnx(_parse("max_batch_size: 8"), BATCHING_IN, BATCHING_OUT)
    assert not said.HasField("dynamic_batching")  # the config chose its batching: left as it is


def test_a_config_listing_inputs_and_outputs_is_not_completed() -> None:
    """Triton completes nothing then: an output the config leaves out is not served (it was, and
    a default request got every output of the graph)."""
    outputs = [("y", "tensor(float)", ["N", 2]), ("hidden", "tensor(float)", ["N", 512])]
    config = _parse(
        'max_batch_size: 4 input [{ name: "x" dims: [ 4 ] }, { name: "ids" dims: [ -1 ] }] '
        'output [{ name: "y" dims: [ 2 ] }]'
    )
    done = complete_from_onnx(config, BATCHING_IN, outputs)
    assert [o.name for o in done.output] == ["y"]
    missing_input = _parse(
        'max_batch_size: 4 input [{ name: "x" dims: [ 4 ] }] output [{ name: "y" dims: [ 2 ] }]'
    )
    with pytest.raises(
        ConfigError, match=r"the ONNX model's inputs \['ids'\] are not in the config's inputs"
    ):
        complete_from_onnx(missing_input, BATCHING_IN, outputs)


def test_scalars_are_dims_one_reshaped_to_nothing_as_triton_completes_them() -> None:
    """Triton writes dims [1] and reshape [] for a scalar (per row): its clients send [1] (or
    [N, 1]); completed as dims [] here, they were refused, and a config saying [1] failed to load."""
    scalar = [("s", "tensor(float)", [])]
    done = complete_from_onnx(mc.ModelConfig(name="m"), scalar, scalar)
    for tensor in (done.input[0], done.output[0]):
        assert list(tensor.dims) == [1] and tensor.HasField("reshape") and not tensor.reshape.shape
    rows = [("r", "tensor(float)", ["N"])]
    done = complete_from_onnx(mc.ModelConfig(name="m"), rows, rows, default_max_batch_size=8)
    assert done.max_batch_size == 8 and list(done.input[0].dims) == [1] and done.input[0].HasField("reshape")
    said = complete_from_onnx(_parse('input [{ name: "s" dims: [ 1 ] }]'), scalar, scalar)
    assert said.input[0].HasField("reshape") and list(said.input[0].dims) == [1]


def test_complete_non_batching_model_keeps_full_shape() -> None:
    done = complete_from_onnx(mc.ModelConfig(name="m"), FIXED_IN, FIXED_OUT)
    assert done.max_batch_size == 0
    assert list(done.input[0].dims) == [3, 4]
    assert list(done.output[0].dims) == [3, 2]


def test_one_fixed_first_dim_means_no_batching() -> None:
    outputs = [("y", "tensor(float)", [1, 2])]
    done = complete_from_onnx(mc.ModelConfig(), BATCHING_IN, outputs)
    assert done.max_batch_size == 0
    assert list(done.input[0].dims) == [-1, 4]


def test_listed_inputs_with_max_batch_size_zero_mean_no_batching() -> None:
    config = _parse('input [{ name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] }]')
    done = complete_from_onnx(config, BATCHING_IN, BATCHING_OUT)
    assert done.max_batch_size == 0
    assert [list(i.dims) for i in done.input] == [[-1, 4], [-1, -1]]


def test_partial_config_is_filled_and_checked() -> None:
    config = _parse('max_batch_size: 4 input [{ name: "x" dims: [ 4 ] }, { name: "ids" dims: [ 7 ] }]')
    done = complete_from_onnx(config, BATCHING_IN, BATCHING_OUT)
    assert done.max_batch_size == 4
    assert done.input[0].data_type == mc.TYPE_FP32  # filled
    assert list(done.input[1].dims) == [7]  # a fixed size where the graph's is variable: Triton's rule
    assert [i.name for i in done.input] == ["x", "ids"]


def test_a_variable_config_dim_where_the_graph_fixes_it_is_refused() -> None:
    # Triton refuses it at load; accepted, requests of other sizes passed validation and
    # onnxruntime refused them at run time (INTERNAL, for the whole batch).
    config = _parse('max_batch_size: 4 input [{ name: "x" dims: [ -1 ] }]')
    with pytest.raises(
        ConfigError, match=r"input 'x' dims \(without the batch dimension\) \[-1\] do not match"
    ):
        complete_from_onnx(config, BATCHING_IN, BATCHING_OUT)


def test_complete_accepts_onnxruntime_node_args(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    done = complete_from_onnx(mc.ModelConfig(), session.get_inputs(), session.get_outputs())
    assert done.max_batch_size == 64
    assert list(done.input[0].dims) == [3]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('input [{ name: "z" }]', r"input 'z' is not in the ONNX model"),
        ('output [{ name: "q" }]', r"output 'q' is not in the ONNX model"),
        (
            'max_batch_size: 4 input [{ name: "x" data_type: TYPE_INT32 }]',
            r"input 'x' data_type TYPE_INT32 does not match the ONNX model's TYPE_FP32",
        ),
        ('max_batch_size: 4 input [{ name: "x" dims: [ 5 ] }]', r"input 'x' .*\[5\] do not match .*\[4\]"),
        ('max_batch_size: 4 output [{ name: "y" dims: [ 2, 1 ] }]', r"output 'y' .*\[2, 1\] do not match"),
    ],
)
def test_consistency_errors_name_tensor_and_both_values(text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        complete_from_onnx(_parse(text), BATCHING_IN, BATCHING_OUT, source="m")


def test_max_batch_size_needs_batch_dimension() -> None:
    with pytest.raises(ConfigError, match=r"max_batch_size is 8 but ONNX input 'x' has shape \[3, 4\]"):
        complete_from_onnx(mc.ModelConfig(max_batch_size=8), FIXED_IN, FIXED_OUT)


def test_dynamic_batching_on_non_batching_model() -> None:
    config = _parse("dynamic_batching { }")
    with pytest.raises(ConfigError, match="dynamic_batching needs max_batch_size > 0"):
        complete_from_onnx(config, FIXED_IN, FIXED_OUT)


def test_unsupported_onnx_type() -> None:
    with pytest.raises(ConfigError, match=r"'x' has unsupported type tensor\(complex64\)"):
        complete_from_onnx(mc.ModelConfig(), [("x", "tensor(complex64)", [2])], FIXED_OUT)


@pytest.mark.parametrize(("field", "value"), [("platform", "tensorflow_savedmodel"), ("backend", "tensorrt")])
def test_other_platforms_are_rejected(field: str, value: str) -> None:
    config = mc.ModelConfig(**{field: value})
    with pytest.raises(ConfigError, match=f"{field} '{value}' is not supported"):
        complete_from_onnx(config, BATCHING_IN, BATCHING_OUT)
    with pytest.raises(ConfigError, match=f"{field} '{value}'"):
        validate_config(config, "m")


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            'max_batch_size: 4 input [{ name: "x" dims: [ 3 ] reshape { shape: [ 4 ] } }]',
            r"input 'x': reshape.shape \[4\] holds 4 elements but dims \[3\] hold 3",
        ),
        ('output [{ name: "y" reshape { } }]', r"output 'y': reshape needs dims"),
        (
            'input [{ name: "x" dims: [ 3, 4 ] format: FORMAT_NCHW }]',
            r"input 'x': format FORMAT_NCHW needs 3 dims",
        ),
        ('input [{ name: "x" }, { name: "x" }]', "input 'x' is listed twice"),
        ('input [{ name: "x" dims: [ -2 ] }]', "below -1"),
        ('input [{ name: "x" data_type: 99 }]', "data_type 99 is not supported"),
        ("max_batch_size: -1", "max_batch_size -1 is negative"),
        (
            "max_batch_size: 4 dynamic_batching { preferred_batch_size: [ 2, 8 ] }",
            r"dynamic_batching.preferred_batch_size 8 exceeds max_batch_size 4",
        ),
        (
            "max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
            "default_priority_level 3 exceeds priority_levels 2",
        ),
        (
            "max_batch_size: 4 dynamic_batching { default_priority_level: 1 }",
            "default_priority_level 1 given without priority_levels",
        ),
        (
            "max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 2\n"
            "priority_queue_policy { key: 3 value { } } }",
            r"priority_queue_policy level 3 is not between 1 and priority_levels \(2\)",
        ),
        # Triton refuses these three; served, unlabelled requests took the highest level, and
        # preserve_ordering answered a higher-priority request after lower ones.
        (
            "max_batch_size: 4 dynamic_batching { priority_levels: 3 }",
            r"default_priority_level must be in range \[1, 3\]",
        ),
        (
            "max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 1 "
            "preserve_ordering: true }",
            "only one priority level is allowed when preserve_ordering is true",
        ),
        (
            "max_batch_size: 4 dynamic_batching { preserve_ordering: true "
            "default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 100 } }",
            "cannot have timeout_action DELAY when preserve_ordering is true",
        ),
        ("instance_group [{ kind: KIND_MODEL }]", r"instance_group\[0\]: kind KIND_MODEL"),
        ("instance_group [{ kind: KIND_CPU gpus: [ 0 ] }]", "gpus .* given for kind KIND_CPU"),
        ("version_policy { latest { } }", "version_policy.latest.num_versions"),
        ("version_policy { specific { versions: [ 0 ] } }", "version_policy.specific.versions"),
        ("optimization { graph { level: 3 } }", "optimization.graph.level 3"),
        ("optimization { priority: PRIORITY_MAX }", "optimization.priority"),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "rocm" }] } }',
            "gpu_execution_accelerator 'rocm' is not supported",
        ),
        ('parameters { key: "foo" value { string_value: "1" } }', r"parameters \['foo'\] are not supported"),
        ('runtime: "model.py"', "runtime 'model.py'"),
    ],
)
def test_unsupported_settings_name_the_field(text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        validate_config(_parse(text), "models/m/config.pbtxt")


def test_valid_configs_pass() -> None:
    validate_config(_parse("instance_group [{ count: 2 kind: KIND_GPU gpus: [ 0, 1 ] }]"), "m")
    validate_config(
        _parse(
            "max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 4 ] priority_levels: 3 "
            'default_priority_level: 2 } parameters { key: "intra_op_thread_count" '
            'value { string_value: "2" } } version_policy { all { } }'
        ),
        "m",
    )


# --- batching policy ------------------------------------------------------------------------------


def test_batching_policy_from_dynamic_batching() -> None:
    config = _parse(
        """
        max_batch_size: 16
        dynamic_batching {
          preferred_batch_size: [ 8, 4, 8 ]
          max_queue_delay_microseconds: 1500
          priority_levels: 3
          default_priority_level: 2
          default_queue_policy {
            timeout_action: DELAY
            default_timeout_microseconds: 250000
            max_queue_size: 10
          }
        }
        """
    )
    assert dynamic_batching_enabled(config)
    policy = batching_policy(config, default_max_queue_size=99, max_batches_in_flight=2)
    assert policy == BatchingPolicy(
        max_batch_size=16,
        preferred_batch_sizes=(4, 8),
        max_queue_delay_s=0.0015,
        max_queue_size=10,
        priority_levels=3,
        default_priority=2,
        default_timeout_s=0.25,
        timeout_action=TimeoutAction.DELAY,
        allow_timeout_override=False,  # Triton's default: requests cannot override the default
        max_batches_in_flight=2,
    )


def test_batching_policy_defaults_always_bound_the_queue() -> None:
    policy = batching_policy(
        _parse("max_batch_size: 8 dynamic_batching { }"), default_max_queue_size=99, max_batches_in_flight=1
    )
    assert policy.max_queue_size == 99
    assert policy.priority_levels == 1 and policy.default_priority == 1
    assert policy.default_timeout_s is None
    assert policy.timeout_action is TimeoutAction.REJECT
    assert policy.allow_timeout_override


@pytest.mark.parametrize(
    ("queue_policy", "allowed"),
    [
        ("", True),  # no queue policy: the request's `timeout` counts
        ("max_queue_size: 4", True),  # no default timeout: nothing to override
        ("default_timeout_microseconds: 1000", False),  # Triton's default: the model's wins
        ("default_timeout_microseconds: 1000 allow_timeout_override: false", False),
        ("default_timeout_microseconds: 1000 allow_timeout_override: true", True),
        ("allow_timeout_override: true", True),
    ],
)
def test_allow_timeout_override_is_mapped_as_triton_reads_it(queue_policy: str, allowed: bool) -> None:
    config = _parse(f"max_batch_size: 8 dynamic_batching {{ default_queue_policy {{ {queue_policy} }} }}")
    validate_config(config, "m")  # accepted, not refused as an unsupported field
    policy = batching_policy(config, default_max_queue_size=8, max_batches_in_flight=1)
    assert policy.allow_timeout_override is allowed


def test_without_dynamic_batching_requests_run_alone() -> None:
    config = _parse("max_batch_size: 8")
    assert not dynamic_batching_enabled(config)
    policy = batching_policy(config, default_max_queue_size=50, max_batches_in_flight=1)
    assert policy.max_batch_size == 8
    assert policy.preferred_batch_sizes == () and policy.max_queue_delay_s == 0
    assert policy.max_queue_size == 50


IDLE = (
    'max_batch_size: 8 dynamic_batching {{ }} parameters {{ key: "idle_dispatch" '
    'value {{ string_value: "{}" }} }}'
)


@pytest.mark.parametrize(
    ("param", "server", "expected"),
    [(None, False, False), (None, True, True), ("true", False, True), ("FALSE", True, False)],
)
def test_idle_dispatch_is_the_servers_unless_the_model_says(
    param: str | None, server: bool, expected: bool
) -> None:
    config = _parse(IDLE.format(param) if param is not None else "max_batch_size: 8 dynamic_batching { }")
    validate_config(config, "m")
    policy = batching_policy(config, default_max_queue_size=8, max_batches_in_flight=1, idle_dispatch=server)
    assert policy.idle_dispatch is expected


def test_idle_dispatch_must_be_true_or_false() -> None:
    with pytest.raises(
        ConfigError, match="m: parameters 'idle_dispatch' must be 'true' or 'false', got 'yes'"
    ):
        validate_config(_parse(IDLE.format("yes")), "m")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("sequence_batching { iterative_sequence: true }", "sequence_batching.iterative_sequence"),
        ('batch_output { target_name: "y" source_input: "x" }', "batch_output"),
        ('instance_group { host_policy: "numa0" }', "instance_group[0].host_policy"),
        ('instance_group { profile: "0" }', "instance_group[0].profile"),
        ("model_transaction_policy { decoupled: true }", "model_transaction_policy.decoupled"),
    ],
)
def test_triton_fields_that_parse_but_are_not_honoured_are_refused_by_name(text: str, field: str) -> None:
    config = _parse(f'name: "m"\nmax_batch_size: 8\n{text}\n')
    with pytest.raises(ConfigError, match=f"models/m/config.pbtxt: {re.escape(field)} is not supported"):
        validate_config(config, "models/m/config.pbtxt")


@pytest.mark.parametrize("name", ["../../../outside.onnx", "/etc/hostname", "sub/model.onnx", "..", "a\\b"])
def test_default_model_filename_is_a_name_in_the_version_directory(name: str) -> None:
    # A path loaded a file from anywhere, and measuring its "version directory" walked / or /tmp.
    config = mc.ModelConfig(name="m", default_model_filename=name)
    with pytest.raises(ConfigError, match=r"default_model_filename .* must be a file name in the version"):
        validate_config(config, "cfg")
    validate_config(mc.ModelConfig(name="m", default_model_filename="weights.onnx"), "cfg")


def test_a_byte_order_mark_before_the_config_is_not_an_error(tmp_path: Path) -> None:
    # Some editors write one; it was "Expected identifier or number, got \ufeff" at 1:1.
    path = tmp_path / "config.pbtxt"
    path.write_bytes("\ufeffmax_batch_size: 8\n".encode())
    assert load_config_file(path).max_batch_size == 8


def test_a_load_failed_for_want_of_open_files_is_unavailable_not_the_callers_mistake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tester's server at its open-file limit answered RepositoryModelLoad INVALID_ARGUMENT
    ("cannot read: [Errno 24] Too many open files"), a status no client retries."""
    path = _write(tmp_path, 'name: "m"\n')

    def no_files(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(regular_files.os, "open", no_files)
    with pytest.raises(ConfigError) as refused:
        load_config_file(path)
    answer = load_failure(str(refused.value), refused.value)
    assert isinstance(answer, LoadOutOfResources) and "Too many open files" in str(answer)
    assert STATUS_BY_EXCEPTION[LoadOutOfResources] is grpc.StatusCode.UNAVAILABLE
    plain = load_failure("bad", ConfigError("bad"))  # the repository's own faults stay the caller's
    assert type(plain) is RepositoryError
    assert STATUS_BY_EXCEPTION[RepositoryError] is grpc.StatusCode.INVALID_ARGUMENT


def test_a_shortage_said_in_words_or_in_a_files_cause_is_unavailable_too() -> None:
    """onnxruntime reports EMFILE only in its text; a label or warm-up file's read kept its errno
    only as a cause (a tester found both answered INVALID_ARGUMENT)."""
    session = RuntimeError("Load model from m.onnx failed: system error number 24")
    assert isinstance(load_failure("load failed", session), LoadOutOfResources)
    label = ConfigError("labels.txt cannot be read: Too many open files")
    label.__cause__ = OSError(errno.EMFILE, "Too many open files")
    assert isinstance(load_failure(str(label), label), LoadOutOfResources)
    denied = ConfigError("labels.txt cannot be read: Permission denied")  # the operator's to mend
    assert type(load_failure(str(denied), denied)) is RepositoryError
