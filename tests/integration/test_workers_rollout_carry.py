"""`--workers 2`, poll mode: an operator's rollback outlives a reload of other files in every
worker, as in one process (test_rollout_kept_over_reloads.py). The workers' change log is kept per
set of files (rollout_share.py), so a version directory added beside a rolled-back canary had
started every worker again from the config's policy: the canary back at its weight (the review
tester's finding). The first worker to load the new files logs the state the files before had as
change 1 of their log (rollout_carry.carried_snapshot), and every worker takes it.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import grpc

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_rollout import BASE, params, request, scale_model, served_by
from tests.support.repositories import newer
from tests.support.server_process import ServerProcess, wait_until

CONFIG = BASE + params(traffic_weights="1:80,2:20")
ARGS = ("--workers", "2", "--model-control-mode", "poll", "--repository-poll-secs", "0.3")
MAX_CONNECTIONS = 40  # fresh connections tried to reach both workers (each lands on either)


def status(channel: grpc.Channel) -> apb.RolloutStatusResponse:
    return apb_grpc.AdminStub(channel).RolloutStatus(apb.RolloutStatusRequest(model="m"), timeout=30)


def channels_to_each_worker(address: str, stack: ExitStack) -> dict[str, grpc.Channel]:
    """An open channel to each worker: fresh connections until both have answered."""
    found: dict[str, grpc.Channel] = {}
    for _ in range(MAX_CONNECTIONS):
        options = [("grpc.use_local_subchannel_pool", 1)]
        channel = stack.enter_context(grpc.insecure_channel(address, options=options))
        found.setdefault(status(channel).worker, channel)
        if {"0", "1"} <= set(found):
            return found
    raise AssertionError(f"{MAX_CONNECTIONS} connections reached only workers {sorted(found)}")


def routed(channel: grpc.Channel, tag: str) -> set[int]:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    return {served_by(stub.ModelInfer(request("m", f"{tag}{i}"), timeout=30)) for i in range(60)}


def roles(channel: grpc.Channel) -> tuple[str, dict[int, tuple[int, bool]], list[int]]:
    """(source, version -> (weight, rolled back), the events' versions) of the worker's state."""
    answer = status(channel)
    versions = {v.version: (v.weight, v.rolled_back) for v in answer.versions}
    return answer.source, versions, [e.version for e in answer.events]


def repository(repo: Path) -> Path:
    """Model m, versions 1 and 2 (y = version * x), under CONFIG."""
    for version in (1, 2):
        (repo / "m" / str(version)).mkdir(parents=True)
        scale_model(repo / "m" / str(version) / "model.onnx", float(version))
    (repo / "m" / "config.pbtxt").write_text(CONFIG)
    return repo


def test_a_rollback_outlives_a_version_added_and_the_stable_one_redeployed_in_every_worker(
    tmp_path: Path,
) -> None:
    repo = repository(tmp_path / "repo")
    with ServerProcess("--model-repository", str(repo), *ARGS) as server, ExitStack() as stack:
        workers = channels_to_each_worker(server.address, stack)
        assert routed(workers["0"], "a") == {1, 2} == routed(workers["1"], "a")
        admin = apb_grpc.AdminStub(workers["0"])
        admin.Rollback(apb.RollbackRequest(model="m", version=2, reason="drill"), timeout=30)
        wait_until(lambda: status(workers["1"]).versions[1].weight == 0, "worker 1 to follow", 15)

        (repo / "m" / "3").mkdir()  # a version the weights do not name: other files, a new log
        scale_model(repo / "m" / "3" / "model.onnx", 3.0)
        server.wait_for_output("model m ready (versions 3, 2, 1; unchanged, kept serving: 2, 1)", times=2)
        for name, channel in workers.items():
            source, versions, events = roles(channel)
            assert (source, events) == ("rollback", [2]), (name, source, events)
            assert versions == {1: (80, False), 2: (0, True), 3: (0, False)}, (name, versions)
            assert routed(channel, f"b{name}") == {1}, name  # version 2 had come back at weight 20

        # The stable version redeployed (new files for a version the weights name): the config's
        # weights, version 2 (served as it was) still rolled back, in both workers.
        newer(repo / "m" / "1" / "model.onnx")
        server.wait_for_output("unchanged, kept serving: 3, 2)", times=2)
        for name, channel in workers.items():
            source, versions, events = roles(channel)
            assert (source, events) == ("rollback", [2]), (name, source, events)
            assert versions == {1: (80, False), 2: (0, True), 3: (0, False)}, (name, versions)
            assert routed(channel, f"c{name}") == {1}, name


def test_files_served_again_keep_the_rollback_made_since_in_every_worker(tmp_path: Path) -> None:
    # A version added, then moved away again: the files of the first period, whose log held a
    # SetWeights. Every worker had replayed that log: the rolled-back canary back at 50 (a tester).
    repo = repository(tmp_path / "repo")
    with ServerProcess("--model-repository", str(repo), *ARGS) as server, ExitStack() as stack:
        workers = channels_to_each_worker(server.address, stack)
        admin = apb_grpc.AdminStub(workers["0"])
        admin.SetWeights(apb.SetWeightsRequest(model="m", weights={1: 50, 2: 50}), timeout=30)
        (repo / "m" / "3").mkdir()
        scale_model(repo / "m" / "3" / "model.onnx", 3.0)
        server.wait_for_output("model m ready (versions 3, 2, 1; unchanged, kept serving: 2, 1)", times=2)
        admin.Rollback(apb.RollbackRequest(model="m", version=2, reason="canary bad"), timeout=30)
        (repo / "m" / "3").rename(tmp_path / "away")
        server.wait_for_output("model m ready (versions 2, 1; unchanged, kept serving: 2, 1)", times=2)
        for name, channel in workers.items():
            source, versions, events = roles(channel)
            assert (source, events) == ("rollback", [2]), (name, source, events)
            assert versions == {1: (50, False), 2: (0, True)}, (name, versions)
            assert routed(channel, f"d{name}") == {1}, name
