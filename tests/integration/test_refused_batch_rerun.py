"""One client's bad inputs in a dynamic batch over a real server: the batch is refused for its
inputs (here a zero divisor, server/backends/int_division_guard.py), and its halves are run again,
halved while refused, so that only the request at fault is refused. Before, every request sharing the
batch got the culprit's INVALID_ARGUMENT: one request in ten holding a zero failed all 200."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import tensors
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.division_models import BATCHED_CONFIG, batched_div
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

BOUND_S = 60.0  # generous: a bound on a test that fails, never a measure
REQUESTS = 200  # with one instance, many arrive while it runs: batches form
GOOD = {"x": np.asarray([[7, -9, 100]], np.int32), "y": np.asarray([[2, 4, -7]], np.int32)}
ZERO = {"x": np.asarray([[7, -9, 100]], np.int32), "y": np.asarray([[2, 0, -7]], np.int32)}
RERUN_LINE = "refused for its inputs; running its halves again"
REFUSAL_LINE = "refused a batch's inputs: integer division by zero"


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    repo = tmp_path / "repo"
    write_model(repo, "batched", batched_div(tmp_path / "batched.onnx"), BATCHED_CONFIG)
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


def test_only_the_request_holding_a_zero_is_refused_in_a_shared_batch(server: ServerProcess) -> None:
    started = time.monotonic()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        sent = [
            (
                i % 10 == 5,
                stub.ModelInfer.future(
                    tensors.build_request("batched", ZERO if i % 10 == 5 else GOOD), timeout=BOUND_S
                ),
            )
            for i in range(REQUESTS)
        ]
        for is_zero, future in sent:
            if is_zero:
                with pytest.raises(grpc.RpcError) as info:
                    future.result()
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "division by zero in node 'Div_batched'" in str(info.value.details())
            else:
                assert tensors.decode_response(future.result())["q"].tolist() == [[3, -2, -14]]
    # The zeros did share batches with good requests (else this test proves nothing).
    server.wait_for_output(RERUN_LINE, BOUND_S)
    assert server.process is not None and server.process.poll() is None
    # A client's refusals are rationed (batcher/log_ration.py): 20 zeros, their batches halved
    # and refused again, had written a line or two each; now one a kind within 10 s (a few more
    # if the run outlasted that on a slow machine).
    elapsed_s = time.monotonic() - started
    lines = server.output().splitlines()
    for kind in (RERUN_LINE, REFUSAL_LINE):
        assert 1 <= sum(kind in line for line in lines) <= 1 + elapsed_s // 10, kind
