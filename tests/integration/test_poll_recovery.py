"""Poll mode over a real server and real file events: a load the OS failed (EMFILE) is tried again
with no file change (it had stayed UNAVAILABLE until its files changed), edits inside a model
directory reached through a symlink are seen (only swapping the link was), and a model whose only
version directory is removed keeps serving, as Triton's does."""

from __future__ import annotations

import resource
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients import NO_RETRY, Client
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.client_fixtures import features
from tests.integration.test_repository_control import index
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

POLL_SECS = "0.2"
GIVE_UP_S = 20.0  # each wait below takes well under a second when the server does its part


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, demo_repo: Path) -> Path:
    repo = tmp_path_factory.mktemp("poll-recovery") / "repo"
    repo.mkdir()
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    args = [
        "--model-repository",
        str(repo),
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        POLL_SECS,
    ]
    with ServerProcess(*args) as server:
        yield server


def mlp_model(folder: Path, name: str, demo_repo: Path, max_batch_size: int = 128) -> Path:
    mlp = demo_repo / "mlp"
    config = (mlp / "config.pbtxt").read_text().replace('"mlp"', f'"{name}"')
    config = config.replace("max_batch_size: 128", f"max_batch_size: {max_batch_size}")
    return write_model(folder, name, mlp / "1" / "model.onnx", config)


def move_in(repo: Path, staged: Path) -> None:
    staged.rename(repo / staged.name)  # a whole model directory appears at once


def test_a_load_the_os_failed_is_tried_again_with_no_file_change(
    server: ServerProcess, repo: Path, demo_repo: Path, tmp_path: Path
) -> None:
    assert server.process is not None
    pid = server.process.pid
    # One connection made before the limit: the index is read on it (a new one would need an fd).
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def shown(name: str) -> tuple[str, str] | None:
            models = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models
            return next(((m.state, m.reason) for m in models if m.name == name), None)

        assert shown("late") is None
        # A model reached through a link: its watch is remade when the root's links seem to change,
        # and under EMFILE the root could not be listed, which had read as "the link is gone"; the
        # watches made again then failed on EMFILE too, and the poller ended for good.
        (repo / "anchor").symlink_to(mlp_model(tmp_path / "release", "anchor", demo_repo))
        wait_until(lambda: (shown("anchor") or ("",))[0] == "READY", "the linked model", GIVE_UP_S)
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        # Only 0, 1 and 2 are below the limit: the server opens no new file (EMFILE) until restored,
        # the files it has open meanwhile working on.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, limits[1]))
        try:
            move_in(repo, mlp_model(tmp_path, "late", demo_repo))
            wait_until(lambda: shown("late") is not None, "the failed load in the index", GIVE_UP_S)
            state, reason = shown("late") or ("", "")
            assert state == "UNAVAILABLE" and "Too many open files" in reason, reason
            assert "the poller tries again in" in reason, reason  # it says why, and that it retries
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        # No file changed: only the retry can load it.
        wait_until(lambda: (shown("late") or ("",))[0] == "READY", "late loaded by a retry", GIVE_UP_S)
    with Client(server.address, retry=NO_RETRY) as client:
        assert client.infer("late", {"features": features(1)})
    server.wait_for_output("the load failed (an OS error); trying again in")


def test_edits_inside_a_symlinked_model_directory_are_seen(
    server: ServerProcess, repo: Path, demo_repo: Path, tmp_path: Path
) -> None:
    """A model directory that is a link to a release directory (git-sync, Kubernetes volumes): an
    edit inside the target, and after the link is swapped, an edit inside the new target."""
    first = mlp_model(tmp_path / "release-a", "linked", demo_repo, max_batch_size=4)
    second = mlp_model(tmp_path / "release-b", "linked", demo_repo, max_batch_size=5)
    (repo / "linked").symlink_to(first)
    with Client(server.address, retry=NO_RETRY) as client:

        def max_batch_size() -> int:
            try:
                return client.model_config("linked").max_batch_size
            except Exception:  # not loaded yet
                return 0

        wait_until(lambda: max_batch_size() == 4, "the linked model loaded", GIVE_UP_S)
        edit(first / "config.pbtxt", "max_batch_size: 4", "max_batch_size: 8")
        wait_until(lambda: max_batch_size() == 8, "the edit inside the link's target", GIVE_UP_S)
        swap = repo / "linked.next"
        swap.symlink_to(second)
        swap.rename(repo / "linked")  # rename(2) over the old link: atomic
        wait_until(lambda: max_batch_size() == 5, "the swapped link's target", GIVE_UP_S)
        edit(second / "config.pbtxt", "max_batch_size: 5", "max_batch_size: 9")
        wait_until(lambda: max_batch_size() == 9, "the edit inside the new target", GIVE_UP_S)
        assert client.infer("linked", {"features": features(2)})


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_removing_the_only_version_keeps_it_serving_as_triton_does(
    server: ServerProcess, repo: Path, demo_repo: Path, tmp_path: Path
) -> None:
    """Triton's AsyncLoad refuses a model with no version to serve ("at least one version must be
    available under the version policy") before it touches the loaded versions, which stay."""
    move_in(repo, mlp_model(tmp_path, "solo", demo_repo))
    wait_until(
        lambda: [s for _, s, _ in index(server.address).get("solo", [])] == ["READY"], "solo", GIVE_UP_S
    )
    shutil.rmtree(repo / "solo" / "1")
    wait_until(lambda: "reload failed" in index(server.address)["solo"][0][2], "the reason", GIVE_UP_S)
    version, state, reason = index(server.address)["solo"][0]
    assert (version, state) == ("1", "READY") and "no version directories" in reason, reason
    with Client(server.address, retry=NO_RETRY) as client:
        assert client.infer("solo", {"features": features(1)})


def test_a_model_the_budget_had_no_room_for_loads_once_other_models_leave(
    demo_repo: Path, tmp_path: Path
) -> None:
    """Poll mode had tried a budget's refusal again only when its files changed: with room made
    by models removed from the repository, a tester's nine refused models stayed UNAVAILABLE."""
    repo = tmp_path / "repo"
    repo.mkdir()
    names = [f"m{i:02d}" for i in range(12)]
    for name in names:  # each measured at ~1.4 MiB (a session's arena chunk): 8 fit, then 1 and 4
        mlp_model(repo, name, demo_repo)
    args = ["--model-repository", str(repo), "--model-control-mode", "poll"]
    args += ["--repository-poll-secs", POLL_SECS, "--model-memory-budget-mb", "12"]
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def states() -> dict[str, tuple[str, str]]:
            models = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models
            return {m.name: (m.state, m.reason) for m in models}

        shown = states()
        refused = sorted(n for n, (state, _) in shown.items() if state != "READY")
        assert refused and all("memory budget" in shown[n][1] for n in refused), shown
        assert all("the poller tries again in" in shown[n][1] for n in refused), shown
        for name in sorted(set(names) - set(refused))[1:]:  # one stays loaded
            shutil.rmtree(repo / name)
        wait_until(
            lambda: all(states().get(n, ("",))[0] == "READY" for n in refused),
            "the refused models to load once there is room, no file of theirs changed",
            60.0,
        )
