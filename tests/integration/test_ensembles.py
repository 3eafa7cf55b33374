"""Ensembles over a real server (README "Ensembles"): linear and DAG results, requested outputs, the
deadline across steps, a failing step named, ensembles refused at load naming the step, batching
of steps across ensemble requests, and the ensemble's own statistics."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import NO_RETRY, AsyncClient, Client, InternalError, Unavailable
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.ensemble_repo import ENSEMBLES, ensemble_repository
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = ensemble_repository(tmp_path_factory.mktemp("ens-repo"), tmp_path_factory.mktemp("ens-files"))
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as process:
        yield process


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.address, retry=NO_RETRY) as c:
        yield c


def _x(rows: int = 2, dims: int = 4) -> np.ndarray:
    return np.arange(rows * dims, dtype=np.float32).reshape(rows, dims)


def _counts(client: Client, model: str) -> tuple[int, int, int, int]:
    """(success, fail, inference_count, execution_count) of the model's version 1."""
    stats = client.model_statistics(model).model_stats[0]
    s = stats.inference_stats
    return s.success.count, s.fail.count, stats.inference_count, stats.execution_count


def test_linear_ensemble_chains_its_steps(client: Client) -> None:
    out = client.infer("linear", {"IN": _x()})
    np.testing.assert_allclose(out["OUT"], 2 * (_x() + 1))
    assert set(out) == {"OUT"}


def test_dag_ensemble_runs_branches_and_combines(client: Client) -> None:
    out = client.infer("dag", {"IN": _x(3)})
    np.testing.assert_allclose(out["OUT"], 3 * _x(3) + 1)
    np.testing.assert_allclose(out["A"], _x(3) + 1)
    only = client.infer("dag", {"IN": _x(3)}, outputs=["A"])
    assert set(only) == {"A"}


def test_classification_of_an_ensemble_output_uses_the_labels_of_the_step_making_it(
    server: ServerProcess,
) -> None:
    # Triton passes the step model's label provider on: the ensemble has no label_filename.
    import tritonclient.grpc as tc

    with tc.InferenceServerClient(server.address) as triton:
        x = tc.InferInput("IN", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[3, 1, 4, 2]], np.float32))
        # labeled_then_pass: an identity step after the labelled one passes its labels on.
        for model in ("labeled", "labeled_then_pass"):
            top2 = [tc.InferRequestedOutput("OUT", class_count=2)]
            result = triton.infer(model, [x], outputs=top2)
            top = [item.decode() for item in result.as_numpy("OUT").reshape(-1)]
            assert top == ["8.000000:2:two", "6.000000:0:zero"], model


def test_nested_ensembles_load_after_the_ensembles_they_use_and_run(
    client: Client, server: ServerProcess
) -> None:
    # a_nested -> b_nested -> labeled -> double_labeled, loaded in that order's reverse whatever
    # the names' order; each level's statistics count the request.
    out = client.infer("a_nested", {"IN": _x(1)})
    np.testing.assert_allclose(out["OUT"], 4 * _x(1))
    assert _counts(client, "b_nested")[0] >= 1 and _counts(client, "labeled")[0] >= 1
    import tritonclient.grpc as tc

    with tc.InferenceServerClient(server.address) as triton:
        x = tc.InferInput("IN", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[3, 1, 4, 2]], np.float32))
        result = triton.infer("b_nested", [x], outputs=[tc.InferRequestedOutput("OUT", class_count=1)])
    assert [item.decode() for item in result.as_numpy("OUT").reshape(-1)] == ["8.000000:2:two"]


def test_ensemble_reshape_gives_the_steps_the_reshaped_tensor(client: Client) -> None:
    # pass22 takes [2, 2] rows only: the [4] rows reach it reshaped and come back as [4].
    out = client.infer("reshaped", {"IN": _x(3)})
    np.testing.assert_array_equal(out["OUT"], _x(3))
    assert _counts(client, "pass22")[2] >= 3  # rows counted without dynamic batching too


def test_metadata_and_config_describe_the_ensemble(client: Client) -> None:
    meta = client.model_metadata("dag")
    assert meta.platform == "ensemble"
    assert [t.name for t in meta.inputs] == ["IN"] and [t.name for t in meta.outputs] == ["OUT", "A"]
    assert [s.model_name for s in client.model_config("dag").ensemble_scheduling.step] == [
        "add",
        "add_one",
        "double",
    ]


def test_step_models_and_the_ensemble_count_the_request(client: Client) -> None:
    before = {m: _counts(client, m) for m in ("linear", "add_one", "double")}
    client.infer("linear", {"IN": _x()})
    after = {m: _counts(client, m) for m in ("linear", "add_one", "double")}
    for model in before:
        assert after[model][0] == before[model][0] + 1, model  # one more success each
        assert after[model][1] == before[model][1], model
        # One more execution of the request's 2 rows each: the ensemble too, as Triton counts it.
        assert after[model][2:] == (before[model][2] + 2, before[model][3] + 1), model


def test_deadline_applies_across_steps(server: ServerProcess, client: Client) -> None:
    """The request's timeout (50 ms) is shorter than the slow first step (0.5 s): DEADLINE_EXCEEDED naming
    step 1, and step 2 never reaches its model."""
    before = _counts(client, "add_one")
    request = pb.ModelInferRequest(model_name="slow_then_add")
    request.inputs.add(name="IN", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.ones((1, 1), np.float32).tobytes())
    request.parameters["timeout"].int64_param = 50_000  # microseconds, as Triton
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value.details()
    details = str(info.value.details())
    assert details.startswith("in ensemble 'slow_then_add', ") and details.endswith("; step 1 (model 'slow')")
    assert _counts(client, "add_one")[:2] == before[:2]
    assert _counts(client, "slow_then_add")[1] >= 1  # the ensemble counts its failure


def test_failing_step_is_named(client: Client) -> None:
    with pytest.raises(InternalError) as info:
        client.infer("failing", {"IN": _x()})
    assert "in ensemble 'failing', step 2 (model 'faulty') failed" in str(info.value)
    assert _counts(client, "failing")[1] >= 1


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("orphan", "ensemble 'orphan' step 1 (model 'absent'): "),  # then the step's own error
        ("bad_map", "ensemble 'bad_map' step 2 (model 'double'): input_map key 'z' is not an input"),
    ],
)
def test_ensemble_refused_at_load_names_the_step(client: Client, model: str, reason: str) -> None:
    index = {m.name: m for m in client.repository_index().models}
    assert index[model].state == "UNAVAILABLE"
    assert reason in index[model].reason, index[model].reason
    with pytest.raises(Unavailable):
        client.infer(model, {"IN": _x()})


def test_steps_of_concurrent_requests_batch_together(server: ServerProcess, client: Client) -> None:
    """double_wait waits (2 s) to fill a batch of 4: four ensemble requests share its runs."""

    async def four() -> list[dict[str, np.ndarray]]:
        async with AsyncClient(server.address, retry=NO_RETRY) as aclient:
            return await asyncio.gather(*(aclient.infer("batched", {"IN": _x(1)}) for _ in range(4)))

    before = _counts(client, "double_wait")
    for out in asyncio.run(four()):
        np.testing.assert_allclose(out["OUT"], 2 * _x(1))
    after = _counts(client, "double_wait")
    inferences, executions = after[2] - before[2], after[3] - before[3]
    assert inferences == 4 and executions < inferences, (inferences, executions)
    assert _counts(client, "batched")[0] >= 4


def test_ensemble_over_a_stream(server: ServerProcess) -> None:
    async def three() -> list[np.ndarray]:
        aclient = AsyncClient(server.address, retry=NO_RETRY)
        async with aclient, aclient.stream("dag", outputs=["OUT"]) as stream:
            for rows in (1, 2, 3):
                await stream.send({"IN": _x(rows)})
            return [(await stream.recv())["OUT"] for _ in range(3)]

    for rows, out in zip((1, 2, 3), asyncio.run(three()), strict=True):
        np.testing.assert_allclose(out, 3 * _x(rows) + 1)


def test_an_ensemble_waiting_for_its_step_models_loads_once_they_load(tmp_path: Path) -> None:
    # Explicit mode: `--load-model` of an ensemble loads its step models too, as Triton's does (it
    # had waited, unavailable, for each to be loaded by hand). An ensemble whose step is unloaded
    # waits and loads again once it loads, a nesting ensemble after the one it nests; an ensemble
    # unloaded on purpose stays unloaded.
    import tritonclient.grpc as tc

    (tmp_path / "repo").mkdir()
    (tmp_path / "files").mkdir()
    repo = ensemble_repository(tmp_path / "repo", tmp_path / "files")
    args = ["--model-control-mode", "explicit", "--load-model", "linear", "--load-model", "b_nested"]
    with (
        ServerProcess("--model-repository", str(repo), *args) as server,
        tc.InferenceServerClient(server.address) as triton,
    ):
        for model in ("linear", "add_one", "double", "b_nested", "labeled", "double_labeled"):
            assert triton.is_model_ready(model), model
        assert not triton.is_model_ready("dag")  # not named, nor a step of one named
        triton.unload_model("double")
        assert not triton.is_model_ready("linear")  # its step `double` is gone
        triton.load_model("double")
        assert triton.is_model_ready("linear")
        x = tc.InferInput("IN", [1, 4], "FP32")
        x.set_data_from_numpy(_x(1))
        np.testing.assert_allclose(triton.infer("linear", [x]).as_numpy("OUT"), 2 * (_x(1) + 1))
        triton.unload_model("labeled")
        assert not triton.is_model_ready("b_nested")
        triton.unload_model("double_labeled")
        triton.load_model("double_labeled")
        assert not triton.is_model_ready("labeled")  # unloaded on purpose: not brought back
        triton.load_model("labeled")
        assert triton.is_model_ready("labeled") and triton.is_model_ready("b_nested")


def explicit_server(tmp_path: Path) -> ServerProcess:
    """The ensemble repository in explicit mode, nothing loaded (use it as a context manager)."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "files").mkdir()
    repo = ensemble_repository(tmp_path / "repo", tmp_path / "files")
    args = ["--model-control-mode", "explicit", "--allow-fault-injection"]
    return ServerProcess("--model-repository", str(repo), *args)


def test_loading_an_ensemble_loads_its_step_models_nested_ones_too(tmp_path: Path) -> None:
    """Triton's explicit mode loads an ensemble's composing models with it; here the load failed
    "model 'pre' is not ready" until every step had been loaded by hand."""
    import tritonclient.grpc as tc

    with explicit_server(tmp_path) as server, tc.InferenceServerClient(server.address) as triton:
        triton.load_model("a_nested")  # a_nested -> b_nested -> labeled -> double_labeled; double
        for model in ("a_nested", "b_nested", "labeled", "double_labeled", "double"):
            assert triton.is_model_ready(model), model
        assert not triton.is_model_ready("add_one")  # not a step of it
        x = tc.InferInput("IN", [1, 4], "FP32")
        x.set_data_from_numpy(_x(1))
        np.testing.assert_allclose(triton.infer("a_nested", [x]).as_numpy("OUT"), 4 * _x(1))


def cached_linear_repository(tmp_path: Path) -> Path:
    """The ensemble repository with `linear_cached`: `linear` with its response cache on."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "files").mkdir()
    repo = ensemble_repository(tmp_path / "repo", tmp_path / "files")
    (repo / "linear_cached" / "1").mkdir(parents=True)
    (repo / "linear_cached" / "config.pbtxt").write_text(
        ENSEMBLES["linear"] + "response_cache { enable: true }\n"
    )
    return repo


def test_an_ensemble_with_a_response_cache_answers_a_repeat_from_it(tmp_path: Path) -> None:
    """`response_cache { enable: true }` on an ensemble was accepted and never used (Triton caches
    an ensemble's answers as it does a model's)."""
    repo = cached_linear_repository(tmp_path)
    args = ("--model-repository", str(repo), "--allow-fault-injection", "--response-cache-bytes", "1000000")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        answers = [client.infer("linear_cached", {"IN": _x(1)})["OUT"] for _ in range(3)]
        stats = client.model_statistics("linear_cached").model_stats[0].inference_stats
        steps = _counts(client, "add_one")
    for out in answers:
        np.testing.assert_allclose(out, 2 * (_x(1) + 1))
    assert (stats.cache_hit.count, stats.cache_miss.count, stats.success.count) == (2, 1, 3)
    assert steps[0] == 1  # the step ran once: the repeats never reached it


def test_an_ensembles_cached_answers_go_when_a_step_model_below_it_is_reloaded(tmp_path: Path) -> None:
    """An ensemble's cached answer was computed by its steps' versions: after a step's reload with
    new weights it kept answering the old outputs (a tester: 2.0 from the cached ensemble, 3.0 from
    the step and an uncached twin). Nested ensembles above the step lose theirs too."""
    repo = cached_linear_repository(tmp_path)
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "*")
    args += ("--response-cache-bytes", "1000000")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        before = client.infer("linear_cached", {"IN": _x(1)})["OUT"]
        np.testing.assert_allclose(client.infer("linear_cached", {"IN": _x(1)})["OUT"], before)  # a hit
        shutil.copyfile(repo / "double" / "1" / "model.onnx", tmp_path / "add_one.onnx")
        (repo / "add_one" / "1" / "model.onnx").unlink()  # add_one becomes a doubling, in place
        shutil.copyfile(tmp_path / "add_one.onnx", repo / "add_one" / "1" / "model.onnx")
        client.load_model("add_one")
        after = client.infer("linear_cached", {"IN": _x(1)})["OUT"]
        stats = client.model_statistics("linear_cached").model_stats[0].inference_stats
    np.testing.assert_allclose(before, 2 * (_x(1) + 1))
    np.testing.assert_allclose(after, 4 * _x(1))  # (2x) then doubled: the reloaded step's answer
    assert (stats.cache_hit.count, stats.cache_miss.count) == (1, 2)


def test_a_step_models_response_cache_is_used_inside_an_ensemble(tmp_path: Path) -> None:
    """Triton's steps use their models' caches; here a step's cache was never consulted."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "files").mkdir()
    repo = ensemble_repository(tmp_path / "repo", tmp_path / "files")
    config = repo / "add_one" / "config.pbtxt"
    config.write_text(config.read_text() + "response_cache { enable: true }\n")
    args = ("--model-repository", str(repo), "--allow-fault-injection", "--response-cache-bytes", "1000000")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        answers = [client.infer("linear", {"IN": _x(1)})["OUT"] for _ in range(3)]
        direct = client.infer("add_one", {"x": _x(1)})["y"]  # the same tensor as the step's
        step = client.model_statistics("add_one").model_stats[0]
    for out in answers:
        np.testing.assert_allclose(out, 2 * (_x(1) + 1))
    np.testing.assert_allclose(direct, _x(1) + 1)
    s = step.inference_stats
    assert (s.cache_hit.count, s.cache_miss.count, s.success.count) == (3, 1, 4)
    assert step.execution_count == 1  # computed once, for the first ensemble request


def test_unload_dependents_takes_an_ensembles_step_models_with_it(tmp_path: Path) -> None:
    """Triton's unload_dependents: the composing models go with the ensemble (here it was refused,
    even for a model with none), except those another loaded ensemble still uses."""
    import tritonclient.grpc as tc

    with explicit_server(tmp_path) as server, tc.InferenceServerClient(server.address) as triton:
        triton.load_model("a_nested")  # a_nested -> b_nested -> labeled -> double_labeled; double
        triton.load_model("linear")  # add_one, double: double is shared
        triton.unload_model("a_nested", unload_dependents=True)
        for model in ("a_nested", "b_nested", "labeled", "double_labeled"):
            assert not triton.is_model_ready(model), model
        assert triton.is_model_ready("double") and triton.is_model_ready("linear")  # linear uses it
