"""WaitForecast: how long a request admitted now would wait, for admission's deadline checks.

Admission (batcher/queue.py) refuses a request that cannot finish before its deadline, so it needs
two predictions: the run of a request alone on an idle model (`now`), and the end of its batch
behind what is running and queued ahead of it (`finish`). Both come from the service-time
estimator; `finish` also needs the predicted end of each batch running now and the size of recent
batches, which DynamicBatcher reports here as runs start and end.

`now` is the request's own "cannot finish" figure: the estimator's `predict_floor`, the fastest
recent run of its rows or fewer, the figure the queue gives up on too (batcher/queue.py). It had read
the by-rows `predict` (10 of 10 8-row requests refused after one 1-row run of 100 ms: "about 810 ms
of compute needed"), then the bucket's cautious `predict_seen` (5-row requests refused on the
5..8-row bucket's figure from 8-row runs). `finish` forecasts the work ahead with `predict_seen`
(sizes not seen yet are not scaled up by rows); a request that runs at once on a free instance
with nothing queued ahead waits for nothing, so its own run is left to `now` (a cautious figure
there shed requests on an idle server that the floor admitted).

Rows pledged (`pledge`) are an ensemble request's steps not queued here yet: admitted whole, its
later steps will come and go before what is admitted after it (Admission.since), so `finish`
counts them ahead of a new request as it counts the queued rows (without them, a model shared by
two steps admitted first steps whose second steps then found no room: 95% of its rows were spent
on requests that failed, under 2x overload).
"""

from __future__ import annotations

from collections.abc import Callable

from batcher.estimate import ServiceTimeEstimator
from batcher.queue import RequestQueue
from batcher.types import BatchingPolicy


class WaitForecast:
    """Predicted waits for one model version's queue and its `instances` backend instances."""

    def __init__(
        self,
        estimator: ServiceTimeEstimator,
        queue: RequestQueue,
        policy: BatchingPolicy,
        instances: int,
        clock: Callable[[], float],
    ) -> None:
        self._estimator = estimator
        self._queue = queue
        self._max_batch_size = policy.max_batch_size
        self._instances = instances
        self._clock = clock
        # Predicted end (clock seconds) of each batch running now, by a key per run.
        self._running_until: dict[int, float] = {}
        self._runs = 0
        self._rows_per_run = float(policy.max_batch_size or 1)  # EWMA of rows in recent runs
        self._pledged: dict[int, int] = {}  # rows pledged by priority level (`pledge`)

    def pledge(self, rows: int, level: int) -> None:
        """Rows an admitted ensemble request will queue here at priority `level` once its earlier
        steps end: forecast ahead of requests admitted from now on, until `unpledge`."""
        self._pledged[level] = self._pledged.get(level, 0) + rows

    def unpledge(self, rows: int, level: int) -> None:
        """The pledged rows reached the queue, or will not come (the request ended)."""
        self._pledged[level] -= rows

    @property
    def pledged(self) -> int:
        """Rows pledged here now, at every level."""
        return sum(self._pledged.values())

    def _ahead(self, level: int) -> int:
        """Rows served before a new request at `level`: queued, and pledged."""
        pledged = sum(rows for lvl, rows in self._pledged.items() if lvl <= level)
        return self._queue.rows_ahead(level) + pledged

    def started(self, rows: int, now: float) -> int:
        """A run of `rows` rows started at `now`; the key to pass to `ended`."""
        self._runs += 1
        self._running_until[self._runs] = now + self._estimator.predict_seen(rows, now)
        return self._runs

    def ended(self, key: int) -> None:
        del self._running_until[key]

    def ran(self, rows: int) -> None:
        """A run of `rows` rows completed (inline or not): recent batch sizes move towards it."""
        self._rows_per_run += 0.2 * (rows - self._rows_per_run)

    def now(self, rows: int) -> float:
        """Seconds a run of `rows` rows started now takes at least, as far as runs seen prove."""
        return self._estimator.predict_floor(rows, self._clock())

    def shed_s(self, level: int, rows: int) -> float:
        """What admission sheds on (Overloaded): `finish`, except for a request that would run at
        once (nothing queued before it, an instance free), whose wait is its own run alone: `now`,
        the floor admission's DeadlineExceeded already checked. On `finish`'s cautious figure an
        idle server shed requests its floor admitted."""
        if not self._ahead(level) and len(self._running_until) < self._instances:
            return self.now(rows)
        return self.finish(level, rows)

    def finish(self, level: int, rows: int) -> float:
        """Seconds until a request of `rows` rows at priority `level`, admitted now, is answered.

        What is left of the running batches, plus the queued and pledged rows served before it
        (its own included) cut into batches as large as recent ones, shared among the instances. A
        rough, cheap estimate: it ignores formation delay and preferred sizes; 0.0 until a run has
        been observed.

        With the same margin formation uses: a request admitted here is one formation will run
        when its turn comes. Admitting on mean run times instead (tried) let borderline requests
        in that formation then dropped unrun, idling the instance: goodput 25 vs 32/s (50 ms
        deadline) and 37 vs 40/s (200 ms) at 2x overload in one run (BENCHMARKS.md section 5).
        """
        now = self._clock()
        estimate = self._estimator.predict_seen
        running = sum(max(0.0, end - now) for end in self._running_until.values())
        ahead = self._ahead(level) + rows
        per_batch = self._per_batch()
        batches = -(-ahead // per_batch)
        queued = batches * estimate(min(ahead, per_batch), now)
        return (running + queued) / self._instances

    def turn_s(self, level: int, own: int = 0) -> float:
        """What a request that reaches a busy model later (an ensemble's later step) may wait besides
        the work `finish` counts: a batch as large as recent ones, which its instance took from
        newer work just before it came (its own earlier step's batch had ended: the dispatcher forms
        the next one before that step's next step is queued). 0.0 while nothing runs or waits but
        `own`, the rows its own request pledged here (nothing newer is there to take its turn)."""
        if not self._running_until and self._ahead(level) <= own:
            return 0.0
        return self._estimator.predict_seen(self._per_batch(), self._clock()) / self._instances

    def _per_batch(self) -> int:
        """Rows of batches as large as recent ones, not max_batch_size: formation cuts batches to
        the slack of their oldest request, so a long queue drains in several smaller batches."""
        return min(self._max_batch_size or 1, max(1, round(self._rows_per_run)))
