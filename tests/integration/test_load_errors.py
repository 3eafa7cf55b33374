"""A model that cannot be loaded is said once: its message does not repeat itself, and the server
logs it once (issue 18: "model '' is not in the repository: model '' is not in the repository")."""

from __future__ import annotations

import logging
import re
import urllib.request
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.errors import ModelNotFound
from server.models.manager import ModelManager
from server.settings import ServerSettings
from tests.support.server_process import ServerProcess, wait_until

BROKEN_CONFIG = "max_batch_size: nonsense\n"
NOT_THERE = "failed to load 'absent', failed to poll from model repository; it has no directory 'absent'"


@pytest.fixture()
def broken_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(BROKEN_CONFIG)
    (repo / "corrupt" / "1").mkdir(parents=True)
    (repo / "corrupt" / "1" / "model.onnx").write_bytes(b"")  # parses as a config, fails as a model
    return repo


async def test_load_errors_are_said_and_logged_once(
    broken_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = ModelManager(broken_repo, ServerSettings(cache_dir=tmp_path, metrics=False), lambda n, r: None)
    with caplog.at_level(logging.INFO):
        await manager.load_all()
    try:
        broken = [r for r in caplog.records if "nonsense" in r.getMessage()]
        assert len(broken) == 1, [r.getMessage() for r in broken]
        with pytest.raises(ModelNotFound) as info:
            await manager.load("absent")
        assert str(info.value) == NOT_THERE
    finally:
        await manager.stop(drain_timeout_s=5)


def test_a_server_says_a_load_error_once(broken_repo: Path) -> None:
    with ServerProcess(
        "--model-repository", str(broken_repo), "--model-control-mode", "explicit", "--load-model", "*"
    ) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="absent"), timeout=30)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert caught.value.details() == NOT_THERE
        out = server.output()
        assert out.count("Couldn't parse integer: nonsense") == 1, out
        # The ready line names the failures (it listed them as models); each is one log line.
        assert "(models: none ready; failed to load: broken, corrupt)" in out
        assert "Traceback" not in out and out.count("corrupt") >= 2


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_each_load_error_is_one_log_line_in_every_mode(broken_repo: Path, mode: str) -> None:
    # The control layer logged a second line ("model broken: load failed: failed to load model
    # 'broken': ...") after the manager's own, doubling every alert on load errors.
    poll = ("--repository-poll-secs", "0.3") if mode == "poll" else ()
    with ServerProcess("--model-repository", str(broken_repo), "--model-control-mode", mode, *poll) as server:
        out = server.output()
        # Both counted: the broken config was not (alerts on the counter missed it).
        assert load_failures(server) == 2
        if mode == "poll":  # a config broken later, as the poller finds it, counts as well
            (broken_repo / "corrupt" / "config.pbtxt").write_text(BROKEN_CONFIG)
            wait_until(lambda: load_failures(server) == 3, "the poller's failed load to be counted")
    assert out.count("Couldn't parse integer: nonsense") == 1, out
    assert "load failed" not in out


def load_failures(server: ServerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as page:
        text = page.read().decode()
    match = re.search(r"^sluiceway_model_load_failures_total(?:{[^}]*})? (\S+)$", text, re.M)
    assert match is not None, "no sluiceway_model_load_failures_total on /metrics"
    return float(match.group(1))


def test_a_load_by_rpc_that_fails_on_its_config_is_counted_and_logged(broken_repo: Path) -> None:
    # Failures before the manager (the config, the files) were neither counted nor logged.
    with ServerProcess("--model-repository", str(broken_repo), "--model-control-mode", "explicit") as server:
        before = load_failures(server)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="broken"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert load_failures(server) == before + 1
        said = "model broken failed to load: "
        server.wait_for_output(said, timeout_s=30)
        out = server.output()
    assert out.count(said) == 1, out
