"""Triton-style repositories load unchanged and behave as in Triton, over a real server: reshape,
optional inputs, densenet_onnx's config with the classification extension, per-level queue
policies and allow_timeout_override, the onnxruntime backend's parameters."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc
from server.backends.gpu_devices import visible_gpus
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.triton_repo import densenet_scores, triton_repository


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = triton_repository(
        tmp_path_factory.mktemp("triton-repo"),
        tmp_path_factory.mktemp("triton-files"),
        demo_repo / "mlp" / "1" / "model.onnx",
    )
    with ServerProcess("--model-repository", str(repo)) as process:
        yield process


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _request(model: str, **arrays: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype="FP32", shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array, np.float32).tobytes())
    return request


def _output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    index = [o.name for o in response.outputs].index(name)
    tensor = response.outputs[index]
    return np.frombuffer(response.raw_output_contents[index], np.float32).reshape(tuple(tensor.shape))


def _strings(response: pb.ModelInferResponse, name: str) -> list[bytes]:
    index = [o.name for o in response.outputs].index(name)
    raw, out = response.raw_output_contents[index], []
    while raw:
        size = int.from_bytes(raw[:4], "little")
        out.append(raw[4 : 4 + size])
        raw = raw[4 + size :]
    return out


def test_every_config_of_the_repository_loads(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    states = {m.name: (m.state, m.reason) for m in index.models}
    names = ("densenet_onnx", "reshape", "optional", "queue_strict", "queue_override", "backend_params")
    for name in names:
        assert states[name] == ("READY", ""), (name, states.get(name))
    gpus = visible_gpus(ort.get_available_providers())
    if gpus and 1 not in gpus:  # gpu_groups names GPUs 0 and 1: Triton refuses a GPU it cannot see
        assert states["gpu_groups"][0] == "UNAVAILABLE" and "names GPU 1" in states["gpu_groups"][1]
    else:
        assert states["gpu_groups"] == ("READY", ""), states.get("gpu_groups")


def test_reshape_round_trip_keeps_wire_shapes(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    s = np.array([[1.0], [2.0], [3.0]], np.float32)
    response = stub.ModelInfer(_request("reshape", x=x, s=s))
    np.testing.assert_array_equal(_output(response, "y"), x)  # [3,4] on the wire, [3,2,2] in the model
    np.testing.assert_array_equal(_output(response, "t"), s * 2)  # [3,1] on the wire, [3] (scalars)
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="reshape"))
    assert {t.name: list(t.shape) for t in metadata.inputs} == {"x": [-1, 4], "s": [-1, 1]}


def test_optional_input_may_be_omitted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x = np.array([1.0, 2.0], np.float32)
    omitted = stub.ModelInfer(_request("optional", x=x))
    np.testing.assert_array_equal(_output(omitted, "y"), x + 1)  # the initializer's value
    given = stub.ModelInfer(_request("optional", x=x, b=np.array([5.0, 5.0], np.float32)))
    np.testing.assert_array_equal(_output(given, "y"), x + 5)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(_request("optional", b=x))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "") == (
        "expected number of inputs between 1 and 2 but got 1 inputs for model 'optional'. "
        "Got input(s) ['b'], but missing required input(s) ['x']. Please provide all required input(s)."
    )


def _densenet_input(rows: int) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((rows, 3, 224, 224)).astype(np.float32)


def test_densenet_onnx_config_serves_its_wire_shape(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    data = _densenet_input(2)
    response = stub.ModelInfer(_request("densenet_onnx", data_0=data))
    scores = _output(response, "fc6_1")
    assert scores.shape == (2, 1000)  # dims, not the model's [2, 1000, 1, 1]
    np.testing.assert_allclose(scores, densenet_scores(data), rtol=1e-4, atol=1e-5)


def test_classification_returns_top_k_with_labels(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    data = _densenet_input(2)
    request = _request("densenet_onnx", data_0=data)
    request.outputs.add(name="fc6_1").parameters["classification"].int64_param = 3
    response = stub.ModelInfer(request)
    (tensor,) = response.outputs
    assert (tensor.datatype, list(tensor.shape)) == ("BYTES", [2, 3])
    got = [s.decode().split(":") for s in _strings(response, "fc6_1")]
    expected = densenet_scores(data)
    for row in range(2):
        top = np.argsort(-expected[row])[:3]
        entries = got[row * 3 : row * 3 + 3]
        assert [int(e[1]) for e in entries] == list(top)
        assert [e[2] for e in entries] == [f"class_{i}" for i in top]
        values = [float(e[0]) for e in entries]
        assert values == sorted(values, reverse=True)
        assert all(len(e[0].split(".")[1]) == 6 for e in entries)  # std::to_string's six decimals


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(0, "must be positive"), (-2, "must be positive"), ("three", "must be an integer")],
)
def test_bad_class_count_is_invalid_argument(
    stub: pb_grpc.GRPCInferenceServiceStub, value: int | str, fragment: str
) -> None:
    request = _request("densenet_onnx", data_0=_densenet_input(1))
    param = request.outputs.add(name="fc6_1").parameters["classification"]
    if isinstance(value, str):
        param.string_param = value
    else:
        param.int64_param = value
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "classification" in (err.value.details() or "") and fragment in (err.value.details() or "")


def _timed(model: str, priority: int) -> pb.ModelInferRequest:
    request = _request(model, features=np.zeros((1, 64), np.float32))
    request.parameters["timeout"].int64_param = 1  # one microsecond: over before it could run
    request.parameters["priority"].int64_param = priority
    return request


def test_an_overriding_timeout_bounds_the_queue_wait_only_where_allowed(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # Default level 2 follows default_queue_policy: allow_timeout_override false ignores `timeout`.
    assert stub.ModelInfer(_timed("queue_strict", 2), timeout=30).outputs
    # Where the override is allowed (queue_override; level 1 of queue_strict has a policy of its own
    # that allows it) the 1 us `timeout` is the queue timeout: a request that waits in the queue at
    # all is rejected, one the idle model runs at once is answered. It is never a deadline on the
    # run (that was "deadline cannot be met": tests/integration/test_deadlines.py has the rest).
    for model, priority in (("queue_override", 2), ("queue_strict", 1)):
        try:
            assert stub.ModelInfer(_timed(model, priority), timeout=30).outputs
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (model, err.details())  # Triton's
            assert (err.details() or "").startswith("request timeout expired"), (model, err.details())


def test_backend_parameters_load_with_one_warning(server: ServerProcess) -> None:
    out = server.output()
    lines = [line for line in out.splitlines() if "backend_params" in line and "not applied here" in line]
    assert len(lines) == 1, lines
    assert "share_session_between_instances" in lines[0] and "metric_tags" not in lines[0]
    assert "backend_params version 1: instances pair x2 (cpu)" in out


def test_metric_tags_label_the_models_metrics_as_triton_does(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    tagged = [line for line in text.splitlines() if line.startswith("nv_inference_count{")]
    backend = [line for line in tagged if 'model="backend_params"' in line]
    assert backend and all('_team="vision"' in line for line in backend), backend
    # The exporter gives every series of a family the same label names: others have `_team=""`,
    # which Prometheus reads as no label.
    others = [line for line in tagged if 'model="backend_params"' not in line]
    assert others and not any('_team="vision"' in line for line in others)


@pytest.mark.skipif(bool(visible_gpus(ort.get_available_providers())), reason="a machine without a GPU")
def test_gpu_groups_without_a_gpu_run_count_per_listed_gpu_on_cpu_with_one_warning(
    server: ServerProcess,
) -> None:
    out = server.output()
    lines = [line for line in out.splitlines() if "gpu_groups" in line and "WARNING" in line]
    assert len(lines) == 1, lines
    assert "instance_group 'g' KIND_GPU gpus [0, 1] (no GPU: 4 CPU instances, served as KIND_CPU)" in lines[0]
    assert "gpu_groups version 1: instances g x4 (cpu)" in out


@pytest.mark.skipif(bool(visible_gpus(ort.get_available_providers())), reason="a machine without a GPU")
def test_gpu_groups_without_a_gpu_are_served_as_the_cpu_instances_they_are(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # Tools read ModelConfig to learn where a model runs: 2 per GPU on [0, 1], run on the CPU,
    # is 4 CPU instances (it had shown KIND_GPU gpus [0, 1]).
    config = stub.ModelConfig(pb.ModelConfigRequest(name="gpu_groups")).config
    shown = [(g.name, g.kind, g.count, list(g.gpus)) for g in config.instance_group]
    assert shown == [("g", mc.ModelInstanceGroup.KIND_CPU, 4, [])]


CUDA_ACCEL = """
max_batch_size: 8
instance_group [ {{ kind: KIND_GPU }} ]
optimization {{ execution_accelerators {{ gpu_execution_accelerator [ {{ name: "cuda" {params} }} ] }} }}
"""


def _cuda_params(**values: str) -> str:
    return " ".join(f'parameters {{ key: "{k}" value: "{v}" }}' for k, v in values.items())


def test_cuda_accelerator_values_are_refused_at_load_on_any_machine(demo_repo: Path, tmp_path: Path) -> None:
    # They were handed to onnxruntime as written: without a GPU never looked at, with one a
    # failure only when the session started. Refused as the tensorrt ones are (INVALID_ARGUMENT).
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    models = {
        "cuda_bool": _cuda_params(do_copy_in_default_stream="maybe"),
        "cuda_algo": _cuda_params(cudnn_conv_algo_search="FASTEST"),
        "cuda_unknown": _cuda_params(no_such_cuda_option="1"),
        "cuda_superscript": _cuda_params(gpu_mem_limit="²"),  # isdigit() but not int(): was INTERNAL
        "cuda_good": _cuda_params(cudnn_conv_algo_search="HEURISTIC", use_ep_level_unified_stream="on"),
        "trt_bad": 'parameters { key: "precision_mode" value: "FP8" }',
    }
    for name, params in models.items():
        text = CUDA_ACCEL.format(params=params)
        write_model(tmp_path, name, mlp, text.replace('"cuda"', '"tensorrt"') if name == "trt_bad" else text)
    refusals = {
        "cuda_bool": "cuda accelerator parameter 'do_copy_in_default_stream' value 'maybe' is not a boolean",
        "cuda_algo": "'cudnn_conv_algo_search' value 'FASTEST' is not EXHAUSTIVE, HEURISTIC or DEFAULT",
        "cuda_unknown": "cuda accelerator parameter 'no_such_cuda_option' is not supported (known: [",
        "cuda_superscript": "cuda accelerator parameter 'gpu_mem_limit' value '²' is not bytes",
        "trt_bad": "tensorrt precision_mode 'FP8' is not one of",
    }
    args = ("--model-repository", str(tmp_path), "--model-control-mode", "explicit")
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name, message in refusals.items():
            with pytest.raises(grpc.RpcError) as caught:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=60)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, caught.value.details())
            assert message in (caught.value.details() or ""), (name, caught.value.details())
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cuda_good"), timeout=60)
        answer = stub.ModelInfer(_request("cuda_good", features=np.ones((2, 64), np.float32)), timeout=60)
        assert answer.outputs[0].shape[0] == 2


def test_a_cuda_value_int_cannot_read_fails_its_model_not_the_servers_start(
    demo_repo: Path, tmp_path: Path
) -> None:
    # "²" passes str.isdigit() and int() refuses it: the ValueError had ended `sluiceway serve` (rc 1,
    # a traceback) for one model's config; now that model fails to load and the others serve.
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(tmp_path, "bad", mlp, CUDA_ACCEL.format(params=_cuda_params(gpu_mem_limit="²")))
    write_model(tmp_path, "good", mlp, "max_batch_size: 8\n")
    with (
        ServerProcess("--model-repository", str(tmp_path)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(_request("good", features=np.ones((2, 64), np.float32)), timeout=60)
        assert answer.outputs[0].shape[0] == 2
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        bad = next(m for m in index.models if m.name == "bad")
        assert bad.state == "UNAVAILABLE" and "'gpu_mem_limit' value '²' is not bytes" in bad.reason, bad
