"""`--workers 2`: an operator's SetWeights, Promote and Rollback, sent to either worker, take
effect in both (server/models/rollout_share.py's shared log of changes).

They were refused (FAILED_PRECONDITION) under --workers: a change would have reached the one
worker that held the admin connection.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.models.rollout_dir import make_share_dir
from tests.support.models import scale_model
from tests.support.server_process import ServerProcess, wait_until
from tests.support.share_owner import end, made_by, start_owner

COMPACTION_CHANGES = 200
MAX_CHANGE_FILES = 63  # rollout_ops: 2 * COMPACT_EVERY - 1 per log
MAX_CONNECTIONS = 40  # fresh connections tried to reach both workers (each lands on either)
FRESH = 6  # fresh connections whose status must agree too
KEPT = ("live", "older")  # share directories the server's parent must leave (see temp_dir)
X = np.ones((1, 4), dtype=np.float32)
CONFIG = """
max_batch_size: 8
instance_group [ { count: 1 kind: KIND_CPU } ]
version_policy { all { } }
parameters { key: "traffic_weights" value: { string_value: "1:50,2:50" } }
"""


@pytest.fixture(scope="module")
def temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The server's temp directory (TMPDIR): where the parent makes the workers' share directory,
    and where a parent killed by SIGKILL left one (its lock free), beside a live parent's (this
    process's, whose recorded pid means nothing: as from another PID namespace) and an older
    version's (no lock file)."""
    temp_dir = tmp_path_factory.mktemp("workers-admin-tmp")
    scratch = tmp_path_factory.mktemp("workers-admin-scratch")
    owner = start_owner(scratch)
    made_by(owner, scratch).rename(temp_dir / "sluiceway-rollout-killed")
    end(owner)
    live = make_share_dir(temp_dir)
    live.path.rename(temp_dir / "sluiceway-rollout-live")  # the lock stays with the open file
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid no process holds now
    (temp_dir / "sluiceway-rollout-live" / "owner").write_text(f"{child.pid} 1")
    (temp_dir / "sluiceway-rollout-older").mkdir(mode=0o700)
    (temp_dir / "sluiceway-rollout-older" / "owner").write_text(f"{child.pid} 1")
    yield temp_dir
    live.remove()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, temp_dir: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("workers-admin")
    for version in (1, 2):
        (repo / "sc" / str(version)).mkdir(parents=True)
        scale_model(repo / "sc" / str(version) / "model.onnx", float(version))
    (repo / "sc" / "config.pbtxt").write_text(CONFIG)
    with ServerProcess(
        "--model-repository",
        str(repo),
        "--workers",
        "2",
        "--shutdown-grace-s",
        "1",
        env={"TMPDIR": str(temp_dir)},
    ) as process:
        yield process


def admin(channel: grpc.Channel) -> apb_grpc.AdminStub:
    return apb_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]


def status(channel: grpc.Channel) -> apb.RolloutStatusResponse:
    return admin(channel).RolloutStatus(apb.RolloutStatusRequest(model="sc"), timeout=30)


def weights(answer: apb.RolloutStatusResponse) -> dict[int, tuple[int, str]]:
    return {v.version: (v.weight, v.role) for v in answer.versions}


def fresh_channel(address: str, stack: ExitStack) -> grpc.Channel:
    return stack.enter_context(
        grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    )


def channels_to_each_worker(address: str, stack: ExitStack) -> dict[str, grpc.Channel]:
    found: dict[str, grpc.Channel] = {}
    for _ in range(MAX_CONNECTIONS):
        channel = fresh_channel(address, stack)
        found.setdefault(status(channel).worker, channel)
        if {"0", "1"} <= set(found):
            return found
    raise AssertionError(f"{MAX_CONNECTIONS} connections reached only workers {sorted(found)}")


def versions_answering(channel: grpc.Channel, count: int = 12) -> set[int]:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    out = set()
    for i in range(count):
        request = pb.ModelInferRequest(
            model_name="sc",
            id=f"r{i}",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])],
            raw_input_contents=[X.tobytes()],
        )
        y = np.frombuffer(stub.ModelInfer(request, timeout=30).raw_output_contents[0], np.float32)
        out.add(round(float(y[0])))
    return out


def agree(address: str, workers: dict[str, grpc.Channel], expected: dict[int, tuple[int, str]]) -> None:
    """Wait until both workers, and fresh connections, show `expected`; then both route by it."""
    wait_until(
        lambda: all(weights(status(ch)) == expected for ch in workers.values()),
        f"both workers to show {expected}",
        15,
    )
    with ExitStack() as stack:
        for _ in range(FRESH):
            assert weights(status(fresh_channel(address, stack))) == expected
    serving = {v for v, (w, _) in expected.items() if w > 0}
    for channel in workers.values():
        assert versions_answering(channel) <= serving


def test_operator_changes_sent_to_either_worker_reach_both(server: ServerProcess) -> None:
    with ExitStack() as stack:
        workers = channels_to_each_worker(server.address, stack)
        zero, one = workers["0"], workers["1"]

        answer = admin(one).SetWeights(apb.SetWeightsRequest(model="sc", weights={1: 0, 2: 100}), timeout=30)
        assert answer.worker == "1" and weights(answer) == {1: (0, "off"), 2: (100, "stable")}
        agree(server.address, workers, {1: (0, "off"), 2: (100, "stable")})
        assert status(zero).source == "admin"

        answer = admin(zero).Promote(apb.PromoteRequest(model="sc", version=1), timeout=30)
        assert answer.worker == "0"
        agree(server.address, workers, {1: (100, "stable"), 2: (0, "off")})

        admin(one).SetWeights(apb.SetWeightsRequest(model="sc", weights={1: 60, 2: 40}), timeout=30)
        answer = admin(zero).Rollback(apb.RollbackRequest(model="sc", version=2, reason="drill"), timeout=30)
        # Worker 0 applied worker 1's SetWeights first: version 2 was in traffic, now rolled back.
        assert weights(answer) == {1: (60, "stable"), 2: (0, "off")} and answer.versions[1].rolled_back
        agree(server.address, workers, {1: (60, "stable"), 2: (0, "off")})
        followed = status(one)
        assert followed.versions[1].rolled_back and followed.source == "rollback"
        assert (followed.events[0].trigger, followed.events[0].reason) == (
            "shared",
            "rollback from worker 0 (manual): drill",
        )

        # A change refused by the worker it reaches is refused as in one process, never logged.
        with pytest.raises(grpc.RpcError) as refused:
            admin(one).Rollback(apb.RollbackRequest(model="sc", version=1), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "only version" in (refused.value.details() or "")
        assert weights(status(zero)) == weights(status(one)) == {1: (60, "stable"), 2: (0, "off")}


def test_many_changes_leave_a_bounded_log_and_both_workers_as_one_process(
    server: ServerProcess, temp_dir: Path
) -> None:
    """200 changes alternately to each worker: the log is compacted (rollout_ops.compact), and
    both workers end with the last change's weights, as one process applying them all would."""
    (share,) = [p for p in temp_dir.glob("sluiceway-rollout-*") if p.name.rsplit("-", 1)[1] not in KEPT]
    with ExitStack() as stack:
        workers = channels_to_each_worker(server.address, stack)
        for seq in range(1, COMPACTION_CHANGES + 1):
            request = apb.SetWeightsRequest(model="sc", weights={1: seq % 99 + 1, 2: 1})
            admin(workers[str(seq % 2)]).SetWeights(request, timeout=30)
        files = [p.name for p in share.iterdir() if p.name.startswith("op-")]
        assert len(files) <= MAX_CHANGE_FILES, f"{len(files)} change files after {COMPACTION_CHANGES}"
        assert [p.name for p in share.iterdir() if p.name.startswith("snap-")]  # the compacted state
        last = COMPACTION_CHANGES % 99 + 1
        agree(server.address, workers, {1: (last, "stable"), 2: (1, "candidate")})


def test_the_parent_removed_the_directory_a_killed_parent_left_and_kept_a_live_ones(
    server: ServerProcess, temp_dir: Path
) -> None:
    assert not (temp_dir / "sluiceway-rollout-killed").exists()
    for name in KEPT:
        assert (temp_dir / f"sluiceway-rollout-{name}" / "owner").is_file(), name
    assert len(list(temp_dir.glob("sluiceway-rollout-*"))) == 3  # those kept and the server's
