"""Poll mode and the traffic policy: a version directory the policy names (a weighted canary, the
shadow version) moved out of the repository is a reload the server refuses, as a broken config is:
the loaded versions keep serving and the index says why. The reload that only dropped a version
loaded none, so the policy was never checked again: the model stayed READY and every routed request
(and RolloutStatus) failed INTERNAL."""

from __future__ import annotations

from pathlib import Path

import grpc

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_repository_control import index
from tests.integration.test_rollout import BASE, params, request, scale_model, served_by
from tests.support.server_process import ServerProcess, wait_until

MODELS = {
    "canary": params(traffic_weights="1:90,2:10"),
    "shadowed": params(traffic_weights="1:100", shadow_version="2", shadow_fraction="0.3"),
}


def untouched(rows: list[tuple[str, str, str]]) -> bool:
    return sorted(rows) == [("1", "READY", ""), ("2", "READY", "")]


def test_moving_away_a_version_the_policy_names_keeps_the_loaded_versions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name, extra in MODELS.items():
        for version in (1, 2):
            (repo / name / str(version)).mkdir(parents=True)
            scale_model(repo / name / str(version) / "model.onnx", float(version))
        (repo / name / "config.pbtxt").write_text(BASE + extra)
    args = ["--model-repository", str(repo), "--model-control-mode", "poll", "--repository-poll-secs", "0.3"]
    with (
        ServerProcess(*args, "--shutdown-grace-s", "1") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        admin = apb_grpc.AdminStub(channel)
        for name in MODELS:
            (repo / name / "2").rename(tmp_path / f"{name}-2")
        # Either outcome ends the wait: the reload refused (the fix) or version 2 gone (the bug).
        wait_until(
            lambda: not any(untouched(index(server.address)[name]) for name in MODELS),
            "the poller to act on both models",
        )
        shown = index(server.address)
        for name in MODELS:
            rows = shown[name]
            assert sorted((v, state) for v, state, _ in rows) == [("1", "READY"), ("2", "READY")], rows
            assert all("reload failed" in reason and "not served" in reason for _, _, reason in rows), rows
            answers = [stub.ModelInfer(request(name, f"{name}{i}"), timeout=30) for i in range(40)]
            versions = {served_by(answer) for answer in answers}
            assert versions <= {1, 2} and 1 in versions, (name, versions)
            answer = admin.RolloutStatus(apb.RolloutStatusRequest(model=name), timeout=30)
            assert {v.version for v in answer.versions} == {1, 2}
        assert "Traceback" not in server.output()
