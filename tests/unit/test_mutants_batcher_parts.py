"""The batcher's small parts, where mutation testing showed rules untested: the byte budget's
bound, a claim withdrawn twice or after it settled, ragged gathering's refusals and a lone
request's inputs, the batch inputs' type, the watchdog's messages and count, cancellations
counted, and the reason a delayed batch at the largest preferred size runs."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from batcher.budget import ByteBudget
from batcher.claim import Claim
from batcher.errors import RunTimedOut
from batcher.form import Pending, form_batch
from batcher.ragged import RaggedPlan, batch_input, gather_ragged
from batcher.stats import ModelStats
from batcher.types import Backend, BatchingPolicy, Tensors
from batcher.watchdog import Instance, Watchdog
from tests.unit.test_ragged import PLAN, x_of

# --- budget ------------------------------------------------------------------------------------


def test_a_budget_of_one_byte_is_a_budget_and_none_is_refused_by_its_setting_name() -> None:
    assert ByteBudget(1, "max_queued_bytes").limit == 1
    with pytest.raises(ValueError) as refused:
        ByteBudget(0, "max_queued_bytes")
    assert str(refused.value) == "max_queued_bytes must be >= 1, got 0"


# --- claim -------------------------------------------------------------------------------------


def test_a_claim_is_withdrawn_once() -> None:
    claim = Claim()
    first, second = RuntimeError("first"), RuntimeError("second")
    assert claim.withdraw(first) and not claim.withdraw(second)
    assert claim.withdrawn is first


def test_a_settled_claim_cannot_be_withdrawn() -> None:
    claim = Claim()
    claim.bind(lambda exc: True)
    claim.settle()
    assert not claim.withdraw(RuntimeError("late")) and claim.withdrawn is None


def test_once_a_batch_has_taken_the_request_the_queue_is_not_asked_again() -> None:
    asked: list[BaseException] = []

    def taken(exc: BaseException) -> bool:
        asked.append(exc)
        return False  # a batch took it

    claim = Claim()
    claim.bind(taken)
    assert not claim.withdraw(RuntimeError("one")) and not claim.withdraw(RuntimeError("two"))
    assert len(asked) == 1 and claim.withdrawn is None


# --- ragged ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("requests", "rows"), [([], []), ([{"x": x_of(1)}], [1, 1])])
def test_gather_needs_one_row_count_per_request(requests: list[Tensors], rows: list[int]) -> None:
    with pytest.raises(ValueError) as refused:
        gather_ragged(requests, rows, PLAN)
    assert str(refused.value) == "gather needs one row count per request, and at least one request"


def test_a_scalar_input_is_refused_and_a_one_dimensional_one_of_its_rows_taken() -> None:
    with pytest.raises(ValueError) as refused:
        gather_ragged([{"x": x_of(1), "y": np.float32(2.0) * np.ones(())}], [1], PLAN)
    assert str(refused.value) == "input 'y' of request 0 has shape (), expected 1 rows"
    inputs, _ = gather_ragged([{"y": np.arange(3.0)}], [3], RaggedPlan(frozenset(), ()))
    assert inputs["y"].tolist() == [0.0, 1.0, 2.0]


def test_a_lone_requests_other_inputs_are_passed_as_they_are() -> None:
    y = np.ones((1, 2), np.float32)
    inputs, _ = gather_ragged([{"x": x_of(1, 2), "y": y}], [1], PLAN)
    assert inputs["y"] is y  # not copied
    two, _ = gather_ragged([{"x": x_of(1), "y": y}, {"x": x_of(2), "y": 2 * y}], [1, 1], PLAN)
    assert two["y"].tolist() == [[1, 1], [2, 2]]


def test_the_offsets_with_zero_are_integers() -> None:
    value = batch_input("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", [2, 3])
    assert value.dtype == np.int64 and value.tolist() == [0, 2, 5]


# --- watchdog ----------------------------------------------------------------------------------


class Backendish:
    async def run(self, inputs: Tensors) -> Tensors:
        return inputs


async def test_a_timeout_says_the_limit_and_that_the_instance_is_replaced() -> None:
    watchdog = Watchdog(0.01, None, "m:1")
    with pytest.raises(RunTimedOut) as timed_out:
        await watchdog.watch(asyncio.Event().wait())
    assert str(timed_out.value) == (
        "the model instance did not finish the batch within run_timeout_s (0.01 s); "
        "the instance is being replaced"
    )


async def test_the_timeout_log_says_what_happens_to_the_instance(caplog: pytest.LogCaptureFixture) -> None:
    async def fresh(old: Backend) -> Backend:
        return Backendish()

    caplog.set_level(logging.ERROR, logger="batcher.watchdog")
    await Watchdog(1.0, None, "m:1").replace(Instance(0, Backendish()), 4, 2)
    await Watchdog(1.0, fresh, "m:2").replace(Instance(1, Backendish()), 8, 3)
    assert [r.getMessage() for r in caplog.records] == [
        "m:1: instance 0 ran a batch of 4 rows (2 requests) past run_timeout_s (1 s); its requests "
        "fail, the instance goes on (timeout 1 of this model)",
        "m:2: instance 1 ran a batch of 8 rows (3 requests) past run_timeout_s (1 s); its requests "
        "fail, the stuck run is abandoned and the instance replaced (timeout 1 of this model)",
    ]


async def test_replacements_are_counted_and_a_failed_one_is_logged_by_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[Backend] = []

    async def fresh(old: Backend) -> Backend:
        if len(made) == 2:
            raise RuntimeError("no memory left")
        made.append(Backendish())
        return made[-1]

    watchdog = Watchdog(1.0, fresh, "mlp:1")
    instance = Instance(2, Backendish())
    await watchdog.replace(instance, 1, 1)
    await watchdog.replace(instance, 1, 1)
    assert (watchdog.replaced, watchdog.timeouts) == (2, 2) and instance.backend is made[1]
    caplog.set_level(logging.ERROR, logger="batcher.watchdog")
    await watchdog.replace(instance, 1, 1)
    assert (watchdog.replaced, watchdog.timeouts) == (2, 3) and instance.backend is made[1]
    assert caplog.records[-1].getMessage() == "mlp:1: instance 2 could not be replaced; it keeps its backend"
    assert instance.ready.is_set()


# --- stats -------------------------------------------------------------------------------------


def test_every_cancelled_request_is_counted() -> None:
    stats = ModelStats()
    stats.record_canceled()
    stats.record_canceled()
    assert stats.failures["CANCELED"] == 2 and stats.fail.count == 0  # not a failure in the statistics


# --- formation ---------------------------------------------------------------------------------


def test_a_batch_past_its_delay_at_the_largest_preferred_size_runs_as_preferred() -> None:
    policy = BatchingPolicy(max_batch_size=4, preferred_batch_sizes=(2,), max_queue_delay_s=0.01)
    queue = [
        Pending(inputs={"x": np.zeros((1, 2), np.float32)}, rows=1, priority=1, arrival=0.0, seq=i, handle=i)
        for i in range(2)
    ]
    before = form_batch(queue, 0.005, policy, lambda rows: 0.0)
    after = form_batch(queue, 1.0, policy, lambda rows: 0.0)  # the delay has passed
    assert (len(before.batch), before.reason) == (2, "preferred")
    assert (len(after.batch), after.reason) == (2, "preferred")
