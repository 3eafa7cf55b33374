"""WaitForecast and `backlog`: the figures admission sheds on, with stand-in estimator figures.

Each test sets the estimator's figures (`predict_seen`, `predict`, `predict_after`, `predict_floor`)
as plain functions of rows and a settable clock, so every forecast second is worked out by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from batcher.forecast import Costs, WaitForecast, backlog
from batcher.form import backlog_rows
from batcher.types import BatchingPolicy
from tests.support.batcher_fakes import Clock

NOW = 100.0


class Figures:
    """A stand-in estimator: each figure a function of rows; `runs` as observed (figures read as last
    seen hold until it changes); `floor_at`: the clock times the floor was read at."""

    def __init__(
        self,
        seen: Callable[[int], float],
        cut: Callable[[int], float] | None = None,
        after: Callable[[int, int, float], float] | None = None,
        floor: Callable[[int], float] = lambda n: 0.0,
    ) -> None:
        self.runs = 0
        self.seen = seen
        self.cut = cut or seen
        self.after = after
        self.floor = floor
        self.floor_at: list[float | None] = []

    def predict_seen(self, rows: int, now: float | None) -> float:
        return self.seen(rows)

    def predict(self, rows: int, now: float | None) -> float:
        return self.cut(rows)

    def predict_after(self, rows: int, now: float | None, ran_rows: int, ran_s: float) -> float:
        return self.cut(rows) if self.after is None else self.after(rows, ran_rows, ran_s)

    def predict_floor(self, rows: int, now: float | None) -> float:
        self.floor_at.append(now)
        return self.floor(rows)


class Queue:
    """A stand-in RequestQueue: its requests oldest first, each (priority, hard deadline, rows)."""

    def __init__(self, *requests: tuple[int, float | None, int]) -> None:
        self.requests = [SimpleNamespace(priority=p, hard=h, rows=r) for p, h, r in requests]

    def values(self) -> list[SimpleNamespace]:
        return self.requests

    def rows_ahead(self, level: int) -> int:
        return sum(r.rows for r in self.requests if r.priority <= level)


def forecast(
    figures: Figures,
    queue: Queue | None = None,
    policy: BatchingPolicy | None = None,
    instances: int = 1,
    clock: Clock | None = None,
    **kw: float,
) -> WaitForecast:
    return WaitForecast(
        cast(Any, figures),
        cast(Any, queue or Queue()),
        policy or BatchingPolicy(max_batch_size=4),
        instances,
        clock or Clock(NOW),
        **kw,
    )


def costs(
    run_s: Callable[[int], float],
    cut_s: Callable[[int], float],
    hop_s: float = 0.0,
    floor_s: Callable[[int], float] | None = None,
    max_batch_size: int = 4,
) -> Costs:
    policy = BatchingPolicy(max_batch_size=max_batch_size)
    return Costs(lambda n: backlog_rows(n, policy), run_s, lambda n, ran: cut_s(n), hop_s, floor_s)


# -- WaitForecast: running batches, and the hop after each ------------------------------------------


def test_without_a_hop_a_running_batch_counts_its_run_alone() -> None:
    """The default hop is none: a forecast made without measured hops adds no time of its own."""
    fc = forecast(Figures(seen=lambda n: 0.5))
    fc.started(1, NOW)
    # The running batch ends in 0.5 s, then the asker's own 1-row run: 0.5 s.
    assert fc.finish(1, 1) == pytest.approx(1.0)


def test_a_running_batch_of_known_cost_is_followed_by_its_hop() -> None:
    """The hop after a running batch (even one under a second) delays the next batch on its instance."""
    fc = forecast(Figures(seen=lambda n: 0.5), hop_s=0.005)
    fc.started(1, NOW)
    # 0.5 s left of the running batch + its 5 ms hop, then the asker's 0.5 s run + hop.
    assert fc.finish(1, 1) == pytest.approx(1.01)


# -- WaitForecast: turn_s, from the size of recent runs -------------------------------------------


def test_turn_s_is_a_batch_as_large_as_recent_runs() -> None:
    """An ensemble's later step may find its model took a batch of newer work: as large as recent runs
    (the policy's largest until runs are seen), moving a fifth of the way to each run's rows."""
    fc = forecast(Figures(seen=lambda n: 0.1 * n), Queue((1, None, 1)), BatchingPolicy(max_batch_size=8))
    assert fc.turn_s(1) == pytest.approx(0.8)  # 1 row queued ahead: a batch of 8, 100 ms a row
    fc.ran(1)  # 8 + (1 - 8) / 5 = 6.6: 7 rows
    assert fc.turn_s(1) == pytest.approx(0.7)
    assert fc.turn_s(1, own=1) == 0.0  # the one row queued is its own: nothing newer takes its turn


def test_turn_s_after_single_runs_is_one_row_and_shared_by_instances() -> None:
    """After many 1-row runs the batch taken is a 1-row one; with 2 instances half of it is waited."""
    fc = forecast(Figures(seen=lambda n: 0.1 * n), Queue((1, None, 1)))
    for _ in range(10):  # 1 + 3 * 0.8**10 = 1.32: 1 row
        fc.ran(1)
    assert fc.turn_s(1) == pytest.approx(0.1)
    two = forecast(Figures(seen=lambda n: 0.1 * n), Queue((1, None, 1)), instances=2)
    assert two.turn_s(1) == pytest.approx(0.4 / 2)  # a 4-row batch (no runs yet), either instance


# -- WaitForecast: figures as last seen -----------------------------------------------------------


def test_figures_are_read_as_last_seen_until_the_estimator_observes_a_run() -> None:
    """Between runs observed the forecast keeps the figures it read (not faded, not re-read)."""
    figures = Figures(seen=lambda n: 0.1, cut=lambda n: 0.1 * n)
    fc = forecast(figures)
    fc.pledge(3, 1)
    # 3 pledged rows + the asker's 1, 350 ms to its deadline; formation's figure 100 ms a row: a batch
    # of 3 (ends at 300 ms; 4 would end at 400), then the asker's row: 2 runs of 100 ms.
    assert fc.finish(1, 1, 0.35) == pytest.approx(0.2)
    figures.seen, figures.cut = (lambda n: 0.2), (lambda n: 0.2 * n)
    assert fc.finish(1, 1, 0.35) == pytest.approx(0.2)  # no run observed: as last seen
    figures.runs += 1
    # Read again: 2 rows by 400 ms would end late, so 1-row runs of 200 ms each; from 400 ms, past
    # the asker's deadline, the last 2 rows in one batch: 0.2 + 0.2 + 0.2.
    assert fc.finish(1, 1, 0.35) == pytest.approx(0.6)


def test_a_batch_after_one_that_ran_is_cut_by_the_figure_after_it() -> None:
    """Formation cuts the next batch by `predict_after` the batch just assumed run, not by `predict`."""
    figures = Figures(seen=lambda n: 0.1, cut=lambda n: 0.2 * n, after=lambda n, rows, s: 0.1 * n)
    fc = forecast(figures)
    fc.pledge(3, 1)
    # Before any batch: 2 rows by 400 ms would end past 350 ms, so 1 row (100 ms). After it, 100 ms a
    # row: 2 rows end at 300 ms, 3 would at 400: a batch of 2; then the asker's row: 3 runs, 300 ms.
    assert fc.finish(1, 1, 0.35) == pytest.approx(0.3)


def test_the_floor_rows_are_dropped_by_is_read_at_the_forecasts_clock() -> None:
    """Formation gives a queued row up once its floor's run cannot end by its deadline: those rows
    cost nothing, by the floor as of now."""
    figures = Figures(seen=lambda n: 0.1, floor=lambda n: 0.1)
    clock = Clock(NOW)
    fc = forecast(figures, Queue((1, NOW + 0.05, 1)), clock=clock)
    # The queued row is due in 50 ms; its floor run takes 100 ms: dropped. The asker's row: 100 ms.
    assert fc.finish(1, 1, 1.0) == pytest.approx(0.1)
    assert figures.floor_at and set(figures.floor_at) == {NOW}


# -- WaitForecast: the deadlines formation cuts to -------------------------------------------------


def test_shed_s_behind_pledged_rows_cuts_batches_to_the_askers_deadline() -> None:
    """With rows ahead, shedding forecasts batches cut to the asker's deadline, not full ones."""
    fc = forecast(Figures(seen=lambda n: 0.1, cut=lambda n: 0.1 * n))
    fc.pledge(3, 1)
    # 350 ms left: a batch of 3 (a 4th would end at 400 ms by formation's figure), then 1: 200 ms.
    assert fc.shed_s(1, 1, 0.35) == pytest.approx(0.2)
    assert fc.shed_s(1, 1) == pytest.approx(0.1)  # no deadline: all 4 in one 100 ms batch


@pytest.mark.parametrize("priority", [1, 0])
def test_the_oldest_queued_requests_deadline_cuts_the_first_batch(priority: int) -> None:
    """Formation cuts a batch to its oldest request's deadline (at the asker's priority or ahead of
    it), sooner than the asker's: the forecast does too."""
    fc = forecast(Figures(seen=lambda n: 0.1, cut=lambda n: 0.1 * n), Queue((priority, NOW + 0.25, 3)))
    # Deadlines spread from 250 ms (oldest) to 1 s (asker): 250, 500, 750, 1000 ms. The first batch
    # must end by 250 ms: 2 rows (200 ms by formation's figure); the other 2, due by 750 ms: one more
    # batch. 2 runs of 100 ms.
    assert fc.finish(1, 1, 1.0) == pytest.approx(0.2)
    assert fc.finish(1, 1) == pytest.approx(0.1)  # no deadline of its own: one batch of 4


def test_a_queued_request_at_a_later_priority_does_not_cut_the_askers_batches() -> None:
    """A request behind the asker (lower priority) is neither ahead of it nor the deadline cut to."""
    fc = forecast(Figures(seen=lambda n: 0.1, cut=lambda n: 0.1 * n), Queue((2, NOW + 0.05, 3)))
    fc.pledge(3, 1)
    assert fc.finish(1, 1, 0.35) == pytest.approx(0.2)  # as with nothing queued: 3 rows, then 1


def test_the_askers_request_is_forecast_whole_behind_a_running_batch() -> None:
    """An 8-row request with preferred sizes [2, 4] runs in one batch, not two of 4."""
    policy = BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(2, 4))
    fc = forecast(Figures(seen=lambda n: 0.05), policy=policy, hop_s=0.005)
    fc.started(8, NOW)
    assert fc.finish(1, 8) == pytest.approx(2 * 0.055)  # the running batch, then all 8 rows at once


# -- backlog: rows dropped unrun ------------------------------------------------------------------


def test_the_drop_rule_reads_the_floor_of_one_row() -> None:
    """Rows ahead are single rows: their floor is a 1-row run's (50 ms here, not 2 rows' 100 ms)."""
    c = costs(lambda n: 0.1, lambda n: 0.1, floor_s=lambda n: 0.05 * n)
    # The oldest row due at 80 ms: its 50 ms floor ends in time, so it is not dropped; formation's
    # 100 ms for 2 rows would end late, so it runs alone, then the asker's: 200 ms.
    assert backlog(2, [0.0], c, 1.0, 0.08) == pytest.approx(0.2)


def test_the_hop_counts_towards_whether_a_row_is_past_hope() -> None:
    """A row whose floor run ends in time but not its hop is dropped (formation's give-up rule)."""
    c = costs(lambda n: 0.1, lambda n: 0.1 * n, hop_s=0.02, floor_s=lambda n: 0.1)
    # The oldest due at 110 ms: 100 ms + 20 ms hop is late: dropped; the asker's run and hop: 120 ms.
    assert backlog(2, [0.0], c, 1.0, 0.11) == pytest.approx(0.12)


def test_a_row_whose_floor_ends_exactly_at_its_deadline_is_kept() -> None:
    """Ending exactly at the deadline is in time: the row runs (binary-exact figures)."""
    c = costs(lambda n: 0.25, lambda n: 0.25 * n, floor_s=lambda n: 0.25)
    # The oldest due at 250 ms, its floor 250 ms: kept, alone (2 rows by 500 ms end late); then the
    # asker's row: 500 ms.
    assert backlog(2, [0.0], c, 2.0, 0.25) == pytest.approx(0.5)


def test_the_rows_dropped_are_those_due_before_a_floor_run_could_end() -> None:
    """Deadlines 0, 250, 500, 750 ms and the asker's 1 s; the instance free at 250 ms, a floor of
    250 ms and a 125 ms hop: rows due before 625 ms (3) are dropped, the other 2 run together."""
    c = costs(lambda n: 0.125 * n, lambda n: 0.125, hop_s=0.125, floor_s=lambda n: 0.25)
    # 250 ms + a 2-row run (250 ms) + hop (125 ms).
    assert backlog(5, [0.25], c, 1.0, 0.0) == pytest.approx(0.625)


def test_the_rows_dropped_count_from_the_oldest_deadline() -> None:
    """Deadlines 250, 500, 750, 1000 ms and the asker's 1.25 s: rows due before 625 ms are 2."""
    c = costs(lambda n: 0.125 * n, lambda n: 0.125, hop_s=0.125, floor_s=lambda n: 0.25)
    # 250 ms + a 3-row run (375 ms) + hop (125 ms).
    assert backlog(5, [0.25], c, 1.25, 0.25) == pytest.approx(0.75)


def test_with_deadlines_far_apart_only_the_rows_due_before_the_floor_run_are_dropped() -> None:
    """Deadlines 0, 5, 10, 15 s, the asker's 20 s: only the row due at 0 is dropped."""
    c = costs(lambda n: 0.125 * n, lambda n: 0.125, hop_s=0.125, floor_s=lambda n: 0.25)
    # 250 ms + a 4-row run (500 ms) + hop (125 ms).
    assert backlog(5, [0.25], c, 20.0, 0.0) == pytest.approx(0.875)


def test_a_row_past_hope_after_a_batch_ran_is_dropped_alone() -> None:
    """1-row batches of 750 ms, floor 375 ms; deadlines 0.5, 1, 1.5 s and the asker's 2 s. The first
    row runs (ends 750 ms); then the second's floor would end at 1.125 s, past its 1 s, but only if
    the first runs its full 750 ms: a row past hope only behind a batch is charged, not counted on
    to be dropped (session 53: such rows were run, and the requests admitted behind them late). So
    is the third; the asker's ends at 3.0 s (2.25 s as it had been, with the second dropped). A row
    past hope at the front is dropped alone: with deadlines 0.2, 0.9, 1.6 s the first is (its floor
    would end at 375 ms), the second runs to 750 ms, the asker's to 1.5 s."""
    c = costs(lambda n: 0.75, lambda n: 0.75, floor_s=lambda n: 0.375, max_batch_size=1)
    assert backlog(4, [0.0], c, 2.0, 0.5) == pytest.approx(3.0)
    assert backlog(3, [0.0], c, 1.6, 0.2) == pytest.approx(1.5)


def test_the_askers_own_rows_are_never_dropped() -> None:
    """Even with every row ahead past hope, the asker's own row is forecast run, not dropped."""
    c = costs(lambda n: 0.125, lambda n: 0.125, floor_s=lambda n: 0.25)
    # Deadlines 0, 250, 500 ms; the instance free at 375 ms: the 2 rows ahead are dropped, the
    # asker's runs 125 ms.
    assert backlog(3, [0.375], c, 0.5, 0.0) == pytest.approx(0.5)


def test_an_empty_backlog_with_no_instance_is_no_wait() -> None:
    """No rows and nothing running: 0.0, a number admission can compare."""
    assert backlog(0, [], costs(lambda n: 0.1, lambda n: 0.1), None) == 0.0


# -- backlog: deadlines, rounds and the figure formation reads after a batch ----------------------


def test_from_the_askers_deadline_on_the_rest_is_full_batches() -> None:
    """Once the instance is free only at the asker's deadline, no cut applies: the figure sizes the
    wait in full batches (exactly at the deadline counts as past it)."""
    c = costs(lambda n: 0.125, lambda n: 0.125 * n)
    # Free at 500 ms, the asker due at 500 ms: its 3 rows in one 125 ms batch (cut, they were 3).
    assert backlog(3, [0.5], c, 0.5, 0.5) == pytest.approx(0.625)


def test_a_deadline_for_the_oldest_alone_cuts_nothing() -> None:
    """Without the asker's deadline there is no cut, whatever the oldest's: full batches."""
    assert backlog(4, [0.0], costs(lambda n: 0.125, lambda n: 0.125 * n), None, 0.25) == pytest.approx(0.125)


def test_a_request_is_never_split_into_rounds_of_one_row_batches() -> None:
    """With preferred size 1 (batches of 1), the asker's 2-row request still runs whole, once."""
    policy = BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(1,))
    c = Costs(lambda n: backlog_rows(n, policy), lambda n: 0.125, lambda n, ran: 0.125, 0.0)
    assert backlog(2, [0.0], c, None, None, last=2) == pytest.approx(0.125)


def test_after_full_batches_formation_cuts_by_its_figure_after_them() -> None:
    """Formation's figure for 2 rows is 125 ms before any batch, 500 ms once one has run: the batch
    after the full ones is cut by the latter."""
    policy = BatchingPolicy(max_batch_size=2)
    c = Costs(
        lambda n: backlog_rows(n, policy),
        lambda n: 0.125,
        lambda n, ran: (0.0625 if ran is None else 0.25) * n,
        0.0,
    )
    # All due at 750 ms; free at 125 ms. Two full batches of 2 (to 375 ms); then 2 rows by 500 ms
    # would end at 875 ms: 1 row (to 500 ms), then the asker's (to 625 ms).
    assert backlog(6, [0.125], c, 0.75) == pytest.approx(0.625)


def test_formation_sizes_by_the_largest_batch_assumed_run_not_the_latest() -> None:
    """Formation's figure for sizes up to the largest batch run is that batch's (500 ms here), by rows
    (62.5 ms a row) above it: a smaller batch running later does not make 2 rows cheap again."""
    policy = BatchingPolicy(max_batch_size=2)
    c = Costs(
        lambda n: backlog_rows(n, policy),
        lambda n: 0.125 * n,
        lambda n, ran: 0.0625 * n if ran is None or n > ran[0] else 0.5,
        0.0,
    )
    # Two instances free at 250 and 750 ms; all 7 rows due at 750 ms. 250 ms: 2 rows (125 ms by rows)
    # to 500 ms. 500 ms: 2 rows now read 500 ms: 1 row, to 625 ms. 625 ms: again 1 row, to 750 ms.
    # From 750 ms (the deadline) full batches: 2 rows to 1 s on one, then the asker's row on the
    # other, 750 + 125 ms.
    assert backlog(7, [0.25, 0.75], c, 0.75) == pytest.approx(0.875)


def test_full_batches_are_taken_at_once_only_where_formation_would_still_form_them() -> None:
    """Rounds of full batches skip formation's cut: only while its figure after the batches already
    assumed run (here 562.5 ms for 2 rows, not 125 ms by rows) still ends them by their deadlines."""
    policy = BatchingPolicy(max_batch_size=2)
    c = Costs(
        lambda n: backlog_rows(n, policy),
        lambda n: 0.25 * n,
        lambda n, ran: 0.0625 * n if ran is None or n > ran[0] else ran[1] + 0.0625,
        0.0,
        lambda n: 0.0625,
    )
    # Deadlines 750 ms + 125 ms a row (the asker's 1.5 s); free at 500 ms. One round of 2 rows to 1 s
    # (a second would end its rows past their deadlines by formation's figure); the rows due at 1 s
    # and 1.125 s run alone (2 by 562.5 ms end late), to 1.5 s: none is dropped, being past hope
    # only behind batches (session 53); from the asker's deadline on, full batches: 1 round of 2
    # to 2 s and the asker's row to 2.25 s (1.75 s as it had been, the rows due at 1 s and 1.25 s
    # counted dropped).
    assert backlog(7, [0.5], c, 1.5, 0.75) == pytest.approx(2.25)
