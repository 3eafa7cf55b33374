"""WaitForecast: how long a request admitted now would wait, for admission's deadline checks.

Admission (batcher/queue.py) refuses a request that cannot finish before its deadline, so it needs
two predictions: the run of a request alone on an idle model (`now`), and the end of its batch
behind what is running and queued ahead of it (`finish`). Both come from the service-time
estimator; `finish` also needs the predicted end of each batch running now, which DynamicBatcher
reports here as runs start and end, and the batches formation will cut the queue into (`backlog`).

`now` is the request's own "cannot finish" figure: the estimator's `predict_floor`, the fastest
recent run of its rows or fewer, the figure the queue gives up on too (batcher/queue.py). It had read
the by-rows `predict` (10 of 10 8-row requests refused after one 1-row run of 100 ms: "about 810 ms
of compute needed"), then the bucket's cautious `predict_seen` (5-row requests refused on the
5..8-row bucket's figure from 8-row runs). `finish` forecasts the work ahead with `predict_seen`
(sizes not seen yet are not scaled up by rows), in batches cut by formation's `predict`; a request
that runs at once on a free instance with nothing queued ahead waits for nothing, so its own run is
left to `now` (a cautious figure there shed requests on an idle server that the floor admitted).

Rows pledged (`pledge`) are an ensemble request's steps not queued here yet: admitted whole, its
later steps will come and go before what is admitted after it (Admission.since), so `finish`
counts them ahead of a new request as it counts the queued rows (without them, a model shared by
two steps admitted first steps whose second steps then found no room: 95% of its rows were spent
on requests that failed, under 2x overload). They are cut into the batches `backlog` forms as the
queued rows are; their own deadlines are not known here, so they count between the oldest queued
request's and the asker's. `turn_s`, the batch of newer work such a step may find its model just
took, is still one as large as recent runs (`ran`): the only use left of their size.

Two things formation does that the queue's row count alone does not show: it packs requests whole
(batches of 4 hold one 3-row request each), which `packed` learns from the batches it cuts at their
size; and it serves higher priority levels first, so a lower level's request also waits for the
rows of higher levels that arrive before its turn, which `arrived` counts (batcher/arrival_rates.py).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import NamedTuple

from batcher.arrival_rates import ArrivalRates
from batcher.estimate import ServiceTimeEstimator
from batcher.form import backlog_rows
from batcher.hop import hop_at
from batcher.queue import RequestQueue
from batcher.types import BatchingPolicy

PACKING_FADE_S = 0.5  # how fast `packed` returns to full without cuts at size (`_packing`)
# How often `finish` works a lower level's wait again with the higher levels' rows arriving over it.
# It stops once the wait stops growing or passes the deadline; where they alone fill the model it
# grows every round (three rounds had let priority-2 requests in behind priority-1 work at 1.25x the
# model's rate, all of them then dropped unrun: a tester, session 54).
ARRIVAL_ROUNDS = 20


class WaitForecast:
    """Predicted waits for one model version's queue and its `instances` backend instances."""

    def __init__(
        self,
        estimator: ServiceTimeEstimator,
        queue: RequestQueue,
        policy: BatchingPolicy,
        instances: int,
        clock: Callable[[], float],
        hop_s: float | Callable[[float], float] = 0.0,
    ) -> None:
        """`hop_s`: from a run's end to its answers and its instance's next run, or its figure at `now`:
        the give-up rule's margin (batcher/hop.py; 1-2 ms, 8 ms at p99 under 2x overload; cap 5 ms)."""
        self._estimator = estimator
        self._queue = queue
        self._instances = instances
        self._clock = clock
        self._hop_s = hop_at(hop_s)
        # Each batch running now, by a key per run: its predicted end (clock seconds), and whether
        # its cost is known (an unknown one never refuses a request: no hop after it).
        self._running_until: dict[int, tuple[float, bool]] = {}
        self._runs = 0
        # The estimator's figures as last seen, kept until it observes a run (read afresh, ~40 us of a
        # forecast's ~50). Formation's batch sizes, worked out as asked: a list of every size up to
        # max_batch_size had been built at each load (gigabytes for a max_batch_size of 2**31-1).
        self._policy, self._read_at = policy, -1  # _read_at: the estimator's run count when these were read
        self._run_s: dict[int, float] = {}
        self._cut_s: dict[tuple[int, tuple[int, float] | None], float] = {}
        self._costs = Costs(self._size, self._run, self._cut, 0.0, self._floor)  # the hop: `finish`'s
        # Rows of recent runs (an EWMA, `ran`) and the most a batch holds: for `turn_s` alone.
        self._rows_per_run = float(policy.max_batch_size or 1)
        self._max_batch_size = policy.max_batch_size
        # How full formation packs a batch it cuts at its size, and when it last cut one (`packed`).
        self._packed, self._packed_at = 1.0, 0.0
        self._full_rows = backlog_rows(policy.max_batch_size, policy)  # the size a deep queue is cut at
        self._pledged: dict[int, int] = {}  # rows pledged by priority level (`pledge`)
        self._arrivals = ArrivalRates() if policy.priority_levels > 1 else None  # levels jump ahead

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
        return self._queue.rows_ahead(level) + sum(n for lvl, n in self._pledged.items() if lvl <= level)

    def _size(self, rows: int) -> int:
        return backlog_rows(rows, self._policy)

    def _floor(self, rows: int) -> float:
        """The estimator's floor now: what formation's give-up rule reads (batcher/form.py)."""
        return self._estimator.predict_floor(rows, self._clock())

    def _run(self, rows: int) -> float:
        """The estimator's `predict_seen`, as last seen."""
        s = self._run_s.get(rows)
        if s is None:
            s = self._run_s[rows] = self._estimator.predict_seen(rows, None)
        return s

    def _cut(self, rows: int, ran: tuple[int, float] | None) -> float:
        """The estimator's `predict` (`predict_after` a batch `ran`), as last seen."""
        s = self._cut_s.get((rows, ran))
        if s is None:
            est = self._estimator
            s = est.predict(rows, None) if ran is None else est.predict_after(rows, None, *ran)
            self._cut_s[rows, ran] = s
        return s

    def _fresh(self) -> None:
        """Forget figures read before the estimator's last run."""
        if self._read_at != self._estimator.runs:
            self._read_at = self._estimator.runs
            self._run_s.clear()
            self._cut_s.clear()

    def started(self, rows: int, now: float) -> int:
        """A run of `rows` rows started at `now`; the key to pass to `ended`."""
        self._fresh()
        run_s = self._run(rows)
        self._runs += 1
        self._running_until[self._runs] = (now + run_s, run_s > 0.0)
        return self._runs

    def ended(self, key: int) -> None:
        del self._running_until[key]

    def ran(self, rows: int) -> None:
        """A run of `rows` rows completed (inline or not): recent batch sizes move towards it (for
        `turn_s`)."""
        self._rows_per_run += 0.2 * (rows - self._rows_per_run)

    def packed(self, rows: int, behind: int) -> None:
        """Formation cut a batch of `rows` rows at its size (reason "full" or "preferred") with `behind`
        rows left queued: how much of the size it filled. Requests are never split, and a batch
        holds one shape: requests of 3 rows fill batches of 4 with 3; rows taken 4 a batch had
        admitted a third more than formation ran (14-18% of those admitted dropped unrun, a tester)."""
        size = backlog_rows(rows + behind, self._policy)
        now = self._clock()
        self._fresh()
        packed = self._packing(now)
        self._packed, self._packed_at = packed + 0.2 * (min(1.0, rows / max(1, size)) - packed), now

    def _packing(self, now: float) -> float:
        """`packed` as it stands at `now` (figures as last seen: `_fresh` first). Kept while formation
        cuts batches at their size, about one a run under overload; past two runs of a full batch
        with no such cut, its shortfall fades (halving about every 0.35 s). Kept as last seen
        forever, a phase of 3-row requests had a burst of 1-row ones seconds later refused as if in
        batches of 3 (16 of 24 answered where 21 were; a tester, session 54); faded from the last
        cut on, it faded between the cuts of a steady overload of mixed sizes too, and let requests
        in that formation then dropped (as many as before the packing, in one run of three)."""
        if self._packed >= 1.0:
            return 1.0  # full: nothing to fade (requests of one row and one shape)
        quiet = now - self._packed_at - 2 * self._run(self._full_rows)
        return 1.0 - (1.0 - self._packed) * math.exp(-max(0.0, quiet) / PACKING_FADE_S)

    def arrived(self, level: int, rows: int) -> None:
        """A request of `rows` rows was queued at priority `level`: the rate lower levels wait behind."""
        if self._arrivals is not None:
            self._arrivals.arrived(level, rows, self._clock())

    def now(self, rows: int) -> float:
        """Seconds a run of `rows` rows started now takes at least, as far as runs seen prove."""
        return self._estimator.predict_floor(rows, self._clock())

    def shed_s(self, level: int, rows: int, slack_s: float | None = None) -> float:
        """What admission sheds on (Overloaded): `finish`, except for a request that would run at
        once (nothing queued before it, an instance free), whose wait is its own run alone: `now`,
        the floor admission's DeadlineExceeded already checked. On `finish`'s cautious figure an
        idle server shed requests its floor admitted."""
        if not self._ahead(level) and len(self._running_until) < self._instances:
            return self.now(rows)
        return self.finish(level, rows, slack_s)

    def finish(self, level: int, rows: int, slack_s: float | None = None) -> float:
        """Seconds until a request of `rows` rows at priority `level`, admitted now with `slack_s`
        seconds to its deadline (None: none), is answered.

        What is left of each instance's running batches, then the queued and pledged rows served
        before it (its own included) cut into the batches formation will run (`backlog`), each on
        the instance free first. It ignores formation delay; 0.0 until a run has been observed.

        With the same margin formation uses: a request admitted here is one formation will run
        when its turn comes. Admitting on mean run times instead (tried) let borderline requests
        in that formation then dropped unrun, idling the instance: goodput 25 vs 32/s (50 ms
        deadline) and 37 vs 40/s (200 ms) at 2x overload in one run (BENCHMARKS.md section 5).
        """
        now = self._clock()
        if (hop_s := self._hop_s(now)) != self._costs.hop_s:  # a new tuple only when the margin moved
            self._costs = self._costs._replace(hop_s=hop_s)
        free = [0.0] * self._instances  # seconds until each instance is free
        for end, known in sorted(self._running_until.values()):  # more than instances: queued
            heapq.heapreplace(free, free[0] + max(0.0, end - now) + (hop_s if known else 0.0))
        oldest = next(iter(self._queue.values()), None)  # the first deadline formation cuts to
        hard = None if oldest is None or oldest.priority > level else oldest.hard
        first = None if slack_s is None or hard is None else min(slack_s, hard - now)
        self._fresh()  # as last seen, not faded: see batcher/estimate.py
        whole = min(rows, self._max_batch_size or 1)  # one request: formation runs it in one batch
        ahead, packed = self._ahead(level) + rows, self._packing(now)
        rates = self._arrivals
        if rates is None or level <= 1:  # nothing is served before it but the queue
            return backlog(ahead, free, self._costs, slack_s, first, last=whole, packed=packed)
        finish = backlog(ahead, [*free], self._costs, slack_s, first, last=whole, packed=packed)
        own_s = self._run(whole) + hop_s  # rows arriving once its batch runs go after it
        for _ in range(ARRIVAL_ROUNDS):  # rows of higher levels arriving meanwhile go first: a fixed point
            if slack_s is not None and finish > slack_s:
                break  # past its deadline already: refused whatever else comes
            jump = round(rates.expected(level, now, max(0.0, finish - own_s)))
            if not jump:
                break
            later = backlog(ahead + jump, [*free], self._costs, slack_s, first, last=whole, packed=packed)
            if later <= finish:
                break
            finish = later
        return finish

    def turn_s(self, level: int, own: int = 0) -> float:
        """What a request that reaches a busy model later (an ensemble's later step) may wait besides
        the work `finish` counts: a batch as large as recent ones, which its instance took from
        newer work just before it came (its own earlier step's batch had ended: the dispatcher forms
        the next one before that step's next step is queued). 0.0 while nothing runs or waits but
        `own`, the rows its own request pledged here (nothing newer is there to take its turn)."""
        if not self._running_until and self._ahead(level) <= own:
            return 0.0
        self._fresh()  # as last seen, as `finish` reads them
        return self._run(min(self._max_batch_size or 1, max(1, round(self._rows_per_run)))) / self._instances


class Costs(NamedTuple):
    """How formation cuts and runs a backlog, for `backlog`."""

    size: Callable[[int], int]  # rows of the batch the policy forms from `n` queued rows
    run_s: Callable[[int], float]  # a run of `n` rows: the forecast's cautious figure
    # Formation's figure for `n` rows, the one it checks a batch against its deadline by, as it
    # will read once the batch `ran` (rows, seconds) has run and been seen (None: none assumed).
    cut_s: Callable[[int, tuple[int, float] | None], float]
    hop_s: float  # from a run's end to its answers and its instance's next run
    # The least a run of `n` rows takes (the estimator's floor): formation drops a queued row unrun
    # once even that no longer ends by its deadline (form.give_up_at); None or 0.0: never.
    floor_s: Callable[[int], float] | None = None


def backlog(
    rows: int,
    free: list[float],
    costs: Costs,
    slack_s: float | None = None,
    first_s: float | None = None,
    last: int = 1,
    packed: float = 1.0,
) -> float:
    """Seconds until the last of `rows` queued rows is answered, each batch going to the instance
    free first: `free` holds the seconds until each is (a heap, changed here).

    Batches as formation forms them: of the policy's size (`costs.size`: max_batch_size, preferred
    sizes), cut to the rows whose run (`costs.cut_s`) still ends before the earliest deadline in the
    batch, one row at least. The deadlines: the oldest request's `first_s` seconds away, the asker's
    (the last row's) `slack_s`, the rows between spread evenly (arrivals at a steady rate with one
    timeout; a burst's are all about the same); None: no cut.

    Not batches of recent runs' size (as it had been: ~2 rows after a few single requests): a backlog
    of a 100 ms model batching 4 rows was forecast as batches of 2, so a burst of 24 with 350 ms
    deadlines had 19 refused where 9 could be answered; and the batches shedding kept small kept
    the figure small. A size formation has not seen is one it sizes by rows (`predict`): the
    forecast assumes the run it gives that batch (`run_s`) is what formation then reads.

    The rows ahead are taken as 1-row requests; the asker's own `last` rows are one request, which
    formation never splits: a batch that would end inside them stops before them, and they run
    whole. Cut by preferred sizes below them, an 8-row request behind a running batch had been
    forecast as two runs where it ran in one (9 of 10 refused on an idle server, preferred [2, 4]).
    A batch before the last holds `packed` of the size formation cuts it at (rounded, one row at
    least): how full recent batches cut at their size were (`WaitForecast.packed`).

    Rows ahead whose deadline even their floor's run can no longer meet are dropped by formation
    unrun: they take no time here. Each had been charged a 1-row run, and the rows after them, due
    only a little later each, stayed at 1-row batches: with the oldest queued request 150 ms from
    its deadline, 40 rows of a 100 ms model batching 4 were forecast at 3.3 s (1.1 s otherwise),
    and the asker refused. Only rows past hope when the first instance is free (formation's next
    look at the queue) are taken as dropped: whether a row that falls past hope only behind later
    batches is dropped depends on how long those batches really run, and counted on to make room,
    such rows ran and the requests admitted on them were late in turn: under steady overload 19-34%
    of the admitted requests were dropped unrun at ~90% of their deadline (a tester, session 53;
    none so, with the same goodput, when only the front's drops are counted).
    """
    left, done, ran = rows, 0, None
    run_s, cut_s = costs.run_s, costs.cut_s
    least = 0.0 if costs.floor_s is None or slack_s is None else costs.floor_s(1)  # drops: by deadlines

    def walk(n: int, ran: tuple[int, float] | None) -> float:
        """What a batch of `n` rows must still end in time by for formation to grow it that far: it
        adds a request only while the grown batch does, so each size on the way counts (a bucket's
        largest, batcher/estimate.py: 1, 2, 4... and `n`)."""
        reach, k = cut_s(n, ran), 1
        while k < n:
            reach, k = max(reach, cut_s(k, ran)), k * 2
        return reach

    if first_s is None:
        first_s = slack_s
    spread = 0.0 if slack_s is None or first_s is None else (slack_s - first_s) / max(1, rows - 1)
    front = True  # no batch placed yet: rows past hope now are dropped at formation's next look
    while left > 0:
        start = free[0]
        if slack_s is not None and start >= slack_s:
            slack_s = None  # past the asker's deadline: the rest only sizes the figure it is told
        due = None if slack_s is None or first_s is None else first_s + spread * done
        if (
            due is not None
            and first_s is not None
            and least > 0.0
            and left > last
            and front
            and start + least + costs.hop_s > due
        ):
            reach = start + least + costs.hop_s  # the rows due before it are dropped, never run
            dropped = left - last if spread <= 0.0 else math.ceil((reach - first_s) / spread) - done
            dropped = min(max(dropped, 1), left - last)
            left, done = left - dropped, done + dropped
            continue
        n = costs.size(left)
        if packed < 1.0 and left > n:
            n = max(1, round(n * packed))
        whole = _hopped(run_s(n), costs.hop_s)
        per_round = n * len(free)
        bound = None if due is None else (due - walk(n, ran), spread * per_round)
        rounds = min(_rounds(left, per_round, whole, free, bound), max(0, left - last) // per_round)
        front = False
        if rounds:  # full batches, one per instance a round: in one step, however long the queue
            free[:] = [f + rounds * whole for f in free]
            left, done = left - rounds * per_round, done + rounds * per_round
            ran = _seen(ran, n, run_s(n))
            continue
        if due is not None:
            joined = 1  # formation adds requests while the batch still ends in time
            while joined < n and start + cut_s(joined + 1, ran) <= due:
                joined += 1
            n = joined
        if 0 < left - n < last:  # it would end inside the asker's request: before it, or all of it
            n = left - last if left > last else left
        run = run_s(n)
        if left <= n:
            return start + _hopped(run, costs.hop_s)
        heapq.heapreplace(free, start + _hopped(run, costs.hop_s))
        left, done = left - n, done + n
        ran = _seen(ran, n, run)
    return max(free, default=0.0)  # no rows: when the running batches are done


def _rounds(
    left: int, per_round: int, whole: float, free: list[float], bound: tuple[float, float] | None
) -> int:
    """How many rounds of full batches (`per_round` rows, `whole` seconds each with the hop), one
    per instance, the queue can be taken in at once: while the instances are free within one batch
    of each other (each then takes the next batch in turn), leaving the last batch to place alone.
    `bound`: (the latest start of round 0's batches, how much later each next round's may start)."""
    if left <= per_round or max(free) - free[0] > whole:
        return 0
    rounds = (left - 1) // per_round
    if bound is None:
        return rounds
    latest, rise = bound
    room, slope = latest - max(free), whole - rise
    if room < 0.0:
        return 0
    return rounds if slope <= 0.0 else min(rounds, math.floor(room / slope) + 1)


def _hopped(run_s: float, hop_s: float) -> float:
    """A run and the hop after it; 0.0 for a run of unknown cost, as `give_up_at` counts it."""
    return run_s + hop_s if run_s > 0.0 else 0.0


def _seen(ran: tuple[int, float] | None, rows: int, run_s: float) -> tuple[int, float]:
    """The largest batch assumed run so far: what formation will size the next by."""
    return (rows, run_s) if ran is None or rows > ran[0] else ran
