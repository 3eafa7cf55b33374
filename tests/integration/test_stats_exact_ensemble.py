"""An ensemble's own ModelStatistics, as Triton's: its compute times are the sums of its steps'
(EnsembleContext::FinishEnsemble reports its composing models' compute_input, compute_infer and
compute_output), a nested ensemble's included in its parent's. The whole run had been reported
as compute_infer, the steps' queue waits and the hops between steps in it (the `linear` ensemble:
986 us a request beside its steps' 93 + 77 us).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.support.ensemble_repo import ensemble_repository
from tests.support.server_process import ServerProcess

FIELDS = ("compute_input", "compute_infer", "compute_output")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    files = tmp_path_factory.mktemp("ensemble-files")
    repo = ensemble_repository(tmp_path_factory.mktemp("ensemble-stats") / "repo", files)
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as running:
        yield running


def _infer(client: triton.InferenceServerClient, model: str, rows: int) -> None:
    tensor = triton.InferInput("IN", [rows, 4], "FP32")
    tensor.set_data_from_numpy(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4))
    client.infer(model, [tensor])


def _ns(client: triton.InferenceServerClient, model: str) -> dict[str, int]:
    (stats,) = client.get_inference_statistics(model, "1").model_stats
    return {name: getattr(stats.inference_stats, name).ns for name in FIELDS}


def test_an_ensemble_s_compute_times_are_its_steps(server: ServerProcess) -> None:
    with triton.InferenceServerClient(server.address) as client:
        for _ in range(5):
            _infer(client, "linear", 2)  # add_one, then double
        (linear,) = client.get_inference_statistics("linear", "1").model_stats
        figures = linear.inference_stats
        assert (figures.success.count, figures.queue.count, figures.compute_infer.count) == (5, 5, 5)
        assert (linear.inference_count, linear.execution_count) == (10, 5)
        assert {b.batch_size: b.compute_infer.count for b in linear.batch_stats} == {2: 5}
        ensemble, add_one, double = _ns(client, "linear"), _ns(client, "add_one"), _ns(client, "double")
        assert ensemble == {name: add_one[name] + double[name] for name in FIELDS}
        assert ensemble["compute_infer"] > 0
        assert sum(b.compute_infer.ns for b in linear.batch_stats) == ensemble["compute_infer"]

        for _ in range(4):
            _infer(client, "a_nested", 1)  # b_nested (itself an ensemble), then double
        outer, inner, double_after = _ns(client, "a_nested"), _ns(client, "b_nested"), _ns(client, "double")
        assert outer == {name: inner[name] + double_after[name] - double[name] for name in FIELDS}
        assert inner["compute_infer"] > 0 and double_after["compute_infer"] > double["compute_infer"]
