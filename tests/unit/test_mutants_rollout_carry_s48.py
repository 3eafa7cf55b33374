"""Survivors of the 2026-12-05 whole-scope mutmut run in server/models/rollout_carry.py: which
versions a rollout state names (weight 0 and weight 1 at the bounds), a kept instance served as
before whatever its fingerprint says, and the state one process would carry onto other files under
--workers (carried_snapshot: nothing for the config's state with a running shadow, a shadow
stopped by a rollback said stopped, an operator's weights carried, a promotion not carried by the
rollbacks kept). Unit tests: stand-in model entries (tests/support/rollout_workers.py), no server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from server.models.rollout import Rollout
from server.models.rollout_carry import carried_snapshot
from server.models.rollout_state import ModelRollout
from server.models.versions import ModelEntry
from tests.support.rollout_workers import model_entry
from tests.unit.test_mutants_rollout_carry import SHADOWED, THREE, fresh, loaded, redeployed, rolled_back


def added(entry: ModelEntry, version: int, policy: dict[str, str]) -> ModelEntry:
    """`entry` reloaded with `version` added from new files, its other versions kept (the same
    instances): other files under --workers (another generation), yet every version the state
    names served as before."""
    extra = model_entry("new", policy=policy, versions=(version,)).versions[version]
    versions = {**entry.versions, version: extra}
    return cast(
        ModelEntry,
        SimpleNamespace(name="m", versions=versions, order=sorted(versions, reverse=True), state="READY"),
    )


# -- named_versions: weights at 0 and at 1 -------------------------------------------------------


def test_new_files_for_a_version_at_weight_zero_keep_the_operators_weights() -> None:
    """A version the operator set to 0 (not rolled back) is not named: new files for it keep the
    weights. Counting weight 0 as named (`w >= 0`) reset them to the config's."""
    rollout, entry, _ = rolled_back(THREE, (1, 2, 3), (), weights={1: 60, 2: 40, 3: 0})
    state = rollout.state(redeployed(entry, 3))
    assert (state.weights, state.source) == ({1: 60, 2: 40, 3: 0}, "admin")


def test_new_files_for_a_version_at_weight_one_take_the_configs_weights() -> None:
    """A version at weight 1 takes requests, so it is named: new files for it give the config's
    weights. Naming only weights above 1 (`w > 1`) kept the operator's 1:1,2:99 on the new files."""
    policy = {"traffic_weights": "1:50,2:50"}
    rollout, entry, _ = rolled_back(policy, (1, 2), (), weights={1: 1, 2: 99})
    state = rollout.state(redeployed(entry, 1))
    assert (state.weights, state.source) == ({1: 50, 2: 50}, "config")


# -- served_as_before: the same instance ----------------------------------------------------------


def test_a_version_kept_as_the_same_instance_is_served_as_before_without_a_fingerprint() -> None:
    """The same instance is served as before by identity alone; its fingerprint is only the
    fallback for a version loaded again. Versions with ModelVersion's default fingerprint () kept
    by a reload keep the operator's weights; looking the old instance up under None instead of its
    version left only the fingerprint to decide, and () reset them to the config's."""
    policy = {"traffic_weights": "1:50,2:50"}
    entry = model_entry("a", policy=policy, versions=(1, 2))
    for served in entry.versions.values():
        served.fingerprint = ()
    rollout = Rollout(clock=lambda: 100.0, wall=lambda: 0.0)
    rollout.set_weights(cast(ModelEntry, entry), {1: 80, 2: 20})
    reloaded = SimpleNamespace(**{**vars(entry), "versions": dict(entry.versions)})  # a new entry
    state = rollout.state(cast(ModelEntry, reloaded))
    assert state.entry is reloaded
    assert (state.weights, state.source) == ({1: 80, 2: 20}, "admin")


# -- carried_snapshot: the state carried onto other files under --workers -------------------------


def shadowed_config_state() -> tuple[ModelEntry, ModelRollout]:
    _, entry, old = rolled_back(SHADOWED, (1, 2, 3), ())
    return entry, old


def test_the_configs_state_with_a_running_shadow_carries_nothing() -> None:
    """The config's state (its shadow mirroring, fraction 0.5) is no news for other files: None.
    Taking any shadow of the new load as stopped (`or`), or a running one (`fraction != 0`), made
    a change 1 saying the shadow was stopped."""
    entry, old = shadowed_config_state()
    assert old.shadow is not None and old.shadow.policy.fraction == 0.5
    new = fresh(added(entry, 4, SHADOWED))
    assert new.shadow is not None and new.shadow.policy.fraction == 0.5
    assert carried_snapshot(old, new) is None


def test_a_shadow_stopped_by_its_rollback_is_carried_stopped() -> None:
    """The shadow version rolled back (its copies stopped, fraction 0), every version named served
    as before: the carried state says the shadow is stopped, so the new load's shadow (the config's,
    mirroring) stops too. Requiring no shadow on the new load, none on the old one, or a fraction
    of 1 said it was not stopped, and the rolled-back version got copies again."""
    _, entry, old = rolled_back(SHADOWED, (1, 2, 3), (3,))
    assert old.shadow is not None and old.shadow.policy.fraction == 0
    new = fresh(added(entry, 4, SHADOWED))
    snapshot = carried_snapshot(old, new)
    assert snapshot is not None
    assert snapshot.shadow_stopped is True
    # 3 was only the shadow: the weights are the config's, the rollback stopped its copies.
    assert (snapshot.weights, snapshot.source, snapshot.rolled_back) == (((1, 50), (2, 50)), "rollback", (3,))
    assert snapshot.shadow_promoted is False and snapshot.seq == 1


def test_an_operators_weights_are_carried_onto_other_files() -> None:
    """Weights an operator set (source "admin", nothing rolled back or promoted) are news for the
    new generation: carried as change 1. `source == "config" or ...` returned None for them, and
    the other files started from the config's weights."""
    _, entry, old = rolled_back(THREE, (1, 2, 3), (), weights={1: 70, 2: 30, 3: 0})
    new = fresh(added(entry, 4, THREE))
    snapshot = carried_snapshot(old, new)
    assert snapshot is not None
    assert (snapshot.weights, snapshot.source, snapshot.rolled_back) == (
        ((1, 70), (2, 30), (3, 0)),
        "admin",
        (),
    )
    assert (snapshot.shadow_stopped, snapshot.shadow_promoted) == (False, False)


def test_rollbacks_kept_on_new_files_carry_no_promotion_and_a_shadow_not_rolled_back_mirrors() -> None:
    """The shadow (3) was promoted, then weighted beside 1, and 1 rolled back; then 3 got new files.
    Only the rollback of 1 is kept (rollbacks_kept): the config's weights less 1, the config's
    shadow back and mirroring. The carried state is not promoted (`True` kept the promotion of a
    version now loaded from other files) and its shadow not stopped (`not in rolled_back` stopped
    a shadow whose version was never rolled back)."""
    rollout = Rollout(clock=lambda: 100.0, wall=lambda: 0.0)
    entry = loaded(SHADOWED, dict.fromkeys((1, 2, 3), "a"))
    rollout.promote(entry, 3)
    rollout.set_weights(entry, {1: 50, 3: 50})
    old = rollout.roll_back(entry, 1, "v1 failed")
    assert old.shadow_promoted and old.rolled_back == {1} and old.weights == {1: 0, 3: 50}
    new = fresh(redeployed(entry, 3))
    snapshot = carried_snapshot(old, new)
    assert snapshot is not None
    assert (snapshot.weights, snapshot.source, snapshot.rolled_back) == (((1, 0), (2, 50)), "rollback", (1,))
    assert (snapshot.shadow_promoted, snapshot.shadow_stopped) == (False, False)


def test_the_shadow_rolled_back_and_kept_rolled_back_on_new_files_is_carried_stopped() -> None:
    """The other side of the rule: the shadow's own rollback kept on new files of a weighted
    version stops the new load's shadow (`not in` said it went on)."""
    _, entry, old = rolled_back(SHADOWED, (1, 2, 3), (3,))
    new = fresh(redeployed(entry, 1))
    snapshot = carried_snapshot(old, new)
    assert snapshot is not None
    assert (snapshot.weights, snapshot.rolled_back, snapshot.shadow_stopped) == (
        ((1, 50), (2, 50), (3, 0)),
        (3,),
        True,
    )
