"""One sequence's bad inputs in a sequence batch, over bidirectional streams and through an ensemble
(test_sequence_refused_batch.py does it over unary calls). Several sequences' steps share a batch
and one step holds a zero divisor (refused by the division guard, run again in halves by
batcher/run_batch.py). Over ModelStreamInfer, whether each sequence has a stream of its own or all
share one: that step is answered in the stream with an error response carrying its request id, as
Triton's, the stream stays open and answers the later steps, every other step is answered exactly
once, and each sequence's state advances only with the steps answered. Through an ensemble whose
step is the sequence model (server/models/ensemble.py passes the request's sequence to it): the
same, the error naming the ensemble, its step and the node."""

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

BOUND_S = 60.0  # generous: a bound on a test that fails, never a measure
SEQUENCES = 4  # one batch each step: max_batch_size, so it is run as soon as all have arrived
STEPS = 4
CULPRIT, BAD_STEP = 2, 1  # the sequence index and step whose divisor holds a zero
DELAY_US = 5_000_000  # so long that the steps sent together always share a batch
STRATEGIES = ("oldest", "direct")
# A stream per sequence; one stream for them all, a step's requests sent once the step before is
# answered; or one stream for them all, every step sent before any answer is read.
LAYOUTS = ("own", "shared", "pipelined")
TRANSPORTS = ("unary", "stream", "shared_stream")  # shared: one stream for every sequence
DIVISION = "division by zero in node 'Div_seq'"


def ensemble_config(step_model: str) -> str:
    """An ensemble whose one step is the sequence model `step_model`."""
    return f"""
platform: "ensemble"
max_batch_size: {SEQUENCES}
input [ {{ name: "x" data_type: TYPE_INT32 dims: [ 3 ] }}, {{ name: "y" data_type: TYPE_INT32 dims: [ 3 ] }} ]
output [ {{ name: "out" data_type: TYPE_INT32 dims: [ 3 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "{step_model}" model_version: -1
    input_map {{ key: "x" value: "x" }} input_map {{ key: "y" value: "y" }}
    output_map {{ key: "out" value: "out" }} }}
] }}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    onnx_file = sm.dividing_accumulator_model(tmp_path_factory.mktemp("files") / "seq_div.onnx")
    for strategy in STRATEGIES:  # a model per test, so each test's log line is its own
        for layout in LAYOUTS:
            config = sm.dividing_accumulator_config(strategy, SEQUENCES, DELAY_US)
            write_model(repo, f"seq_div_{strategy}_{layout}", onnx_file, config)
    for transport in TRANSPORTS:
        step_model = f"seq_div_step_{transport}"
        write_model(
            repo, step_model, onnx_file, sm.dividing_accumulator_config("direct", SEQUENCES, DELAY_US)
        )
        (repo / f"ens_div_{transport}" / "1").mkdir(parents=True)
        (repo / f"ens_div_{transport}" / "config.pbtxt").write_text(ensemble_config(step_model))
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


def request(model: str, base: int, seq: int, step: int) -> pb.ModelInferRequest:
    return sm.dividing_request(model, base + seq, seq, step, STEPS, (CULPRIT, BAD_STEP))


class Stream:
    """One ModelStreamInfer call, fed request by request, its answers read one at a time."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
        self._requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
        self._answers = stub.ModelStreamInfer(iter(self._requests.get, None), timeout=BOUND_S)

    def send(self, req: pb.ModelInferRequest) -> None:
        self._requests.put(req)

    def receive(self) -> pb.ModelStreamInferResponse:
        answer: pb.ModelStreamInferResponse = next(self._answers)  # the call's deadline bounds it
        return answer

    def close(self) -> list[pb.ModelStreamInferResponse]:
        """Half-close; the answers that came after those read (none, when each was answered once)."""
        self._requests.put(None)
        return list(self._answers)


class State:
    """Each sequence's state as the server should hold it, advanced by each step answered."""

    def __init__(self) -> None:
        self.expected = [np.zeros((1, 3), np.int32) for _ in range(SEQUENCES)]

    def answered(self, seq: int, step: int, got: dict[str, np.ndarray]) -> None:
        sent = sm.dividing_step(seq, step, (CULPRIT, BAD_STEP))
        self.expected[seq] = self.expected[seq] + sent["x"] // sent["y"]
        assert got["out"].tolist() == self.expected[seq].tolist(), (seq, step)


def check_stream_answers(
    answers: list[pb.ModelStreamInferResponse], step: int, state: State, words: tuple[str, ...]
) -> None:
    """One answer per sequence for `step`, by request id: the culprit's an in-stream error."""
    ids = sorted(a.infer_response.id for a in answers)
    assert ids == sorted(f"{seq}-{step}" for seq in range(SEQUENCES)), ids  # each once, none lost
    for answer in answers:
        seq = int(answer.infer_response.id.split("-")[0])
        if (seq, step) == (CULPRIT, BAD_STEP):
            assert answer.error_message.startswith("INVALID_ARGUMENT: "), answer.error_message
            assert all(w in answer.error_message for w in words), answer.error_message
            assert not answer.infer_response.outputs  # no answer beside the error
            continue  # its state stays as it was
        assert not answer.error_message, (seq, step, answer.error_message)
        state.answered(seq, step, tensors.decode_response(answer.infer_response))


def run_streams(server: ServerProcess, model: str, base: int, layout: str, words: tuple[str, ...]) -> None:
    """Every sequence's steps over streams (own: one each; shared: one for all), step by step."""
    state = State()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        own = layout == "own"
        streams = [Stream(stub) for _ in range(SEQUENCES)] if own else [Stream(stub)] * SEQUENCES
        distinct = list({id(s): s for s in streams}.values())
        if layout == "pipelined":
            pipelined(streams[0], model, base, state, words)
            return
        for step in range(STEPS):
            for seq in range(SEQUENCES):
                streams[seq].send(request(model, base, seq, step))
            answers: list[pb.ModelStreamInferResponse] = []
            for stream in distinct:
                sent = streams.count(stream)
                got = [stream.receive() for _ in range(sent)]
                if layout == "own":  # on its own stream, a sequence's answer is its own
                    assert [a.infer_response.id for a in got] == [f"{streams.index(stream)}-{step}"]
                answers += got
            check_stream_answers(answers, step, state, words)
        for stream in distinct:
            assert stream.close() == []  # the stream stayed open to the end; no step answered twice


def pipelined(stream: Stream, model: str, base: int, state: State, words: tuple[str, ...]) -> None:
    """Every step of every sequence sent on `stream` before any answer is read: a sequence's later
    steps wait in the server behind its refused one, and are answered from the state before it."""
    for step in range(STEPS):
        for seq in range(SEQUENCES):
            stream.send(request(model, base, seq, step))
    answers = [stream.receive() for _ in range(SEQUENCES * STEPS)]
    by_step: list[list[pb.ModelStreamInferResponse]] = [[] for _ in range(STEPS)]
    for answer in answers:
        by_step[int(answer.infer_response.id.split("-")[1])].append(answer)
    for step in range(STEPS):
        check_stream_answers(by_step[step], step, state, words)
    assert stream.close() == []  # no step answered twice


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_over_streams_only_the_step_holding_a_zero_is_answered_with_an_error_and_each_state_advances_once(
    server: ServerProcess, strategy: str, layout: str
) -> None:
    model = f"seq_div_{strategy}_{layout}"
    base = 100 * (len(LAYOUTS) * STRATEGIES.index(strategy) + LAYOUTS.index(layout)) + 1  # ids of their own
    run_streams(server, model, base, layout, (DIVISION,))
    # The zero did share a batch with the other sequences' steps (else this test proves nothing).
    server.wait_for_output(f"model {model} version 1: a batch of {SEQUENCES} requests refused", BOUND_S)
    assert server.process is not None and server.process.poll() is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_through_an_ensemble_only_the_step_holding_a_zero_is_refused_and_each_state_advances_once(
    server: ServerProcess, transport: str
) -> None:
    ensemble, step_model = f"ens_div_{transport}", f"seq_div_step_{transport}"
    base = 1000 + 100 * TRANSPORTS.index(transport)
    words = (f"in ensemble '{ensemble}', ", DIVISION, f"; step 1 (model '{step_model}')")
    if transport.endswith("stream"):
        run_streams(server, ensemble, base, "own" if transport == "stream" else "shared", words)
    else:
        run_unary(server, ensemble, base, words)
    server.wait_for_output(f"model {step_model} version 1: a batch of {SEQUENCES} requests refused", BOUND_S)
    assert server.process is not None and server.process.poll() is None


def run_unary(server: ServerProcess, model: str, base: int, words: tuple[str, ...]) -> None:
    """Every sequence's steps as unary calls, a step's calls all in flight together."""
    state = State()
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for step in range(STEPS):
            futures = [
                stub.ModelInfer.future(request(model, base, seq, step), timeout=BOUND_S)
                for seq in range(SEQUENCES)
            ]
            for seq, future in enumerate(futures):
                if (seq, step) == (CULPRIT, BAD_STEP):
                    with pytest.raises(grpc.RpcError) as info:
                        future.result()
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
                    details = str(info.value.details())
                    assert all(w in details for w in words), details
                    continue
                state.answered(seq, step, tensors.decode_response(future.result()))
