"""A reload that does not carry a model's rollout state whole, in one process
(server/models/rollout_carry.py): a version the state names got new files, so the config's weights
apply, but the versions rolled back whose files are the same stay rolled back (carry_rollbacks);
the weights an evicted state's next load routes by, as the lazy model's early judge predicts them
(carried_weights); and the rule both share (weights_without). The cases mutmut found untested
(integration tests alone reached them). Unit tests: stand-in model entries, no server."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import SimpleNamespace
from typing import cast

import pytest

from server.models.rollout import Rollout
from server.models.rollout_carry import carried_weights, carry_rollbacks, weights_without
from server.models.rollout_state import ModelRollout
from server.models.traffic import parse_policy
from server.models.versions import ModelEntry
from tests.support.rollout_workers import model_entry

THREE = {"traffic_weights": "1:50,2:30,3:20"}
SHADOWED = {"traffic_weights": "1:50,2:50", "shadow_version": "3", "shadow_fraction": "0.5"}
LOGGER = "server.models.rollout_carry"


def loaded(policy: Mapping[str, str], files: Mapping[int, str]) -> ModelEntry:
    """A freshly loaded model whose version `v` was loaded from `files[v]` (every one a new instance,
    as after an eviction), with `policy` as its config's parameters."""
    versions = {v: model_entry(f, policy=policy, versions=(v,)).versions[v] for v, f in files.items()}
    return cast(
        ModelEntry,
        SimpleNamespace(name="m", versions=versions, order=sorted(versions, reverse=True), state="READY"),
    )


def redeployed(entry: ModelEntry, version: int) -> ModelEntry:
    """`entry` reloaded with new files for `version`: the other versions kept (the same instances, as
    the manager keeps a version whose files did not change)."""
    before = entry.versions[version]
    versions = {
        **entry.versions,
        version: SimpleNamespace(**{**vars(before), "fingerprint": ("new", version)}),
    }
    return cast(
        ModelEntry,
        SimpleNamespace(name="m", versions=versions, order=sorted(versions, reverse=True), state="READY"),
    )


def rolled_back(
    policy: Mapping[str, str],
    versions: tuple[int, ...],
    rollbacks: tuple[int, ...],
    weights: dict[int, int] | None = None,
) -> tuple[Rollout, ModelEntry, ModelRollout]:
    """One process's rollout of a model serving `versions` (all from the same files), its weights set
    by an operator to `weights` (None: the config's), then `rollbacks` rolled back in turn:
    (the rollout, the entry, its state)."""
    rollout = Rollout(clock=lambda: 100.0, wall=lambda: 0.0)
    entry = loaded(policy, dict.fromkeys(versions, "a"))
    rollout.state(entry)
    if weights is not None:
        rollout.set_weights(entry, weights)
    for version in rollbacks:
        rollout.roll_back(entry, version, f"v{version} failed")
    return rollout, entry, rollout.state(entry)


def fresh(entry: ModelEntry) -> ModelRollout:
    """The state a load of `entry` starts from: its config's (built by a rollout that had none)."""
    return Rollout(clock=lambda: 100.0, wall=lambda: 0.0).state(entry)


def rollback_events(state: ModelRollout) -> list[tuple[int, str, str]]:
    return [(e.version, e.trigger, e.reason) for e in state.events]


# -- carry_rollbacks: a reload with new files for a version the state names -----------------------


def test_new_files_for_a_weighted_version_take_the_configs_weights_and_keep_the_rollback() -> None:
    """The operator's weights go (they name a version loaded from new files); the config's apply,
    the version rolled back (its files the same) at 0; rolled back by "rollback", its events kept."""
    _, entry, old = rolled_back(THREE, (1, 2, 3), (3,), weights={1: 10, 2: 60, 3: 30})
    assert old.weights == {1: 10, 2: 60, 3: 0}
    new = fresh(redeployed(entry, 1))
    assert carry_rollbacks(old, new) is True
    assert new.weights == {1: 50, 2: 30, 3: 0}
    assert new.slices is not None and (new.slices.versions, new.slices.weights) == ((1, 2), (50, 30))
    assert new.rolled_back == {3} and new.rolled_back is not old.rolled_back
    assert new.source == "rollback"
    assert rollback_events(new) == [(3, "manual", "v3 failed")]


def test_a_rolled_back_version_with_new_files_comes_back_at_its_configs_weight() -> None:
    """Nothing is kept when the version rolled back was itself redeployed: False, the config's state."""
    _, entry, old = rolled_back(THREE, (1, 2, 3), (3,))
    new = fresh(redeployed(entry, 3))
    assert carry_rollbacks(old, new) is False
    assert (new.weights, new.rolled_back, new.source) == ({1: 50, 2: 30, 3: 20}, set(), "config")
    assert rollback_events(new) == []


def test_rollbacks_are_not_kept_when_no_other_version_would_take_requests() -> None:
    """The config's weights with the rolled-back version at 0 route nothing: the config's apply."""
    _, entry, old = rolled_back({"traffic_weights": "1:0,2:100"}, (1, 2), (2,), weights={1: 50, 2: 50})
    assert old.weights == {1: 50, 2: 0}
    new = fresh(redeployed(entry, 1))
    assert carry_rollbacks(old, new) is False
    assert (new.weights, new.rolled_back, new.source) == ({1: 0, 2: 100}, set(), "config")


def test_a_version_left_at_weight_one_takes_the_requests() -> None:
    _, entry, old = rolled_back({"traffic_weights": "1:1,2:99"}, (1, 2), (2,))
    new = fresh(redeployed(entry, 1))
    assert carry_rollbacks(old, new) is True
    assert (new.weights, new.rolled_back, new.source) == ({1: 1, 2: 0}, {2}, "rollback")


def test_the_shadow_stops_when_its_version_stays_rolled_back() -> None:
    _, entry, old = rolled_back(SHADOWED, (1, 2, 3), (3,))
    assert old.shadow is not None and old.shadow.policy.fraction == 0  # stopped by the rollback
    new = fresh(redeployed(entry, 1))
    assert new.shadow is not None and new.shadow.policy.fraction == 0.5  # the config's
    assert carry_rollbacks(old, new) is True
    assert new.shadow is not None and new.shadow.policy.version == 3 and new.shadow.policy.fraction == 0
    assert (new.weights, new.rolled_back) == ({1: 50, 2: 50, 3: 0}, {3})


def test_the_shadow_goes_on_when_another_version_stays_rolled_back() -> None:
    _, entry, old = rolled_back(SHADOWED, (1, 2, 3), (2,))
    new = fresh(redeployed(entry, 1))
    assert carry_rollbacks(old, new) is True
    assert new.shadow is not None and new.shadow.policy.version == 3 and new.shadow.policy.fraction == 0.5
    assert (new.weights, new.rolled_back) == ({1: 50, 2: 0}, {2})


def test_a_reload_keeping_rollbacks_routes_by_them_and_says_which_versions_stay_rolled_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through Rollout.state: the whole log line, the versions kept rolled back in order."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    rollout, entry, _ = rolled_back({"traffic_weights": "1:40,2:20,3:20,4:20"}, (1, 2, 3, 4), (3, 2))
    caplog.clear()
    state = rollout.state(redeployed(entry, 1))
    assert (state.weights, state.rolled_back, state.source) == (
        {1: 40, 2: 0, 3: 0, 4: 20},
        {2, 3},
        "rollback",
    )
    assert rollback_events(state) == [(3, "manual", "v3 failed"), (2, "manual", "v2 failed")]
    said = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert said == [
        "rollout: model m reloaded with new files for, or without, a version its weights name: "
        "the config's weights, "
        "version(s) 2, 3 kept rolled back: 1:40,2:0,3:0,4:20"
    ]


def test_a_reload_keeping_no_rollback_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rollout, entry, _ = rolled_back(THREE, (1, 2, 3), (3,))
    state = rollout.state(redeployed(entry, 3))
    assert (state.weights, state.source) == ({1: 50, 2: 30, 3: 20}, "config")
    assert not [r for r in caplog.records if r.name == LOGGER]


# -- carried_weights: the early judge's prediction for an evicted state's next load ---------------


def predicted_and_loaded(
    policy: Mapping[str, str], rollbacks: tuple[int, ...], weights: dict[int, int], files: Mapping[int, str]
) -> tuple[dict[int, int] | None, dict[int, int] | None]:
    """A model serving versions 1-3 from the same files, `weights` set and `rollbacks` rolled back,
    evicted, then loaded again from `files` (version -> files): (carried_weights of the kept state,
    the weights the load routes by)."""
    rollout, _, _ = rolled_back(policy, (1, 2, 3), rollbacks, weights)
    rollout.hold("m")
    kept = rollout.kept("m")
    assert kept is not None
    entry = loaded(policy, files)
    config = entry.versions[1].config
    fingerprints = {v: served.fingerprint for v, served in entry.versions.items()}
    predicted = carried_weights(kept, parse_policy(config, "model 'm'", entry.versions), fingerprints)
    return predicted, rollout.state(entry).weights


def test_evicted_new_files_for_a_weighted_version_predict_the_configs_weights_less_rollbacks() -> None:
    predicted, routed = predicted_and_loaded(THREE, (3,), {1: 10, 2: 60, 3: 30}, {1: "new", 2: "a", 3: "a"})
    assert predicted == routed == {1: 50, 2: 30, 3: 0}


def test_an_eviction_with_the_same_files_predicts_the_operators_weights() -> None:
    predicted, routed = predicted_and_loaded(THREE, (3,), {1: 10, 2: 60, 3: 30}, {1: "a", 2: "a", 3: "a"})
    assert predicted == routed == {1: 10, 2: 60, 3: 0}


def test_an_eviction_with_new_files_for_the_rolled_back_version_predicts_the_configs_routing() -> None:
    """None: the load routes by its config's weights, the rolled-back version among them."""
    predicted, routed = predicted_and_loaded(THREE, (3,), {1: 10, 2: 60, 3: 30}, {1: "a", 2: "a", 3: "new"})
    assert predicted is None and routed == {1: 50, 2: 30, 3: 20}


def test_without_a_policy_the_newest_version_not_kept_rolled_back_is_predicted_to_take_all() -> None:
    """A kept state with no policy (a stand-in: no rollback takes such a model's newest version out)
    whose rolled-back version 1 kept its files, version 3 (rolled back too) from new ones."""
    before = {1: ("a", 1), 2: ("a", 2), 3: ("a", 3)}
    old = cast(
        ModelRollout,
        SimpleNamespace(
            config_policy=None, weights=None, rolled_back={1, 3}, shadow=None, version_files=before
        ),
    )
    assert carried_weights(old, None, {**before, 3: ("b", 3)}) == {3: 100, 1: 0}


# -- weights_without: the rule both share ---------------------------------------------------------


def test_without_weights_the_newest_version_not_kept_takes_every_request() -> None:
    assert weights_without({1}, [1, 2, 3], None) == ({1}, {3: 100, 1: 0})
    assert weights_without({3}, [1, 2, 3], None) == ({3}, {2: 100, 3: 0})
    assert weights_without({1, 2}, [1, 2], None) is None  # nothing left to route


def test_the_configs_weights_with_the_kept_versions_at_zero() -> None:
    assert weights_without({2}, [1, 2, 3], {1: 50, 2: 30, 3: 20}) == ({2}, {1: 50, 2: 0, 3: 20})
    assert weights_without({2}, [1, 2], {1: 1, 2: 99}) == ({2}, {1: 1, 2: 0})
    assert weights_without({2}, [1, 2], {1: 0, 2: 100}) is None  # the others take nothing
    assert weights_without(set(), [1, 2], {1: 50, 2: 50}) is None  # none kept


def without(entry: ModelEntry, version: int) -> ModelEntry:
    """`entry` reloaded without `version`: the other versions kept (the same instances)."""
    versions = {v: e for v, e in entry.versions.items() if v != version}
    return cast(
        ModelEntry,
        SimpleNamespace(name="m", versions=versions, order=sorted(versions, reverse=True), state="READY"),
    )


def test_a_reload_without_a_weighted_version_keeps_the_rollbacks_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not only new files: a version the operator's weights name that is no longer served also ends
    the carry whole, and the log line says either."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    two = {"traffic_weights": "1:50,2:50"}
    rollout, entry, _ = rolled_back(two, (1, 2, 3), (2,), weights={1: 40, 2: 30, 3: 30})
    state = rollout.state(without(entry, 3))
    assert (state.weights, state.rolled_back, state.source) == ({1: 50, 2: 0}, {2}, "rollback")
    said = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert said == [
        "rollout: model m reloaded with new files for, or without, a version its weights name: "
        "the config's weights, version(s) 2 kept rolled back: 1:50,2:0"
    ]
