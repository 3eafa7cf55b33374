"""Rollout settings that would do nothing or read wrongly: a shadow version that is the stable
version (refused at load, naming `shadow_version`), SetWeights with a version number no model has
(INVALID_ARGUMENT as Promote answers it, not NOT_FOUND), a weight above the largest in one
sentence, and a promoted shadow version not shown as the shadow once rolled back."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NoReturn, cast

import grpc
import pytest

from batcher.stats import ModelStats
from protos import admin_pb2 as apb
from server.admin.service import AdminServicer, status_message
from server.models.config import ConfigError
from server.models.manager import ModelManager
from server.models.rollout import Rollout
from server.models.traffic import parse_policy, parse_weights
from server.models.versions import READY, ModelEntry, ModelVersion
from tests.unit.test_rollout_policy import config


@pytest.mark.parametrize(
    "params",
    [
        {"traffic_weights": "1:100", "shadow_version": "1"},
        {"traffic_weights": "1:60,2:40", "shadow_version": "1"},
        {"shadow_version": "2", "shadow_fraction": "0.5"},  # no weights: the newest takes all
    ],
)
def test_a_shadow_version_that_is_the_stable_version_is_refused_naming_it(params: dict[str, str]) -> None:
    with pytest.raises(
        ConfigError, match=r"parameters 'shadow_version' names version \d, the stable version"
    ):
        parse_policy(config(**params), "model 'm'", [1, 2])


def test_a_shadow_version_that_is_a_candidate_is_accepted() -> None:
    for weights in ("1:100", "1:90,2:10"):
        policy = parse_policy(config(traffic_weights=weights, shadow_version="2"), "m", [1, 2])
        assert policy is not None and policy.shadow is not None and policy.shadow.version == 2


def test_a_weight_above_the_largest_reads_as_one_sentence() -> None:
    """The CLI printed `weights weight 99999999999 of version 1 is above 1000000`."""
    with pytest.raises(ValueError) as err:
        parse_weights("1:99999999999")
    assert f"weights {err.value}" == "weights gives version 1 weight 99999999999, above 1000000"


class Aborted(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = None) -> NoReturn:
        self.code, self.details = code, details
        raise Aborted(details)


def model(weights: str, shadow: str = "") -> ModelEntry:
    extra = {"shadow_version": shadow, "shadow_fraction": "1"} if shadow else {}
    cfg = config(traffic_weights=weights, **extra)
    versions = {
        v: cast(
            ModelVersion,
            SimpleNamespace(name="m", version=v, config=cfg, stats=ModelStats(), fingerprint=(v,)),
        )
        for v in (1, 2, 3)
    }
    return ModelEntry("m", versions=versions, state=READY, order=[3, 2, 1])


async def test_set_weights_refuses_versions_below_one_as_promote_does() -> None:
    entry = model("1:100")
    manager = cast(ModelManager, SimpleNamespace(entry=lambda name: entry, rollout=Rollout()))
    admin = AdminServicer(manager)
    for weights in ({0: 100}, {-1: 5, 1: 5}):
        context = Context()
        with pytest.raises(Aborted):
            await admin.SetWeights(apb.SetWeightsRequest(model="m", weights=weights), cast(Any, context))
        assert context.code == grpc.StatusCode.INVALID_ARGUMENT, (weights, context.code, context.details)
        assert "version must be a positive version number" in context.details
    context = Context()
    with pytest.raises(Aborted):
        await admin.Promote(apb.PromoteRequest(model="m", version=0), cast(Any, context))
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT


def roles(rollout: Rollout, entry: ModelEntry) -> dict[int, tuple[str, bool]]:
    answer = status_message(rollout.state(entry), 0)
    return {v.version: (v.role, v.rolled_back) for v in answer.versions}


def test_a_promoted_shadow_rolled_back_later_is_not_shown_as_the_shadow() -> None:
    rollout, entry = Rollout(), model("1:80,2:20", shadow="3")
    rollout.roll_back(entry, None, "drill")  # every candidate: 2 and the shadow 3
    # The stopped shadow mirrors nothing: "off", rolled back (it had still read "shadow").
    assert roles(rollout, entry)[3] == ("off", True)
    assert status_message(rollout.state(entry), 0).shadow.fraction == 0
    rollout.promote(entry, 3)
    rollout.set_weights(entry, {1: 50, 3: 50})
    rollout.roll_back(entry, 3, "drill")  # a weighted candidate now, not the shadow
    assert roles(rollout, entry) == {1: ("stable", False), 2: ("off", True), 3: ("off", True)}
