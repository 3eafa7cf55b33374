"""A survivor of the 2026-12-05 mutation run in server/models/rollout_replay.py: a carried state with no
weights (no policy: the newest version takes every request) replayed as None. The mutant that always
copied the state's weights called dict(None) and the replay raised TypeError."""

from __future__ import annotations

from pathlib import Path

from server.models.rollout_ops import OperatorChange, claim
from server.models.rollout_replay import logged_weights
from server.models.rollout_snapshot import Snapshot


def carried(weights: tuple[tuple[int, int], ...] | None) -> OperatorChange:
    """Change 1 of generation "g": the state the files before had (a carry)."""
    state = Snapshot("m", "g", 1, weights, "admin", (), False, False, (), ())
    return OperatorChange("m", "g", 1, 0, "carry", (), (), "", 0.0, state)


def test_a_carried_state_without_weights_replays_as_no_policy(tmp_path: Path) -> None:
    """The config's 50/50 is replaced by the carried state's "no weights": None, not a crash."""
    assert claim(tmp_path, carried(None))
    assert logged_weights(tmp_path, "m", "g", {1: 50, 2: 50}, {1, 2}) is None


def test_a_carried_state_with_weights_replays_as_a_copy_of_them(tmp_path: Path) -> None:
    """The other branch of the same line: the carried weights, whatever the config said."""
    assert claim(tmp_path, carried(((1, 10), (2, 90))))
    assert logged_weights(tmp_path, "m", "g", None, {1, 2}) == {1: 10, 2: 90}
