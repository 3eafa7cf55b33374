"""Under --workers, the change log is compacted (server/models/rollout_ops.py's compact,
rollout_snapshot.py): after many changes a log holds a bounded number of files, and every worker
(one that fell behind, one whose state is built later, one that claims after a compaction) ends in
the state one process applying every change would have; a compacted number is never claimed again;
a check with nothing new still opens one file."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.models import rollout_ops, rollout_share
from server.models.rollout import Rollout
from server.models.rollout_ops import OperatorChange, claim, parse_name
from server.models.rollout_share import generation
from tests.support.rollout_workers import Worker as SharingWorker
from tests.support.rollout_workers import model_entry

POLICY = {"traffic_weights": "1:50,2:25,3:25", "rollback_window_s": "10", "rollback_min_requests": "20"}
CHANGES = 200
MAX_CHANGE_FILES = 63  # 2 * COMPACT_EVERY - 1: the last COMPACT_EVERY kept, up to 31 since


def entry() -> SimpleNamespace:
    """A freshly loaded ready model "m", versions 1 to 3."""
    return model_entry(policy=POLICY, versions=(1, 2, 3))


class Worker(SharingWorker):
    """One worker of the drill, its model "m" (versions 1 to 3) loaded and its state built."""

    def __init__(self, index: int, directory: Path) -> None:
        super().__init__(index, directory, entry())
        self.rollout.state(self.index["m"])  # it has routed: the state checks follow

    def state(self) -> tuple[object, ...]:
        s = self.rollout.state(self.index["m"])
        return s.weights, s.source, sorted(s.rolled_back), s.log_seq


def step(seq: int) -> tuple[str, int | None, dict[int, int]]:
    """Change `seq` of the drill: mostly weights, a rollback or a promotion now and then."""
    if seq % 37 == 0:
        return "rollback", None, {}
    if seq % 53 == 0:
        return "promote", 1 + seq % 3, {}
    return "weights", None, {1: seq % 90 + 1, 2: seq % 7, 3: seq % 5}


def one_process() -> tuple[object, ...]:
    """The state a single process applying the drill's changes in order ends in."""
    rollout, model = Rollout(clock=lambda: 100.0, wall=lambda: 0.0), entry()
    for seq in range(1, CHANGES + 1):
        kind, version, weights = step(seq)
        if kind == "weights":
            rollout.set_weights(model, weights)  # type: ignore[arg-type]
        elif kind == "promote" and version is not None:
            rollout.promote(model, version)  # type: ignore[arg-type]
        else:
            rollout.roll_back(model, version, "drill")  # type: ignore[arg-type]
    s = rollout.state(model)  # type: ignore[arg-type]
    return s.weights, s.source, sorted(s.rolled_back), CHANGES


def change_files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if parse_name(name) is not None)


def test_many_changes_leave_a_bounded_log_and_every_worker_in_one_process_state(tmp_path: Path) -> None:
    first, second, behind = Worker(0, tmp_path), Worker(1, tmp_path), Worker(2, tmp_path)
    behind.share.check()  # its state is at change 0; it checks no more until the end
    for seq in range(1, CHANGES + 1):
        kind, version, weights = step(seq)
        (first, second)[seq % 2].share.submit(first.index["m"] if seq % 2 == 0 else second.index["m"],
                                              kind, version, weights, "drill")  # fmt: skip
        if seq == 40:
            second.share.check()
    assert len(change_files(tmp_path)) <= MAX_CHANGE_FILES, len(change_files(tmp_path))
    later = Worker(3, tmp_path)  # builds its state now (a lazy model's first load)
    assert later.state()[3] == CHANGES and later.share.files_opened <= MAX_CHANGE_FILES + 2
    assert behind.state()[3] == 0
    for worker in (first, second, behind):
        worker.share.check()
    expected = one_process()
    assert first.state() == second.state() == behind.state() == later.state() == expected
    # The log's next change reaches all of them from there, the one that fell behind included.
    behind.share.submit(behind.index["m"], "weights", None, {1: 1, 2: 2, 3: 97}, "drill")
    for worker in (first, second, later):
        worker.share.check()
    assert {w.state()[0] == {1: 1, 2: 2, 3: 97} for w in (first, second, behind, later)} == {True}


def test_a_worker_whose_claim_races_a_compaction_takes_the_snapshot_and_the_next_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    second.share.check()
    real_claim = rollout_share.claim
    every = rollout_ops.COMPACT_EVERY
    raced: list[int] = []

    def claim_after_the_others(directory: Path, change: OperatorChange) -> bool:
        if not raced:  # between second's look at the log and its link: 2 compactions go by
            raced.append(change.seq)
            for seq in range(1, 2 * every + 1):
                first.share.submit(first.index["m"], "weights", None, {1: seq, 2: 1, 3: 1}, "drill")
        return real_claim(directory, change)

    monkeypatch.setattr(rollout_share, "claim", claim_after_the_others)
    second.share.submit(second.index["m"], "weights", None, {1: 5, 2: 5, 3: 90}, "drill")
    assert raced == [1]  # it had looked for number 1, taken and compacted away meanwhile
    first.share.check()
    assert first.state() == second.state() == ({1: 5, 2: 5, 3: 90}, "admin", [], 2 * every + 1)


def test_a_compacted_number_is_never_claimed_again(tmp_path: Path) -> None:
    worker = Worker(0, tmp_path)
    every = rollout_ops.COMPACT_EVERY
    for seq in range(1, 2 * every + 1):
        worker.share.submit(worker.index["m"], "weights", None, {1: seq, 2: 1, 3: 1}, "drill")
    gen = generation(entry())  # type: ignore[arg-type]
    assert rollout_ops.change_file_name("m", gen, every) not in change_files(tmp_path)  # compacted
    old = OperatorChange("m", gen, every, 1, "weights", ((1, 1), (2, 99)), (), "", 1.0)
    assert not claim(tmp_path, old)  # its file is gone, but the snapshot covers the number
    assert rollout_ops.change_file_name("m", gen, every) not in change_files(tmp_path)


def test_a_check_with_nothing_new_opens_one_file_after_compactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    for seq in range(1, 3 * rollout_ops.COMPACT_EVERY + 1):
        first.share.submit(first.index["m"], "weights", None, {1: seq, 2: 1, 3: 1}, "drill")
    second.share.check()  # the directory changed since its last look: the snapshot too
    assert second.state() == first.state()
    opened = second.share.files_opened
    monkeypatch.setattr(rollout_share, "PROBE_EVERY", 10**9)  # not the periodic look this time
    assert second.share.check() == 0
    assert second.share.files_opened - opened == 1  # the next change's name only


def test_a_compaction_the_directory_time_missed_is_found_within_probe_every_checks(
    tmp_path: Path,
) -> None:
    first, second = Worker(0, tmp_path), Worker(1, tmp_path)
    second.share.check()
    for seq in range(1, 2 * rollout_ops.COMPACT_EVERY + 1):
        first.share.submit(first.index["m"], "weights", None, {1: seq, 2: 1, 3: 1}, "drill")
    # As if all of it happened within the clock tick of second's last look at the directory.
    second.share._probed_stamp = os.stat(tmp_path).st_mtime_ns
    for _ in range(rollout_share.PROBE_EVERY):
        second.share.check()
    assert second.state() == first.state()
