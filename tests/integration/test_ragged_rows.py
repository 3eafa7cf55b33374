"""Requests of several rows to ragged models, over a real server, as Triton serves them: valid; the
ragged input holds all of a request's elements, its batch inputs one value per request, and the
outputs are split by each request's rows. A model whose outputs hold one row per request answers
each request of one row with its own row; a request of several rows fails UNIMPLEMENTED in Triton's
words first (never INTERNAL, never another request's rows as OK)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from clients import tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.ragged_models import (
    RAGGED_AT_ONCE,
    RAGGED_BY_ROWS_INPUTS,
    RAGGED_INPUTS,
    ragged_rows_model,
    ragged_sum_model,
)
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

BOUND_S = 30.0  # generous: only the 60 s queue delay (which batching must not wait for) exceeds it
BATCHED = "max_batch_size: 8\ndynamic_batching { }\n"
# Five rows reach the preferred size and run at once; fewer wait (60 s): requests queued in a known
# order run together in that order.
FIVE_ROWS = """max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 5 ] max_queue_delay_microseconds: 60000000 }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""
FOUR_ROWS_CACHED = FIVE_ROWS.replace("[ 5 ]", "[ 4 ]") + "response_cache { enable: true }\n"


def several_rows(outputs: int, rows: int) -> str:
    return (
        "failed to split the output tensor 'sum' in responses: the model answered one row per request "
        f"({outputs} rows for {outputs} requests) and this request has {rows} rows: send one row per request"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("ragged-rows")
    files = tmp_path_factory.mktemp("ragged-rows-files")
    by_request = ragged_sum_model(files / "sum.onnx")  # one output row per request
    by_rows = ragged_rows_model(files / "rows.onnx")  # one output row per row
    write_model(repo, "sum_alone", by_request, RAGGED_AT_ONCE)  # no dynamic_batching
    write_model(repo, "sum_batched", by_request, BATCHED + RAGGED_INPUTS)
    write_model(repo, "sum_five", by_request, FIVE_ROWS + RAGGED_INPUTS)
    write_model(repo, "sum_four_cached", by_request, FOUR_ROWS_CACHED + RAGGED_INPUTS)
    write_model(repo, "rows_alone", by_rows, "max_batch_size: 8\n" + RAGGED_BY_ROWS_INPUTS)
    write_model(repo, "rows_five", by_rows, FIVE_ROWS + RAGGED_BY_ROWS_INPUTS)
    with ServerProcess("--model-repository", str(repo)) as process:
        yield process


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def ones(rows: int, width: int) -> np.ndarray:
    return np.ones((rows, width), np.float32)


def pending(server: ServerProcess, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    prefix = f'nv_inference_pending_request_count{{model="{model}",version="1"}} '
    return sum(float(x[len(prefix) :]) for x in text.splitlines() if x.startswith(prefix))


def failure(stub: pb_grpc.GRPCInferenceServiceStub, model: str, x: np.ndarray) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(tensors.build_request(model, {"x": x}), timeout=BOUND_S)
    return info.value


@pytest.mark.parametrize("model", ["sum_alone", "sum_batched"])
def test_several_rows_to_a_model_of_one_row_per_request_are_unsupported_not_internal(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str
) -> None:
    # Was INTERNAL both ways: run alone, the request's 3 rows met an admission of 1; batched, the
    # scatter refused the 1-row outputs for the whole batch.
    for rows, width in [(3, 3), (2, 5)]:
        error = failure(stub, model, ones(rows, width))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED, error.details()  # Triton's UNSUPPORTED
        assert error.details() == several_rows(1, rows)
    answer = tensors.decode_response(stub.ModelInfer(tensors.build_request(model, {"x": ones(1, 3)})))
    assert answer["sum"].tolist() == [[3.0]] and answer["n"].tolist() == [[3]]


def queued_in_order(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, model: str, xs: list[np.ndarray]
) -> list[grpc.Future]:
    """Each request sent once the one before is queued: they run together, in this order (the last
    completes the preferred batch)."""
    futures = []
    for i, x in enumerate(xs):
        if i:
            wait_until(lambda n=i: pending(server, model) == n, f"{i} queued", BOUND_S)
        futures.append(stub.ModelInfer.future(tensors.build_request(model, {"x": x}), timeout=BOUND_S))
    return futures


def test_a_batch_answers_its_requests_of_one_row_by_request(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    # Queued in this order: 1 row (4 elements), 1 row (2 elements), 3 rows; one run of 5 rows whose
    # outputs hold 3 rows (one per request): the first two get their own, the third fails.
    xs = [np.arange(4, dtype=np.float32).reshape(1, 4), np.full((1, 2), 5.0, np.float32), ones(3, 3)]
    futures = queued_in_order(server, stub, "sum_five", xs)
    first, second = (tensors.decode_response(f.result(timeout=BOUND_S)) for f in futures[:2])
    assert first["sum"].tolist() == [[6.0]] and first["n"].tolist() == [[4]]
    assert second["sum"].tolist() == [[10.0]] and second["n"].tolist() == [[2]]
    error = futures[2].exception(timeout=BOUND_S)
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == several_rows(3, 3)
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="sum_five"), timeout=BOUND_S).model_stats
    assert stats.execution_count == 1 and stats.inference_stats.fail.count == 1
    server.wait_for_output("output shapes {'sum': (3, 1), 'n': (3, 1)}")  # the operator's line


def test_several_rows_run_alone_get_their_rows(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    y = np.asarray([[1.0], [2.0], [3.0]], np.float32)
    request = tensors.build_request("rows_alone", {"x": ones(3, 4), "y": y})
    answer = tensors.decode_response(stub.ModelInfer(request, timeout=BOUND_S))
    assert answer["z"].tolist() == y.tolist()


def test_several_rows_batched_get_their_rows(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    ys = [np.asarray([[1.0]], np.float32), np.asarray([[2.0], [3.0], [4.0]], np.float32), np.asarray([[5.0]])]
    xs = [ones(1, 2), ones(3, 1), ones(1, 7)]
    futures = [
        stub.ModelInfer.future(tensors.build_request("rows_five", {"x": x, "y": y.astype(np.float32)}))
        for x, y in zip(xs, ys, strict=True)
    ]
    for y, future in zip(ys, futures, strict=True):
        assert tensors.decode_response(future.result(timeout=BOUND_S))["z"].tolist() == y.tolist()
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="rows_five"), timeout=BOUND_S).model_stats
    assert stats.execution_count == 1 and stats.inference_count == 5


def test_a_request_of_one_row_after_one_of_several_gets_its_own_answer_and_caches_it(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    # The tester's batch: A (2 rows), B, C (1 row each), outputs of 3 rows. Split by rows, B got C's
    # sum (200) with OK, the cache kept it, and B sent again alone got 200 from the cache.
    a, b, c = ones(2, 2), np.full((1, 2), 10.0, np.float32), np.full((1, 2), 100.0, np.float32)
    futures = queued_in_order(server, stub, "sum_four_cached", [a, b, c])
    error = futures[0].exception(timeout=BOUND_S)
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == several_rows(3, 2)
    for future, own in zip(futures[1:], [20.0, 200.0], strict=True):
        assert tensors.decode_response(future.result(timeout=BOUND_S))["sum"].tolist() == [[own]]
    again = stub.ModelInfer(
        tensors.build_request("sum_four_cached", {"x": b}), timeout=BOUND_S
    )  # from the cache
    assert tensors.decode_response(again)["sum"].tolist() == [[20.0]]
    (stats,) = stub.ModelStatistics(
        pb.ModelStatisticsRequest(name="sum_four_cached"), timeout=BOUND_S
    ).model_stats
    assert stats.inference_stats.cache_hit.count == 1
