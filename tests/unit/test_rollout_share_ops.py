"""Operators' rollout changes under --workers (server/models/rollout_ops.py, rollout_share.py): the
ordered log per model and generation, two workers' rollouts (fake entries, a fake clock) applying
each other's SetWeights, Promote and Rollback in one order, refusals never logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import ModelNotFound, RolloutRefused
from server.models import rollout_share
from server.models.rollout_ops import OperatorChange, claim, parse_name, read_change
from server.models.rollout_share import generation
from tests.support.rollout_workers import Worker as SharingWorker
from tests.support.rollout_workers import model_entry as entry


class Worker(SharingWorker):
    """One worker, its model "m" loaded from `files`."""

    def __init__(self, index: int, directory: Path, files: str = "a") -> None:
        super().__init__(index, directory, entry(files))


def changes(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if parse_name(p.name) is not None)


def change(seq: int, weights: tuple[tuple[int, int], ...], worker: int = 0) -> OperatorChange:
    return OperatorChange("m", generation(entry()), seq, worker, "weights", weights, (), "", 1.0)  # type: ignore[arg-type]


def test_a_number_is_claimed_once_and_a_change_file_round_trips(tmp_path: Path) -> None:
    first = change(1, ((1, 90), (2, 10)))
    assert claim(tmp_path, first)
    assert not claim(tmp_path, change(1, ((1, 10), (2, 90)), worker=1))  # taken: the first stays
    assert [p.name for p in tmp_path.iterdir()] == [first.file_name()]  # no temporary left
    assert read_change(tmp_path / first.file_name()) == first
    assert parse_name(first.file_name()) is not None and parse_name("0123-x.json") is None


def test_each_operator_change_reaches_the_other_worker_in_order(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    assert second.weights() == {1: 50, 2: 50}  # its state, built before the change
    first.submit("weights", weights={1: 90, 2: 10})
    assert first.weights() == {1: 90, 2: 10}  # applied at once where it was received
    assert second.weights() == {1: 50, 2: 50}  # the other, at its next check
    assert second.share.check() == 1 and second.weights() == {1: 90, 2: 10}
    assert second.share.check() == 0  # once

    second.submit("promote", version=2)
    first.submit("rollback", version=0 or None)  # every candidate: after the promote, none
    assert first.weights() == second.weights() == {2: 100}  # the promote came first here too
    second.submit("weights", weights={1: 50, 2: 50})
    second.submit("rollback", version=2)
    assert first.share.check() == 2
    state = first.rollout.state(first.index["m"])  # type: ignore[arg-type]
    assert state.weights == second.weights() == {1: 50, 2: 0} and state.rolled_back == {2}
    assert (state.events[0].trigger, state.events[0].reason) == (
        "shared",
        "rollback from worker 1 (manual): drill",
    )
    assert [parse_name(n)[1] for n in changes(tmp_path)] == [1, 2, 3, 4, 5]  # type: ignore[index]


def test_a_change_refused_here_is_refused_as_in_one_process_and_never_logged(tmp_path: Path) -> None:
    worker = Worker(0, tmp_path)
    worker.submit("promote", version=1)
    with pytest.raises(RolloutRefused, match="only version"):
        worker.submit("rollback", version=1)
    with pytest.raises(ModelNotFound, match=r"versions \[3\]"):
        worker.submit("weights", weights={1: 50, 3: 50})
    assert len(changes(tmp_path)) == 1 and worker.weights() == {1: 100}


def test_two_workers_claiming_one_number_both_get_in_one_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    real_claim = rollout_share.claim

    def claim_after_the_other(directory: Path, ours: OperatorChange) -> bool:
        if ours.worker == 1 and not changes(directory):  # the first claims the number meanwhile
            first.submit("weights", weights={1: 10, 2: 90})
        return real_claim(directory, ours)

    monkeypatch.setattr(rollout_share, "claim", claim_after_the_other)
    second.submit("weights", weights={1: 70, 2: 30})  # lost number 1: applies it, takes 2
    assert second.weights() == {1: 70, 2: 30}
    assert first.share.check() == 1 and first.weights() == {1: 70, 2: 30}
    assert len(changes(tmp_path)) == 2


def test_an_automatic_rollback_older_than_a_setweights_is_not_applied_over_it(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    first.fail_version_2()  # decided before it saw the operator's change below
    second.submit("weights", weights={1: 40, 2: 60})  # raced: logged before the second read the event
    assert second.weights() == {1: 40, 2: 60}
    assert first.share.check() == 1 and first.weights() == {1: 40, 2: 60}
    assert second.share.check() == 0 and second.weights() == {1: 40, 2: 60}  # the same weights


def test_an_automatic_rollback_after_a_change_waits_for_that_change(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    assert second.weights() == {1: 50, 2: 50}
    first.submit("weights", weights={1: 60, 2: 40})
    first.fail_version_2()  # after the change: applied over it
    assert first.weights() == {1: 60, 2: 0}
    assert second.share.check() == 2 and second.weights() == {1: 60, 2: 0}


def test_a_change_is_applied_only_to_the_same_load_of_the_model(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path, "b"), Worker(1, tmp_path, "a")  # first reloaded
    first.submit("weights", weights={1: 100, 2: 0})
    assert second.share.check() == 0 and second.weights() == {1: 50, 2: 50}
    second.submit("weights", weights={1: 0, 2: 100})  # its own log: the old load's
    assert second.weights() == {1: 0, 2: 100} and first.weights() == {1: 100, 2: 0}
    second.index["m"] = entry("b")  # reloaded too: the config again, then the new load's changes
    assert second.share.check() == 1 and second.weights() == {1: 100, 2: 0}
