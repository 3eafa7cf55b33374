"""An ensemble whose files did not change is kept across a load that keeps unchanged versions
(an explicit RepositoryModelLoad, the poller), as any model's version is: its statistics and its
rollout state go on. It had been rebuilt at every load, its statistics started over (the
thirty-first session's review tester). Its config changed, it is rebuilt."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.ensemble_repo import STEP, _step, _unary, ensemble
from tests.support.repositories import newer, write_model
from tests.support.server_process import ServerProcess

X = np.arange(4, dtype=np.float32).reshape(1, 4)
LINEAR = ensemble(
    [_step("add_one", {"x": "IN"}, {"y": "PLUS"}), _step("double", {"x": "PLUS"}, {"y": "OUT"})]
)


def infer(stub: pb_grpc.GRPCInferenceServiceStub) -> np.ndarray:
    request = pb.ModelInferRequest(
        model_name="linear",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="IN", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[X.tobytes()],
    )
    answer = stub.ModelInfer(request, timeout=30)
    return np.frombuffer(answer.raw_output_contents[0], np.float32)


def successes(stub: pb_grpc.GRPCInferenceServiceStub) -> int:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="linear", version="1"), timeout=30)
    return int(stats.model_stats[0].inference_stats.success.count)


def test_an_unchanged_ensemble_keeps_its_statistics_over_an_explicit_load(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add_one", _unary(tmp_path / "add_one.onnx", "Add", 1.0), STEP)
    write_model(repo, "double", _unary(tmp_path / "double.onnx", "Mul", 2.0), STEP)
    (repo / "linear" / "1").mkdir(parents=True)
    (repo / "linear" / "config.pbtxt").write_text(LINEAR)
    loads = [arg for name in ("add_one", "double", "linear") for arg in ("--load-model", name)]
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit", *loads)
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(5):
            np.testing.assert_allclose(infer(stub), 2 * (X[0] + 1))
        assert successes(stub) == 5

        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="linear"), timeout=60)
        server.wait_for_output("model linear ready (versions 1; unchanged, kept serving: 1)")
        assert successes(stub) == 5  # the same version: it had been 0, rebuilt
        np.testing.assert_allclose(infer(stub), 2 * (X[0] + 1))
        assert successes(stub) == 6

        # Its config changed (the same steps, a smaller max_batch_size): a new version, new statistics.
        config = repo / "linear" / "config.pbtxt"
        config.write_text(LINEAR.replace("max_batch_size: 8", "max_batch_size: 4"))
        newer(config)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="linear"), timeout=60)
        server.wait_for_output("model linear ready (versions 1)\n")
        assert successes(stub) == 0
        np.testing.assert_allclose(infer(stub), 2 * (X[0] + 1))
