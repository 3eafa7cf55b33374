"""A survivor of the 2026-12-05 mutation run in server/models/rollout_snapshot.py: the reader's refusal
of weights that route nothing, checked word for word (earlier tests matched "field 'weights'" only,
which the mutant's "XX...XX" message still held)."""

from __future__ import annotations

import pytest

from server.models.rollout_snapshot import snapshot_from_raw


def raw_snapshot(weights: object) -> dict[str, object]:
    return {
        "model": "m", "generation": "g", "seq": 3, "weights": weights, "source": "config",
        "rolled_back": [], "shadow_stopped": False, "shadow_promoted": False, "events": [],
        "rollbacks": [],
    }  # fmt: skip


@pytest.mark.parametrize("weights", [[[1, 100], [2, -1]], [[1, 0], [2, 0]]])
def test_weights_that_route_nothing_are_refused_with_the_whole_reason(weights: object) -> None:
    """The reason is what the worker logs when it passes the snapshot over: it must say which field
    and why, as written (a negative weight, or none positive)."""
    with pytest.raises(ValueError) as caught:
        snapshot_from_raw(raw_snapshot(weights))
    assert str(caught.value) == "field 'weights' has a negative weight or none positive"
