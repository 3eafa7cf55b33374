"""Poll mode over a real server and real file events: a stop is seen at once whatever the poll
interval (SIGTERM had taken up to repository_poll_secs: 15.5 s for 15), and a repository replaced
whole, by `mv` or by swapping a symlink, is rescanned (the old models had served for good)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_repository_control import index
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until


def release(folder: Path, names: tuple[str, ...], demo_repo: Path) -> Path:
    mlp = demo_repo / "mlp"
    config = (mlp / "config.pbtxt").read_text()
    for name in names:
        write_model(folder, name, mlp / "1" / "model.onnx", config.replace('"mlp"', f'"{name}"'))
    return folder


def ready(address: str) -> set[str]:
    return {name for name, rows in index(address).items() if any(state == "READY" for _, state, _ in rows)}


def test_sigterm_in_poll_mode_does_not_wait_out_the_poll_interval(demo_repo: Path, tmp_path: Path) -> None:
    repo = release(tmp_path / "repo", ("m01",), demo_repo)
    args = ["--model-repository", str(repo), "--model-control-mode", "poll", "--repository-poll-secs", "120"]
    server = ServerProcess(*args, "--shutdown-grace-s", "2").start()
    assert server.terminate(timeout_s=60) == 0  # not 120 s: the old watcher saw the stop once a poll


@pytest.mark.parametrize("how", ["mv", "symlink"])
def test_a_replaced_repository_is_rescanned(demo_repo: Path, tmp_path: Path, how: str) -> None:
    first = release(tmp_path / "release-1", ("m01", "m02"), demo_repo)
    second = release(tmp_path / "release-2", ("m01", "m03"), demo_repo)
    root = tmp_path / "repo"
    if how == "symlink":  # git-sync's and Kubernetes volumes' pattern: one link, swapped atomically
        root.symlink_to(first)
    else:
        first.rename(root)
    args = ["--model-repository", str(root), "--model-control-mode", "poll", "--repository-poll-secs", "0.5"]
    with ServerProcess(*args) as server:
        assert ready(server.address) == {"m01", "m02"}
        if how == "symlink":
            link = tmp_path / "repo.next"
            link.symlink_to(second)
            link.rename(root)  # rename(2) over the old link: atomic
        else:
            root.rename(tmp_path / "repo.old")
            second.rename(root)
        wait_until(lambda: ready(server.address) == {"m01", "m03"}, "the new release to be served")
        (root / "m04").mkdir()  # and the new root is watched
        write_model(root, "m04", demo_repo / "mlp" / "1" / "model.onnx",
                    (demo_repo / "mlp" / "config.pbtxt").read_text().replace('"mlp"', '"m04"'))  # fmt: skip
        wait_until(lambda: "m04" in ready(server.address), "a model added to the new release")
        server.wait_for_output("was replaced; rescanning every model")
