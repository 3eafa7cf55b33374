"""One sequence's bad inputs in a sequence batch over a real server: several sequences' steps share
a batch, and one step holds a zero divisor (refused by the division guard,
server/backends/int_division_guard.py). The batch's halves are run again, halved while refused, as a
dynamic batch's are (batcher/run_batch.py): only that step is refused, its sequence's state stays as
before it, and every other sequence's step is answered and its state advances exactly once."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from clients import tensors
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

BOUND_S = 60.0  # generous: a bound on a test that fails, never a measure
SEQUENCES = 4  # one batch each step: max_batch_size, so it is run as soon as all have arrived
STEPS = 4
CULPRIT, BAD_STEP = 2, 1  # the sequence index and step whose divisor holds a zero
DELAY_US = 5_000_000  # so long that the steps sent together always share a batch
STRATEGIES = ("oldest", "direct")


def model_name(strategy: str) -> str:
    return f"seq_div_{strategy}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    onnx_file = sm.dividing_accumulator_model(tmp_path_factory.mktemp("files") / "seq_div.onnx")
    for strategy in STRATEGIES:
        config = sm.dividing_accumulator_config(strategy, SEQUENCES, DELAY_US)
        write_model(repo, model_name(strategy), onnx_file, config)
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_only_the_step_holding_a_zero_is_refused_and_each_state_advances_once(
    server: ServerProcess, strategy: str
) -> None:
    model = model_name(strategy)
    base = 1000 * STRATEGIES.index(strategy) + 1  # ids of their own on each model (0 is none)
    expected = [np.zeros((1, 3), np.int32) for _ in range(SEQUENCES)]  # each sequence's state
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for step in range(STEPS):
            futures = []
            for seq in range(SEQUENCES):
                request = sm.dividing_request(model, base + seq, seq, step, STEPS, (CULPRIT, BAD_STEP))
                futures.append(stub.ModelInfer.future(request, timeout=BOUND_S))
            for seq, future in enumerate(futures):
                if (seq, step) == (CULPRIT, BAD_STEP):
                    with pytest.raises(grpc.RpcError) as info:
                        future.result()
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
                    assert "division by zero in node 'Div_seq'" in str(info.value.details())
                    continue  # its state stays as it was
                sent = sm.dividing_step(seq, step, (CULPRIT, BAD_STEP))
                expected[seq] = expected[seq] + sent["x"] // sent["y"]
                got = tensors.decode_response(future.result())
                assert got["out"].tolist() == expected[seq].tolist(), (seq, step)
    # The zero did share a batch with the other sequences' steps (else this test proves nothing).
    server.wait_for_output(f"model {model} version 1: a batch of {SEQUENCES} requests refused", BOUND_S)
    assert server.process is not None and server.process.poll() is None
