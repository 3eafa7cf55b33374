"""tritonclient.grpc against a real sluiceway process: metadata, inference, errors, statistics."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, wait_until


def client_for(server: ServerProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(url=server.address)


def mlp_input(rows: int, seed: int = 0, name: str = "features") -> tuple[grpcclient.InferInput, np.ndarray]:
    data = np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)
    tensor = grpcclient.InferInput(name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor, data


def image_input(rows: int) -> grpcclient.InferInput:
    data = np.random.default_rng(rows).standard_normal((rows, 3, 224, 224)).astype(np.float32)
    tensor = grpcclient.InferInput("image", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def expect_error(code: str, fragment: str, call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    assert info.value.status() == f"StatusCode.{code}", info.value
    assert fragment in info.value.message(), info.value.message()
    return info.value.message()


def test_health_and_server_metadata(demo_server: ServerProcess) -> None:
    client = client_for(demo_server)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("resnet")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "sluiceway"
    assert "statistics" in meta["extensions"]


def test_model_metadata_and_config(demo_server: ServerProcess) -> None:
    client = client_for(demo_server)
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": ["-1", "2"]}]
    config = client.get_model_config("resnet", as_json=True)["config"]
    assert config["name"] == "resnet"
    assert config["max_batch_size"] == 16
    assert config["input"][0]["dims"] == ["3", "224", "224"]
    assert "dynamic_batching" in config


def test_unary_infer_equals_onnxruntime(demo_server: ServerProcess, demo_repo: Path) -> None:
    client = client_for(demo_server)
    session = ort.InferenceSession(
        str(demo_repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for rows in (1, 5, 128):
        tensor, data = mlp_input(rows, seed=rows)
        result = client.infer("mlp", [tensor], outputs=[grpcclient.InferRequestedOutput("scores")])
        expected = session.run(["scores"], {"features": data})[0]
        np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=1e-5, atol=1e-5)
        assert result.get_response().model_version == "1"


def test_resnet_infer_equals_onnxruntime(demo_server: ServerProcess, demo_repo: Path) -> None:
    client = client_for(demo_server)
    session = ort.InferenceSession(
        str(demo_repo / "resnet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    data = np.random.default_rng(7).standard_normal((2, 3, 224, 224)).astype(np.float32)
    tensor = grpcclient.InferInput("image", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("resnet", [tensor])
    expected = session.run(None, {"image": data})[0]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4)


def test_streaming_infer_answers_every_request(demo_server: ServerProcess, demo_repo: Path) -> None:
    client = client_for(demo_server)
    session = ort.InferenceSession(
        str(demo_repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = {}
    try:
        for i in range(40):
            tensor, data = mlp_input(1 + i % 3, seed=i)
            sent[str(i)] = data
            client.async_stream_infer("mlp", [tensor], request_id=str(i))
        # One bad request in the middle of the stream gets an error answer; the rest still succeed.
        bad, _ = mlp_input(1, name="nope")
        client.async_stream_infer("mlp", [bad], request_id="bad")
        got = [answers.get(timeout=30) for _ in range(41)]
    finally:
        client.stop_stream()
    errors = [error for _, error in got if error is not None]
    assert len(errors) == 1 and "unexpected inference input 'nope'" in str(errors[0])
    results = {r.get_response().id: r for r, e in got if e is None}
    assert sorted(results) == sorted(sent)
    for request_id, data in sent.items():
        expected = session.run(None, {"features": data})[0]
        np.testing.assert_allclose(results[request_id].as_numpy("scores"), expected, rtol=1e-5, atol=1e-5)


def test_every_stream_answer_carries_the_final_flag(demo_server: ServerProcess) -> None:
    # Clients of decoupled-capable servers read a request's answers until `triton_final_response`;
    # it was never sent, so they waited for ever; then only when asked for, which tritonclient's aio
    # stream cannot ask. Triton sets it on every stream answer, error frames too; ours answer once.
    client = client_for(demo_server)
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        tensor, _ = mlp_input(1)
        client.async_stream_infer("mlp", [tensor], request_id="asked", enable_empty_final_response=True)
        client.async_stream_infer("mlp", [tensor], request_id="plain")
        client.async_stream_infer("nope", [tensor], request_id="failed")
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    assert sorted(error is None for _, error in got) == [False, True, True]
    params = {r.get_response().id: r.get_response().parameters for r, e in got if e is None}  # type: ignore[attr-defined]
    assert params["asked"]["triton_final_response"].bool_param is True
    assert params["plain"]["triton_final_response"].bool_param is True
    with grpc.insecure_channel(demo_server.address) as channel:  # an error frame carries it too
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        [frame] = stub.ModelStreamInfer(iter([pb.ModelInferRequest(model_name="nope", id="e")]), timeout=30)
    assert frame.error_message.startswith("NOT_FOUND") and frame.infer_response.id == "e"
    assert frame.infer_response.parameters["triton_final_response"].bool_param is True


def _mlp_frame(rid: str, model: str = "mlp") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=rid)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return request


def test_the_triton_grpc_error_header_ends_a_stream_with_its_first_errors_status(demo_repo: Path) -> None:
    # Triton's header: the first error ends the stream with its status (its QA and clients rely on
    # it); it had been ignored, every error an in-band frame and the stream going on. A server of its
    # own: a frame computed after the stream ended counts in batch_stats and never in
    # inference_count (as Triton's), which another test of the demo server sums.
    with ServerProcess("--model-repository", str(demo_repo)) as server:
        _ends_on_error(server)


def _ends_on_error(demo_server: ServerProcess) -> None:
    frames = [_mlp_frame("a"), _mlp_frame("b", model="nope"), _mlp_frame("c")]
    with grpc.insecure_channel(demo_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        got: list[pb.ModelStreamInferResponse] = []
        with pytest.raises(grpc.RpcError) as ended:
            for answer in stub.ModelStreamInfer(
                iter(frames), timeout=30, metadata=(("triton_grpc_error", "true"),)
            ):
                got.append(answer)
        assert ended.value.code() == grpc.StatusCode.NOT_FOUND
        assert ended.value.details() == "Request for unknown model: 'nope' is not found"
        assert [a.infer_response.id for a in got] in ([], ["a"]) and not any(a.error_message for a in got)
        plain = list(stub.ModelStreamInfer(iter(frames), timeout=30))  # without it: in band, all three
        assert sorted(a.infer_response.id for a in plain) == ["a", "b", "c"]
    client = client_for(demo_server)
    errors: queue.Queue[object] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: errors.put(error), headers={"triton_grpc_error": "true"}
    )
    try:
        tensor, _ = mlp_input(1)
        client.async_stream_infer("nope", [tensor], request_id="x")
        error = errors.get(timeout=30)
    finally:
        client.stop_stream()
    assert isinstance(error, InferenceServerException) and error.status() == "StatusCode.NOT_FOUND"


def test_errors_name_the_problem_and_server_keeps_serving(demo_server: ServerProcess) -> None:
    client = client_for(demo_server)
    good, _ = mlp_input(1)
    expect_error("NOT_FOUND", "Request for unknown model: 'nope' is not found", client.infer, "nope", [good])
    expect_error("NOT_FOUND", "'mlp' version 7 is not found", client.infer, "mlp", [good], model_version="7")
    expect_error("NOT_FOUND", "Request for unknown model", client.get_model_metadata, "nope")
    expect_error("INVALID_ARGUMENT", "missing required input(s) ['features']", client.infer, "mlp", [])
    unknown, _ = mlp_input(1, name="extra")
    expect_error(
        "INVALID_ARGUMENT", "unexpected inference input 'extra'", client.infer, "mlp", [good, unknown]
    )
    wide = grpcclient.InferInput("features", [1, 63], "FP32")
    wide.set_data_from_numpy(np.zeros((1, 63), np.float32))
    wrong_shape = "unexpected shape for input 'features' for model 'mlp'. Expected [-1,64], got [1,63]."
    expect_error("INVALID_ARGUMENT", wrong_shape, client.infer, "mlp", [wide])
    doubles = grpcclient.InferInput("features", [1, 64], "FP64")
    doubles.set_data_from_numpy(np.zeros((1, 64), np.float64))
    expect_error(
        "INVALID_ARGUMENT", "datatype FP64 does not match the model's FP32", client.infer, "mlp", [doubles]
    )
    many, _ = mlp_input(129)
    expect_error("INVALID_ARGUMENT", "batch-size must be <= 128 for 'mlp'", client.infer, "mlp", [many])
    expect_error(
        "INVALID_ARGUMENT",
        "unknown output 'nope'",
        client.infer,
        "mlp",
        [good],
        outputs=[grpcclient.InferRequestedOutput("nope")],
    )
    assert client.infer("mlp", [good]).as_numpy("scores").shape == (1, 2)


def test_statistics_count_requests_rows_and_batches(demo_server: ServerProcess) -> None:
    client = client_for(demo_server)

    def stats() -> dict:
        (model,) = client.get_inference_statistics("mlp", as_json=True)["model_stats"]
        return model

    before = stats()
    for rows in (1, 2, 3, 4):
        tensor, _ = mlp_input(rows)
        client.infer("mlp", [tensor])
    failed, _ = mlp_input(1, name="nope")
    with pytest.raises(InferenceServerException):
        client.infer("mlp", [failed])
    after = stats()

    def delta(*path: str) -> int:
        a, b = after, before
        for key in path:
            a, b = a.get(key, {}), b.get(key, {})
        return int(a or 0) - int(b or 0)

    assert delta("inference_count") == 10
    assert delta("inference_stats", "success", "count") == 4
    assert delta("inference_stats", "fail", "count") == 1
    assert delta("inference_stats", "queue", "count") == 4
    assert delta("execution_count") == 4  # one at a time: each request is a batch of its own
    for stage in ("compute_input", "compute_infer", "compute_output"):
        assert delta("inference_stats", stage, "count") == 4
    assert delta("inference_stats", "compute_infer", "ns") > 0
    batch_rows = sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in after["batch_stats"])
    assert batch_rows == int(after["inference_count"])


def dispatched(client: grpcclient.InferenceServerClient, model: str) -> int:
    """Requests of `model` that have left its queue for a batch, from the server's statistics."""
    (stats,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return int(stats.get("inference_stats", {}).get("queue", {}).get("count", 0))


def wait_dispatched(
    client: grpcclient.InferenceServerClient, model: str, before: int, answers: queue.Queue
) -> None:
    """Until a request sent after `dispatched` read `before` is in a batch (or answered already,
    which a test's later checks report): read from the server, never assumed after a sleep."""
    wait_until(lambda: not answers.empty() or dispatched(client, model) > before, f"a {model} batch")


def _start_blocker(client: grpcclient.InferenceServerClient, model: str, batches: int = 1) -> queue.Queue:
    """Occupy the model's only instance with full 16-image batches; returns where answers land.

    Returns once the first batch runs: requests sent from then on wait in the queue.
    """
    done: queue.Queue = queue.Queue()
    before = dispatched(client, model)
    for _ in range(batches):
        client.async_infer(model, [image_input(16)], callback=lambda result, error: done.put((result, error)))
    wait_dispatched(client, model, before, done)
    return done


def test_deadline_that_expires_in_the_queue_is_never_computed(limits_server: ServerProcess) -> None:
    client = client_for(limits_server)
    (before,) = client.get_inference_statistics("resnet", as_json=True)["model_stats"]
    blocker = _start_blocker(client, "resnet", batches=4)
    codes = []
    for use_timeout_parameter in (True, False, True):
        try:
            if use_timeout_parameter:
                client.infer("resnet", [image_input(1)], timeout=50_000)  # 50 ms, in microseconds
            else:
                client.infer("resnet", [image_input(1)], client_timeout=0.05)
            codes.append("OK")
        except InferenceServerException as exc:
            codes.append(exc.status())
    for _ in range(4):
        _result, error = blocker.get(timeout=120)
        assert error is None
    # Expired in the queue (DEADLINE_EXCEEDED), or, once the blocker's batches have been timed,
    # shed at admission because the work queued ahead would make it late (RESOURCE_EXHAUSTED).
    assert len(codes) == 3
    assert set(codes) <= {"StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED"}, codes
    # Instead of waiting a while for any of the three to run late: a request sent now queues behind
    # whatever is left of them, so once it is answered the statistics show every run they could be in.
    assert client.infer("resnet", [image_input(1)]).as_numpy("logits").shape == (1, 1000)
    (after,) = client.get_inference_statistics("resnet", as_json=True)["model_stats"]
    # Only the blocker (and that last request) ran: the expired requests were dropped before compute.
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 4 * 16 + 1
    assert int(after["execution_count"]) - int(before.get("execution_count", 0)) == 4 + 1


def test_full_queue_answers_resource_exhausted_and_every_request_gets_one_answer(
    limits_server: ServerProcess,
) -> None:
    client = client_for(limits_server)
    answers: queue.Queue = queue.Queue()
    x = grpcclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.ones((1, 1), np.float32))

    def send(index: int) -> None:
        client.async_infer("slow_q2", [x], callback=lambda result, error: answers.put((index, result, error)))

    before = dispatched(client, "slow_q2")
    send(0)  # occupies the only instance for a few hundred milliseconds
    wait_dispatched(client, "slow_q2", before, answers)
    for index in range(1, 11):
        send(index)  # two wait in the queue; the rest find it full
    got = [answers.get(timeout=120) for _ in range(11)]
    assert sorted(index for index, _, _ in got) == list(range(11))  # exactly one answer each
    codes = ["OK" if e is None else e.status() for _, _, e in got]
    assert codes.count("StatusCode.UNAVAILABLE") >= 6, codes  # Triton's code and words
    assert codes.count("OK") >= 3, codes
    assert set(codes) <= {"OK", "StatusCode.UNAVAILABLE"}, codes
    messages = [e.message() for _, _, e in got if e is not None]
    assert all(m.startswith("Exceeds maximum queue size") for m in messages), messages
    np.testing.assert_allclose(client.infer("slow_q2", [x]).as_numpy("y"), np.ones((1, 1)), rtol=1e-5)


def test_versions_unload_and_load(limits_server: ServerProcess) -> None:
    client = client_for(limits_server)
    meta = client.get_model_metadata("mlp_versions", as_json=True)
    assert meta["versions"] == ["3", "1"]
    tensor, _ = mlp_input(1)
    assert client.infer("mlp_versions", [tensor]).get_response().model_version == "3"
    assert client.infer("mlp_versions", [tensor], model_version="1").get_response().model_version == "1"
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "mlp_versions", "version": "1", "state": "READY"} in index
    client.unload_model("mlp_versions")
    assert not client.is_model_ready("mlp_versions")
    expect_error("UNAVAILABLE", "not ready", client.infer, "mlp_versions", [tensor])
    client.load_model("mlp_versions")
    assert client.is_model_ready("mlp_versions")
    assert client.infer("mlp_versions", [tensor]).as_numpy("scores").shape == (1, 2)
    expect_error("NOT_FOUND", "failed to poll from model repository", client.load_model, "absent")


def _from_concurrent_clients(
    server: ServerProcess, model: str, shape: tuple[int, ...], clients: int, requests: int
) -> tuple[dict[tuple[int, int], tuple[np.ndarray, np.ndarray]], int]:
    """`clients` clients send `requests` requests each, all in flight at once, every one with its
    own values and 1 to 4 rows. Returns (inputs, outputs) by (client, request) and how many batches
    the model ran for them."""
    (input_name, output_name) = {"mlp": ("features", "scores"), "resnet": ("image", "logits")}[model]
    stats_client = client_for(server)
    (before,) = stats_client.get_inference_statistics(model, as_json=True)["model_stats"]
    errors: list[BaseException] = []
    answered: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def worker(client_id: int) -> None:
        client = client_for(server)
        answers: queue.Queue[tuple[int, object, object]] = queue.Queue()
        sent = {}
        try:
            for i in range(requests):
                rng = np.random.default_rng(1000 * client_id + i)
                sent[i] = rng.standard_normal((1 + (client_id + i) % 4, *shape)).astype(np.float32)
                tensor = grpcclient.InferInput(input_name, list(sent[i].shape), "FP32")
                tensor.set_data_from_numpy(sent[i])
                client.async_infer(
                    model, [tensor], callback=lambda result, error, i=i: answers.put((i, result, error))
                )
            for _ in range(requests):
                i, result, error = answers.get(timeout=60)
                if error is not None:
                    raise error  # type: ignore[misc]
                answered[client_id, i] = (sent[i], result.as_numpy(output_name))  # type: ignore[attr-defined]
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(answered) == clients * requests
    (after,) = stats_client.get_inference_statistics(model, as_json=True)["model_stats"]
    return answered, int(after["execution_count"]) - int(before.get("execution_count", 0))


@pytest.mark.parametrize(
    ("model", "shape", "clients", "requests"), [("mlp", (64,), 8, 25), ("resnet", (3, 224, 224), 4, 3)]
)
def test_concurrent_clients_all_get_answers(
    demo_server: ServerProcess,
    demo_repo: Path,
    model: str,
    shape: tuple[int, ...],
    clients: int,
    requests: int,
) -> None:
    # The server batches requests of different clients together, and each client must get exactly
    # its own rows back: a scatter that mixed up offsets or requests would hand one client
    # another's outputs.
    answered, executions = _from_concurrent_clients(demo_server, model, shape, clients, requests)
    session = ort.InferenceSession(
        str(demo_repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for (client_id, i), (data, got) in answered.items():
        (expected,) = session.run(None, {session.get_inputs()[0].name: data})
        assert got.shape == expected.shape, (client_id, i)
        tolerance = 1e-5 * max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(
            got, expected, rtol=1e-4, atol=tolerance, err_msg=f"client {client_id}, {i}"
        )
    print(model, "executions", executions)
    if model == "resnet":
        # The MLP mostly runs one request at a time (tiny runs, inline); the CNN is busy long enough
        # for requests of several clients to share a batch, so scatter is exercised.
        assert executions < clients * requests
