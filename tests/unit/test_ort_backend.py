"""The onnxruntime backend: results, executor, provider fallback, BYTES tensors, provider mapping."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from batcher import BatchingPolicy, DynamicBatcher, ModelStats
from batcher.errors import NotAccepting
from protos import model_config_pb2 as mc
from server.backends.onnx_inspect import inspect_onnx
from server.backends.onnxruntime_backend import (
    CPU,
    CUDA,
    OPENVINO,
    TENSORRT,
    BackendLoadError,
    OrtBackend,
    OrtOptions,
    ort_options_for,
)
from server.backends.provider_choice import providers_for
from server.models.config import ConfigError
from server.models.onnx_completion import OnnxTensor


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _dense_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"]), helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "dense", [x], [y, z], initializer=[w, b])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _string_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", None])
    y = helper.make_tensor_value_info("same", TensorProto.STRING, ["batch", None])
    graph = helper.make_graph([helper.make_node("Identity", ["text"], ["same"])], "s", [x], [y])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _backend(
    path: Path,
    providers: list[tuple[str, dict[str, str]]] | None = None,
    workers: int = 1,
) -> OrtBackend:
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ort-test")
    return OrtBackend(path, OrtOptions(), providers or [(CPU, {})], executor, model_name="m")


async def test_run_matches_a_direct_session(tmp_path: Path) -> None:
    path = _dense_model(tmp_path / "m" / "1" / "model.onnx")
    backend = _backend(path)
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    try:
        got = await backend.run({"x": x})
    finally:
        backend.close()
    y, z = ort.InferenceSession(str(path), providers=[CPU]).run(None, {"x": x})
    assert set(got) == {"y", "z"}
    np.testing.assert_array_equal(got["y"], y)
    np.testing.assert_array_equal(got["z"], z)


async def test_session_runs_in_the_instance_executor(tmp_path: Path) -> None:
    backend = _backend(_dense_model(tmp_path / "m.onnx"), workers=2)
    seen: list[str] = []
    real = backend._session

    class Recording:
        def run(self, names: Any, feed: Any, options: Any = None) -> Any:
            seen.append(threading.current_thread().name)
            return real.run(names, feed, options)

    backend._session = Recording()  # type: ignore[assignment]
    x = np.ones((2, 8), np.float32)
    results = await asyncio.gather(*(backend.run({"x": x}) for _ in range(4)))
    backend.close()
    assert all(r["z"].shape == (2, 3) for r in results)
    assert len(seen) == 4 and all(name.startswith("ort-test") for name in seen)


async def test_batcher_runs_batches_known_to_be_tiny_inline_and_others_in_the_executor(
    tmp_path: Path,
) -> None:
    # The inline-or-executor choice is the batcher's (its estimator's CPU time per row bucket).
    backend = _backend(_dense_model(tmp_path / "m.onnx"))
    seen: list[str] = []
    real = backend._session

    class Recording:
        def run(self, names: Any, feed: Any, options: Any = None) -> Any:
            seen.append(threading.current_thread().name)
            return real.run(names, feed, options)

    backend._session = Recording()  # type: ignore[assignment]
    policy = BatchingPolicy(max_batch_size=64, max_queue_delay_s=0.1)  # no fast path: the queue
    batcher = DynamicBatcher([backend], policy, ModelStats(), inline_max_s=10.0)
    batcher.start()
    try:
        for rows in (2, 2, 64, 2):
            await asyncio.wait_for(batcher.submit({"x": np.ones((rows, 8), np.float32)}, rows), 5.0)
    finally:
        await batcher.stop(drain=False, timeout_s=1.0)
        backend.close()
    loop_thread = threading.current_thread().name
    # The first run of each size goes to the executor (its cost is unknown); later ones inline.
    assert seen[0].startswith("ort-test") and seen[2].startswith("ort-test")
    assert seen[1] == loop_thread and seen[3] == loop_thread


async def test_batcher_fast_path_runs_an_idle_models_cheap_request_inline(tmp_path: Path) -> None:
    path = _dense_model(tmp_path / "m.onnx")
    x = np.ones((2, 8), np.float32)
    for inline_max_s, inline_later in ((10.0, True), (0.0, False)):  # 0 disables inline runs
        backend = _backend(path)
        batcher = DynamicBatcher(
            [backend], BatchingPolicy(max_batch_size=8), ModelStats(), inline_max_s=inline_max_s
        )
        batcher.start()
        try:
            assert batcher.run_now({"x": x}, batcher.admission(2)) is None  # cost unknown: queue it
            expected = await batcher.submit({"x": x}, 2)
            assert batcher.in_flight_batches == 0  # landed before its answer was set
            now = batcher.run_now({"x": x}, batcher.admission(2))
            assert (now is not None) == inline_later
            if now is not None:
                np.testing.assert_array_equal(now["z"], expected["z"])
            big = {"x": np.ones((8, 8), np.float32)}
            assert batcher.run_now(big, batcher.admission(8)) is None  # another size: unknown
        finally:
            await batcher.stop(drain=False, timeout_s=1.0)
            backend.close()


async def test_closed_backend_takes_no_more_batches(tmp_path: Path) -> None:
    backend = _backend(_dense_model(tmp_path / "m.onnx"))
    backend.close()
    with pytest.raises(RuntimeError):
        await backend.run({"x": np.ones((1, 8), np.float32)})
    # A batch already handed to its thread when the instance closed: not computed, NotAccepting
    # (to the version serving now, else UNAVAILABLE), where it had been a RuntimeError (INTERNAL).
    with pytest.raises(NotAccepting, match="model 'm': its version was retired before this batch ran"):
        backend.run_blocking({"x": np.ones((1, 8), np.float32)})


def test_a_batch_queued_for_a_closed_instances_thread_is_not_accepting_not_cancelled(tmp_path: Path) -> None:
    """A retired version's instance closed while a batch waited for its thread (a tester: 7-59
    requests a run of reloads under load): shutdown(cancel_futures=True) cancelled it, answered
    UNAVAILABLE "model stopped" though the new version was ready. It now runs into the closed
    session: NotAccepting, which the server hands to the version serving now."""
    backend = _backend(_dense_model(tmp_path / "m.onnx"))
    busy, release = threading.Event(), threading.Event()

    def occupy() -> None:
        busy.set()
        release.wait(5.0)

    try:
        held = backend.executor.submit(occupy)  # the instance's one thread is taken
        assert busy.wait(5.0)
        queued = backend.executor.submit(backend.run_blocking, {"x": np.ones((1, 8), np.float32)})
        backend.close()
    finally:
        release.set()
    held.result(5.0)
    assert not queued.cancelled()
    with pytest.raises(NotAccepting, match="its version was retired before this batch ran"):
        queued.result(5.0)


def test_missing_provider_falls_back_to_cpu_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    path = _dense_model(tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING, logger="server.backends.onnxruntime_backend"):
        backend = _backend(path, [(CUDA, {"device_id": "0"}), (CPU, {})])
    backend.close()
    assert backend.active_providers == [CPU]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "model m: requested CUDAExecutionProvider is not available" in message
    assert "running on CPUExecutionProvider" in message
    assert "\n" not in message


def test_cpu_only_request_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        backend = _backend(_dense_model(tmp_path / "m.onnx"))
    backend.close()
    assert backend.active_providers == [CPU]
    assert not caplog.records


def test_unloadable_model_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not a model")
    executor = ThreadPoolExecutor(max_workers=1)
    with pytest.raises(BackendLoadError, match="cannot load"):
        OrtBackend(path, OrtOptions(), [(CPU, {})], executor)
    with pytest.raises(RuntimeError):  # the backend shut the executor it owned
        executor.submit(print)
    with pytest.raises(BackendLoadError):
        inspect_onnx(path)


async def test_bytes_tensors_round_trip_as_object_arrays_of_bytes(tmp_path: Path) -> None:
    backend = _backend(_string_model(tmp_path / "s.onnx"))
    text = np.array([[b"hello", "caf\u00e9".encode()], [b"", b"x\x00y\x00"]], dtype=object)
    try:
        out = await backend.run({"text": text})
        assert out["same"].dtype == object
        assert out["same"].tolist() == text.tolist()
        with pytest.raises(ValueError, match="BYTES input 'text' is not UTF-8"):
            await backend.run({"text": np.array([[b"\xff"]], dtype=object)})
    finally:
        backend.close()


def test_metadata_and_inspect_onnx_agree_with_the_session(tmp_path: Path) -> None:
    path = _dense_model(tmp_path / "m.onnx")
    backend = _backend(path)
    backend.close()
    inputs, outputs = inspect_onnx(path)
    assert inputs == backend.inputs == [OnnxTensor("x", "tensor(float)", ["batch", 8])]
    assert outputs == backend.outputs
    assert [o.name for o in outputs] == ["y", "z"]
    s_inputs = inspect_onnx(_string_model(tmp_path / "s.onnx"))[0]
    assert s_inputs == [OnnxTensor("text", "tensor(string)", ["batch", None])]


def _config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig(name="m"))


def test_tensorrt_accelerator_maps_parameters() -> None:
    config = _config(
        """
        optimization { execution_accelerators { gpu_execution_accelerator [ {
          name: "tensorrt"
          parameters { key: "precision_mode" value: "FP16" }
          parameters { key: "max_workspace_size_bytes" value: "1073741824" }
          parameters { key: "trt_engine_cache_enable" value: "true" }
          parameters { key: "trt_engine_cache_path" value: "/tmp/trt" }
        } ] } }
        instance_group [ { kind: KIND_GPU gpus: [ 1 ] } ]
        """
    )
    providers = providers_for(config, [CPU])
    assert [name for name, _ in providers] == [TENSORRT, CUDA, CPU]
    assert providers[0][1] == {
        "device_id": "1",
        "trt_fp16_enable": "1",
        "trt_max_workspace_size": "1073741824",
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": "/tmp/trt",
    }
    assert providers[1][1] == {"device_id": "1"}


def test_provider_selection_order() -> None:
    assert providers_for(_config(""), [CPU]) == [(CPU, {})]
    assert providers_for(_config(""), [(CUDA, {"gpu_mem_limit": "1"}), CPU]) == [
        (CUDA, {"gpu_mem_limit": "1"}),
        (CPU, {}),
    ]
    gpu_group = _config("instance_group [ { kind: KIND_GPU } ]")
    assert providers_for(gpu_group, [CPU]) == [(CUDA, {"device_id": "0"}), (CPU, {})]
    assert providers_for(gpu_group, [CPU], device_id=3)[0] == (CUDA, {"device_id": "3"})
    cuda = _config(
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda" '
        'parameters { key: "enable_cuda_graph" value: "1" } } ] } }'
    )
    assert providers_for(cuda, [CPU])[0] == (CUDA, {"device_id": "0", "enable_cuda_graph": "1"})
    openvino = _config(
        'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }'
    )
    assert providers_for(openvino, [CPU]) == [(OPENVINO, {}), (CPU, {})]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('gpu_execution_accelerator [ { name: "rocm" } ]', "gpu_execution_accelerator 'rocm'"),
        ('cpu_execution_accelerator [ { name: "dnnl" } ]', "cpu_execution_accelerator 'dnnl'"),
        (
            'gpu_execution_accelerator [ { name: "tensorrt" parameters { key: "bogus" value: "1" } } ]',
            "tensorrt accelerator parameter 'bogus'",
        ),
        (
            'gpu_execution_accelerator [ { name: "tensorrt" '
            'parameters { key: "precision_mode" value: "FP8" } } ]',
            "precision_mode 'FP8'",
        ),
    ],
)
def test_bad_accelerators_are_config_errors(text: str, pattern: str) -> None:
    config = _config(f"optimization {{ execution_accelerators {{ {text} }} }}")
    with pytest.raises(ConfigError, match=pattern):
        providers_for(config, [CPU])


def test_config_overrides_session_options() -> None:
    base = OrtOptions(intra_op_threads=4)
    assert ort_options_for(_config(""), base) is base
    assert (
        ort_options_for(_config("optimization { graph { level: -1 } }"), base).graph_optimization_level
        == "basic"  # Triton's onnxruntime backend: -1 basic, 1 extended, 2 none
    )
    assert (
        ort_options_for(_config("optimization { graph { level: 2 } }"), base).graph_optimization_level
        == "disable"
    )
    assert (
        ort_options_for(_config("optimization { graph { level: 1 } }"), base).graph_optimization_level
        == "extended"
    )
    tuned = ort_options_for(
        _config(
            'parameters { key: "intra_op_thread_count" value { string_value: "2" } } '
            'parameters { key: "execution_mode" value { string_value: "1" } }'
        ),
        base,
    )
    assert (tuned.intra_op_threads, tuned.execution_mode) == (2, "parallel")
    with pytest.raises(ConfigError, match="intra_op_thread_count"):
        ort_options_for(
            _config('parameters { key: "intra_op_thread_count" value { string_value: "x" } }'), base
        )


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="graph_optimization_level"):
        OrtOptions(graph_optimization_level="max")
    with pytest.raises(ValueError, match="execution_mode"):
        OrtOptions(execution_mode="eager")
    with pytest.raises(ValueError, match="provider_options"):
        OrtOptions(providers=(CUDA, CPU), provider_options=({},))
    assert OrtOptions(providers=(CUDA, CPU)).default_providers() == [(CUDA, {}), (CPU, {})]
    assert OrtOptions().allow_spinning is False


def test_close_lets_go_of_the_session_even_inside_a_reference_cycle(tmp_path: Path) -> None:
    # A retired instance sits in reference cycles (its batcher and the queue's callbacks) that
    # only a full garbage collection frees: close() must free the session (memory, threads) itself.
    backend = _backend(_dense_model(tmp_path / "m.onnx"))
    backend.run_blocking({"x": np.ones((2, 8), np.float32)})
    session = weakref.ref(backend._session)  # type: ignore[arg-type]
    cycle: list[object] = [backend]
    cycle.append(cycle)
    gc.disable()  # as between the server's rare full collections
    try:
        backend.close()
        del backend, cycle
        assert session() is None, "the session outlived close() in a cycle"
    finally:
        gc.enable()
