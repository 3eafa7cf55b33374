"""Under --workers, a worker that starts from the log's snapshot (server/models/rollout_snapshot.py)
counts the rollbacks of the changes it skipped in its /metrics rollback counters
(`sluiceway_rollbacks_total`, Rollout.rollback_counts) as applying each change would have: its own
`manual` and `auto`, the others' `shared`. They had skipped them.

The drill of tests/unit/test_rollout_snapshot_events.py: workers 0..2 send weights, operator
rollbacks and automatic rollbacks in turn, worker 3 follows; a snapshot at 2 * COMPACT_EVERY."""

from __future__ import annotations

import os
from pathlib import Path

from server.models.rollout_ops import change_file_name
from tests.unit.test_rollout_snapshot_events import CLAIMANTS, LOGGED, Worker, change

BEHIND_AT = 12  # steps a worker that falls behind applies one by one before it stops looking


def counts(worker: Worker) -> list[tuple[str, str, str, int]]:
    """Its sluiceway_rollbacks_total series: (model, version, trigger, count)."""
    return sorted((s["model"], s["version"], s["trigger"], n) for s, n in worker.rollout.rollback_counts())


def test_a_worker_starting_from_the_snapshot_counts_the_rollbacks_it_skipped(tmp_path: Path) -> None:
    live = [Worker(i, tmp_path) for i in range(CLAIMANTS + 1)]
    behind = live[2]  # worker 2 until step BEHIND_AT; then it stops and another worker 2 goes on
    step = 0
    while live[0].seen()[3] < LOGGED:
        if step == BEHIND_AT:
            live[2] = Worker(2, tmp_path)  # applies changes 1..BEHIND_AT itself
        change(live, step)
        for worker in live:
            worker.share.check()  # every change applied one by one
        step += 1
    generation = live[0].rollout.state(live[0].index["m"]).generation
    assert not os.path.exists(tmp_path / change_file_name("m", generation, BEHIND_AT + 1))
    triggers = {trigger for _, _, trigger, _ in counts(live[0])}
    assert {"manual", "auto", "shared"} <= triggers, triggers
    assert {"manual", "auto"} <= {trigger for _, _, trigger, _ in counts(behind)}  # its own, early

    behind.share.check()  # its next change is gone: from the snapshot, then the files after it
    assert behind.seen() == live[2].seen()
    assert counts(behind) == counts(live[2])
    for index, reference in enumerate(live):
        later = Worker(index, tmp_path)  # the same worker, its state built now: from the snapshot
        assert counts(later) == counts(reference), f"worker {index}"
