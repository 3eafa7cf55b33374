"""BatchRunner: one formed batch, from its instance being free to its answers being set.

What expired or went away since formation is dropped first (never computed); the rest is
concatenated, run on the instance through its watchdog (inline on the event loop thread when the
batcher says runs of that size are cheap), split back by rows and answered. Each run feeds the
estimator, the wait forecast and the statistics; a run that outlived the watchdog fails its batch
and has the instance replaced.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from itertools import pairwise

from batcher.batch_io import (
    batch_inputs,
    check_rows,
    cut_at_deadline,
    late,
    note_taken,
    settle_batch,
    splits_outputs,
)
from batcher.budget import input_bytes
from batcher.errors import DeadlineExceeded, InputsRefused, OutputNotSplit, OutputRowsWrong, RunTimedOut
from batcher.estimate import ServiceTimeEstimator
from batcher.flights import Flight, Flights
from batcher.forecast import WaitForecast
from batcher.form import NO_MARGIN, WakeMargin
from batcher.hop import HopMargin
from batcher.log_ration import Ration, rationed
from batcher.queue import Request, is_done, settle_error
from batcher.scatter import Part, scatter
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy, Tensors
from batcher.watchdog import ExpiredUnrun, Instance, Watchdog

log = logging.getLogger(__name__)

Cost = tuple[float | None, int, bool]  # a run's CPU seconds (None: not measured), input bytes, cold


def start_by(batch: list[Request]) -> float | None:
    """The latest hard deadline in `batch` (None when a request has none): a run taken up past it
    would compute only answers nobody can use."""
    latest = -math.inf
    for p in batch:
        if p.hard is None:
            return None
        latest = max(latest, p.hard)
    return latest


class BatchRunner:
    """Runs the batches of one DynamicBatcher. `inline(rows, nbytes)`: whether a run of `rows` rows
    and `nbytes` input bytes may run on the event loop thread; `on_trip()`: a run outlived the
    watchdog; `overran(seconds)`: an inline run took that long."""

    def __init__(
        self,
        policy: BatchingPolicy,
        stats: ModelStats,
        clock: Callable[[], float],
        estimator: ServiceTimeEstimator,
        forecast: WaitForecast,
        watchdog: Watchdog,
        flights: Flights,
        inline: Callable[[int, int], bool],
        on_trip: Callable[[], None],
        margin: WakeMargin = NO_MARGIN,
        name: str = "batcher",
        overran: Callable[[float], None] = lambda seconds: None,
        hop: HopMargin | None = None,
    ) -> None:
        """`margin`: how much earlier than the server a caller may hold its deadline, for counting a
        request whose caller went at its deadline (batch_io.cut_at_deadline). `name` is for the log.
        `hop` hears each batch's hop around its run (batcher/hop.py)."""
        self._margin = margin
        self._hop = hop
        self._name = name
        self._policy = policy
        self._stats = stats
        self._clock = clock
        self._estimator = estimator
        self._forecast = forecast
        self._watchdog = watchdog
        self._flights = flights
        self._inline = inline
        self._on_trip = on_trip
        self._overran = overran  # told an inline run's seconds (FastPath.overran)
        self._reruns = Ration()  # a client's refused inputs: its halving logged once in 10 s

    def _board(self, flight: Flight) -> list[Request]:
        """The requests of `flight` still to compute; those expired since formation are answered.

        The run starts a turn of the event loop after formation at least (more while the instance
        is replaced, or the loop is busy). A request expired by now is never computed: 14 of 20
        had been, each answered as if its deadline had passed during the run."""
        now = self._clock()
        batch: list[Request] = []
        expired: list[Request] = []
        for p in flight.batch:
            if not is_done(p):
                if late(p.hard, now):
                    expired.append(p)
                else:  # computed from now on, even if its caller goes (CancelledInRun)
                    p.handle.boarded = True
                    batch.append(p)
            elif p.handle.future.cancelled():  # its caller went before the run: never computed
                self._stats.expired += cut_at_deadline(p, now, self._margin)
        if not batch:
            self._flights.land(flight)
        for p in expired:  # its deadline, not a queue-policy timeout: a batch had taken it
            self._expire(p, "deadline exceeded while waiting in the queue")
        return batch

    def _expire(self, p: Request, message: str) -> None:
        """Answer `p`, past its deadline before it was computed: DEADLINE_EXCEEDED, counted."""
        self._stats.expired += p.counted
        settle_error(p, DeadlineExceeded(message))

    def _expire_unrun(self, batch: list[Request]) -> None:
        """A run not started (ExpiredUnrun): it waited for an executor thread, behind a stuck run,
        until every deadline of its batch had passed. Never computed, so `expired`, each once."""
        now = self._clock()
        for p in batch:
            if not is_done(p):
                self._expire(p, "deadline exceeded while its batch waited for a thread of its instance")
            elif p.handle.future.cancelled():  # its caller went meanwhile: as at boarding
                self._stats.expired += cut_at_deadline(p, now, self._margin)

    async def run(self, instance: Instance, flight: Flight) -> None:
        if not instance.ready.is_set():  # its backend is being replaced (another slot's timeout)
            await instance.ready.wait()
        batch = self._board(flight)
        if not batch:
            return
        t0 = time.perf_counter_ns()
        note_taken(batch, t0)  # the run's start, as its record's gather_ns
        try:
            parts, outputs, offsets, ns, cost = await self._compute(instance, batch, t0)
        except ExpiredUnrun:
            self._flights.land(flight)
            self._expire_unrun(batch)
            return
        except InputsRefused as exc:
            if len(batch) == 1:
                self._fail(flight, batch, exc)
            else:  # one request's values (a zero divisor) must not fail the others beside it
                end = rationed(self._reruns)
                if end is not None:
                    log.warning(
                        "%s: a batch of %d requests refused for its inputs; running its halves again%s",
                        self._name, len(batch), end,
                    )  # fmt: skip
                await self._halves_again(instance, batch)
                self._flights.land(flight)
            return
        except Exception as exc:
            await self._fail_batch(instance, flight, batch, exc)
            return
        done_at = self._clock()
        inline = self._inline(offsets[-1], cost[1])  # how it ran (the estimator before this run)
        self._record(offsets[-1], ns, cost, done_at)
        self._flights.land(flight)
        self._log_not_split(parts, outputs, offsets)
        settle_batch(batch, parts, offsets[-1], done_at, self._stats, ns, self._margin)
        if self._hop is not None and flight.formed_at is not None:  # formation to answers, less the run
            answered_at = self._clock()
            self._hop.observe(answered_at - flight.formed_at, (ns[2] - ns[1]) / 1e9, answered_at, inline)

    async def _compute(
        self, instance: Instance, batch: list[Request], t0: int
    ) -> tuple[list[Part], Tensors, list[int], tuple[int, int, int, int], Cost]:
        """Run `batch` on `instance`, started at perf_counter_ns `t0`: each request's part, the
        run's outputs and row offsets, the perf_counter_ns at start, gathered, run and scattered,
        and the run's CPU seconds, input bytes and whether it was its instance's first (cold)."""
        inputs, offsets = batch_inputs(batch, self._policy)
        # Each request's bytes were measured at admission (with byte budgets: a server's always).
        nbytes = sum(p.handle.nbytes for p in batch) or input_bytes(inputs)
        t1 = time.perf_counter_ns()
        key = self._forecast.started(offsets[-1], self._clock())
        inline = self._inline(offsets[-1], nbytes)
        try:
            outputs, cpu_s = await self._watchdog.run(instance, inputs, inline, start_by(batch))
            # Its session's first run pays one-time costs; set once it ran (a batch dropped unrun
            # while waiting for the thread had taken the mark: a tester, session 60).
            cold, instance.ran = not instance.ran, True
            if inline and cpu_s is not None:  # its wall time, which no watchdog could cut
                self._overran(cpu_s)
        finally:
            self._forecast.ended(key)
        t2 = time.perf_counter_ns()
        parts: list[Part]
        if splits_outputs(self._policy):
            parts = scatter(outputs, offsets, self._policy.ragged is not None)
        else:  # a request run alone: its outputs whole, once they hold its rows
            check_rows(outputs, offsets[-1], self._policy)
            parts = [dict(outputs)]
        return parts, outputs, offsets, (t0, t1, t2, time.perf_counter_ns()), (cpu_s, nbytes, cold)

    def _record(self, rows: int, ns: tuple[int, int, int, int], cost: Cost, done_at: float) -> None:
        """A run that ended well at `done_at`: statistics, the estimator and the forecast hear of it.
        `cost`: its CPU seconds (None: not measured), input bytes, and whether it was cold."""
        t0, t1, t2, t3 = ns
        cpu_s, nbytes, cold = cost
        self._stats.record_run(rows, t1 - t0, t2 - t1, t3 - t2)  # its requests: settle_batch
        self._estimator.observe(rows, (t2 - t1) / 1e9, done_at, cpu_s, nbytes, cold=cold)
        self._stats.run_cpu_s += cpu_s or 0.0
        self._forecast.ran(rows)

    async def _halves_again(self, instance: Instance, batch: list[Request]) -> None:
        """Run the halves of a batch refused for its inputs, each halved again while refused, down
        to single requests, which get the refusal: the others get their answers. Halving costs
        about 2*log2(n) more runs for one culprit among n, where running each request alone cost
        n (a client putting one bad request in every batch would have made each batch n runs).
        What expired or went meanwhile is not computed. Any other failure fails what is left."""
        middle = len(batch) // 2
        pending = [batch[middle:], batch[:middle]]  # popped from the end: the first half first
        while pending:
            part = self._still_wanted(pending.pop())
            if not part:
                continue
            try:
                parts, outputs, offsets, ns, cost = await self._compute(
                    instance, part, time.perf_counter_ns()
                )
            except ExpiredUnrun:
                self._expire_unrun(part)
                continue
            except InputsRefused as exc:
                if len(part) == 1:
                    settle_error(part[0], exc)
                else:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]
                continue
            except Exception as exc:
                await self._fail_batch(instance, None, [p for q in (part, *pending) for p in q], exc)
                return
            done_at = self._clock()
            self._record(offsets[-1], ns, cost, done_at)
            self._log_not_split(parts, outputs, offsets)
            settle_batch(part, parts, offsets[-1], done_at, self._stats, ns, self._margin)

    def _still_wanted(self, part: list[Request]) -> list[Request]:
        """The requests of `part` to run again: not answered, not gone, not past their deadline
        (answered DEADLINE_EXCEEDED here, as a batch's expired requests are at boarding). One whose
        caller went at its deadline during the refused run counts `expired`, as at boarding."""
        now = self._clock()
        wanted = []
        for p in part:
            if is_done(p):
                if p.handle.future.cancelled():  # its caller went meanwhile: as at boarding
                    self._stats.expired += cut_at_deadline(p, now, self._margin)
                continue
            if late(p.hard, now):
                self._expire(p, "deadline exceeded while its batch was run again")
            else:
                wanted.append(p)
        return wanted

    def _fail(self, flight: Flight | None, batch: list[Request], exc: Exception) -> None:
        """The whole batch fails with the backend's own error; the server maps it."""
        if flight is not None:
            self._flights.land(flight)
        for p in batch:
            settle_error(p, exc)

    async def _fail_batch(
        self, instance: Instance, flight: Flight | None, batch: list[Request], exc: Exception
    ) -> None:
        self._fail(flight, batch, exc)
        if isinstance(exc, OutputRowsWrong):  # the model's outputs, not the requests: its operator's
            log.warning("%s: a run of %d requests failed: %s", self._name, len(batch), exc)
        if isinstance(exc, RunTimedOut):  # the instance gets a fresh backend
            self._on_trip()
            await self._watchdog.replace(instance, sum(p.rows for p in batch), len(batch))

    def _log_not_split(self, parts: list[Part], outputs: Tensors, offsets: list[int]) -> None:
        """One line for a run whose outputs held no rows for some of its requests (OutputNotSplit):
        the model's outputs do not follow the requests' rows, which its operator should know."""
        failed = [part for part in parts if isinstance(part, OutputNotSplit)]
        if failed:
            shapes = {name: arr.shape for name, arr in outputs.items()}
            log.warning(
                "%s: %d of %d requests of a run of %d rows (rows %s) not answered: %s (output shapes %s)",
                self._name,
                len(failed),
                len(parts),
                offsets[-1],
                [stop - start for start, stop in pairwise(offsets)],
                failed[0],
                shapes,
            )
