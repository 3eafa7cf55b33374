"""Under `--workers N`: the weights a model's generation's change log sets (rollout_ops.py), read
from its files without a state, for a lazy model not loaded in this worker: its early judge routes
a request naming no version by them, as the load's state will (built from the config's policy, then
the same log applied in order: RolloutShare.built). Only the weights: how each change moves them
is how Rollout applies it (set_weights, promote, follow), refusals included.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from server.models.rollout_ops import OperatorChange, change_file_name, log_key, read_change
from server.models.rollout_snapshot import read_snapshot, snapshot_file_name

Weights = dict[int, int] | None  # None: no policy, the newest version takes every request


def logged_weights(
    directory: Path, model: str, generation: str, weights: Mapping[int, int] | None, served: Collection[int]
) -> Weights:
    """`weights` (the config's) after every change `model`'s log for `generation` holds, as a state
    serving `served` applies them (RolloutShare.catch_up): from change 1, or from the log's snapshot
    when the next change's file was compacted away. An unreadable file is passed over, as there."""
    current: Weights = None if weights is None else dict(weights)
    seq, snapshots = 1, True
    while True:
        try:
            change: OperatorChange | None = read_change(directory / change_file_name(model, generation, seq))
        except FileNotFoundError:
            snapshot = _snapshot(directory, model, generation) if snapshots else None
            if snapshot is None or snapshot[0] < seq:  # nothing logged after `seq` yet
                return current
            seq, current, snapshots = snapshot[0] + 1, snapshot[1], False
            continue
        except (OSError, ValueError, RecursionError):  # passed over by every worker
            change = None
        if change is not None and (change.model, change.generation, change.seq) == (model, generation, seq):
            current = applied(current, change, served)
        seq += 1


def applied(weights: Weights, change: OperatorChange, served: Collection[int]) -> Weights:
    """`weights` after `change` (a refused change leaves them: Rollout.check_weights, auto_refusal)."""
    if change.kind == "carry" and change.state is not None:  # what the files before had, as restore
        return None if change.state.weights is None else dict(change.state.weights)
    if change.kind == "weights":
        asked = dict(change.weights)
        valid = set(asked) <= set(served) and any(w > 0 for w in asked.values())
        return asked if valid else weights
    if change.kind == "promote" and change.versions:
        return {change.versions[0]: 100} if change.versions[0] in served else weights
    for version in change.versions:  # a rollback: out of weighted traffic unless the only version in it
        others = any(w > 0 for v, w in (weights or {}).items() if v != version)
        if weights is not None and version in served and weights.get(version, 0) > 0 and others:
            weights = {**weights, version: 0}
    return weights


def _snapshot(directory: Path, model: str, generation: str) -> tuple[int, Weights] | None:
    """(its seq, its weights) of the log's snapshot; None when none can be read."""
    try:
        snapshot = read_snapshot(directory / snapshot_file_name(log_key(model, generation)))
    except (OSError, ValueError, RecursionError):
        return None
    if snapshot.model != model or snapshot.generation != generation:
        return None
    return snapshot.seq, None if snapshot.weights is None else dict(snapshot.weights)
