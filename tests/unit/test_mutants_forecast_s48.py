"""`backlog`'s rounds of full batches taken at once (`_rounds`, and the walk formation grows a batch
by), pinned where the forty-seventh session's helper left mutants: how many rounds the queue is
taken in, and which of formation's figures (before and after the batches the forecast assumes run)
bound them.

Each case's expected second is traced by hand, and in each the rounds taken at once agree with
forming the same queue batch by batch (formation's own cut, `joined`); the mutants take rounds
formation would not form, or fewer at once than the queue allows. Stand-in figures as in
test_mutants_forecast_s47.py: `run_s` (the forecast's cautious figure) and `cut_s` (formation's,
after the largest batch assumed run) are plain functions, in binary fractions of a second.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from batcher.estimate import ServiceTimeEstimator
from batcher.forecast import Costs, _rounds, backlog
from batcher.form import backlog_rows
from batcher.types import BatchingPolicy

Ran = tuple[int, float] | None
bucket = ServiceTimeEstimator.bucket


def costs(
    run_s: Callable[[int], float],
    cut_s: Callable[[int, Ran], float],
    max_batch_size: int,
    preferred: tuple[int, ...] = (),
    sized: list[int] | None = None,
) -> Costs:
    """Costs for a policy; `sized` collects each queue length formation is asked to size (one a step)."""
    policy = BatchingPolicy(max_batch_size=max_batch_size, preferred_batch_sizes=preferred)

    def size(n: int) -> int:
        if sized is not None:
            sized.append(n)
        return backlog_rows(n, policy)

    return Costs(size, run_s, cut_s, 0.0)


def by_bucket(before: Callable[[int], float]) -> Callable[[int, Ran], float]:
    """Formation's figure: `before` until a batch is assumed run; then sizes of that batch's bucket
    read its seconds (its own bucket seen), other sizes still `before`."""

    def cut(n: int, ran: Ran) -> float:
        return ran[1] if ran is not None and bucket(n) == bucket(ran[0]) else before(n)

    return cut


# -- _rounds: how many rounds of full batches at once ------------------------------------------------


def test_one_instance_is_always_within_a_batch_of_itself_however_late_it_is_free() -> None:
    """The rounds need the instances free within one batch of each other: the spread of `free`, not
    how far away they are (a sum would refuse every round once an instance is free a batch away)."""
    assert _rounds(5, 2, 0.25, [1.0], None) == 2
    assert _rounds(9, 4, 0.25, [1.0, 1.125], None) == 2


def test_instances_free_exactly_one_batch_apart_still_take_rounds() -> None:
    """Free at 0 and 250 ms with 250 ms batches: each takes the next batch in turn (the first ends as
    the second starts), so the rounds are taken at once; more than a batch apart, none."""
    assert _rounds(9, 4, 0.25, [0.0, 0.25], None) == 2
    assert _rounds(9, 4, 0.25, [0.0, 0.375], None) == 0


def test_rounds_leave_only_the_last_batch_to_place_alone() -> None:
    """5 rows in rounds of 2: two rounds, the fifth row placed alone; 4 rows: one round, the last batch
    of 2 alone. Counting from `left - 2` would leave a full round besides the last batch (5 rows)."""
    assert _rounds(5, 2, 0.25, [0.0], None) == 2
    assert _rounds(4, 2, 0.25, [0.0], None) == 1
    assert _rounds(3, 2, 0.25, [0.0], None) == 1


def test_a_round_that_may_start_exactly_at_its_latest_start_is_taken() -> None:
    """Round 0 may start at 500 ms at the latest and the instance is free at 500 ms: it is taken (no
    room left for a second, whose deadline is no later); only a start past the latest refuses it."""
    assert _rounds(5, 2, 0.25, [0.5], (0.5, 0.0)) == 1
    assert _rounds(5, 2, 0.25, [0.5], (0.4375, 0.0)) == 0


def test_rounds_fit_a_latest_start_under_a_second_away() -> None:
    """Room is in seconds like everything else: 500 ms of room after round 0 with 250 ms batches and
    no later deadlines fits two more rounds (3 of the 4 possible), not none for being under 1 s."""
    assert _rounds(9, 2, 0.25, [0.0], (0.5, 0.0)) == 3


def test_later_deadlines_let_later_rounds_start_later() -> None:
    """Each round's deadline 125 ms after the last's and 250 ms batches: each round starts 125 ms
    closer to its deadline, so 250 ms of room fits rounds 0, 1, 2 (not 0 alone, as if each round's
    deadline came 125 ms earlier)."""
    assert _rounds(9, 2, 0.25, [0.0], (0.25, 0.125)) == 3
    assert _rounds(9, 2, 0.25, [0.0], (0.25, 0.25)) == 4  # as fast as the deadlines: all of them


# -- backlog: a long queue in one step --------------------------------------------------------------


def test_a_long_queue_with_spread_deadlines_is_taken_in_one_step() -> None:
    """1000 rows ahead of the asker, due from 1 s on at 125 ms a row; 2-row batches of 250 ms keep
    pace with their deadlines (a round's deadline moves 2 x 125 ms a round: spread x rows a round),
    so all 500 rounds are taken in one step and formation sizes the queue twice: 1001 rows, then the
    asker's 1. Ends 500 x 250 ms + 125 ms. Fewer rounds a step (a deadline taken to move spread / rows
    a round, a round's time taken as growing with it, room under 1 s refused, one round held back)
    gives the same figure by hundreds of steps: admission works this out for each request."""
    sized: list[int] = []
    c = costs(lambda n: 0.125 * n, lambda n, ran: 0.125 * n, 2, sized=sized)
    assert backlog(1001, [0.0], c, 1.0 + 1000 * 0.125, 1.0) == pytest.approx(125.125)
    assert sized == [1001, 1]


# -- backlog: the walk of sizes formation grows a batch through --------------------------------------


def test_the_walk_counts_the_one_row_figure() -> None:
    """1-row figure 375 ms, 2 rows 250 ms (before any batch: a slow 1-row bucket); 500 ms runs; all 6
    rows due at 750 ms. Counting 375 ms, round 0 (ending 500 ms) is all that fits at once. At 500 ms
    formation reads 2 rows as the 2-row batch just assumed run (500 ms): past 750 ms, so 1 row (to
    1 s); past the deadline, a round of 2 (to 1.5 s) and the asker's row: 2 s. Without the 1-row
    figure two rounds are taken at once, the second one formation would have cut: 1.5 s."""
    c = costs(lambda n: 0.5, by_bucket(lambda n: 0.375 if n == 1 else 0.125 * n), 2)
    assert backlog(6, [0.0], c, 0.75) == pytest.approx(2.0)


def test_the_walk_reads_the_batch_size_after_the_batch_assumed_run() -> None:
    """As above, rows due from 250 ms at 312.5 ms a row (the asker's at 1.5 s). 0 ms: 2 rows by 250 ms
    (2 rows read 250 ms before any batch), to 500 ms. Then 2 rows read 500 ms, the 2-row batch's:
    the round from 500 ms would end at 1 s, past the next row's 875 ms, so 1 row (to 1 s), then 1
    (to 1.5 s), then the asker's: 2 s. Reading 2 rows as before the batch (250 ms), the round is
    taken (its latest start, 875 - 375 ms, is exactly 500 ms): 1.5 s."""
    c = costs(lambda n: 0.5, by_bucket(lambda n: 0.375 if n == 1 else 0.125 * n), 2)
    assert backlog(5, [0.0], c, 1.5, 0.25) == pytest.approx(2.0)


def test_the_walk_reads_smaller_sizes_after_the_batch_assumed_run() -> None:
    """Batches of up to 4 rows, 750 ms runs, formation's figure 125 ms a row; rows due from 250 ms at
    500 ms a row. 0 ms: 3 rows would end at 375 ms, past 250 ms: 2 rows, to 750 ms. From then 2 rows
    read 750 ms (that batch's), and a batch of 4 grows through 2: at 750 ms even 2 rows (1.5 s)
    miss the next row's 1.25 s, so 1-row batches: to 1.5, 2.25, 3 and 3.75 s, then the asker's (past
    its 3.25 s): 4.5 s. Reading 2 rows as before any batch (250 ms), the walk lets a round of 4 start
    at 750 ms (latest start 1.25 - 0.5 s): 2.25 s."""
    c = costs(lambda n: 0.75, by_bucket(lambda n: 0.125 * n), 4)
    assert backlog(7, [0.0], c, 3.25, 0.25) == pytest.approx(4.5)


def test_the_walk_counts_sizes_by_doubling_up_to_the_batch() -> None:
    """2-row runs seen slow (375 ms), 3 and 4 rows faster (250 ms); two instances free at 250 ms, all 9
    rows due at 500 ms. A batch of 4 grows through 2 rows, which would end at 625 ms: 1-row batches,
    two on each instance (to 500 ms), then past the deadline 4 rows on one and the asker's row on
    the other: 625 ms.
    Walking 1, 3 (not 2) the round of 4 seems to fit (250 + 250 ms): 875 ms."""
    c = costs(lambda n: 0.125 * n, lambda n, ran: {1: 0.125, 2: 0.375, 3: 0.25, 4: 0.25}[n], 4)
    assert backlog(9, [0.25, 0.25], c, 0.5) == pytest.approx(0.625)


# -- backlog: the largest batch assumed run, kept through rounds -------------------------------------


def test_rounds_of_smaller_batches_keep_the_largest_batch_assumed_run() -> None:
    """Batches of 8 or 2 (preferred sizes); runs 125 ms + 125 ms a row; formation's figure 62.5 ms a
    row, and after a batch, for sizes up to the largest assumed run, that batch's seconds. All 13 rows
    due at 2.375 s. A round of 8 (to 1.125 s); 2 rows then read 1.125 s: one round of 2 (to 1.5 s),
    the next would end at 2.625 s: 1 row (to 1.75 s), 1 row (to 2 s), the asker's: 2.25 s. Taking
    the round of 2 as the largest batch run (2 rows at 375 ms) takes a second round: 2.125 s."""
    c = costs(
        lambda n: 0.125 * (n + 1),
        lambda n, ran: 0.0625 * n if ran is None or n > ran[0] else ran[1],
        8,
        preferred=(2, 8),
    )
    assert backlog(13, [0.0], c, 2.375) == pytest.approx(2.25)
