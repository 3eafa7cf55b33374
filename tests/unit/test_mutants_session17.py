"""The batcher code the sixteenth and seventeenth sessions changed (batcher/batch_io.py,
batcher/fast_path.py): the cases mutation testing found untested (tests/MUTANTS.md, "Run of
2026-12-02 (eighteenth session)"). The files outside the batcher: test_mutants_session17_files.py.

Helpers and the `make` fixture are test_mutants_dynamic.py's."""

from __future__ import annotations

import numpy as np
import pytest

from batcher import BatchingPolicy, DeadlineExceeded, ModelStats
from batcher.batch_io import check_rows, computed_late, cut_at_deadline, left_ns, note_taken, splits_outputs
from batcher.form import NO_MARGIN
from batcher.types import Tensors
from tests.unit.test_batch_io import request
from tests.unit.test_mutants_dynamic import Blocking, Clock, Make, make, x
from tests.unit.test_mutants_dynamic_stats import Slow, cheap

__all__ = ["make"]  # the fixture, imported for pytest

# -- batch_io ------------------------------------------------------------------------------------


def test_the_time_a_deadline_leaves_in_nanoseconds() -> None:
    assert left_ns(None, 5.0) == 0  # no deadline
    assert left_ns(1.0, 2.0) == 0  # past it: none left, not less
    assert left_ns(3.0, 2.0) == 1_000_000_000  # exactly, not within a tolerance


async def test_a_caller_gone_exactly_at_its_deadline_went_for_it() -> None:
    gone = request(x(1), 1, 1, hard=5.0)
    assert cut_at_deadline(gone, 5.0, NO_MARGIN) is True
    assert cut_at_deadline(gone, 4.5, NO_MARGIN) is False


def test_a_late_computation_says_so() -> None:
    assert str(computed_late()) == "deadline exceeded while the request was being computed"


async def test_a_traced_request_notes_when_its_run_was_taken() -> None:
    traced, plain = request(x(1), 1, 1, trace=True), request(x(2), 1, 2)
    note_taken([traced, plain], 123)
    assert traced.handle.trace is not None and traced.handle.trace.taken_ns == 123


def test_outputs_of_a_run_not_split_must_hold_its_rows_at_max_batch_size_one_too() -> None:
    one = BatchingPolicy(max_batch_size=1)
    check_rows({"y": np.zeros((1, 2), np.float32)}, 1, one)
    with pytest.raises(
        ValueError, match=r"^backend returned output 'y' with shape \(2, 2\) for a batch of 1 rows$"
    ):
        check_rows({"y": np.zeros((2, 2), np.float32)}, 1, one)
    batched = BatchingPolicy(max_batch_size=8)
    check_rows({"v": np.zeros(3, np.float32)}, 3, batched)  # one value per row: 1-D is fine
    with pytest.raises(ValueError, match=r"shape \(\) for a batch of 1 rows"):
        check_rows({"s": np.array(1.0, np.float32)}, 1, batched)  # a scalar holds no rows


def test_a_model_of_at_most_one_row_still_splits_its_runs_outputs() -> None:
    assert splits_outputs(BatchingPolicy(max_batch_size=1))
    assert not splits_outputs(BatchingPolicy(max_batch_size=0))


# -- fast_path -----------------------------------------------------------------------------------


async def test_a_fast_path_refusal_records_the_time_its_deadline_left(make: Make) -> None:
    clock, stats = Clock(), ModelStats()
    b = make(Blocking(), clock=clock, stats=stats, inline_max_s=1.0)
    cheap(b, clock.now, 1, seconds=5.0)  # cheap in CPU, but a run takes 5 s
    with pytest.raises(DeadlineExceeded):
        await b.submit(x(1), 1, deadline=clock.now + 1.5)
    hist = stats.deadline_left_hist
    assert (hist.count, hist.total) == (1, 1_500_000_000)


def _compute(stats: ModelStats) -> list[tuple[int, int]]:
    return [(d.count, d.ns) for d in (stats.compute_input, stats.compute_infer, stats.compute_output)]


async def test_a_late_fast_run_takes_back_exactly_what_it_counted(make: Make) -> None:
    clock, stats = Clock(), ModelStats()
    b = make(Slow(clock), clock=clock, stats=stats, inline_max_s=1.0)
    cheap(b, clock.now, 1)
    with pytest.raises(DeadlineExceeded):
        await b.submit(x(1), 1, deadline=clock.now + 1.0)
    assert stats.late == 1 and stats.execution_count == 1
    assert _compute(stats) == [(0, 0)] * 3 and stats.inference_count == 0


class Refused(Exception):
    pass


async def test_a_fast_run_whose_answer_is_refused_takes_back_exactly_what_it_counted(make: Make) -> None:
    clock, stats = Clock(), ModelStats()
    be = Blocking()
    b = make(be, clock=clock, stats=stats, inline_max_s=1.0)
    cheap(b, clock.now, 1)

    def accept(outputs: Tensors) -> None:
        raise Refused("not this answer")

    a = b.admission(1)._replace(accept=accept)
    with pytest.raises(Refused, match=r"^not this answer$"):
        b.run_now(x(1), a)
    assert len(be.batches) == 1 and stats.execution_count == 1  # it did run, on the fast path
    assert _compute(stats) == [(0, 0)] * 3 and stats.inference_count == 0
