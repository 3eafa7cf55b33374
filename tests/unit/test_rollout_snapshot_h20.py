"""A rollout snapshot whose weights route nothing (all 0, or a negative one) is no snapshot: passed
over, said once, as any unreadable one (server/models/rollout_snapshot.py `read_snapshot`). No state
writes one, but a corrupt or hand-edited file had passed the reader and made `restore` raise
ValueError inside `catch_up`, failing the model's load (found by the day's mutation run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.models.rollout_snapshot import read_snapshot


def snapshot_file(tmp_path: Path, weights: object) -> Path:
    raw = {
        "model": "m", "generation": "g", "seq": 3, "weights": weights, "source": "config",
        "rolled_back": [], "shadow_stopped": False, "shadow_promoted": False, "events": [],
        "rollbacks": [],
    }  # fmt: skip
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("weights", [[[1, 0], [2, 0]], [[1, 100], [2, -1]], []])
def test_weights_that_route_nothing_are_refused_by_the_reader(tmp_path: Path, weights: object) -> None:
    with pytest.raises(ValueError, match="field 'weights'"):
        read_snapshot(snapshot_file(tmp_path, weights))


@pytest.mark.parametrize("weights", [None, [[1, 0], [2, 100]], [[3, 1]]])
def test_weights_that_route_are_read(tmp_path: Path, weights: list[list[int]] | None) -> None:
    snapshot = read_snapshot(snapshot_file(tmp_path, weights))
    assert snapshot.weights == (None if weights is None else tuple(tuple(p) for p in weights))
