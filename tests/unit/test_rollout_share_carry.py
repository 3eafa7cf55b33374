"""Under --workers, a reload of other files (a new generation, its own log) keeps what one process
keeps (rollout_carry.carried_snapshot): the first worker to build a state for the new files logs
the state the files before had come to as change 1 of their log, and every worker takes that
change, whatever its own state was (simulated workers sharing a directory, fake entries)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.models.rollout_ops import change_file_name, read_change
from server.models.rollout_periods import STALE_LOG_S
from server.models.rollout_share import generation
from tests.support.rollout_workers import Worker, model_entry


def added(model: SimpleNamespace, version: int) -> SimpleNamespace:
    """`model` reloaded with a version directory added: the other versions kept as they were (the
    same instances, as the manager keeps a version whose files did not change)."""
    extra = model_entry(f"new{version}", versions=(version,)).versions[version]
    versions = {**model.versions, version: extra}
    return SimpleNamespace(name=model.name, versions=versions, order=sorted(versions, reverse=True),
                           state="READY")  # fmt: skip


def state(worker: Worker) -> tuple[dict[int, int] | None, set[int], str]:
    found = worker.rollout.state(worker.index["m"])
    return found.weights, found.rolled_back, found.source


def test_a_rollback_outlives_a_version_added_in_every_worker_even_one_behind(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path, model_entry()), Worker(1, tmp_path, model_entry())
    assert state(second)[0] == {1: 50, 2: 50}
    first.submit("rollback", 2)  # the second has not checked since: its state is behind
    old = first.index["m"]
    second.index["m"] = added(second.index["m"], 3)  # the second reloads first
    assert state(second) == ({1: 50, 2: 0}, {2}, "rollback")  # the old log applied, then carried
    new = second.index["m"]
    log = second.rollout.state(new).generation  # a new period of these files (rollout_periods.py)
    carried = read_change(tmp_path / change_file_name("m", log, 1))
    assert carried.kind == "carry" and carried.worker == 1 and carried.state is not None

    first.index["m"] = added(old, 3)
    assert state(first) == ({1: 50, 2: 0}, {2}, "rollback")  # took change 1, logged nothing itself
    events = first.rollout.state(first.index["m"]).events
    assert [(e.version, e.trigger) for e in events] == [(2, "manual")]  # its own rollback, as before
    assert [(e.version, e.trigger) for e in second.rollout.state(new).events] == [(2, "shared")]
    assert first.rollout.state(first.index["m"]).generation == log
    assert sorted(p.name for p in tmp_path.glob("op-*")) == sorted(
        [change_file_name("m", generation(old), 1), carried.file_name()]  # type: ignore[arg-type]
    )
    # A lazy model's early judge in a third worker routes by the carried weights too.
    assert second.share.logged_weights("m", generation(new), {1: 50, 2: 50, 3: 0}, {1, 2, 3}) == {  # type: ignore[arg-type]
        1: 50,
        2: 0,
    }

    second.submit("weights", weights={1: 40, 3: 60})  # the new files' log goes on after change 1
    first.share.check()
    assert state(first)[0] == state(second)[0] == {1: 40, 3: 60}


def test_new_files_for_a_version_the_weights_name_keep_the_rollbacks_only(tmp_path: Path) -> None:
    policy = {"traffic_weights": "1:50,2:30,3:20"}
    first = Worker(0, tmp_path, model_entry(versions=(1, 2, 3), policy=policy))
    second = Worker(1, tmp_path, model_entry(versions=(1, 2, 3), policy=policy))
    first.submit("rollback", 3)
    first.submit("weights", weights={1: 10, 2: 90, 3: 0})
    second.share.check()
    for worker in (first, second):  # version 2 redeployed: the operator's weights name it
        old = worker.index["m"]
        redeployed = model_entry("b", versions=(2,), policy=policy).versions[2]
        worker.index["m"] = SimpleNamespace(name="m", versions={**old.versions, 2: redeployed},
                                            order=[3, 2, 1], state="READY")  # fmt: skip
    assert state(first) == state(second) == ({1: 50, 2: 30, 3: 0}, {3}, "rollback")


def test_a_state_the_config_set_logs_nothing_and_the_config_applies(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path, model_entry()), Worker(1, tmp_path, model_entry())
    for worker in (first, second):
        state(worker)
        worker.index["m"] = added(worker.index["m"], 3)
        assert state(worker) == ({1: 50, 2: 50}, set(), "config")
    assert not any(tmp_path.glob("op-*"))


def test_a_carry_naming_another_generation_is_no_change(tmp_path: Path) -> None:
    first = Worker(0, tmp_path, model_entry())
    first.submit("rollback", 2)
    first.index["m"] = added(first.index["m"], 3)
    path = tmp_path / change_file_name("m", first.rollout.state(first.index["m"]).generation, 1)
    raw = json.loads(path.read_text())
    raw["state"]["generation"] = "0" * 64
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="field 'state'"):
        read_change(path)


def removed(model: SimpleNamespace, version: int) -> SimpleNamespace:
    """`model` reloaded without `version`: the others kept as they were."""
    versions = {v: m for v, m in model.versions.items() if v != version}
    return SimpleNamespace(name=model.name, versions=versions, order=sorted(versions, reverse=True),
                           state="READY")  # fmt: skip


def test_files_served_again_start_a_new_period_not_their_old_log(tmp_path: Path) -> None:
    # A version added and removed again: the same files as at first, whose log held a SetWeights.
    # Every worker had replayed that log from change 1: the rollback made since was lost (a tester).
    first, second = Worker(0, tmp_path, model_entry()), Worker(1, tmp_path, model_entry())
    first.submit("weights", weights={1: 50, 2: 50})
    second.share.check()
    for worker in (first, second):
        worker.index["m"] = added(worker.index["m"], 3)
        state(worker)
    first.submit("rollback", 2)
    second.share.check()
    for worker in (first, second):
        worker.index["m"] = removed(worker.index["m"], 3)
        assert state(worker) == ({1: 50, 2: 0}, {2}, "rollback"), worker
    assert first.rollout.state(first.index["m"]).generation != generation(first.index["m"])  # type: ignore[arg-type]


def test_a_worker_left_on_an_older_period_of_the_same_files_follows_the_current_one(tmp_path: Path) -> None:
    first, second = Worker(0, tmp_path, model_entry()), Worker(1, tmp_path, model_entry())
    state(second)
    original = first.index["m"]
    first.index["m"] = added(original, 3)  # the files changed and changed back before the second looked
    first.submit("rollback", 2)
    first.index["m"] = original
    assert state(first) == ({1: 50, 2: 0}, {2}, "rollback")
    assert state(second) == ({1: 50, 2: 50}, set(), "config")  # on the first period's log
    second.share.check()
    assert state(second) == ({1: 50, 2: 0}, {2}, "rollback")
    assert second.rollout.state(second.index["m"]).generation == first.rollout.state(original).generation


def test_a_worker_behind_does_not_move_the_others_period_back(tmp_path: Path) -> None:
    first = Worker(0, tmp_path, added(model_entry(), 3))  # already on the new files
    first.submit("weights", weights={1: 10, 3: 90})
    second = Worker(1, tmp_path, model_entry())  # builds its first state on the old files
    assert state(second)[0] == {1: 50, 2: 50}
    second.index["m"] = first.index["m"]  # it reloads the new files: the first's period
    assert state(second)[0] == {1: 10, 3: 90}


def test_an_unload_ends_the_period_the_next_load_starts_from_the_config(tmp_path: Path) -> None:
    first = Worker(0, tmp_path, model_entry())
    first.submit("weights", weights={1: 90, 2: 10})
    first.rollout.forget("m")
    assert state(first) == ({1: 50, 2: 50}, set(), "config")  # one process: the config's too


def test_logs_of_old_periods_are_removed_at_a_switch_once_stale(tmp_path: Path) -> None:
    first = Worker(0, tmp_path, model_entry())
    first.submit("weights", weights={1: 90, 2: 10})
    old_log = next(tmp_path.glob("op-*"))
    first.index["m"] = added(first.index["m"], 3)
    state(first)
    first.index["m"] = added(first.index["m"], 4)
    state(first)
    assert old_log.exists()  # written just now: a worker may still be on it
    stale = old_log.stat().st_mtime - 2 * STALE_LOG_S
    os.utime(old_log, (stale, stale))
    first.index["m"] = added(first.index["m"], 5)
    state(first)
    assert not old_log.exists()
