"""Stateful sequences over a real server: implicit state carried and released, order, controls,
limits, idle release, stream end (README "Stateful sequences")."""

from __future__ import annotations

import queue
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support import sequence_models as sm
from tests.support.repositories import newer, write_model
from tests.support.server_process import ServerProcess, wait_until

MAX_SEQUENCES = 6
BIG_WIDTH = 1024  # acc_big's state: 4 KiB a sequence
MAX_STATE_BYTES = 3 * BIG_WIDTH * 4 + 100  # three acc_big sequences fit, not four
IDLE_US = 300_000


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("seq_repo")
    files = tmp_path_factory.mktemp("seq_models")
    acc = sm.accumulator_model(files / "acc.onnx")
    for name in ("accumulate", "acc_limit"):
        write_model(repo, name, acc, sm.accumulator_config())
    write_model(repo, "plain", acc, "max_batch_size: 8\n")
    write_model(repo, "acc_idle", acc, sm.accumulator_config(idle_us=IDLE_US))
    # Two versions, sequences split between them by id (README "Rollouts": sticky by sequence_id).
    split = (
        sm.accumulator_config()
        + "version_policy { all { } }\n"
        + "".join(
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
            for k, v in (("traffic_weights", "1:50,2:50"), ("traffic_sticky_key", "sequence_id"))
        )
    )
    write_model(repo, "acc_split", acc, split, versions=(1, 2))
    # Its state's output listed as an output too: Triton's way to give the client the state.
    listed = 'output [ { name: "acc_out" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    write_model(repo, "acc_listed", acc, listed + sm.accumulator_config())
    init = write_model(repo, "acc_init", acc, sm.accumulator_config(initial_file="init.bin"))
    (init / "initial_state").mkdir()
    (init / "initial_state" / "init.bin").write_bytes(np.array([10, 20, 30, 40], np.float32).tobytes())
    big = sm.accumulator_model(files / "big.onnx", width=BIG_WIDTH)
    write_model(repo, "acc_big", big, sm.accumulator_config(width=BIG_WIDTH))
    write_model(repo, "acc_counted", big, sm.accumulator_config(width=BIG_WIDTH))  # its own series
    write_model(repo, "axis1", sm.accumulator_axis1_model(files / "axis1.onnx"), sm.AXIS1_CONFIG)
    write_model(repo, "controls", sm.controls_model(files / "controls.onnx"), sm.CONTROLS_CONFIG)
    # An ensemble whose second step is the accumulator: the request's sequence reaches that step.
    write_model(repo, "double", sm.double_model(files / "double.onnx"), "max_batch_size: 8\n")
    (repo / "double_then_acc" / "1").mkdir(parents=True)
    (repo / "double_then_acc" / "config.pbtxt").write_text(sm.DOUBLE_THEN_ACC)
    args = ["--model-repository", str(repo), "--max-sequences", str(MAX_SEQUENCES)]
    with ServerProcess(*args, "--max-sequence-state-bytes", str(MAX_STATE_BYTES)) as server:
        yield server


@pytest.fixture()
def stub(seq_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(seq_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def request(
    model: str,
    sid: int | str | None,
    x: np.ndarray,
    *,
    start: bool = False,
    end: bool = False,
    name: str = "x",
    rid: str = "",
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id=rid)
    req.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x, np.float32).tobytes())
    if sid is not None:
        if isinstance(sid, str):
            req.parameters["sequence_id"].string_param = sid
        else:
            req.parameters["sequence_id"].int64_param = sid
        req.parameters["sequence_start"].bool_param = start
        req.parameters["sequence_end"].bool_param = end
    return req


def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": np.float32, "INT32": np.int32, "BOOL": np.bool_, "UINT64": np.uint64}
    return {
        out.name: np.frombuffer(raw, dtypes[out.datatype]).reshape(list(out.shape))
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def step(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, sid: int | str, value: float, **kw: bool
) -> np.ndarray:
    x = np.full((1, 4), value, np.float32)
    return outputs(stub.ModelInfer(request(model, sid, x, **kw)))["out"]


def error_of(stub: pb_grpc.GRPCInferenceServiceStub, req: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    return info.value  # type: ignore[return-value]


def test_state_is_carried_between_requests_and_released_by_the_end_request(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    assert step(stub, "accumulate", 1, 1.0, start=True).tolist() == [[1, 1, 1, 1]]
    assert step(stub, "accumulate", 1, 2.0).tolist() == [[3, 3, 3, 3]]
    assert step(stub, "accumulate", "one", 5.0, start=True).tolist() == [[5, 5, 5, 5]]  # another id
    assert step(stub, "accumulate", 1, 3.0, end=True).tolist() == [[6, 6, 6, 6]]
    err = error_of(stub, request("accumulate", 1, np.ones((1, 4), np.float32)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sequence 1 " in err.details() and "sequence_end" in err.details()
    # A new start of the same id begins from the initial state again; a start on a live one restarts.
    assert step(stub, "accumulate", 1, 4.0, start=True).tolist() == [[4, 4, 4, 4]]
    assert step(stub, "accumulate", 1, 1.0, start=True, end=True).tolist() == [[1, 1, 1, 1]]
    assert step(stub, "accumulate", "one", 1.0, end=True).tolist() == [[6, 6, 6, 6]]


def test_an_expired_request_is_not_computed_and_leaves_the_state_as_it_was(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    assert step(stub, "accumulate", 61, 1.0, start=True).tolist() == [[1, 1, 1, 1]]
    late = request("accumulate", 61, np.full((1, 4), 100.0, np.float32))
    late.parameters["timeout"].int64_param = 1  # one microsecond: over before it can run
    err = error_of(stub, late)
    assert err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert step(stub, "accumulate", 61, 1.0, end=True).tolist() == [[2, 2, 2, 2]]


def test_the_model_shows_no_state_or_control_tensors(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="accumulate"))
    assert [t.name for t in meta.inputs] == ["x"] and [t.name for t in meta.outputs] == ["out"]
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="controls"))
    assert [t.name for t in meta.inputs] == ["x"]  # its outputs echo the controls: they are public
    # ... and a client cannot send the state itself.
    err = error_of(stub, request("accumulate", 9, np.ones((1, 4), np.float32), start=True, name="acc"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "acc" in err.details()


def test_unknown_sequences_and_missing_ids_are_refused_by_name(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    err = error_of(stub, request("accumulate", 424242, np.ones((1, 4), np.float32)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sequence 424242 " in err.details() and "never started" in err.details()
    err = error_of(stub, request("accumulate", None, np.ones((1, 4), np.float32)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must specify a non-zero or non-empty correlation ID" in err.details()
    err = error_of(stub, request("accumulate", 5, np.ones((2, 4), np.float32), start=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "must specify batch-size 1" in err.details()


def test_a_stream_runs_a_sequences_requests_in_order(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """20 requests of one sequence and 20 of another, all sent before any answer is read."""
    sent = []
    for i in range(1, 21):
        for sid in (31, 32):
            x = np.full((1, 4), float(i if sid == 31 else 2 * i), np.float32)
            sent.append(request("accumulate", sid, x, start=i == 1, end=i == 20, rid=f"{sid}-{i}"))
    got: dict[str, np.ndarray] = {}
    for answer in stub.ModelStreamInfer(iter(sent)):
        assert not answer.error_message, answer.error_message
        got[answer.infer_response.id] = outputs(answer.infer_response)["out"]
    for i in range(1, 21):
        assert got[f"31-{i}"][0, 0] == i * (i + 1) / 2
        assert got[f"32-{i}"][0, 0] == i * (i + 1)


def test_a_state_batched_on_axis_1_is_kept_per_sequence(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """sequence_state_batch_axis "s:1": several sequences' s f32[2,B,3] share batches."""
    sids, steps = (41, 42, 43), 6
    rng = np.random.default_rng(0)
    xs = {sid: rng.standard_normal((steps, 1, 3)).astype(np.float32) for sid in sids}
    sent = [
        request("axis1", sid, xs[sid][i], start=i == 0, end=i == steps - 1, rid=f"{sid}-{i}")
        for i in range(steps)
        for sid in sids
    ]
    got = {a.infer_response.id: outputs(a.infer_response)["out"] for a in stub.ModelStreamInfer(iter(sent))}
    for sid in sids:
        state = np.zeros((2, 1, 3), np.float32)
        for i in range(steps):
            out = xs[sid][i] + state[0] + state[1]
            state = np.stack([out, xs[sid][i]])
            np.testing.assert_allclose(got[f"{sid}-{i}"], out, atol=1e-5)


def test_initial_state_comes_from_its_data_file(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert step(stub, "acc_init", 7, 1.0, start=True).tolist() == [[11, 21, 31, 41]]
    assert step(stub, "acc_init", 7, 1.0, end=True).tolist() == [[12, 22, 32, 42]]


def test_a_state_output_the_config_lists_comes_back_with_each_answer(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # It had been refused at load ("not in the ONNX model"), then as the server's own tensor.
    got = [outputs(stub.ModelInfer(request("acc_listed", 31, np.full((1, 4), 2.0, np.float32), start=True)))]
    got.append(
        outputs(stub.ModelInfer(request("acc_listed", 31, np.full((1, 4), 3.0, np.float32), end=True)))
    )
    assert [sorted(g) for g in got] == [["acc_out", "out"]] * 2
    assert [g["acc_out"].tolist() for g in got] == [[[2.0] * 4], [[5.0] * 4]]  # the state kept, as sent
    assert [g["out"].tolist() for g in got] == [[[2.0] * 4], [[5.0] * 4]]
    # The state still carries when the client does not ask for it, and stays off unlisted models.
    assert step(stub, "acc_listed", 32, 1.0, start=True, end=True).tolist() == [[1.0] * 4]
    assert sorted(
        outputs(stub.ModelInfer(request("accumulate", 33, np.ones((1, 4), np.float32), start=True, end=True)))
    ) == ["out"]


def test_control_inputs_are_filled_with_the_configured_values(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x = np.zeros((1, 1), np.float32)

    def controls(**kw: bool) -> tuple[object, ...]:
        out = outputs(stub.ModelInfer(request("controls", 2**40 + 7, x, **kw)))
        return tuple(out[f"{n}_out"].item() for n in ("start", "end", "ready", "corrid"))

    assert controls(start=True) == (1, 0.5, True, 2**40 + 7)
    assert controls() == (0, 0.5, True, 2**40 + 7)
    assert controls(end=True) == (0, 2.5, True, 2**40 + 7)
    err = error_of(stub, request("controls", "text-id", x, start=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "CONTROL_SEQUENCE_CORRID" in err.details()


def test_live_sequences_are_bounded_by_count_and_state_bytes(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for sid in range(100, 100 + MAX_SEQUENCES):
        step(stub, "acc_limit", sid, 1.0, start=True)
    err = error_of(stub, request("acc_limit", 999, np.ones((1, 4), np.float32), start=True))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"max_sequences={MAX_SEQUENCES}" in err.details()
    step(stub, "acc_limit", 100, 1.0, end=True)  # one ends: a new one fits
    assert step(stub, "acc_limit", 999, 1.0, start=True, end=True).tolist() == [[1, 1, 1, 1]]
    big = np.ones((1, BIG_WIDTH), np.float32)
    for sid in (1, 2, 3):
        stub.ModelInfer(request("acc_big", sid, big, start=True))
    err = error_of(stub, request("acc_big", 4, big, start=True))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"max_sequence_state_bytes={MAX_STATE_BYTES}" in err.details()


def test_live_sequences_and_their_state_bytes_are_on_metrics(
    stub: pb_grpc.GRPCInferenceServiceStub, seq_server: ServerProcess
) -> None:
    """README "Metrics": these were "not there yet" until session 68."""

    def shown() -> tuple[float, float]:
        url = f"http://127.0.0.1:{seq_server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as page:
            text = page.read().decode()
        found = {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.labels == {"model": "acc_counted", "version": "1"}
        }
        return found["sluiceway_sequences_live"], found["sluiceway_sequence_state_bytes"]

    state = BIG_WIDTH * 4  # one sequence's FP32 state
    big = np.ones((1, BIG_WIDTH), np.float32)
    assert shown() == (0, 0)
    for sid in (1, 2):
        stub.ModelInfer(request("acc_counted", sid, big, start=True))
    assert shown() == (2, 2 * state)  # counted at admission, before the answer
    # An ended sequence is released once its answer is out, which may be just after the client has it.
    stub.ModelInfer(request("acc_counted", 1, big, end=True))
    wait_until(lambda: shown() == (1, state), "sequence 1 released")
    stub.ModelInfer(request("acc_counted", 2, big, end=True))
    wait_until(lambda: shown() == (0, 0), "sequence 2 released")
    # A version without sequence batching has no such series.
    assert (
        'sluiceway_sequences_live{model="plain"'
        not in urllib.request.urlopen(f"http://127.0.0.1:{seq_server.metrics_port}/metrics", timeout=30)
        .read()
        .decode()
    )


def test_idle_sequences_are_released_after_max_sequence_idle(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    for sid in range(200, 200 + MAX_SEQUENCES):
        step(stub, "acc_idle", sid, 1.0, start=True)

    def a_new_one_starts() -> bool:
        # Full until the idle ones are released; a refused start changes nothing on the server.
        try:
            step(stub, "acc_idle", 300, 1.0, start=True, end=True)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            return False
        return True

    wait_until(a_new_one_starts, "idle sequences to be released", timeout_s=30)
    err = error_of(stub, request("acc_idle", 200, np.ones((1, 4), np.float32)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_sequence_idle_microseconds" in err.details()


@pytest.mark.parametrize("how", ["half-close", "cancel"])
def test_a_streams_sequences_are_released_when_it_ends(
    stub: pb_grpc.GRPCInferenceServiceStub, how: str
) -> None:
    sid = 500 if how == "half-close" else 501
    requests: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def sending() -> Iterator[pb.ModelInferRequest]:
        while (req := requests.get()) is not None:
            yield req

    answers = stub.ModelStreamInfer(sending())
    requests.put(request("accumulate", sid, np.ones((1, 4), np.float32), start=True))
    first = next(answers)
    assert not first.error_message and outputs(first.infer_response)["out"][0, 0] == 1
    if how == "half-close":
        requests.put(None)  # the stream ends once its answers are out
        assert list(answers) == []
    else:
        answers.cancel()  # the client goes away mid-stream
        requests.put(None)  # (ends our request iterator's thread)

    def released() -> bool:
        try:
            step(stub, "accumulate", sid, 0.0)  # adds nothing while the stream is still closing
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            return "stream" in err.details()
        return False

    wait_until(released, "the stream's sequence to be released", timeout_s=30)


def test_a_stream_releases_only_the_sequences_it_started(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    # Another client's stream naming a sequence (even in a request refused for its shape) released
    # it when that stream ended: the sequence's owner lost its state.
    assert step(stub, "accumulate", 520, 1.0, start=True)[0, 0] == 1  # started by a unary call
    sent = [
        request("accumulate", 520, np.ones((1, 5), np.float32)),  # refused: the wrong shape
        request("accumulate", 520, np.ones((1, 4), np.float32)),  # continued: 2
        request("accumulate", 521, np.ones((1, 4), np.float32), start=True),  # its own
    ]
    answers = list(stub.ModelStreamInfer(iter(sent)))  # half-closed: the stream ends
    assert [bool(a.error_message) for a in answers].count(True) == 1

    def own_released() -> bool:  # once the stream's own sequence is gone, its close has run
        try:
            step(stub, "accumulate", 521, 0.0)
        except grpc.RpcError as err:
            return "stream that started it ended" in err.details()
        return False

    wait_until(own_released, "the stream's own sequence to be released", timeout_s=30)
    assert step(stub, "accumulate", 520, 1.0)[0, 0] == 3  # the unary caller's sequence goes on


def test_a_streams_sequences_are_released_on_whichever_version_a_split_sent_them_to(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # The stream's end released them on the newest version only: those routed to version 1 lived
    # on, and a continuation without a start was computed on the old state.
    sids = range(600, 606)  # within --max-sequences per version, whatever the split
    starts = [
        request("acc_split", sid, np.ones((1, 4), np.float32), start=True, rid=str(sid)) for sid in sids
    ]
    answers = list(stub.ModelStreamInfer(iter(starts)))  # half-closed: the stream ends
    assert [a.error_message for a in answers] == [""] * len(sids)
    versions = {a.infer_response.model_version for a in answers}
    assert versions == {"1", "2"}, f"the split sent every sequence to one version: {versions}"

    def released(sid: int) -> bool:
        try:
            step(stub, "acc_split", sid, 0.0)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
            return "stream that started it ended" in err.details()
        return False

    for sid in sids:
        wait_until(lambda sid=sid: released(sid), f"sequence {sid} to be released", timeout_s=30)


def test_sequence_parameters_are_refused_where_they_do_not_apply(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    plain = request("plain", 5, np.ones((1, 4), np.float32), start=True)
    plain.inputs.add(name="acc", datatype="FP32", shape=[1, 4])
    plain.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    err = error_of(stub, plain)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'sequence_id'" in err.details() and "no sequence_batching" in err.details()
    flag_only = request("accumulate", None, np.ones((1, 4), np.float32))
    flag_only.parameters["sequence_start"].bool_param = True
    err = error_of(stub, flag_only)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'sequence_start'" in err.details()


def test_an_ensemble_passes_the_sequence_to_its_sequence_step(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    # double_then_acc: x -> double -> accumulate; the accumulator's state is the sequence's.
    assert step(stub, "double_then_acc", 71, 1.0, start=True).tolist() == [[2, 2, 2, 2]]
    assert step(stub, "double_then_acc", 72, 5.0, start=True).tolist() == [[10, 10, 10, 10]]
    assert step(stub, "double_then_acc", 71, 3.0, end=True).tolist() == [[8, 8, 8, 8]]
    err = error_of(stub, request("double_then_acc", None, np.ones((1, 4), np.float32)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "step 2 (model 'accumulate')" in err.details()
    assert "must specify a non-zero or non-empty correlation ID" in err.details()
    assert step(stub, "double_then_acc", 72, 1.0, end=True).tolist() == [[12, 12, 12, 12]]


def test_a_sequence_a_stream_started_through_an_ensemble_is_released_when_it_ends(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # The ensemble ran its sequence step with no owner, and a stream's end releases only the
    # sequences of the model it named: the step's stayed live to its idle timeout (a tester).
    sent = [request("double_then_acc", 530, np.ones((1, 4), np.float32), start=True)]
    answers = list(stub.ModelStreamInfer(iter(sent)))  # half-closed: the stream ends
    assert [a.error_message for a in answers] == [""]

    def released() -> bool:
        try:
            step(stub, "double_then_acc", 530, 0.0)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
            return "stream that started it ended" in err.details()
        return False

    wait_until(released, "the ensemble's sequence step to release the stream's sequence", timeout_s=30)
    assert step(stub, "double_then_acc", 531, 1.0, start=True)[0, 0] == 2  # a unary start: no owner
    list(stub.ModelStreamInfer(iter([request("double_then_acc", 531, np.ones((1, 4), np.float32))])))
    assert step(stub, "double_then_acc", 531, 1.0, end=True)[0, 0] == 6  # a stream that only continued


def test_latest_frame_wins_on_a_sequence_model_is_refused_naming_it(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # Every frame was computed and nothing said so; a sequence's frames carry its state.
    wins = request("accumulate", 700, np.ones((1, 4), np.float32), start=True, end=True, rid="w")
    wins.parameters["latest_frame_wins"].bool_param = True
    plain = request("accumulate", 701, np.ones((1, 4), np.float32), start=True, end=True, rid="p")
    answers = list(stub.ModelStreamInfer(iter([wins, plain])))
    by_id = {a.infer_response.id: a for a in answers}
    assert by_id["w"].error_message == (
        "INVALID_ARGUMENT: parameter 'latest_frame_wins' true is not supported for a sequence model"
    )
    assert by_id["p"].error_message == ""


def test_a_sequence_a_reload_ended_is_told_so_by_the_new_version(tmp_path: Path) -> None:
    """The new version's batcher knew nothing of the old one's sequences: a continuation after an
    unload and load (or a reload) was told "never started"."""
    write_model(
        tmp_path / "repo", "acc", sm.accumulator_model(tmp_path / "acc.onnx"), sm.accumulator_config()
    )
    args = (
        "--model-repository",
        str(tmp_path / "repo"),
        "--model-control-mode",
        "explicit",
        "--load-model",
        "acc",
    )
    server = ServerProcess(*args)
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        step(stub, "acc", 7, 1.0, start=True)
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="acc"), timeout=60)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="acc"), timeout=60)
        err = error_of(stub, request("acc", 7, np.ones((1, 4), np.float32)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the model version serving it was unloaded or replaced" in (err.details() or ""), err.details()
        step(stub, "acc", 8, 1.0, start=True)
        newer(tmp_path / "repo" / "acc" / "1" / "model.onnx")  # unchanged files would be kept
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="acc"), timeout=60)  # a reload
        err = error_of(stub, request("acc", 8, np.ones((1, 4), np.float32)))
        assert "the model version serving it was unloaded or replaced" in (err.details() or ""), err.details()
