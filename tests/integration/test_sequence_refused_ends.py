"""A sequence whose START or END step holds a zero divisor, over one stream shared by four
sequences whose steps share a batch (test_sequence_refused_stream.py has the zero in a middle
step). The refused step is answered in the stream with its own id; the others' steps and states
are untouched.

- A refused START step starts nothing: the sequence's later steps are refused INVALID_ARGUMENT
  naming the START flag (as for a sequence never started), until a new START.
- A refused END step still ends its sequence (as Triton's END releases the slot whatever the
  run's outcome): a step after it without START is refused the same way, and a new START on that
  id begins from the initial state. Nothing of the sequence is left live.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from clients import tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

BOUND_S = 60.0  # a bound on a test that fails, never a measure
SEQUENCES, STEPS, CULPRIT = 4, 4, 2
# Steps sent together fill a batch (max_batch_size = SEQUENCES) and run at once. Once a START is
# refused only 3 sequences are left, and their batches wait this long: short, for the test's time.
# Had the four not coalesced, each assertion here would still hold.
DELAY_US = 500_000
STRATEGIES = ("oldest", "direct")
DIVISION = "division by zero in node 'Div_seq'"
NOT_STARTED = "must specify the START flag on the first request of the sequence"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    onnx_file = sm.dividing_accumulator_model(tmp_path_factory.mktemp("files") / "seq_div.onnx")
    for strategy in STRATEGIES:
        for end in ("start", "end"):
            config = sm.dividing_accumulator_config(strategy, SEQUENCES, DELAY_US)
            write_model(repo, f"seq_{strategy}_{end}", onnx_file, config)
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


def outputs(answer: pb.ModelStreamInferResponse) -> list[list[int]]:
    assert not answer.error_message, (answer.infer_response.id, answer.error_message)
    got: list[list[int]] = tensors.decode_response(answer.infer_response)["out"].tolist()
    return got


@pytest.mark.parametrize("end", ["start", "end"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_zero_in_a_start_or_end_step_is_refused_alone_and_leaves_no_sequence_live(
    server: ServerProcess, strategy: str, end: str
) -> None:
    model = f"seq_{strategy}_{end}"
    base = 10 * (2 * STRATEGIES.index(strategy) + (end == "end")) + 1  # sequence ids of their own
    bad_step = 0 if end == "start" else STEPS - 1
    zero_at = (CULPRIT, bad_step)
    expected = [np.zeros((1, 3), np.int32) for _ in range(SEQUENCES)]
    requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = stub.ModelStreamInfer(iter(requests.get, None), timeout=BOUND_S)
        for step in range(STEPS):
            for seq in range(SEQUENCES):
                requests.put(sm.dividing_request(model, base + seq, seq, step, STEPS, zero_at))
            got = {a.infer_response.id: a for a in (next(answers) for _ in range(SEQUENCES))}
            assert sorted(got) == sorted(f"{seq}-{step}" for seq in range(SEQUENCES))  # each once
            for seq in range(SEQUENCES):
                answer = got[f"{seq}-{step}"]
                if seq == CULPRIT and step == bad_step:
                    assert answer.error_message.startswith("INVALID_ARGUMENT: "), answer.error_message
                    assert DIVISION in answer.error_message and not answer.infer_response.outputs
                elif seq == CULPRIT and end == "start":  # never started: each later step refused
                    assert answer.error_message.startswith("INVALID_ARGUMENT: "), answer.error_message
                    assert NOT_STARTED in answer.error_message, answer.error_message
                else:
                    sent = sm.dividing_step(seq, step, zero_at)
                    expected[seq] = expected[seq] + sent["x"] // sent["y"]
                    assert outputs(answer) == expected[seq].tolist(), (seq, step)
        requests.put(None)
        assert list(answers) == []  # the stream stayed open to the end; nothing answered twice
        # The culprit's sequence is not live: a step without START is refused ...
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(
                sm.dividing_request(model, base + CULPRIT, CULPRIT, 1, STEPS, (-1, -1)), timeout=BOUND_S
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert NOT_STARTED in (refused.value.details() or "")
        # ... and a new START on its id begins from the initial state (a one-step sequence).
        again = sm.dividing_request(model, base + CULPRIT, CULPRIT, 0, 1, (-1, -1))
        first = sm.dividing_step(CULPRIT, 0, (-1, -1))
        answer = stub.ModelInfer(again, timeout=BOUND_S)
        assert tensors.decode_response(answer)["out"].tolist() == (first["x"] // first["y"]).tolist()
