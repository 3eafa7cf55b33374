"""Models whose outputs' first dim is not the batch, though every first dim is variable. Column
sums (ReduceSum over axis 0, x [N, M] -> y [M]): batching it handed each of three coalesced
requests one element of the batch's column sums, OK; now completion leaves it unbatched (each
request answered whole) and a config that says max_batch_size > 0 fails its load, naming why.
NonZero's rows (idx [nnz, 2]), sized by the data's values: batched, a run whose indices held as
many rows as the run was split by rows, and two of three coalesced requests got another's indices,
OK (as in Triton); now it is treated like column sums. Declared the batch in its graph (idx
['N', 2]), it was batched as the graph says until session 58; its first column is each non-zero's
row in the batch, a position there, and the row-mixing reading now leaves it unbatched (each request
answered its own indices) and refuses a config that batches it. Batched all the same
(`rows_independent`), a run whose output does not hold its rows answers UNIMPLEMENTED naming the
output, as Triton's UNSUPPORTED (it was INTERNAL, named only in the log)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg

from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_checks import BATCH_OF_FOUR_ROWS, assert_each_alone, ours_together, triton_together
from tests.support.zoo_models import column_sums, loop_until, nonzero_rows, range_to_overridable


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, Path]]]:
    repo = tmp_path_factory.mktemp("zoo-dims")
    model = column_sums(tmp_path_factory.mktemp("zoo-dims-files") / "column_sums.onnx")
    write_model(repo, "sums_batched", model, BATCH_OF_FOUR_ROWS)
    write_model(repo, "sums", model, None)
    files = tmp_path_factory.mktemp("zoo-dims-files")
    write_model(repo, "nonzero_batched", nonzero_rows(files / "nonzero_rows.onnx"), BATCH_OF_FOUR_ROWS)
    write_model(repo, "nonzero", nonzero_rows(files / "nonzero_rows.onnx"), None)
    declared = nonzero_rows(files / "nonzero_declared.onnx", first="N")
    write_model(repo, "declared_batched", declared, BATCH_OF_FOUR_ROWS)
    write_model(repo, "declared_forced", declared, BATCH_OF_FOUR_ROWS + ROWS_INDEPENDENT)
    write_model(repo, "declared", declared, None)
    until = loop_until(files / "until.onnx")
    write_model(repo, "until_batched", until, BATCH_OF_FOUR_ROWS)
    write_model(repo, "until", until, None)
    ranged = range_to_overridable(files / "ranged.onnx")
    write_model(repo, "ranged_batched", ranged, BATCH_OF_FOUR_ROWS)
    write_model(repo, "ranged_fed_batched", ranged, BATCH_OF_FOUR_ROWS + FED)
    loose = column_sums(files / "loose_sums.onnx", width=3, declared=[None])  # an exporter's [?]
    write_model(repo, "loose_batched", loose, BATCH_OF_FOUR_ROWS)
    write_model(repo, "loose", loose, None)
    with ServerProcess("--model-repository", str(repo)) as server:
        yield (
            server,
            {
                "sums": model,
                "nonzero": files / "nonzero_rows.onnx",
                "declared": declared,
                "until": until,
                "loose": loose,
            },
        )


ROWS_INDEPENDENT = 'parameters { key: "rows_independent" value { string_value: "true" } }\n'
# The overridable initializer `n` listed as an input: clients may send it.
FED = 'input [ { name: "n" data_type: TYPE_INT64 dims: [ 1 ] optional: true } ]\n'


def _requests() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"x": rng.integers(-9, 9, (rows, 3)).astype(np.float32)} for rows in (1, 2, 1)]


def _index(server: ServerProcess) -> dict[str, tg.service_pb2.RepositoryIndexResponse.ModelIndex]:
    client = tg.InferenceServerClient(server.address)
    try:
        return {m.name: m for m in client.get_model_repository_index().models}
    finally:
        client.close()


def test_batching_said_in_the_config_fails_the_load_naming_the_output(
    zoo: tuple[ServerProcess, dict[str, Path]],
) -> None:
    index = _index(zoo[0])
    assert index["sums_batched"].state == "UNAVAILABLE"
    reason = index["sums_batched"].reason
    assert "output 'y'" in reason and "'M' is dim 1 of 'x'" in reason, reason
    assert "not the batch dimension" in reason and "max_batch_size: 0" in reason, reason


def test_batching_a_data_sized_output_fails_the_load_naming_the_output_and_the_op(
    zoo: tuple[ServerProcess, dict[str, Path]],
) -> None:
    index = _index(zoo[0])
    assert index["nonzero_batched"].state == "UNAVAILABLE"
    reason = index["nonzero_batched"].reason
    assert (
        "output 'idx'" in reason
        and "sized by the values of the data (the NonZero node making 'nz')" in reason
    )
    assert "max_batch_size: 0" in reason and "name it in the graph as the inputs' first dim" in reason, reason
    assert index["nonzero"].state == index["declared"].state == index["declared_forced"].state == "READY"
    # Declared the batch's: its values are the rows' positions in the batch (the row-mixing reading).
    assert index["declared_batched"].state == "UNAVAILABLE"
    reason = index["declared_batched"].reason
    assert (
        "ONNX output 'idx' mixes the rows of a batch" in reason
        and "by the NonZero node making 'nz'" in reason
    ), reason


def test_a_loops_condition_or_a_sent_initializer_sizing_an_output_fails_a_batched_load(
    zoo: tuple[ServerProcess, dict[str, Path]],
) -> None:
    # Both had loaded batched: a run whose output held as many rows as the run was split by rows.
    index = _index(zoo[0])
    reasons = {name: index[name].reason for name in ("until_batched", "ranged_fed_batched")}
    assert {name: index[name].state for name in reasons} == dict.fromkeys(reasons, "UNAVAILABLE")
    assert (
        "output 'y'" in reasons["until_batched"]
        and "(Loop node 'until', whose body's condition 'cond_out' is the data's)" in reasons["until_batched"]
    ), reasons
    assert "(Range node 'count', from its input 'limit')" in reasons["ranged_fed_batched"], reasons
    # Not sent by clients, the initializer is the model's constant: nothing for the load to refuse.
    assert index["ranged_batched"].state == index["until"].state == "READY"


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_a_loop_stopped_by_the_data_completed_unbatched_answers_each_request_whole(
    zoo: tuple[ServerProcess, dict[str, Path]], send: str
) -> None:
    server, files = zoo
    requests = [{"n": np.array([[rows + 1]] * rows, np.int64)} for rows in (1, 2, 1)]
    if send == "tritonclient":
        answers = triton_together(server.address, "until", requests, ["y"])
    else:
        answers = ours_together(server.address, "until", requests)
    assert_each_alone(files["until"], requests, answers, "until")


# One nonzero a row: a run of as many requests' rows holds as many indices, which splitting by rows
# had handed out as each request's own (request 2 got rows 1-2 of the run's indices, not its own).
ONE_A_ROW = [{"x": np.tile(np.eye(4, dtype=np.float32)[i], (rows, 1))} for i, rows in enumerate((1, 2, 1))]


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_completed_without_a_config_each_request_gets_its_own_indices(
    zoo: tuple[ServerProcess, dict[str, Path]], send: str
) -> None:
    server, files = zoo
    if send == "tritonclient":
        answers = triton_together(server.address, "nonzero", ONE_A_ROW, ["idx"])
    else:
        answers = ours_together(server.address, "nonzero", ONE_A_ROW)
    assert_each_alone(files["nonzero"], ONE_A_ROW, answers, "nonzero")


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_completed_without_a_config_each_request_gets_its_own_column_sums(
    zoo: tuple[ServerProcess, dict[str, Path]], send: str
) -> None:
    server, files = zoo
    requests = _requests()
    if send == "tritonclient":
        answers = triton_together(server.address, "sums", requests, ["y"])
    else:
        answers = ours_together(server.address, "sums", requests)
    assert_each_alone(files["sums"], requests, answers, "sums")


# Two nonzeros a row: 8 rows of indices for a run of 4 rows, 2 for a request of 1 row alone.
NONZERO_REQUESTS = [{"x": np.tile(np.float32([[1, 0, 2, 0]]), (rows, 1))} for rows in (1, 2, 1)]


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_declared_the_batchs_and_completed_each_request_gets_its_own_indices(
    zoo: tuple[ServerProcess, dict[str, Path]], send: str
) -> None:
    server, files = zoo
    if send == "tritonclient":
        answers = triton_together(server.address, "declared", NONZERO_REQUESTS, ["idx"])
    else:
        answers = ours_together(server.address, "declared", NONZERO_REQUESTS)
    assert_each_alone(files["declared"], NONZERO_REQUESTS, answers, "declared")


@pytest.mark.parametrize(("model", "requests"), [("declared_forced", NONZERO_REQUESTS)])
@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_an_output_without_the_runs_rows_answers_unimplemented_naming_it(
    zoo: tuple[ServerProcess, dict[str, Path]], model: str, requests: list[dict[str, np.ndarray]], send: str
) -> None:
    server, _ = zoo
    if send == "tritonclient":
        answers = triton_together(server.address, model, requests, ["idx"])
    else:
        answers = ours_together(server.address, model, requests)
    rows = sum(len(r["x"]) for r in requests)
    for answer in answers:
        assert isinstance(answer, Exception), answer
        text = str(answer)
        assert (
            "UNIMPLEMENTED" in text and f"'idx' with shape ({2 * rows}, 2) for a batch of {rows} rows" in text
        )
    # The server serves on: column sums, completed unbatched, still answer.
    good = _requests()
    assert_each_alone(zoo[1]["sums"], good, ours_together(server.address, "sums", good), "sums")


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_column_sums_declared_loosely_complete_unbatched_and_answer_each_request_whole(
    zoo: tuple[ServerProcess, dict[str, Path]], send: str
) -> None:
    # y declared [?]: onnxruntime reports [3], and so does completion now. Completed batched, three
    # coalesced one-row requests had each got the batch's sums, OK (a tester, session 49).
    server, files = zoo
    index = _index(server)
    assert index["loose_batched"].state == "UNAVAILABLE"
    assert (
        "output 'y' has shape [3] with no variable first (batch) dimension" in index["loose_batched"].reason
    )
    requests = [{"x": np.float32([[1, 2, 3]]) * 10**k} for k in range(3)]
    if send == "tritonclient":
        answers = triton_together(server.address, "loose", requests, ["y"])
    else:
        answers = ours_together(server.address, "loose", requests)
    assert_each_alone(files["loose"], requests, answers, "loose")
