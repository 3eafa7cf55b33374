"""DynamicBatcher: one shared queue, one dispatch task per backend instance.

A dispatch task waits for a free slot on its instance (at most max_batches_in_flight batches
there), then for a batch (see form.py), runs it as its own task (run_batch.py; counted in flight
until it lands, flights.py) and goes back for the next. All
instances pull from one queue: whichever is free takes the next batch, which balances better than
a queue per instance. Waiting is on events only: `queue.changed` for arrivals, and a timed wait on
it when formation asked to wait for the batch to grow. A request the rules would run alone at once
on an idle model, cheaply, runs on the spot instead (`run_now`, fast_path.py).

Every request gets exactly one outcome: a result, or an exception set on its future (never a
cancel). A caller that goes away cancels its own future; it is removed from the queue at once, and
skipped (never computed) if a batch was being formed around it. A run that outlives the model's
run timeout fails its batch and its instance is replaced (batcher/watchdog.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence

from batcher.admission import Admission
from batcher.batch_io import cut_at_deadline, handed_over, left_ns, stopped
from batcher.budget import ByteBudget
from batcher.claim import Claim
from batcher.errors import BatcherError, CancelledInRun, ComputedThenCancelled, NotAccepting
from batcher.estimate import ServiceTimeEstimator
from batcher.fast_path import FastPath
from batcher.flights import Flight, Flights
from batcher.forecast import WaitForecast
from batcher.form import WakeMargin, form_batch
from batcher.hop import HopMargin
from batcher.lateness import LoopLateness
from batcher.queue import Request, RequestQueue, expired_in_queue, is_done, settle_error, validate_policy
from batcher.run_batch import BatchRunner
from batcher.run_count import RunCount
from batcher.stats import ModelStats
from batcher.turn_deadline import TurnDeadline
from batcher.types import Backend, BatchingPolicy, QueueTrace, Tensors
from batcher.watchdog import Instance, ReplaceBackend, Watchdog

log = logging.getLogger(__name__)

# Measured: a lone request waiting out a 3 s delay with a 1 s gRPC deadline was woken 50 us before its
# deadline (~9 ms after its caller's), and failed (3 of 3); the loop's lateness is added at each
# formation. For waking only: what a request must leave for the hop is measured (batcher/hop.py).
WAKE_MARGIN = WakeMargin(fixed_s=0.005, share=0.01)


class DynamicBatcher:
    """Queues requests for one model version and runs them in batches on its backend instances."""

    def __init__(
        self,
        backends: Sequence[Backend],
        policy: BatchingPolicy,
        stats: ModelStats,
        clock: Callable[[], float] = time.monotonic,
        *,
        inline_max_s: float = 0.0,
        run_timeout_s: float = 0.0,
        replace: ReplaceBackend | None = None,
        name: str = "batcher",
        byte_budgets: Sequence[ByteBudget] = (),
        run_count: RunCount | None = None,
    ) -> None:
        """`inline_max_s`: batches on a RunsBlocking backend whose recent runs of that size took at
        most this much CPU run on the event loop thread, not in the backend's executor (for tiny
        models a thread hop costs more than the run); 0 disables. `run_timeout_s`: the watchdog's
        limit on a run (0: none); `replace` gives an instance whose run outlived it a fresh backend
        (None: it keeps its own). `name` is for the log. `byte_budgets` bound the input bytes of
        queued requests (this model's and the server's; batcher/budget.py). `run_count` counts its
        runs, with every other batcher's of the server (batcher/run_count.py)."""
        if not backends:
            raise ValueError("DynamicBatcher needs at least one backend instance")
        validate_policy(policy)
        self._instances = tuple(Instance(i, backend) for i, backend in enumerate(backends))
        run_count = run_count if run_count is not None else RunCount()
        self._watchdog = Watchdog(run_timeout_s, replace, name, run_count, clock)
        self._policy = policy
        # While stopping, nothing waits for a batch to grow.
        self._drain_policy = dataclasses.replace(policy, max_queue_delay_s=0.0)
        self._stats = stats
        self._clock = clock
        self._estimator = ServiceTimeEstimator()
        self._lateness = LoopLateness()  # how late this batcher's timers have lately run
        self.hop = HopMargin()  # measured: admission's, formation's and the forecast's
        self._flights = Flights(lambda: len(self._queue))
        self._queue = RequestQueue(
            policy,
            clock,
            on_remove=self._flights.check_idle,
            budgets=byte_budgets,
            on_expire=self._expired,
            min_run_s=self._estimator.predict_floor,  # what runs seen prove: never fail one early
            hop_s=self.hop.at,
            on_late=self._lateness.observe,
            floor_basis=self._estimator.floor_basis,
        )
        # For sequences' waits (sequence.py): the queue's give-up rule, and its margin for a cut.
        self.turn_deadline = TurnDeadline(self._queue, stats, WAKE_MARGIN, self._drain_hint_s)
        self._dispatchers: list[asyncio.Task[None]] = []
        self._runs = self._flights.runs  # the batches' run tasks
        self._forecast = WaitForecast(
            self._estimator, self._queue, policy, len(self._instances), clock, self.hop.at
        )
        self._accepting = False
        self._closing = False
        self._fast_path = FastPath(
            self._instances[0].blocking,
            inline_max_s,
            policy,
            stats,
            clock,
            self._estimator,
            self._forecast,
            self._queue,
            self._flights,
            run_count,
            run_timeout_s,
            name,
        )
        self.hop.off_loop = self._fast_path.off_loop  # (the fast path's, not the batcher's: no cycle)
        self._runner = BatchRunner(
            policy,
            stats,
            clock,
            self._estimator,
            self._forecast,
            self._watchdog,
            self._flights,
            inline=self._fast_path.runs_inline,
            on_trip=self._trip,
            overran=self._fast_path.overran,
            margin=WAKE_MARGIN,
            hop=self.hop,
            name=name,
        )

    @property
    def policy(self) -> BatchingPolicy:
        return self._policy

    @property
    def estimator(self) -> ServiceTimeEstimator:
        return self._estimator

    @property
    def forecast(self) -> WaitForecast:
        """Its admission's predictions, and the rows ensemble requests pledged here (forecast.py)."""
        return self._forecast

    @property
    def stopped(self) -> bool:
        """`stop` began (its version is retired, or the server stops); also for a batcher never
        started (an ensemble's, which only settles admissions)."""
        return self._closing

    def _drain_hint_s(self) -> float:
        """About when the queued and running work will have drained: a queue-full refusal's hint."""
        return self._forecast.shed_s(self._policy.priority_levels, 0)

    @property
    def queued_requests(self) -> int:
        """Requests queued, and those held waiting for their sequence's turn (they count as queued)."""
        return len(self._queue) + self._queue.held

    @property
    def queued_bytes(self) -> int:
        """Input bytes of the requests queued now, and held for their sequence's turn (charged to
        the byte budgets)."""
        return self._queue.nbytes

    @property
    def in_flight_batches(self) -> int:
        return self._flights.count

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def watchdog(self) -> Watchdog:
        """Its limit, and how many runs outlived it and how many instances were replaced."""
        return self._watchdog

    def start(self) -> None:
        """Start one dispatch task per backend instance. Call once, inside the running loop."""
        loop = asyncio.get_running_loop()
        if self._dispatchers or self._closing:
            raise RuntimeError("DynamicBatcher.start() may be called only once")
        self._accepting = True
        for instance in self._instances:
            task = loop.create_task(self._dispatch(instance), name=f"sluiceway-batcher-{instance.index}")
            task.add_done_callback(self._dispatcher_done)
            self._dispatchers.append(task)

    def admission(
        self,
        rows: int,
        *,
        deadline: float | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> Admission:
        """Settle a request's terms against this model's policy, once (see batcher/admission.py).

        `deadline`: absolute clock() seconds (the gRPC deadline); `timeout_s`: the request's own
        timeout; `priority` 0 (or above the model's levels) means the default level.
        Raises TooManyRows, or ValueError for impossible arguments.
        """
        return Admission.settle(
            self._policy, rows, now=self._clock(), deadline=deadline, timeout_s=timeout_s, priority=priority
        )

    async def submit(
        self,
        inputs: Tensors,
        rows: int,
        *,
        deadline: float | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> Tensors:
        """Settle, then serve one request: `run_now` when it applies, else `enqueue`."""
        a = self.admission(rows, deadline=deadline, priority=priority, timeout_s=timeout_s)
        outputs = self.run_now(inputs, a)
        return outputs if outputs is not None else await self.enqueue(inputs, a)

    async def enqueue(
        self, inputs: Tensors, a: Admission, trace: QueueTrace | None = None, claim: Claim | None = None
    ) -> Tensors:
        """Queue one request and return its outputs (views into the batch's outputs). With `trace`,
        the run that computed it is recorded there (for tracing; see BatchRun). With `claim`, the
        caller may withdraw it while it is queued (batcher/claim.py); the claim is told it was
        admitted once it is queued, never for a request refused here (its deadline, a full queue).

        Raises NotAccepting, BatcherStopped, QueueFull, Overloaded, DeadlineExceeded, or whatever the backend
        raised for this request's batch.
        """
        if not self._accepting:
            raise NotAccepting()
        if claim is not None and claim.withdrawn is not None:
            raise claim.withdrawn  # withdrawn before it reached the queue
        try:
            p = self._queue.admit(inputs, a, self._forecast.now, self._forecast.shed_s, trace)
        except BatcherError as exc:
            if a.counted:
                self._stats.record_refusal(exc, self._queue.full(a.priority), left_ns(a.hard, self._clock()))
            raise
        self._forecast.arrived(a.priority, a.rows)  # admitted: lower levels wait behind its rows
        if claim is not None:
            claim.bind(functools.partial(self._withdraw, p))
            claim.admitted()
        try:
            return await p.handle.future
        except asyncio.CancelledError:
            # The caller went away: never compute it. Cancelling our await cancelled the future,
            # so a batch already formed around it skips it too.
            if self._queue.remove(p):  # still queued: gone at its deadline is `expired`
                self._stats.expired += cut_at_deadline(p, self._clock(), WAKE_MARGIN)
                raise
            future = p.handle.future
            if not future.cancelled() and future.done() and future.exception() is None:
                raise ComputedThenCancelled() from None  # the run had answered it first
            if future.cancelled() and p.handle.boarded:  # its run computes it all the same
                raise CancelledInRun() from None
            # Taken by a batch whose run has not started: the run drops it unrun (`expired` at its
            # deadline), so its caller is told it was not in a run.
            raise
        finally:
            if claim is not None:
                claim.settle()
            # A failure raised here keeps this frame in its traceback, and `p` (its future) holds
            # the failure: a reference cycle that kept the request's job (its shared-memory regions
            # mapped) until a garbage collection.
            del p

    def _withdraw(self, p: Request, exc: BaseException) -> bool:
        """A Claim's withdrawal: out of the queue, its await fails with `exc`; False once a batch
        has taken it (it is computed and answered)."""
        if not self._queue.remove(p):
            return False
        settle_error(p, exc)
        return True

    def run_now(self, inputs: Tensors, a: Admission) -> Tensors | None:
        """The fast path, synchronous: None (nothing done) unless the batching rules would run
        this request alone at once on an idle model (nothing queued, nothing running) and the
        estimator says runs of its size are cheap enough for the event loop thread. Then it is
        checked as admission would and run on the spot (batcher/fast_path.py). Raises as
        `enqueue` does. A case of the batching rules, not a second path: formation would make the
        same batch. It saves the queue entry, the dispatch wake-up, a run task and a future (and,
        for a stream, a task per request): for a run of a few tens of microseconds those cost as much.
        """
        if not self._accepting:
            raise NotAccepting()
        return self._fast_path.run(inputs, a)

    async def stop(
        self, drain: bool = True, timeout_s: float = 5.0, handover: bool = False, finish_runs: bool = False
    ) -> None:
        """Stop admitting; finish queued and running work (drain) or fail what is queued.

        drain=True: queued requests are dispatched without waiting for batches to grow, and
        everything must finish within `timeout_s`. drain=False: queued requests fail with
        BatcherStopped at once; batches already running get `timeout_s` to finish. Whatever is
        left after `timeout_s` fails with BatcherStopped; with `handover` (a reload retiring this
        batcher), what is still queued fails with NotAccepting instead: never computed, so its
        caller may submit it to the batcher that replaced this one. `finish_runs` (a retired
        version, where the process goes on): batches already running are left to finish and
        answer their requests, not failed (4 of 40 requests of a reload under load were).
        """
        self._accepting = False
        self._closing = True
        if not drain:
            self._queue.fail_all(stopped)
        self._queue.changed.set()  # wake dispatchers: they now dispatch at once, or exit
        self._flights.check_idle()
        if self._dispatchers:
            try:
                await asyncio.wait_for(self._flights.idle.wait(), timeout=timeout_s)
            except asyncio.TimeoutError:
                what = "handing what is queued over" if handover else "failing what is left"
                log.warning("batcher: stop timed out after %.3g s; %s", timeout_s, what)
        self._queue.fail_all(handed_over if handover else stopped)
        leftovers = [*self._dispatchers] if finish_runs else [*self._runs, *self._dispatchers]
        for task in leftovers:
            task.cancel()  # our own tasks; their requests are failed in _run_done
        await asyncio.gather(*leftovers, return_exceptions=True)

    # -- dispatch ---------------------------------------------------------------------------------

    async def _dispatch(self, instance: Instance) -> None:
        slots = asyncio.Semaphore(self._policy.max_batches_in_flight)
        while True:
            await slots.acquire()
            batch = await self._next_batch()
            if batch is None:
                return
            flight = Flight(batch, self._clock())
            self._flights.launch(self._runner.run(instance, flight), flight, slots)
            # Not held while waiting for the next batch: the inputs (and any shared-memory
            # region they view) are released when the run ends, not one batch later.
            del batch, flight

    async def _next_batch(self) -> list[Request] | None:
        """Wait until formation yields a batch; None once stopping and nothing is left."""
        q = self._queue
        while True:
            # Clear before forming: an arrival after this point sets it again, so none is missed.
            q.changed.clear()
            now = self._clock()
            policy = self._drain_policy if self._closing else self._policy
            predict = functools.partial(self._estimator.predict, now=now)
            floor = functools.partial(self._estimator.predict_floor, now=now)  # drops rest on it
            margin, hop_s = WAKE_MARGIN.plus(self._lateness.current(now)), self.hop.at(now)
            f = form_batch(q.values(), now, policy, predict, is_done, margin, floor, hop_s)
            for p in f.cancelled:
                q.remove(p)
            for p in f.expired:
                q.fail(p, expired_in_queue(p, now, floor(p.rows), hop_s, q.basis(p.rows, now)))
            self._stats.expired += sum(p.counted for p in f.expired)
            if f.batch:
                self._flights.take()  # before the removals, so the queue never looks idle meanwhile
                self._stats.record_dispatch("drain" if self._closing else f.reason or "idle")
                for p in f.batch:
                    q.remove(p)
                    if p.counted:
                        slack_ns = None if p.hard is None else int((p.hard - now) * 1e9)
                        p.queued_ns = max(0, int((now - p.arrival) * 1e9))
                        self._stats.observe_queue(p.queued_ns, slack_ns)
                if f.reason in ("full", "preferred") and not self._closing:  # cut at its size
                    self._forecast.packed(sum(p.rows for p in f.batch), q.rows_ahead(policy.priority_levels))
                return f.batch
            if self._closing:
                return None  # with no delay while stopping, no batch means an empty queue
            late_s = await q.wait_changed(f.wait_until)
            if late_s is not None:  # woken by its timer: how late the loop ran it
                self._lateness.observe(late_s, self._clock())

    def _trip(self) -> None:
        """A run outlived the watchdog: nothing of this model runs inline from now on (FastPath.trip)."""
        self._fast_path.trip()

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in formation: stop admitting and fail the queue rather than leave callers hanging.
        log.error("batcher: dispatch task failed", exc_info=task.exception())
        self._accepting = False
        self._queue.fail_all(stopped)

    def _expired(self, p: Request) -> None:
        self._stats.expired += p.counted
