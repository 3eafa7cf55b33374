"""The onnxruntime backend's details: session options onnxruntime gets, provider fallback, runs, errors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

import server.backends.onnxruntime_backend as backend_module
from batcher.log_ration import Ration
from protos import model_config_pb2 as mc
from server.backends.batch_padding import Padding
from server.backends.io_binding import GRAPH_ID, instance_io
from server.backends.onnxruntime_backend import (
    CPU,
    CUDA,
    TENSORRT,
    BackendLoadError,
    OrtBackend,
    OrtOptions,
    ort_options_for,
)
from server.backends.ort_paths import NotUtf8Path
from server.errors import ModelRefusedInput, ModelRunFailed
from server.models.config_tensors import ReshapePlan
from tests.support.division_models import save

REAL_SESSION = ort.InferenceSession
REAL_AVAILABLE = ort.get_available_providers()
AZURE = "AzureExecutionProvider"
LOGGER = "server.backends.onnxruntime_backend"


def _relu(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _divide(path: Path) -> Path:
    a = helper.make_tensor_value_info("a", TensorProto.INT64, ["batch"])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, ["batch"])
    c = helper.make_tensor_value_info("c", TensorProto.INT64, ["batch"])
    graph = helper.make_graph([helper.make_node("Div", ["a", "b"], ["c"])], "div", [a, b], [c])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _bf16(path: Path, with_text: bool = False) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 2])
    nodes, inputs, outputs = [helper.make_node("Identity", ["x"], ["y"])], [x], [y]
    if with_text:
        inputs.append(helper.make_tensor_value_info("t", TensorProto.STRING, ["batch"]))
        outputs.append(helper.make_tensor_value_info("u", TensorProto.STRING, ["batch"]))
        nodes.append(helper.make_node("Identity", ["t"], ["u"]))
    graph = helper.make_graph(nodes, "bf16", inputs, outputs)
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@dataclass
class Call:
    source: str | bytes
    so: ort.SessionOptions
    providers: list[str] | None
    provider_options: list[dict[str, str]] | None
    disabled_optimizers: list[str] | None = None


class Sessions:
    """Records every InferenceSession made; `fail(source, providers)` may return an error to raise."""

    def __init__(self, fail: Callable[[Any, list[str]], Exception | None] | None = None) -> None:
        self.calls: list[Call] = []
        self.fail = fail

    def __call__(
        self,
        source: str | bytes,
        sess_options: ort.SessionOptions,
        providers: list[str] | None = None,
        provider_options: list[dict[str, str]] | None = None,
        disabled_optimizers: list[str] | None = None,
    ) -> ort.InferenceSession:
        self.calls.append(Call(source, sess_options, providers, provider_options, disabled_optimizers))
        err = self.fail(source, providers or []) if self.fail else None
        if err is not None:
            raise err
        names = [p for p in providers or [] if p in REAL_AVAILABLE] if providers is not None else None
        return REAL_SESSION(
            source, sess_options=sess_options, providers=names, disabled_optimizers=disabled_optimizers
        )


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> Sessions:
    recorder = Sessions()
    monkeypatch.setattr(ort, "InferenceSession", recorder)
    return recorder


@pytest.fixture
def with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *REAL_AVAILABLE])


class RecordingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.shutdowns: list[dict[str, Any]] = []

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.shutdowns.append({"wait": wait, "cancel_futures": cancel_futures})
        super().shutdown(wait=False, cancel_futures=cancel_futures)


def _backend(
    path: Path,
    options: OrtOptions | None = None,
    providers: list[tuple[str, dict[str, str]]] | None = None,
    **kwargs: Any,
) -> OrtBackend:
    executor = kwargs.pop("executor", None) or ThreadPoolExecutor(max_workers=1)
    kwargs.setdefault("model_name", "m")
    return OrtBackend(path, options or OrtOptions(), providers or [(CPU, {})], executor, **kwargs)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig(name="m"))


# OrtOptions and ort_options_for


@pytest.mark.parametrize(("intra", "inter"), [(-1, 0), (0, -1)])
def test_either_negative_thread_count_is_refused(intra: int, inter: int) -> None:
    """A negative intra- or inter-op thread count alone is a ValueError saying so."""
    with pytest.raises(ValueError, match=r"^thread counts must not be negative$"):
        OrtOptions(intra_op_threads=intra, inter_op_threads=inter)


def test_provider_options_count_error_text() -> None:
    """Provider options that do not match the providers one to one: the exact message."""
    with pytest.raises(ValueError, match=r"^provider_options must be empty or hold one entry per provider$"):
        OrtOptions(providers=(CUDA, CPU), provider_options=({},))


def test_arena_shrinkage_gpu_entries_dropped_without_cuda() -> None:
    """Without CUDA in the build, the GPU entries of arena shrinkage are dropped from the run entries."""
    if CUDA in REAL_AVAILABLE:
        pytest.skip("this onnxruntime build has CUDA")
    config = _config(
        'parameters { key: "memory.enable_memory_arena_shrinkage" value { string_value: "cpu:0;gpu:0" } }'
    )
    got = ort_options_for(config, OrtOptions())
    assert got.run_entries == (("memory.enable_memory_arena_shrinkage", "cpu:0"),)


def test_arena_shrinkage_gpu_entries_kept_with_cuda(with_cuda: None) -> None:
    """With CUDA in the build, every arena shrinkage entry is kept."""
    config = _config(
        'parameters { key: "memory.enable_memory_arena_shrinkage" value { string_value: "cpu:0;gpu:0" } }'
    )
    got = ort_options_for(config, OrtOptions())
    assert got.run_entries == (("memory.enable_memory_arena_shrinkage", "cpu:0;gpu:0"),)


def test_config_session_attrs_and_entries_are_carried() -> None:
    """The config's arena/pattern flags and session entries land in the options."""
    config = _config(
        'parameters { key: "enable_mem_arena" value { string_value: "0" } } '
        'parameters { key: "enable_mem_pattern" value { string_value: "1" } } '
        'parameters { key: "session.use_device_allocator_for_initializers" value { string_value: "1" } }'
    )
    got = ort_options_for(config, OrtOptions())
    assert got.session_attrs == (("enable_cpu_mem_arena", False), ("enable_mem_pattern", True))
    assert got.session_entries == (("session.use_device_allocator_for_initializers", "1"),)
    assert got.run_entries == ()


# The session options onnxruntime gets


@pytest.mark.parametrize(("spin", "value"), [(False, "0"), (True, "1")])
def test_spinning_entries_reach_the_session(
    tmp_path: Path, sessions: Sessions, spin: bool, value: str
) -> None:
    """allow_spinning sets both the intra- and inter-op spinning entries to '1' or '0'."""
    backend = _backend(_relu(tmp_path / "m.onnx"), OrtOptions(allow_spinning=spin))
    backend.close()
    so = sessions.calls[0].so
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == value
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == value


def test_session_attrs_and_entries_reach_the_session(tmp_path: Path, sessions: Sessions) -> None:
    """session_attrs are set on the SessionOptions, session_entries added as config entries."""
    options = OrtOptions(
        session_attrs=(("enable_cpu_mem_arena", False), ("use_deterministic_compute", True)),
        session_entries=(("session.use_device_allocator_for_initializers", "1"),),
    )
    backend = _backend(_relu(tmp_path / "m.onnx"), options)
    backend.close()
    so = sessions.calls[0].so
    assert (so.enable_cpu_mem_arena, so.use_deterministic_compute) == (False, True)
    assert so.get_session_config_entry("session.use_device_allocator_for_initializers") == "1"


def test_providers_and_their_options_are_passed(tmp_path: Path, sessions: Sessions) -> None:
    """The session is asked for exactly the requested providers, each with its options, CPU not doubled."""
    opts = {"arena_extend_strategy": "kSameAsRequested"}
    backend = _backend(_relu(tmp_path / "m.onnx"), providers=[(AZURE, {}), (CPU, opts)])
    backend.close()
    assert [(c.providers, c.provider_options) for c in sessions.calls] == [([AZURE, CPU], [{}, opts])]
    # onnxruntime's own optimizers all on, but where requests batch (below).
    assert [c.disabled_optimizers for c in sessions.calls] == [[]]


def test_a_batched_loads_sessions_run_each_reshape_as_written(tmp_path: Path, sessions: Sessions) -> None:
    """Where requests batch, ReshapeFusion is off: it leaves a Reshape's entry unchecked, which the
    row-mixing reading takes as checked (a tester, session 67)."""
    backend = _backend(_relu(tmp_path / "m.onnx"), OrtOptions(checked_reshapes=True))
    backend.close()
    assert [c.disabled_optimizers for c in sessions.calls] == [["ReshapeFusion"]]


def test_cpu_is_appended_when_not_requested(tmp_path: Path, sessions: Sessions) -> None:
    """A request naming no CPU provider still gets the CPU one, last, once."""
    backend = _backend(_relu(tmp_path / "m.onnx"), providers=[(AZURE, {})])
    backend.close()
    assert [c.providers for c in sessions.calls] == [[AZURE, CPU]]
    assert backend.active_providers == [AZURE, CPU]


def test_run_entries_reach_the_run_options(tmp_path: Path) -> None:
    """run_entries become run config entries; a plain instance names no CUDA graph."""
    options = OrtOptions(run_entries=(("memory.enable_memory_arena_shrinkage", "cpu:0"),))
    backend = _backend(_relu(tmp_path / "m.onnx"), options)
    backend.close()
    run_options = backend._run_options
    assert run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    with pytest.raises(RuntimeError, match=GRAPH_ID):
        run_options.get_run_config_entry(GRAPH_ID)


# Providers missing or failing, and the one warning


def test_two_missing_providers_in_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two providers not in the build: named together, each with its reason, 'are', the active ones listed."""
    if CUDA in REAL_AVAILABLE:
        pytest.skip("this onnxruntime build has CUDA")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        backend = _backend(_relu(tmp_path / "m.onnx"), providers=[(TENSORRT, {}), (CUDA, {}), (AZURE, {})])
    backend.close()
    assert _warnings(caplog) == [
        f"model m: requested {TENSORRT}, {CUDA} are not available ({TENSORRT}: not in this onnxruntime "
        f"build; {CUDA}: not in this onnxruntime build); running on {AZURE}, {CPU}"
    ]


def test_provider_failing_to_start_falls_back_to_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_cuda: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider whose session fails: retried on the CPU alone, same options, its first line logged."""
    path = _relu(tmp_path / "m.onnx")
    recorder = Sessions(lambda _s, p: RuntimeError("no device\ndetails") if CUDA in p else None)
    monkeypatch.setattr(ort, "InferenceSession", recorder)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        backend = _backend(path, providers=[(CUDA, {"device_id": "0"}), (CPU, {})])
    backend.close()
    assert backend.active_providers == [CPU]
    assert [(c.providers, c.provider_options) for c in recorder.calls] == [
        ([CUDA, CPU], [{"device_id": "0"}, {}]),
        ([CPU], [{}]),
    ]
    assert recorder.calls[1].so is recorder.calls[0].so
    assert _warnings(caplog) == [
        f"model m: requested {CUDA} is not available ({CUDA}: failed to start: no device); running on {CPU}"
    ]


def test_cpu_retry_failure_is_a_load_error_with_its_own_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_cuda: None
) -> None:
    """When the CPU retry fails too, the load error carries the retry's first line."""
    path = _relu(tmp_path / "m.onnx")

    def fail(_source: object, providers: list[str]) -> Exception:
        return RuntimeError("cuda broke" if CUDA in providers else "cpu broke\nmore")

    recorder = Sessions(fail)
    monkeypatch.setattr(ort, "InferenceSession", recorder)
    with pytest.raises(BackendLoadError) as info:
        _backend(path, providers=[(CUDA, {}), (CPU, {})])
    assert str(info.value) == f"model 'm': cannot load {path}: cpu broke"
    assert str(info.value.__cause__) == "cpu broke\nmore"
    assert len(recorder.calls) == 2


def test_not_utf8_path_is_not_retried_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_cuda: None
) -> None:
    """A path onnxruntime cannot take fails the load at once, even with an accelerator requested."""
    recorder = Sessions(lambda _s, p: NotUtf8Path("bad path") if CUDA in p else None)
    monkeypatch.setattr(ort, "InferenceSession", recorder)
    with pytest.raises(BackendLoadError, match="bad path"):
        _backend(_relu(tmp_path / "m.onnx"), providers=[(CUDA, {}), (CPU, {})])
    assert len(recorder.calls) == 1


def test_cpu_only_failure_is_not_retried(tmp_path: Path, sessions: Sessions) -> None:
    """A CPU-only session that fails is a load error after one try."""
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(BackendLoadError, match="cannot load"):
        _backend(path)
    assert len(sessions.calls) == 1


def test_empty_error_text_is_named_by_its_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error with no text is named by its class in the load error."""
    path = _relu(tmp_path / "m.onnx")
    monkeypatch.setattr(ort, "InferenceSession", Sessions(lambda _s, _p: KeyError()))
    with pytest.raises(BackendLoadError) as info:
        _backend(path)
    assert str(info.value) == f"model 'm': cannot load {path}: KeyError"


def test_available_provider_not_started_is_said(
    tmp_path: Path, sessions: Sessions, with_cuda: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider in the build that the session did not start: 'could not start it, see its log'."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        backend = _backend(_relu(tmp_path / "m.onnx"), providers=[(CUDA, {}), (CPU, {})])
    backend.close()
    assert _warnings(caplog) == [
        f"model m: requested {CUDA} is not available ({CUDA}: onnxruntime could not start it, see its log); "
        f"running on {CPU}"
    ]


# Construction: name, executor, IO, padding, guard and per-row rewrites


def test_name_defaults_to_the_model_folder(tmp_path: Path) -> None:
    """Without model_name, the instance is named after <name>/<version>/model.onnx's <name>."""
    path = _relu(tmp_path / "dense" / "1" / "model.onnx")
    backend = OrtBackend(path, OrtOptions(), [(CPU, {})], ThreadPoolExecutor(max_workers=1))
    backend.close()
    assert backend.name == "dense"
    assert backend.prepared is None  # keep_prepared is off by default


def test_failed_load_shuts_its_executor_without_waiting(tmp_path: Path) -> None:
    """A model that does not load: its executor shut with wait=False."""
    path = tmp_path / "m.onnx"
    path.write_bytes(b"junk")
    executor = RecordingExecutor()
    with pytest.raises(BackendLoadError):
        _backend(path, executor=executor)
    assert executor.shutdowns == [{"wait": False, "cancel_futures": False}]


def test_bf16_with_string_inputs_is_refused(tmp_path: Path) -> None:
    """A BF16 model with string inputs is a load error; its executor shut with wait=False."""
    executor = RecordingExecutor()
    with pytest.raises(BackendLoadError, match="cannot have string inputs \\('t'\\)"):
        _backend(_bf16(tmp_path / "m.onnx", with_text=True), executor=executor)
    assert executor.shutdowns == [{"wait": False, "cancel_futures": False}]


def test_io_refusal_is_a_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """instance_io's ValueError becomes 'model '<name>': <text>'; the executor shut with wait=False."""

    def refuse(*_args: object) -> None:
        raise ValueError("graphs need fixed shapes")

    monkeypatch.setattr(backend_module, "instance_io", refuse)
    executor = RecordingExecutor()
    with pytest.raises(BackendLoadError) as info:
        _backend(_relu(tmp_path / "m.onnx"), executor=executor)
    assert str(info.value) == "model 'm': graphs need fixed shapes"
    assert executor.shutdowns == [{"wait": False, "cancel_futures": False}]


def test_padding_is_handed_to_the_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The options' padding (for every model) is what instance_io gets."""
    seen: list[object] = []

    def recording(*args: Any) -> Any:
        seen.append(args[4])
        return instance_io(*args)

    monkeypatch.setattr(backend_module, "instance_io", recording)
    padding = Padding(8, convolutions_only=False)
    _backend(_relu(tmp_path / "m.onnx"), OrtOptions(padding=padding)).close()
    assert seen == [padding]


def test_row_quantization_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """row_quantized runs (with the path and name) only when the options ask for it."""
    calls: list[tuple[Path, str]] = []
    monkeypatch.setattr(backend_module, "row_quantized", lambda p, n: calls.append((p, n)))
    path = _relu(tmp_path / "m.onnx")
    _backend(path).close()
    assert calls == []
    _backend(path, OrtOptions(row_quantization=True)).close()
    assert calls == [(path, "m")]


def test_division_guard_gets_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """division_guard_for is asked with the path, name, onnxruntime's version and the wanted flag."""
    calls: list[tuple[Any, ...]] = []

    def recording(*args: Any, **kwargs: Any) -> None:
        calls.append((*args, kwargs))

    monkeypatch.setattr(backend_module, "division_guard_for", recording)
    path = _relu(tmp_path / "m.onnx")
    _backend(path, OrtOptions(int_division_guard=False)).close()
    assert calls == [(path, "m", ort.__version__, False, {"model_proto": None})]


def test_guarded_session_drops_its_bytes(tmp_path: Path) -> None:
    """After a guarded load the instance keeps no model bytes (the session has its copy)."""
    backend = _backend(_divide(tmp_path / "m.onnx"))
    backend.close()
    assert backend._guard is not None
    assert backend._guard.model_bytes == b""
    assert backend._rewritten is None


def test_guarded_and_rewritten_prepared_keeps_only_the_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guarded on top of a per-row rewrite, the prepared graph holds the guard and no rewritten bytes."""
    path = _divide(tmp_path / "m.onnx")
    monkeypatch.setattr(backend_module, "row_quantized", lambda p, _n: onnx.load(str(p)))
    backend = _backend(path, OrtOptions(row_quantization=True), keep_prepared=True)
    backend.close()
    assert backend.prepared is not None
    assert backend.prepared.guard is not None and backend.prepared.guard.model_bytes
    assert backend.prepared.rewritten is None


def test_guarded_graph_not_loading_warns_and_loads_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A guarded graph onnxruntime refuses: the file loads unguarded, with one exact WARNING."""
    path = _divide(tmp_path / "m.onnx")
    recorder = Sessions(lambda s, _p: RuntimeError("guard refused") if isinstance(s, bytes) else None)
    monkeypatch.setattr(ort, "InferenceSession", recorder)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        backend = _backend(path)
    backend.close()
    assert backend._guard is None
    assert _warnings(caplog) == [
        f"model m: integer Div/Mod left unguarded: the guarded graph does not load (model 'm': cannot load "
        f"{path}: guard refused); a request with a zero divisor or MIN / -1 will end this server "
        f"(onnxruntime {ort.__version__})"
    ]


def test_per_row_graph_not_loading_warns_and_loads_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A per-row graph onnxruntime refuses: the file loads, with one exact WARNING."""
    path = _relu(tmp_path / "m.onnx")
    monkeypatch.setattr(backend_module, "row_quantized", lambda p, _n: onnx.load(str(p)))
    recorder = Sessions(lambda s, _p: RuntimeError("rows refused") if isinstance(s, bytes) else None)
    monkeypatch.setattr(ort, "InferenceSession", recorder)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        backend = _backend(path, OrtOptions(row_quantization=True))
    backend.close()
    assert [c.source for c in recorder.calls][-1] == str(path)
    assert _warnings(caplog) == [
        "model m: dynamic quantization left per batch: its per-row graph does not load "
        f"(model 'm': cannot load {path}: rows refused)"
    ]


# Runs


def test_reshape_applies_on_the_way_in_and_out(tmp_path: Path) -> None:
    """A reshape plan turns wire inputs into the model's shape and outputs into the wire's."""
    plan = ReshapePlan(True, {"x": (4,)}, {"y": (2, 2)})
    backend = _backend(_relu(tmp_path / "m.onnx"), reshape=plan)
    x = np.array([[[-1.0, 2.0], [3.0, -4.0]]], np.float32)
    try:
        out = backend.run_blocking({"x": x})
    finally:
        backend.close()
    assert out["y"].shape == (1, 2, 2)
    assert out["y"].tolist() == [[[0.0, 2.0], [3.0, 0.0]]]


@pytest.mark.parametrize("kind", ["plain", "bound", "bf16"])
def test_a_terminated_run_raises_onnxruntimes_own_error(tmp_path: Path, kind: str) -> None:
    """With the terminate flag set (abandoned), every run path fails with its own error, unmapped."""
    if kind == "bf16":
        backend = _backend(_bf16(tmp_path / "m.onnx"))
        feed = {"x": np.ones((1, 2), ml_dtypes.bfloat16)}
    else:
        backend = _backend(_relu(tmp_path / "m.onnx"), OrtOptions(io_binding=kind == "bound"))
        feed = {"x": np.ones((1, 4), np.float32)}
    assert backend.io.mode == ("bound" if kind == "bound" else "plain")
    assert backend.run_blocking(feed)  # runs before the flag
    backend._run_options.terminate = True
    try:
        with pytest.raises(Exception) as info:
            backend.run_blocking(feed)
    finally:
        backend.close()
    assert "terminate flag" in str(info.value)
    assert not isinstance(info.value, (ModelRunFailed, ModelRefusedInput))


def test_refused_batches_are_rationed_and_counted_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused inputs are logged within the instance's ration; its close counts the held lines."""
    backend = _backend(_relu(tmp_path / "m.onnx"))
    backend._refusals = Ration(clock=lambda: 0.0)
    bad = {"x": np.ones((1, 3), np.float32)}
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            with pytest.raises(ModelRefusedInput):
                backend.run_blocking(bad)
        backend.close()
    messages = _warnings(caplog)
    assert len(messages) == 2
    assert messages[0].startswith("model m: onnxruntime refused a batch's inputs")
    assert messages[1] == "model m: 1 more refused batches' lines not logged by its close"


def test_abandon_cancels_queued_batches(tmp_path: Path) -> None:
    """abandon() cancels the batches queued behind a running one (close alone does not)."""
    executor = RecordingExecutor()
    backend = _backend(_relu(tmp_path / "m.onnx"), executor=executor)
    release = threading.Event()
    running = executor.submit(release.wait)
    queued = executor.submit(lambda: None)
    backend.abandon()
    release.set()
    running.result()
    assert queued.cancelled()
    assert executor.shutdowns == [{"wait": False, "cancel_futures": True}]


def test_close_drops_runner_and_staging(tmp_path: Path) -> None:
    """close() lets go of the IO runner (bound) and the staging buffers (plain)."""
    bound = _backend(_relu(tmp_path / "m.onnx"), OrtOptions(io_binding=True))
    plain = _backend(_relu(tmp_path / "m.onnx"))
    assert bound.io.runner is not None and plain.io.staging is not None
    bound.close()
    plain.close()
    assert bound.io.runner is None
    assert plain.io.staging is None
