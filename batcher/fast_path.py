"""FastPath: a request run alone, at once, on the event loop thread, without entering the queue.

Separate from dispatch (dynamic.py) because it is a job of its own: it never waits, never forms a
batch and never starts a task. It applies only when the batching rules would run the request alone
at once on an idle model (nothing queued, nothing running) and the estimator says runs of its size
are cheap enough for the loop thread; then it checks the request as admission would, runs it
synchronously and keeps the books a queued run keeps (statistics, estimator, forecast, a late or
refused answer). It also owns the model's inline switch, which the batches' runs read: a run that
outlived the watchdog turns inline runs off for good (`trip`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from batcher.admission import Admission
from batcher.batch_io import alone_rows, check_rows, computed_late, late, left_ns, refusal
from batcher.budget import input_bytes
from batcher.errors import BatcherError
from batcher.estimate import ServiceTimeEstimator
from batcher.flights import Flights
from batcher.forecast import WaitForecast
from batcher.form import DispatchReason, alone_reason, runs_alone_now
from batcher.queue import RequestQueue
from batcher.run_count import RunCount
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy, RunsBlocking, Tensors

log = logging.getLogger(__name__)


class FastPath:
    """The fast path of one DynamicBatcher. `backend`: its first instance when that RunsBlocking
    (None: no fast path); `inline_max_s`: see DynamicBatcher (0 disables inline runs)."""

    def __init__(
        self,
        backend: RunsBlocking | None,
        inline_max_s: float,
        policy: BatchingPolicy,
        stats: ModelStats,
        clock: Callable[[], float],
        estimator: ServiceTimeEstimator,
        forecast: WaitForecast,
        queue: RequestQueue,
        flights: Flights,
        runs: RunCount,
        run_timeout_s: float = 0.0,
        name: str = "batcher",
    ) -> None:
        self._name = name
        self._inline_max_s = inline_max_s
        self._run_timeout_s = run_timeout_s  # an inline run past it trips inline runs off (`overran`)
        # The fast path's instance, when it can run on the caller's thread; looked up once.
        self._fast = backend if inline_max_s > 0 else None
        self._policy = policy
        self._stats = stats
        self._clock = clock
        self._estimator = estimator
        self._forecast = forecast
        self._queue = queue
        self._flights = flights
        self._runs = runs
        self._alone: dict[int, DispatchReason] = {}  # the fast path's dispatch reason by rows

    def runs_inline(self, rows: int, nbytes: int) -> bool:
        """Whether a batch of `rows` rows and `nbytes` input bytes runs on the event loop thread
        (see `inline_max_s`)."""
        return self._inline_max_s > 0 and self._estimator.cheap(rows, self._inline_max_s, nbytes)

    def off_loop(self) -> bool:
        """Whether this model's runs are not an inline one's: no inline runs, or its fastest recent
        run of a row took longer than `inline_max_s` (its wall time, where a run's cost shows though
        its thread sleeps). The hop margin is then the former 5 ms (batcher/hop.py). Not whether the
        next run would be inline: a first, cold run through the executor kept the mlp's CPU figure
        above the limit, and its 3 ms requests, refused on the 5 ms, never ran to bring it down.
        Where the only run of a row seen is an instance's first (cold: the mlp's 0.8 ms), no: that
        run still bounds refusals, but the margin beside it is measured until a second comes (a
        fresh server sent only 3 ms requests had refused all but one or two; session 60)."""
        if self._inline_max_s > 0 and self._estimator.cold_only(1):
            return False
        floor = self._estimator.predict_floor(1, self._clock())
        return not 0.0 < floor <= self._inline_max_s

    def overran(self, seconds: float) -> None:
        """An inline run (the fast path's, or a batch's) took `seconds`: past run_timeout_s, where no
        watchdog could cut it (a cost set by an input's value, not its size: a 16-byte n for an
        n x n product), inline runs go off (`trip`), so that happens once."""
        if 0 < self._run_timeout_s < seconds:
            log.warning("%s: an inline run took %.3f s, past run_timeout_s (%g s): none runs inline "
                        "any more", self._name, seconds, self._run_timeout_s)  # fmt: skip
            self.trip()

    def trip(self) -> None:
        """A run outlived the watchdog: run nothing of this model inline (the fast path included)
        from now on, since an inline run cannot be timed. Its instances share one graph, so a
        hang on one is a hang any of them may have."""
        self._inline_max_s = 0.0
        self._fast = None

    def run(self, inputs: Tensors, a: Admission) -> Tensors | None:
        """DynamicBatcher.run_now once it is accepting: None (nothing done) unless the request
        runs alone at once here; raises as DynamicBatcher.enqueue does."""
        backend = self._fast
        if backend is None or self._flights.count or len(self._queue) or self._policy.ragged is not None:
            return None  # (ragged models always gather: their batch inputs are made there)
        if not runs_alone_now(a.rows, self._policy):
            return None
        nbytes = input_bytes(inputs)  # a BYTES tensor's strings too (not 8 bytes a string: 50 MB ran inline)
        if not self._estimator.cheap(a.rows, self._inline_max_s, nbytes):
            return None
        try:
            self._queue.check(a, self._forecast.now)
        except BatcherError as exc:
            if a.counted:
                self._stats.record_refusal(exc, False, left_ns(a.hard, self._clock()))
            raise
        reason = self._alone.get(a.rows) or self._alone.setdefault(a.rows, alone_reason(a.rows, self._policy))
        self._stats.record_dispatch(reason)
        slack_ns = None if a.hard is None else int((a.hard - self._clock()) * 1e9)
        t0 = time.perf_counter_ns()
        self._runs.started += 1
        try:
            outputs = backend.run_blocking(inputs)
        finally:
            self._runs.ended += 1
        t1 = time.perf_counter_ns()
        self.overran((t1 - t0) / 1e9)
        rows = alone_rows(inputs, self._policy) if a.rows == 1 else a.rows
        check_rows(outputs, rows, self._policy)  # as a run's error: raised before it is counted
        if a.counted:
            self._stats.observe_queue(0, slack_ns)
        self._stats.record_run(rows, 0, t1 - t0, 0)  # the request itself once answered, below
        if not a.counted:
            self._stats.count_copy(rows)
        self._stats.run_cpu_s += (t1 - t0) / 1e9  # on the loop thread: wall time is its CPU time
        now = self._clock()
        self._estimator.observe(a.rows, (t1 - t0) / 1e9, now, cpu_s=(t1 - t0) / 1e9, nbytes=nbytes)
        self._forecast.ran(a.rows)
        if late(a.hard, now):
            self._stats.late += a.counted
            raise computed_late()
        refused = refusal(a.accept, outputs)
        if refused is not None:  # not its answer: counted in `fail` only, by its caller
            try:
                raise refused
            finally:  # this frame, in its traceback, must not hold it: a cycle (see refusal)
                del refused
        if a.counted:
            self._stats.record_computed(rows, (0, t1 - t0, 0))
            self._stats.count_queue(0)
        if a.computed is not None:
            a.computed((0, t1 - t0, 0))
        return outputs
