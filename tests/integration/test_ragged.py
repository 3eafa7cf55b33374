"""Ragged batching over a real server: requests whose ragged input differs in length run as one
batch (flattened and concatenated, with batch inputs the server computes), and each request gets
its own answer."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from clients import Client, tensors
from clients.errors import InvalidArgument
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.ragged_models import RAGGED_AT_ONCE, RAGGED_BATCH_OF_THREE, ragged_sum_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

BOUND_S = 30.0  # generous: only the 60 s queue delay (which batching must not wait for) exceeds it


@pytest.fixture(scope="module")
def ragged_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("ragged")
    model = ragged_sum_model(tmp_path_factory.mktemp("ragged-files") / "ragged.onnx")
    write_model(repo, "ragged3", model, RAGGED_BATCH_OF_THREE)
    write_model(repo, "ragged", model, RAGGED_AT_ONCE)
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server


@pytest.fixture()
def client(ragged_server: ServerProcess) -> Iterator[Client]:
    with Client(ragged_server.address) as c:
        yield c


@pytest.fixture()
def stub(ragged_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(ragged_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_requests_of_different_lengths_run_as_one_batch(
    client: Client, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.integers(-50, 50, (1, n)).astype(np.float32) for n in (4, 0, 7)]
    futures = [stub.ModelInfer.future(tensors.build_request("ragged3", {"x": x})) for x in xs]
    for x, future in zip(xs, futures, strict=True):
        out = tensors.decode_response(future.result(timeout=BOUND_S))
        assert out["sum"].shape == (1, 1) and out["n"].shape == (1, 1)
        assert out["sum"][0, 0] == x.sum()  # small integers: exact in FP32
        assert out["n"][0, 0] == x.shape[1]
    (stats,) = client.model_statistics("ragged3").model_stats
    assert stats.execution_count == 1 and stats.inference_count == 3
    assert {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == {3: 1}


def test_a_lone_ragged_request_gets_its_batch_inputs_too(client: Client) -> None:
    x = np.arange(5, dtype=np.float32).reshape(1, 5)
    out = client.infer("ragged", {"x": x})
    assert out["sum"].tolist() == [[10.0]] and out["n"].tolist() == [[5]]


def test_the_batch_inputs_are_the_servers_not_the_clients(client: Client) -> None:
    meta = client.model_metadata("ragged")
    assert [t.name for t in meta.inputs] == ["x"]
    config = client.model_config("ragged")
    assert config.input[0].allow_ragged_batch
    assert [b.target_name[0] for b in config.batch_input] == ["END", "COUNT", "OFFSETS"]


def test_a_client_cannot_send_a_batch_input(client: Client) -> None:
    x = np.ones((1, 2), np.float32)
    with pytest.raises(InvalidArgument) as info:
        client.infer("ragged", {"x": x, "END": np.asarray([[2]], np.int64)})
    assert "'END'" in info.value.message
