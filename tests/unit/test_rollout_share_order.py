"""Under --workers, one order for every rollout change (server/models/rollout_share.py,
rollout_ops.py): simulated workers sharing a directory (fake entries, fake clocks) end in the
same state whatever the interleaving: automatic rollbacks in the operators' log, a reload of the
same files, a state built after changes were logged, an eviction; a check's cost does not grow
with the log; the retryable and lost-directory answers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from server import errors
from server.models import rollout_share
from server.models.rollout_ops import OperatorChange, claim
from server.models.rollout_share import generation
from tests.support.rollout_workers import Worker as SharingWorker
from tests.support.rollout_workers import model_entry as entry


class Worker(SharingWorker):
    """One worker, its model "m" loaded from `files`."""

    def __init__(self, index: int, directory: Path, files: str = "a") -> None:
        super().__init__(index, directory, entry(files))


def settle(*workers: Worker) -> None:
    for worker in workers:
        worker.share.check()


def test_an_automatic_rollback_racing_a_rollback_of_the_other_version_leaves_every_worker_alike(
    tmp_path: Path,
) -> None:
    first, second, third = (Worker(i, tmp_path) for i in range(3))
    for worker in (first, second, third):
        assert worker.weights() == {1: 50, 2: 50}
    second.submit("rollback", version=1)  # the operator's, at worker 1
    assert second.weights() == {1: 0, 2: 50}
    first.fail_version_2()  # worker 0's window, before its check saw the operator's change
    settle(first, second, third)
    settle(first, second, third)
    assert first.weights() == second.weights() == third.weights() == {1: 0, 2: 50}


def test_an_automatic_rollback_first_refuses_the_operators_rollback_everywhere(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    assert first.weights() == second.weights() == {1: 50, 2: 50}
    first.fail_version_2()
    with pytest.raises(errors.RolloutRefused, match="only version"):
        second.submit("rollback", version=1)
    settle(first, second)
    assert first.weights() == second.weights() == {1: 50, 2: 0}


def test_a_check_with_nothing_new_opens_one_file_however_long_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = generation(entry())  # type: ignore[arg-type]
    for seq in range(1, 301):
        pairs = ((1, seq % 90 + 1), (2, 10))
        assert claim(tmp_path, OperatorChange("m", gen, seq, 0, "weights", pairs, (), "", 1.0))
    worker = Worker(1, tmp_path)
    worker.share.check()
    assert worker.weights() == {1: 300 % 90 + 1, 2: 10}  # the whole log, in order
    worker.share.check()  # the first wrote the model's period (rollout_periods.py): looked at once
    touched: list[str] = []
    real_listdir, real_scandir, real_open = os.listdir, os.scandir, Path.open

    def listdir(path: Any = ".") -> list[str]:
        names = real_listdir(path)
        touched.extend(names)
        return names

    def scandir(path: Any = ".") -> Any:
        touched.append(f"scandir {path}")
        return real_scandir(path)

    def path_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        touched.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(Path, "open", path_open)
    assert worker.share.check() == 0
    assert len(touched) <= 1, touched[:5]


def test_a_reload_of_the_same_files_keeps_the_state_the_log_applies_to(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    assert first.weights() == second.weights() == {1: 50, 2: 50}
    first.index["m"] = entry("a")  # worker 0 reloads (poll: nothing of the versions changed)
    assert first.weights() == {1: 50, 2: 50}
    second.submit("weights", weights={1: 90, 2: 10})  # between the two workers' reloads
    settle(first, second)
    second.index["m"] = entry("a")  # worker 1 reloads the same files
    settle(first, second)
    assert first.weights() == second.weights() == {1: 90, 2: 10}


def test_a_state_built_after_changes_were_logged_routes_by_them_at_once(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)  # the second has not loaded "m" yet
    first.submit("weights", weights={1: 0, 2: 100})
    routed = {
        second.rollout.route(second.index["m"], pb.ModelInferRequest(id=f"r{i}")) for i in range(20)
    }  # its first requests, before any check
    assert routed == {2}


def test_workers_loading_the_same_new_files_start_alike_whether_evicted_or_reloaded(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    first.submit("weights", weights={1: 90, 2: 10})
    settle(first, second)
    assert first.weights() == second.weights() == {1: 90, 2: 10}
    first.rollout.hold("m")  # worker 0 evicted "m" and loads it again from changed files
    first.index["m"] = entry("b")
    second.index["m"] = entry("b")  # worker 1 reloads the changed files
    settle(first, second)
    assert first.weights() == second.weights()
    second.submit("weights", weights={1: 30, 2: 70})  # a change to the new files reaches both
    settle(first, second)
    assert first.weights() == second.weights() == {1: 30, 2: 70}


def test_a_change_that_keeps_losing_its_number_is_aborted_and_retryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = Worker(0, tmp_path)
    monkeypatch.setattr(rollout_share, "claim", lambda directory, change: False)
    with pytest.raises(errors.ServiceError, match="try again") as raised:
        worker.submit("weights", weights={1: 90, 2: 10})
    assert errors.status_for(raised.value)[0] == grpc.StatusCode.ABORTED
    assert worker.weights() == {1: 50, 2: 50}


def test_a_change_when_the_shared_directory_is_gone_is_unavailable_naming_it(tmp_path: Path) -> None:
    directory = tmp_path / "share"
    directory.mkdir()
    worker = Worker(0, directory)
    directory.rmdir()
    with pytest.raises(errors.ServiceError, match="is gone") as raised:
        worker.submit("weights", weights={1: 90, 2: 10})
    code, message, _ = errors.status_for(raised.value)
    assert code == grpc.StatusCode.UNAVAILABLE and str(directory) in message
    assert worker.weights() == {1: 50, 2: 50}
