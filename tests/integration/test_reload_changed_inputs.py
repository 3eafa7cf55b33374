"""A reload whose new config no longer fits the requests still queued on the retired version.

A reload hands what is still queued after the grace to the new version (RequestPath.finish). A
request whose inputs no longer fit it had been answered INVALID_ARGUMENT ("unexpected shape ...
Expected [-1,8], got [1,4]": 23 of 40 queued), though it was valid when admitted, and was counted
only in the retired version's statistics, which went with it (ModelStatistics showed fail 0). It is
answered UNAVAILABLE (retryable) naming the reload, and counted a failure by the version serving now.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, wait_until

QUEUED = 6  # requests sent behind one another: one runs, the others wait in the queue
DELAY_MS = 500  # each run: the grace (0.1 s) ends with most of them still queued
RELOADED = "was reloaded with different inputs or outputs before the request was computed"


def config(dims: int, max_batch_size: int = 8) -> str:
    """The identity model `m`: INPUT0 -> OUTPUT0, FP32 [dims], one instance, one request a batch."""
    return json.dumps(
        {
            "backend": "identity",
            "max_batch_size": max_batch_size,
            "dynamic_batching": {"preferred_batch_size": [1]},
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [dims]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [dims]}],
            "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
            "parameters": {"execute_delay_ms": {"string_value": str(DELAY_MS)}},
        }
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("reload_changed_inputs")
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text('backend: "identity"\nmax_batch_size: 8\n')
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit", "--shutdown-grace-s", "0.1")
    with ServerProcess(*args) as process:
        yield process


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def load(stub: pb_grpc.GRPCInferenceServiceStub, config_json: str) -> None:
    parameter = pb.ModelRepositoryParameter(string_param=config_json)
    load_request = pb.RepositoryModelLoadRequest(model_name="m", parameters={"config": parameter})
    stub.RepositoryModelLoad(load_request, timeout=60)


def request(i: int, rows: int) -> pb.ModelInferRequest:
    data = np.full((rows, 4), i, np.float32)
    message = pb.ModelInferRequest(model_name="m", id=str(i))
    message.inputs.add(name="INPUT0", datatype="FP32", shape=list(data.shape))
    message.raw_input_contents.append(data.tobytes())
    return message


def metric(server: ServerProcess, prefix: str) -> float:
    """The /metrics sample of `m` version 1 whose line starts with `prefix` (labels included)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return sum(float(x[len(prefix) :]) for x in text.splitlines() if x.startswith(prefix))


def pending(server: ServerProcess) -> float:
    return metric(server, 'nv_inference_pending_request_count{model="m",version="1"} ')


def failures(stub: pb_grpc.GRPCInferenceServiceStub) -> int:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="m"), timeout=30)
    return sum(s.inference_stats.fail.count for s in stats.model_stats)


def check(answers: list[str], server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """Each queued request is computed by the old version or refused UNAVAILABLE naming the reload;
    the refusals are in the statistics (and /metrics) of the version serving now."""
    refused = [a for a in answers if a != "OK"]
    assert refused, "no request was still queued when the grace ended"
    for answer in refused:
        assert answer.startswith("UNAVAILABLE: ") and RELOADED in answer, answers
    assert failures(stub) == len(refused)
    unavailable = 'sluiceway_rejection_total{model="m",reason="unavailable",version="1"} '
    assert metric(server, unavailable) == len(refused)


@pytest.mark.parametrize(
    ("new_config", "rows", "why"),
    [
        (config(8), 1, "Expected [-1,8], got [1,4]"),  # the input's shape changed
        (config(4, max_batch_size=1), 2, "batch-size must be <= 1"),  # fewer rows a batch
    ],
    ids=["shape", "max_batch_size"],
)
def test_a_queued_request_that_no_longer_fits_is_unavailable_and_counted(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, new_config: str, rows: int, why: str
) -> None:
    load(stub, config(4))
    with ThreadPoolExecutor(QUEUED) as pool:
        calls: list[Future[pb.ModelInferResponse]] = [
            pool.submit(stub.ModelInfer, request(i, rows), timeout=60) for i in range(QUEUED)
        ]
        wait_until(lambda: pending(server) >= QUEUED - 2, "a backlog on the version to be retired")
        load(stub, new_config)
        answers = []
        for call in calls:
            error = call.exception()
            if error is None:
                assert np.frombuffer(call.result().raw_output_contents[0], np.float32).shape == (rows * 4,)
                answers.append("OK")
            else:
                assert isinstance(error, grpc.Call)
                answers.append(f"{error.code().name}: {error.details()}")
    check(answers, server, stub)
    assert any(why in a for a in answers if a != "OK"), answers


def test_a_queued_stream_frame_that_no_longer_fits_gets_the_same_answer(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    load(stub, config(4))
    with grpc.insecure_channel(server.address) as channel, ThreadPoolExecutor(1) as pool:
        frames = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
            iter([request(i, 1) for i in range(QUEUED)]), timeout=60
        )
        read = pool.submit(lambda: [r.error_message or "OK" for r in frames])
        wait_until(lambda: pending(server) >= QUEUED - 2, "a backlog of stream frames")
        load(stub, config(8))
        answers = read.result(timeout=60)
    assert len(answers) == QUEUED
    check(answers, server, stub)
