"""Under --workers, a worker that starts from the log's snapshot (server/models/rollout_snapshot.py)
shows the rollback events as it would have recorded them applying every change itself: its own
operator rollbacks `manual`, its own window's `auto`, the others' `shared` naming the worker, with
the reason as a follower shows it. It had shown them as the snapshot's writer saw them."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from google.protobuf import text_format

from batcher.stats import ModelStats
from protos import model_config_pb2 as mc
from server.errors import ModelNotFound
from server.models.rollout import Rollout
from server.models.rollout_ops import COMPACT_EVERY, change_file_name
from server.models.rollout_share import RolloutShare

POLICY = {"traffic_weights": "1:50,2:25,3:25", "rollback_window_s": "10", "rollback_min_requests": "20"}
LOGGED = 2 * COMPACT_EVERY + 6  # changes: a snapshot at 2 * COMPACT_EVERY, its early files removed
CLAIMANTS = 3  # workers 0..2 send changes; worker 3 only follows


def entry() -> SimpleNamespace:
    """A freshly loaded ready model "m", versions 1 to 3."""
    text = "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in POLICY.items()
    )
    cfg = text_format.Parse(text, mc.ModelConfig())
    versions = {
        v: SimpleNamespace(config=cfg, stats=ModelStats(), name="m", version=v, fingerprint=("a", v))
        for v in (1, 2, 3)
    }
    return SimpleNamespace(name="m", versions=versions, order=[3, 2, 1], state="READY")


class Worker:
    """One worker: its rollout, its model index and its share of the directory."""

    def __init__(self, index: int, directory: Path) -> None:
        self.rollout = Rollout(clock=lambda: 100.0, wall=lambda: 0.0)
        self.index: dict[str, Any] = {"m": entry()}
        self.share = RolloutShare(directory, index, self)  # type: ignore[arg-type]
        self.rollout.state(self.index["m"])  # built: the log so far applied

    def entry(self, name: str) -> Any:
        if name not in self.index:
            raise ModelNotFound(name)
        return self.index[name]

    def seen(self) -> tuple[object, ...]:
        """What RolloutStatus shows of the state: weights, source, rolled back, events."""
        s = self.rollout.state(self.index["m"])
        events = [(e.version, e.trigger, e.reason, e.unix_time) for e in s.events]
        return s.weights, s.source, sorted(s.rolled_back), s.log_seq, events


def change(workers: list[Worker], step: int) -> None:
    """Step `step` of the drill, sent to (or decided by) worker step % CLAIMANTS: weights that bring
    versions 2 and 3 back, operator rollbacks with and without a reason, automatic rollbacks."""
    worker = workers[step % CLAIMANTS]
    model = worker.index["m"]
    version = 2 + step % 2
    if step % 4 == 1:
        reason = "" if step % 8 == 1 else f"drill {step}\x07 bell"  # a follower shows it on one line
        worker.share.submit(model, "rollback", version, {}, reason)
    elif step % 4 == 3:
        worker.share.auto_rollback(model, version, f"error rate 50% (step {step})")
    else:
        worker.share.submit(model, "weights", None, {1: 50, 2: 10 + step % 7, 3: 20}, "")


def test_a_worker_starting_from_the_snapshot_shows_the_events_it_would_have_recorded(
    tmp_path: Path,
) -> None:
    live = [Worker(i, tmp_path) for i in range(CLAIMANTS + 1)]
    step = 0
    while live[0].seen()[3] < LOGGED:
        change(live, step)
        for worker in live:
            worker.share.check()  # every change applied one by one
        step += 1
    assert not os.path.exists(
        tmp_path / change_file_name("m", live[0].rollout.state(live[0].index["m"]).generation, 1)
    )
    triggers = {e[1] for e in live[0].seen()[4]}
    assert {"manual", "auto", "shared"} <= triggers, triggers  # its own and the others' in the window
    for index, reference in enumerate(live):
        later = Worker(index, tmp_path)  # the same worker, its state built now: from the snapshot
        assert later.seen() == reference.seen(), f"worker {index}"
