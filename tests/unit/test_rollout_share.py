"""Shared automatic rollbacks under --workers (server/models/rollout_share.py): logged in the
workers' change log (rollout_ops.py), the model's generation, and two workers' rollouts (fake
entries, a fake clock) following each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.models.rollout_ops import MAX_CHANGE_BYTES, read_change
from server.models.rollout_share import generation
from tests.support.rollout_workers import Worker
from tests.support.rollout_workers import model_entry as entry


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"model": "m", "generation": "g", "seq": 1, "worker": 0, "kind": "auto"}).encode(),
        b" " * (MAX_CHANGE_BYTES + 1),
    ],
)
def test_what_is_no_change_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        read_change(path)


def test_the_generation_is_the_same_for_the_same_files_and_changes_with_them() -> None:
    assert generation(entry("a")) == generation(entry("a"))  # type: ignore[arg-type]
    assert generation(entry("a")) != generation(entry("b"))  # type: ignore[arg-type]
    assert generation(entry("a")) != generation(entry("a", name="n"))  # type: ignore[arg-type]


def test_a_workers_automatic_rollback_is_followed_by_the_other(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path, entry()), Worker(1, tmp_path, entry())
    assert second.share.check() == 0 and second.weights() == {1: 50, 2: 50}
    first.fail_version_2()
    assert first.weights() == {1: 50, 2: 0}
    assert len(list(tmp_path.glob("op-*"))) == 1  # told the others (beside the period's file)
    assert first.share.check() == 0  # its own change

    assert second.share.check() == 1
    state = second.rollout.state(second.index["m"])  # type: ignore[arg-type]
    assert state.weights == {1: 50, 2: 0} and state.rolled_back == {2} and state.source == "rollback"
    assert state.events[0].trigger == "shared"
    assert state.events[0].reason.startswith("rollback from worker 0: error rate 50.0%")
    assert list(second.rollout.rollback_counts()) == [
        ({"model": "m", "version": "2", "trigger": "shared"}, 1)
    ]
    assert list(first.rollout.rollback_counts()) == [({"model": "m", "version": "2", "trigger": "auto"}, 1)]
    assert second.share.check() == 0  # once


def test_a_rollback_from_before_a_reload_is_not_applied_after_it(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path, entry("a")), Worker(1, tmp_path, entry("b"))  # second reloaded
    first.fail_version_2()
    assert second.share.check() == 0 and second.weights() == {1: 50, 2: 50}


def test_a_rollback_after_a_reload_waits_for_the_other_worker_to_reload_too(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path, entry("b")), Worker(1, tmp_path, entry("a"))  # first reloaded
    assert second.weights() == {1: 50, 2: 50}
    first.fail_version_2()
    assert second.share.check() == 0 and second.weights() == {1: 50, 2: 50}
    second.index["m"] = entry("b")  # its reload: the same files as the first's
    assert second.share.check() == 1 and second.weights() == {1: 50, 2: 0}


def test_a_model_not_ready_or_unknown_here_waits_and_junk_files_are_passed_over(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path, entry()), Worker(1, tmp_path, entry())
    (tmp_path / "junk.json").write_text("{")
    (tmp_path / ".half-written.json.tmp").write_text("{")
    assert second.weights() == {1: 50, 2: 50}
    model = second.index.pop("m")
    first.fail_version_2()
    assert second.share.check() == 0  # unknown here
    model.state = "LOADING"
    second.index["m"] = model
    assert second.share.check() == 0  # not ready
    model.state = "READY"
    assert second.share.check() == 1 and second.weights() == {1: 50, 2: 0}


def test_a_directory_that_cannot_be_read_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(0, tmp_path / "gone", entry())
    assert worker.share.check() == 0 and worker.share.check() == 0
    assert len([r for r in caplog.records if "cannot read" in r.getMessage()]) == 1
    worker.fail_version_2()  # the local rollback stands though it cannot be told
    assert worker.weights() == {1: 50, 2: 0}
    assert any("cannot tell the other workers" in r.getMessage() for r in caplog.records)
