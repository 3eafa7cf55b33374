"""The identity backend (server/backends/identity_backend.py): outputs copy inputs, pairing, reshape,
optional inputs, delays, load refusals naming the tensors or parameter, and its wiring into the
factory, the repository and the manager, in-process."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.backends.identity_backend import (
    IdentityBackend,
    IdentitySpec,
    OffLoop,
    complete_identity,
    identity_plan,
)
from server.backends.instances import InstanceFactory
from server.backends.onnxruntime_backend import OrtOptions
from server.errors import InvalidRequest
from server.models.config import ConfigError, validate_config
from server.models.config_tensors import ReshapePlan
from server.models.footprint import files_bytes
from server.models.manager import ModelManager
from server.models.repository import load_model_source
from server.models.versions import READY, UNAVAILABLE
from server.protocol.validate import Signature
from server.settings import ServerSettings

LONG = 5.0  # seconds: a bound that is never reached when the code is right
PAIR = """
backend: "identity"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
        { name: "INPUT1" data_type: TYPE_STRING dims: [ 2 ] } ]
output [ { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 2 ] },
         { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def t(name: str, dtype: str = "FP32", dims: str = "1", extra: str = "") -> str:
    """One config tensor's text."""
    return f'{{ name: "{name}" data_type: TYPE_{dtype} dims: [ {dims} ] {extra}}}'


def io(inputs: list[str], outputs: list[str]) -> str:
    return f"input [ {', '.join(inputs)} ]\noutput [ {', '.join(outputs)} ]\n"


def config(text: str, name: str = "m") -> mc.ModelConfig:
    parsed = mc.ModelConfig()
    text_format.Parse(text, parsed)
    parsed.name = parsed.name or name
    return parsed


def instance(text: str, instance_id: int = 0) -> IdentityBackend:
    done = complete_identity(config(text), "cfg")
    return IdentityBackend(
        IdentitySpec.from_config(done, "cfg"),
        ThreadPoolExecutor(max_workers=1),
        model_name="m",
        instance_id=instance_id,
        reshape=ReshapePlan.from_config(done),
        max_batch_size=done.max_batch_size,
    )


def test_outputs_are_copies_of_their_inputs_paired_by_suffix() -> None:
    backend = instance(PAIR)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.array([[b"a", b"\xff\x00"], [b"", b"text"]], dtype=object)
    out = backend.run_blocking({"INPUT0": x, "INPUT1": s})
    assert set(out) == {"OUTPUT0", "OUTPUT1"}
    np.testing.assert_array_equal(out["OUTPUT0"], x)
    assert out["OUTPUT0"].dtype == np.float32
    assert out["OUTPUT1"].dtype == object and out["OUTPUT1"].tolist() == s.tolist()
    # Copies: the answer may outlive the request's buffers (its message, a shared-memory region).
    assert not np.shares_memory(out["OUTPUT0"], x) and out["OUTPUT1"] is not s
    backend.close()


def test_names_outside_the_input_output_pattern_pair_by_position() -> None:
    text = 'backend: "identity"\n' + io(
        [t("a", "INT32", "2"), t("b", "INT64")], [t("y", "INT32", "2"), t("z", "INT64")]
    )
    assert IdentitySpec.from_config(config(text), "cfg").pairs == (("a", "y"), ("b", "z"))
    out = instance(text).run_blocking({"a": np.array([1, 2], np.int32), "b": np.array([7], np.int64)})
    assert out["y"].tolist() == [1, 2] and out["z"].tolist() == [7]


def test_reshape_is_applied_as_for_any_model() -> None:
    text = """
    backend: "identity"
    max_batch_size: 4
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 2, 2 ] } } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2, 2 ] } ]
    """
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = instance(text).run_blocking({"INPUT0": x})
    np.testing.assert_array_equal(out["OUTPUT0"], x.reshape(2, 2, 2))


def test_an_omitted_optional_input_answers_zeros_of_its_dims() -> None:
    text = 'backend: "identity"\nmax_batch_size: 4\n' + io(
        [t("INPUT0", dims="3"), t("INPUT1", "INT32", "2", "optional: true")],
        [t("OUTPUT0", dims="3"), t("OUTPUT1", "INT32", "2")],
    )
    out = instance(text).run_blocking({"INPUT0": np.ones((3, 3), np.float32)})
    assert out["OUTPUT1"].dtype == np.int32 and out["OUTPUT1"].tolist() == [[0, 0]] * 3


ONE = io([t("INPUT0")], [t("OUTPUT0")])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            io([t("INPUT0"), t("INPUT1")], [t("OUTPUT0")]),
            "needs as many outputs as inputs (inputs ['INPUT0', 'INPUT1'], outputs ['OUTPUT0'])",
        ),
        (
            io([t("INPUT0")], [t("OUTPUT0", "INT32")]),
            "pairs input 'INPUT0' with output 'OUTPUT0', but their data_types differ "
            "(TYPE_FP32 and TYPE_INT32)",
        ),
        (
            io([t("INPUT0", dims="4")], [t("OUTPUT0", dims="-1")]),
            "pairs input 'INPUT0' with output 'OUTPUT0', but their dims differ ([4] and [-1]",
        ),
        (
            io([t("INPUT0"), t("INPUT1")], [t("OUTPUT0"), t("OUTPUT2")]),
            "inputs ['INPUT1'] have no output of the same suffix (outputs ['OUTPUT0', 'OUTPUT2'])",
        ),
        (
            io([t("INPUT0")], ['{ name: "OUTPUT0" dims: [ 1 ] }']),
            "output 'OUTPUT0' needs a data_type",
        ),
        ("max_batch_size: 4", "needs its inputs and outputs listed"),
        (
            io([t("INPUT0", dims="-1", extra="allow_ragged_batch: true")], [t("OUTPUT0", dims="-1")]),
            "allow_ragged_batch (inputs ['INPUT0'])",
        ),
        (ONE + "sequence_batching { }", "sequence_batching is not supported with this backend"),
        (
            ONE + 'parameters { key: "execute_delay_ms" value: { string_value: "soon" } }',
            "parameters 'execute_delay_ms' must be a number >= 0, got 'soon'",
        ),
        (
            ONE + 'parameters { key: "instance_wise_delay_multiplier" value: { string_value: "1.5" } }',
            "parameters 'instance_wise_delay_multiplier' must be a whole number >= 0, got '1.5'",
        ),
    ],
)
def test_a_config_it_cannot_serve_is_refused_naming_what(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        complete_identity(config('backend: "identity"\n' + text), "cfg")
    assert str(err.value).startswith("cfg: backend 'identity'") and expected in str(err.value)


def test_platform_or_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ConfigError, match="platform 'onnxruntime_onnx' cannot go with backend 'identity'"):
        validate_config(config('backend: "identity" platform: "onnxruntime_onnx"'), "cfg")
    with pytest.raises(
        ConfigError, match="backend 'python' is not supported \\(only 'onnxruntime' and 'identity'\\)"
    ):
        validate_config(config('backend: "python"'), "cfg")


def test_parameters_nobody_reads_load_and_are_named_in_the_load_warning() -> None:
    text = PAIR + (
        'parameters { key: "enable_custom_tracing" value: { string_value: "true" } }'
        'parameters { key: "intra_op_thread_count" value: { string_value: "many" } }'
        'parameters { key: "execute_delay_ms" value: { string_value: "5" } }'
        'parameters { key: "idle_dispatch" value: { string_value: "true" } }'
        "instance_group [ { kind: KIND_GPU count: 2 } ]"
    )
    parsed = config(text)
    validate_config(parsed, "cfg")  # an onnxruntime model would be refused for either
    spec = IdentitySpec.from_config(parsed, "cfg")
    assert spec.ignored == ("enable_custom_tracing", "intra_op_thread_count")
    plan = identity_plan(parsed, spec)
    assert len(plan.slots) == 2 and all(slot.device_id is None for slot in plan.slots)
    assert "parameters ['enable_custom_tracing', 'intra_op_thread_count']" in plan.unapplied[0]
    assert "KIND_GPU" in plan.unapplied[1]
    with pytest.raises(ConfigError, match="parameters \\['enable_custom_tracing'\\] are not supported"):
        validate_config(
            config('parameters { key: "enable_custom_tracing" value: { string_value: "1" } }'), "cfg"
        )


def test_delays_per_instance_as_triton_computes_them() -> None:
    def spec(params: str) -> IdentitySpec:
        return IdentitySpec.from_config(config(PAIR + params), "cfg")

    plain = spec('parameters { key: "execute_delay_ms" value: { string_value: "100" } }')
    assert [plain.delay_s(k) for k in range(3)] == [0.1, 0.1, 0.1]
    scaled = spec(
        'parameters { key: "execute_delay_ms" value: { string_value: "100" } }'
        'parameters { key: "instance_wise_delay_multiplier" value: { string_value: "4" } }'
    )
    assert [round(scaled.delay_s(k), 6) for k in range(3)] == [0.1, 0.4, 0.8]
    assert spec("").delay_s(5) == 0.0


def test_a_run_waits_its_delay_on_its_thread_and_closing_releases_it() -> None:
    x = {"INPUT0": np.ones((1, 2), np.float32), "INPUT1": np.array([[b"a", b"b"]], dtype=object)}
    short = instance(PAIR + 'parameters { key: "execute_delay_ms" value: { string_value: "50" } }')
    start = time.perf_counter()
    short.run_blocking(x)
    assert time.perf_counter() - start >= 0.05
    stuck = instance(PAIR + 'parameters { key: "execute_delay_ms" value: { string_value: "600000" } }')
    done = threading.Event()

    def run() -> None:
        stuck.run_blocking(x)
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    stuck.close()  # an abandoned or closed instance does not keep its thread for ten minutes
    assert done.wait(LONG)
    worker.join(LONG)


def test_the_factory_numbers_instances_and_keeps_waiting_ones_off_the_event_loop() -> None:
    def factory(params: str) -> InstanceFactory:
        parsed = complete_identity(config(PAIR + params), "cfg")
        spec = IdentitySpec.from_config(parsed, "cfg")
        return InstanceFactory(
            Path("unused"),
            OrtOptions(),
            [],
            name="m",
            workers=1,
            faults=None,
            identity=spec,
            max_batch_size=8,
        )

    delayed = factory('parameters { key: "execute_delay_ms" value: { string_value: "10" } }')
    first, second = delayed.session(), delayed.session()
    assert isinstance(first, IdentityBackend) and isinstance(second, IdentityBackend)
    assert (first.instance_id, second.instance_id) == (0, 1)
    replacement = delayed.session(None, 0)  # the watchdog's: it keeps the id of the one it replaces
    assert isinstance(replacement, IdentityBackend) and replacement.instance_id == 0
    wrapped = delayed.wrap(first)
    assert isinstance(wrapped, OffLoop) and not hasattr(wrapped, "run_blocking")
    quick = factory("")
    plain = quick.session()
    assert quick.wrap(plain) is plain and hasattr(plain, "run_blocking")  # cheap: may run inline
    for made in (first, second, replacement, plain):
        made.close()


def test_bytes_inputs_need_not_be_text_for_an_identity_model() -> None:
    binary = {"INPUT0": np.ones((1, 1), np.float32), "INPUT1": np.array([[b"\xff", b"a"]], dtype=object)}
    assert Signature.from_config(config(PAIR)).check_inputs(binary) == 1
    onnx_model = config(PAIR.replace('backend: "identity"', ""))
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        Signature.from_config(onnx_model).check_inputs(binary)


# Triton's QA nop step (gen_ensemble_model_utils.py create_nop_modelconfig), FP32 [-1].
NOP = (
    'backend: "identity"\nmax_batch_size: 1024\n'
    + io([t("INPUT0", dims="-1"), t("INPUT1", dims="-1")], [t("OUTPUT0", dims="-1"), t("OUTPUT1", dims="-1")])
    + "instance_group [ { kind: KIND_CPU } ]\n"
)


async def test_the_manager_loads_an_empty_version_and_refuses_a_bad_pair(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    bad = NOP.replace('"OUTPUT1" data_type: TYPE_FP32', '"OUTPUT1" data_type: TYPE_INT8')
    for name, text in (("nop", NOP), ("bad", bad)):
        (repo / name / "1").mkdir(parents=True)  # empty: the identity backend has no model file
        (repo / name / "config.pbtxt").write_text(text)
    (repo / "nop" / "unrelated.bin").write_bytes(b"\0" * 4096)  # beside the version: not the model's
    source = load_model_source(repo, "nop")
    assert source.versions == {1: repo / "nop" / "1"} and files_bytes(source) == 0
    manager = ModelManager(repo, ServerSettings(cache_dir=tmp_path), lambda name, ready: None)
    await manager.load_all()
    try:
        states = {e.name: (e.state, e.reason) for e in manager.entries()}
        assert states["nop"] == (READY, "")
        state, reason = states["bad"]
        assert state == UNAVAILABLE
        assert (
            "'INPUT1' with output 'OUTPUT1', but their data_types differ (TYPE_FP32 and TYPE_INT8)" in reason
        )
        served = manager.resolve("nop")
        assert served.config.backend == "identity" and len(served.backends) == 1
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        out = await served.batcher.submit({"INPUT0": x, "INPUT1": -x}, 2)
        np.testing.assert_array_equal(out["OUTPUT0"], x)
        np.testing.assert_array_equal(out["OUTPUT1"], -x)
    finally:
        await manager.stop(drain_timeout_s=1.0)
