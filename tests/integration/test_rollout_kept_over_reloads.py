"""An operator's rollout changes outlive a reload that keeps serving the versions they name, and
its rollbacks of versions served as they were outlive any reload in one process (testers'
findings): a version directory added beside a rolled-back canary had put the canary back at its
config's weight (31 more failed requests), a config rewritten with the same text (a configmap or
git-sync refresh) had undone a Promote, and a redeployed stable version had brought a rolled-back
canary back. An explicit load keeps the versions whose files did not change, as the poller does
(and Triton's load since 24.08): it had reloaded them all."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_rollout import BASE, params, request, scale_model, served_by
from tests.support.server_process import ServerProcess

CONFIG = BASE + params(traffic_weights="1:80,2:20")
POLL = ("--model-control-mode", "poll", "--repository-poll-secs", "0.3")


def repository(root: Path, versions: tuple[int, ...] = (1, 2)) -> Path:
    for version in versions:
        (root / "m" / str(version)).mkdir(parents=True)
        scale_model(root / "m" / str(version) / "model.onnx", float(version))
    (root / "m" / "config.pbtxt").write_text(CONFIG)
    return root


def routed(stub: pb_grpc.GRPCInferenceServiceStub, tag: str) -> set[int]:
    return {served_by(stub.ModelInfer(request("m", f"{tag}{i}"), timeout=30)) for i in range(60)}


def status(admin: apb_grpc.AdminStub) -> apb.RolloutStatusResponse:
    return admin.RolloutStatus(apb.RolloutStatusRequest(model="m"), timeout=30)


def test_a_rollback_and_a_promote_outlive_reloads_that_keep_their_versions(tmp_path: Path) -> None:
    repo = repository(tmp_path / "repo")
    with (
        ServerProcess("--model-repository", str(repo), *POLL) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub, admin = pb_grpc.GRPCInferenceServiceStub(channel), apb_grpc.AdminStub(channel)
        assert routed(stub, "a") == {1, 2}
        admin.Rollback(apb.RollbackRequest(model="m", version=2, reason="drill"), timeout=30)
        assert routed(stub, "b") == {1}

        (repo / "m" / "3").mkdir()  # a version the weights do not name
        scale_model(repo / "m" / "3" / "model.onnx", 3.0)
        server.wait_for_output("model m ready (versions 3, 2, 1; unchanged, kept serving: 2, 1)")
        assert routed(stub, "c") == {1}  # version 2 had come back at weight 20
        answer = status(admin)
        roles = {v.version: (v.weight, v.role, v.rolled_back) for v in answer.versions}
        assert roles == {1: (80, "stable", False), 2: (0, "off", True), 3: (0, "off", False)}, roles
        assert answer.source == "rollback" and [e.version for e in answer.events] == [2]

        admin.Promote(apb.PromoteRequest(model="m", version=3), timeout=30)
        assert routed(stub, "d") == {3}
        # The same text written again (a new modification time): nothing reloads, the promote holds.
        config = repo / "m" / "config.pbtxt"
        config.write_text(CONFIG)
        later = os.stat(config).st_mtime_ns + 2_000_000_000
        os.utime(config, ns=(later, later))
        (repo / "m" / "4").mkdir()  # then a change the poller must act on: it acts on both
        scale_model(repo / "m" / "4" / "model.onnx", 4.0)
        server.wait_for_output("model m ready (versions 4, 3, 2, 1; unchanged, kept serving: 3, 2, 1)")
        assert routed(stub, "e") == {3}
        assert status(admin).source == "admin"

        # New files for a version the state names (the promoted one redeployed): the config's
        # weights apply again, but version 2, served as it was, stays rolled back (it had come
        # back at its config's weight, a tester).
        scale_model(repo / "m" / "3" / "model.onnx", 3.0)
        later += 2_000_000_000
        os.utime(repo / "m" / "3" / "model.onnx", ns=(later, later))
        server.wait_for_output("unchanged, kept serving: 4, 2, 1")
        assert routed(stub, "f") == {1}
        answer = status(admin)
        roles = {v.version: (v.weight, v.rolled_back) for v in answer.versions}
        assert answer.source == "rollback" and roles[1] == (80, False) and roles[2] == (0, True), roles
        assert [e.version for e in answer.events] == [2]


def test_an_explicit_load_keeps_the_versions_whose_files_did_not_change(tmp_path: Path) -> None:
    repo = repository(tmp_path / "repo")
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "m")
    with (
        ServerProcess(*args) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for i in range(5):
            served_by(stub.ModelInfer(request("m", f"v1-{i}", version="1"), timeout=30))

        def successes(version: str) -> int:
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="m", version=version), timeout=30)
            return int(stats.model_stats[0].inference_stats.success.count)

        assert successes("1") == 5
        scale_model(repo / "m" / "2" / "model.onnx", 7.0)  # new files for version 2 only
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="m"), timeout=60)
        server.wait_for_output("model m ready (versions 2, 1; unchanged, kept serving: 1)")
        assert successes("1") == 5  # the same version 1, its statistics with it
        answer = stub.ModelInfer(request("m", "v2", version="2"), timeout=30)
        assert answer.model_version == "2"
        y = np.frombuffer(answer.raw_output_contents[0], np.float32)
        x = np.frombuffer(request("m").raw_input_contents[0], np.float32)
        np.testing.assert_allclose(y, 7.0 * x)  # version 2's new files


def test_a_rollback_outlives_the_stable_version_redeployed_without_config_weights(tmp_path: Path) -> None:
    """No traffic policy in the config: the newest version takes every request. The operator's
    weights and rollback of version 2, then version 1 redeployed: version 2, the newest, had taken
    every request again (a tester: 20 of 20)."""
    repo = tmp_path / "repo"
    for version in (1, 2):
        (repo / "m" / str(version)).mkdir(parents=True)
        scale_model(repo / "m" / str(version) / "model.onnx", float(version))
    (repo / "m" / "config.pbtxt").write_text(BASE)
    with (
        ServerProcess("--model-repository", str(repo), *POLL) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub, admin = pb_grpc.GRPCInferenceServiceStub(channel), apb_grpc.AdminStub(channel)
        admin.SetWeights(apb.SetWeightsRequest(model="m", weights={1: 50, 2: 50}), timeout=30)
        admin.Rollback(apb.RollbackRequest(model="m", version=2, reason="drill"), timeout=30)
        assert routed(stub, "a") == {1}
        model_file = repo / "m" / "1" / "model.onnx"
        later = os.stat(model_file).st_mtime_ns + 2_000_000_000
        os.utime(model_file, ns=(later, later))  # version 1 redeployed (new files)
        server.wait_for_output("model m ready (versions 2, 1; unchanged, kept serving: 2)")
        assert routed(stub, "b") == {1}
        roles = {v.version: (v.weight, v.rolled_back) for v in status(admin).versions}
        assert roles == {1: (100, False), 2: (0, True)}, roles
