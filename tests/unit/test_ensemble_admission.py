"""An ensemble request admitted whole (server/models/ensemble_admission.py), over fake step models
(tests/unit/test_ensemble_scheduler.py) whose estimators are fed run times by hand: the least
compute along the steps' critical path (not their sum), the step named, the rows pledged and
released, and nothing checked or pledged without a deadline."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher.errors import DeadlineExceeded, Overloaded
from batcher.stats import ModelStats
from protos import model_config_pb2 as mc
from server.models.config import parse_config
from server.models.ensemble import EnsembleScheduler
from server.models.ensemble_admission import admit_whole
from server.models.ensemble_config import plan_ensemble
from tests.support.ensemble_repo import ENSEMBLES, _step, ensemble
from tests.unit.test_ensemble_scheduler import Clock, FakeStep, _admission, _scheduler, _steps


def _costs(steps: dict[str, FakeStep], **seconds: float) -> dict[str, FakeStep]:
    """`steps` with one run of a row seen per model named, taking that many seconds (at time 0)."""
    for model, s in seconds.items():
        steps[model].batcher.estimator.observe(1, s, 0.0)
    return steps


def _pledged(step: FakeStep) -> int:
    return step.batcher.forecast.pledged


def test_parallel_branches_count_once_along_the_critical_path() -> None:
    """dag: add_one (100 ms) and double (120 ms) side by side, then add (100 ms): at least 220 ms
    and a margin for each of two steps, not the 320 ms of all three."""
    steps = _costs(_steps(), add_one=0.1, double=0.12, add=0.1)
    scheduler = _scheduler("dag", steps, Clock())
    admit_whole(scheduler.plan, lambda m, v, r: steps[m], _admission(0.3), 0, 0.0).release_all()
    with pytest.raises(DeadlineExceeded) as refused:
        admit_whole(scheduler.plan, lambda m, v, r: steps[m], _admission(0.2), 0, 0.0)
    assert str(refused.value) == (
        "in ensemble 'dag', deadline cannot be met: about 220.0 ms of compute needed (step 3 (model "
        "'double'): 120.0 ms, the fastest recent run of 1 rows or fewer; then step 1 (model 'add'): "
        "100.0 ms, the fastest recent run of 1 rows or fewer) plus a 10.0 ms margin, 200.0 ms left; "
        "step 1 (model 'add')"
    )
    assert all(_pledged(s) == 0 for s in steps.values())  # a refusal leaves nothing pledged


def test_a_request_refused_whole_runs_no_step_and_counts_as_shed() -> None:
    steps = _costs(_steps(), add_one=0.1, double=0.1)
    stats = ModelStats()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    scheduler = _scheduler("linear", steps, Clock())
    with pytest.raises(DeadlineExceeded, match=r"; step 2 \(model 'double'\)$"):
        asyncio.run(scheduler.run_counted(stats, {"IN": x}, _admission(0.15), 0))
    assert steps["add_one"].calls == [] and steps["double"].calls == []
    assert (stats.shed, stats.expired, stats.rejections["deadline"]) == (1, 0, 1)


def test_admitted_rows_are_pledged_until_released() -> None:
    steps = _costs(_steps(), add_one=0.1, double=0.1)
    plan = _scheduler("linear", steps, Clock()).plan
    pledges = admit_whole(plan, lambda m, v, r: steps[m], _admission(10.0), 0, 0.0)
    assert (_pledged(steps["add_one"]), _pledged(steps["double"])) == (1, 1)
    pledges.release(1)  # step 1 (add_one) reached its queue
    assert (_pledged(steps["add_one"]), _pledged(steps["double"])) == (0, 1)
    pledges.release_all()  # the request ended
    assert (_pledged(steps["add_one"]), _pledged(steps["double"])) == (0, 0)


def test_a_step_on_a_model_busy_with_other_work_is_forecast_behind_it() -> None:
    """twice: add_one, then add_one again. Alone on an idle model its second step is forecast
    after its first (210 ms with the margins: admitted at 300 ms); behind another request's pledged
    rows, also after a batch of newer work the model may take as its first step ends (310 ms)."""
    steps = _costs(_steps(), add_one=0.1)
    twice = ensemble([_step("add_one", {"x": "IN"}, {"y": "T"}), _step("add_one", {"x": "T"}, {"y": "OUT"})])
    config = parse_config(twice, "config.pbtxt")
    config.name = "twice"
    plan = plan_ensemble(config, "config.pbtxt", lambda s: steps[s.model].config)
    admit_whole(plan, lambda m, v, r: steps[m], _admission(0.3), 0, 0.0).release_all()
    other = admit_whole(plan, lambda m, v, r: steps[m], _admission(10.0), 0, 0.0)
    assert _pledged(steps["add_one"]) == 2
    with pytest.raises(
        Overloaded, match=r"^in ensemble 'twice', overloaded: .*; step 2 \(model 'add_one'\)$"
    ):
        admit_whole(plan, lambda m, v, r: steps[m], _admission(0.3), 0, 0.0)
    assert _pledged(steps["add_one"]) == 2  # the refused request's released
    other.release_all()


def test_without_a_deadline_nothing_is_checked_or_pledged() -> None:
    steps = _costs(_steps(), add_one=100.0, double=100.0)
    plan = _scheduler("linear", steps, Clock()).plan
    admit_whole(plan, lambda m, v, r: steps[m], _admission(None), 0, 0.0)
    assert (_pledged(steps["add_one"]), _pledged(steps["double"])) == (0, 0)


class _Nested:
    """A step model that is an ensemble itself (its `ensemble` runs its steps)."""

    def __init__(self, scheduler: EnsembleScheduler, config: mc.ModelConfig) -> None:
        self.ensemble = scheduler
        self.config = config


def test_a_nested_ensembles_steps_are_on_the_path_and_pledged_with_the_request() -> None:
    """wrap: one step, the ensemble `linear` (add_one 100 ms, then double 100 ms)."""
    steps = _costs(_steps(), add_one=0.1, double=0.1)
    inner = _scheduler("linear", steps, Clock())
    inner_config = parse_config(ENSEMBLES["linear"], "config.pbtxt")
    inner_config.name = "linear"
    nested = _Nested(inner, inner_config)
    config = parse_config(ensemble([_step("linear", {"IN": "IN"}, {"OUT": "OUT"})]), "config.pbtxt")
    config.name = "wrap"
    plan = plan_ensemble(config, "config.pbtxt", lambda s: inner_config)
    resolve = lambda m, v, r: nested if m == "linear" else steps[m]  # noqa: E731
    pledges = admit_whole(plan, resolve, _admission(10.0), 0, 0.0)
    assert (_pledged(steps["add_one"]), _pledged(steps["double"])) == (1, 1)
    pledges.release_all()
    assert (_pledged(steps["add_one"]), _pledged(steps["double"])) == (0, 0)
    with pytest.raises(DeadlineExceeded) as refused:
        admit_whole(plan, resolve, _admission(0.15), 0, 0.0)
    assert "then step 2 (model 'double') of ensemble 'linear': 100.0 ms" in str(refused.value)
    assert str(refused.value).endswith("; step 1 (model 'linear')")
