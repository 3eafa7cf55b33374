"""Predicts how long a backend run of a given number of rows takes, from runs already seen.

Per row bucket, buckets being (2**(k-1), 2**k] so the usual power-of-two batch sizes sit at the top
of theirs, the last `window` run times are kept. A prediction is their median plus a margin up to
the `quantile` (0.9) of the window, capped at `max_margin` times the median: run times vary on a
machine shared with other work, and a batch predicted by its typical time alone finishes after its
deadline about half the time it is cut close. Median and quantile, not a mean: one outlier (a
pause, a cold cache) moves neither much. With an EWMA mean and deviation, the first slow runs after
a start inflated predictions past every request's slack: formation dropped everything, nothing
ran, and nothing corrected the estimate for seconds (goodput 20 vs 34/s in one overload run).

A bucket never seen is extrapolated from the nearest smaller bucket seen, in proportion to rows (a
slight over-estimate, since batching makes rows cheaper: a lower bound admitted requests that then
expired in the queue, and formed batches that finished late); with no smaller bucket seen, 0.0:
an unknown cost never rejects a request early.

Shedding reads `predict_seen`: the nearest bucket seen, not scaled up (more rows never run faster).
By rows is no
"slight" over-estimate where a run's cost is mostly per batch (a fixed delay, a GPU launch): after
one 1-row run of 100 ms, a fresh model's first burst was predicted 700 ms a batch of 7 (about
100 ms measured) and 8 of 42 requests were shed that would have been answered in time; 10 of 10
8-row requests with a 500 ms deadline were refused ("about 810 ms of compute needed"; 10 of 10
answered OK on the lower bound). A refused request never runs, so its refusal cannot correct the
estimate. Formation keeps the over-estimate for sizing batches and timing waits: a batch it keeps
small still runs, and its size is then seen. The price: a request kept on the lower bound of a
size whose cost is per row runs alone and may end late (answered DEADLINE_EXCEEDED), once per
unseen size, as many at a time as shedding's forecast admits.

`predict_seen` is still a cautious figure, not a lower bound: a bucket's 0.9 quantile (capped),
of whatever sizes ran in it. What says a request "cannot finish" (admission's DEADLINE_EXCEEDED,
formation's drop, the queue's give-up point) reads `predict_floor`: the fastest recent run of the
request's rows or fewer, faded with age (where `BOUND_RUNS` runs show it, not below the fastest
such run ever seen: `_faded`); raised to a bucket's fastest run (within
its own bucket only runs of no more rows count) once that bucket holds `BOUND_RUNS` (3) such runs,
so a per-row cost (the demo resnet) still bounds larger requests under load. A lone run does not
bound larger sizes: one hung 2-row run (1103 ms, where 1-row runs took 105 ms) had refused every
2..8-row request with a 600 ms deadline for ~4.5 s, "the fastest recent run of 4 rows or fewer"
said to be 1077 ms (a 1-row run had just taken 103 ms). `floor_basis` words which figure it is. On
`predict_seen` a 5-row request of the demo resnet was refused "about 1053.1 ms of compute needed"
with a 960 ms timeout (the 5..8-row bucket's quantile, from 8-row runs) while a 5-row run took
~637 ms; and the queue gave up 1-row requests within 1 ms of admitting them (a 100 ms model,
timeout = the cautious 123 ms + 0.5..4.5 ms: 15 of 15 failed). Shedding keeps `predict_seen` for the
work queued ahead (a forecast of when an answer comes, where the cautious figure is what keeps
formation from dropping what admission let in), but a request that would run at once on a free
instance is not shed for its own run: that is the floor's decision alone.

A bucket's first run may carry one-time costs (allocations, a cold cache: a fresh mlp session's
first runs took 500x, then 15x, its steady time). With one sample that sample is the prediction;
when the second arrives and is faster, the first leaves the window, so it does not hold the margin
at its cap for the next several runs (runs 2-12 of 5 fresh mlp sessions, 1 and 8 rows, predicted
above 1.2x their steady time: 89 kept, 51 dropped). Only the first: later slow runs are the
machine's variance, which the margin is for.

The same buckets keep the cost of a run to the thread that runs it (an EWMA): CPU seconds on the
executor thread, or wall seconds of a run made inline (what the event loop was blocked). The batcher
runs a batch inline when that is below a thread hop's cost (`cheap`), and when a recent run of that
bucket at least as large in input bytes cost no more: rows alone do not say a run's cost where a
model's other dimensions vary (a tester's 1-row 3000x3000 request ran inline after tiny 1-row ones,
held the loop 3.8 s, and no watchdog could time it). Wall time through an executor
would not do: it includes the hop and waiting for the GIL, the very costs an inline run avoids, so a
tiny model would look too costly to ever run inline.

Estimates fade with age (half-life `half_life_s`): a model idle for a while predicts less, so
requests get through and refresh the estimate; under load observations are fresh and fading is
negligible. Shedding's forecast reads them as last seen (`now` None): a backlog drains whatever it
is forecast, so no request needs a faded figure to get through, and a faded one admitted past what
fits (4-row runs last seen ~1 s before a burst, faded ~10%: 12 of 121 admitted dropped at its end).
The floor fades fully only where fewer than `BOUND_RUNS` runs show it (`_faded`).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

# How many runs of a bucket (of no more rows than a request) its fastest needs before it bounds that
# request's "cannot finish" figure (`predict_floor`): one run may be an outlier (a hang, a pause).
BOUND_RUNS = 3
BOUND_HALF_LIVES = 6  # the fastest run ever seen fades this many times slower than the rest (_faded)


@dataclass(slots=True)
class _Seen:
    runs: deque[tuple[float, int]]  # (seconds, rows) of the latest runs, oldest first
    times: list[float] = field(default_factory=list)  # the same seconds, kept sorted
    rows_sum: int = 0
    at: float = 0.0  # when last observed, clock seconds
    high: float = 0.0  # the prediction, cached on observe: quantile seconds, capped
    cpu: float | None = None  # EWMA of the runs' CPU seconds, where measured
    costs: deque[tuple[float, int]] = field(default_factory=deque)  # (CPU seconds, input bytes), latest
    first: bool = True  # until the bucket's second run: its first may carry one-time costs
    cold: bool = False  # its only run is an instance's first (`observe`'s `cold`)
    best: dict[int, float] = field(default_factory=dict)  # by rows: the fastest run ever seen


class ServiceTimeEstimator:
    """Pure: fed with observed (rows, seconds, at), answers predicted seconds for a row count."""

    def __init__(
        self,
        window: int = 16,
        half_life_s: float = 5.0,
        quantile: float = 0.9,
        max_margin: float = 0.5,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if not half_life_s > 0.0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        if not 0.5 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0.5, 1], got {quantile}")
        if not max_margin >= 0.0:
            raise ValueError(f"max_margin must be >= 0, got {max_margin}")
        self._window = window
        self._half_life_s = half_life_s
        self._quantile = quantile
        self._max_margin = max_margin
        self._seen: dict[int, _Seen] = {}
        self.runs = 0  # runs observed: a figure read as last seen holds until this changes

    @staticmethod
    def bucket(rows: int) -> int:
        """1 -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3, 9..16 -> 4, ..."""
        return (max(rows, 1) - 1).bit_length()

    def _freshness(self, seen: _Seen, now: float | None) -> float:
        if now is None:  # as last seen
            return 1.0
        return float(0.5 ** (max(now - seen.at, 0.0) / self._half_life_s))

    def observe(
        self,
        rows: int,
        seconds: float,
        now: float,
        cpu_s: float | None = None,
        nbytes: int = 0,
        cold: bool = False,
    ) -> None:
        """Record that a run of `rows` rows and `nbytes` input bytes took `seconds` (wall) and cost
        `cpu_s` to the thread that ran it (None: not measured), observed at clock time `now`.
        `cold`: an instance's first run, which pays its session's one-time costs (onnxruntime's
        arena, its kernels' first calls: the mlp's 0.8 ms where later runs take 25 us): `cold_only`
        tells a bucket whose only run it is (the hop margin's off-loop test does not go by it)."""
        self.runs += 1
        b = self.bucket(rows)
        seen = self._seen.get(b)
        if seen is None:
            seen = self._seen[b] = _Seen(deque(), costs=deque(maxlen=self._window), cold=cold)
        else:
            seen.cold = False
        times = seen.times
        if seen.first and seen.runs:  # the bucket's second run
            seen.first = False
            if seen.runs[0][0] > seconds:
                # The first run paid one-time costs (allocations, a cold cache) this one did not:
                # it leaves, rather than hold the margin at its cap for the next several runs, and
                # its CPU with it (a fresh mlp's 0.8 ms had kept its runs off the loop: session 60).
                first_seconds, first_rows = seen.runs.popleft()
                times.remove(first_seconds)
                seen.rows_sum -= first_rows
                seen.cpu = None
                seen.costs.clear()
        if cpu_s is not None:
            seen.cpu = cpu_s if seen.cpu is None else seen.cpu + 0.2 * (cpu_s - seen.cpu)
            seen.costs.append((cpu_s, nbytes))
        if len(seen.runs) == self._window:  # the oldest run leaves the window
            old_seconds, old_rows = seen.runs.popleft()
            del times[bisect.bisect_left(times, old_seconds)]
            seen.rows_sum -= old_rows
        seconds, rows = max(seconds, 0.0), max(rows, 1)
        seen.best[rows] = min(seconds, seen.best.get(rows, seconds))
        seen.runs.append((seconds, rows))
        bisect.insort(times, seconds)
        seen.rows_sum += rows
        seen.at = now
        n = len(times)
        typical = times[(n - 1) // 2]
        quantile = times[min(n - 1, round(self._quantile * (n - 1)))]
        seen.high = min(quantile, typical * (1.0 + self._max_margin))

    def _nearest(self, rows: int) -> tuple[_Seen, bool] | None:
        """The bucket of `rows` rows if seen, else the nearest smaller one seen (with whether it is
        the own bucket); None when none is."""
        if not self._seen:
            return None
        own = self.bucket(rows)
        for b in range(own, -1, -1):
            seen = self._seen.get(b)
            if seen is not None:
                return seen, b == own
        return None

    def predict(self, rows: int, now: float | None) -> float:
        """Predicted seconds for a run of `rows` rows at clock time `now` (None: as last seen, not
        faded; 0.0 when unknown); an unseen size extrapolated by rows from the nearest smaller size
        seen, at most the nearest larger size seen's figure (more rows never run faster)."""
        nearest = self._nearest(rows)
        if nearest is None:
            return 0.0
        seen, own = nearest
        if own:
            return seen.high * self._freshness(seen, now)
        return min(self._scaled(seen, rows, now), self._above(rows, now))

    def _scaled(self, seen: _Seen, rows: int, now: float | None) -> float:
        """A smaller size's prediction scaled up to `rows` rows by its runs' mean rows."""
        return seen.high * max(rows, 1) * len(seen.runs) / seen.rows_sum * self._freshness(seen, now)

    def _above(self, rows: int, now: float | None) -> float:
        """The prediction of the nearest larger bucket seen (inf if none): a run of `rows` rows takes
        no longer. Unbounded, a 2-row size never seen was predicted 200 ms by rows where 4-row runs
        took 100 ms, and formation, which grows a batch only while each size fits the deadline,
        stopped at 1 row: 65 of 101 batches under 2x overload were of 1 row (goodput 21 vs 37/s)."""
        larger = [b for b in self._seen if b > self.bucket(rows)]
        if not larger:
            return float("inf")
        seen = self._seen[min(larger)]
        return seen.high * self._freshness(seen, now)

    def predict_after(self, rows: int, now: float | None, ran: int, ran_s: float) -> float:
        """`predict(rows, now)` as it would be once a run of `ran` rows had taken `ran_s`, where that
        run's bucket has not been seen (one seen is already in `predict`): the figure formation will
        size a later batch by, if a batch the forecast assumes runs in `ran_s` does."""
        own, hypothetical = self.bucket(rows), self.bucket(ran)
        if hypothetical > own and hypothetical not in self._seen:
            return self._capped_after(rows, now, own, hypothetical, ran_s)
        nearest = next((b for b in range(own, -1, -1) if b in self._seen), -1)
        if hypothetical in self._seen or not nearest < hypothetical <= own:
            return self.predict(rows, now)
        return ran_s if hypothetical == own else min(ran_s * rows / ran, self._above(rows, now))

    def _capped_after(self, rows: int, now: float | None, own: int, larger: int, ran_s: float) -> float:
        """`predict_after` for a run of a larger bucket, `larger`, not seen: it caps an unseen size
        scaled by rows when it would be the nearest larger size seen (it had been ignored, and the
        wait forecast overestimated a backlog's wait: 0.533 s where formation's batches took 0.320 s)."""
        found = self._nearest(rows)
        if found is None or found[1] or any(own < b < larger for b in self._seen):
            return self.predict(rows, now)
        return min(self._scaled(found[0], rows, now), ran_s)

    def predict_seen(self, rows: int, now: float | None) -> float:
        """As `predict`, but an unseen size is predicted as the nearest smaller size seen, not scaled
        up by rows: what observed runs prove a run of `rows` rows takes at least. For shedding."""
        nearest = self._nearest(rows)
        if nearest is None:
            return 0.0
        seen = nearest[0]
        return seen.high * self._freshness(seen, now)

    def predict_floor(self, rows: int, now: float) -> float:
        """What runs seen prove a run of `rows` rows takes at least, at clock time `now` (0.0 when
        no run of `rows` rows or fewer was seen), faded with age (`_faded`): the fastest recent run
        of that many rows or fewer, raised to the fastest run of a bucket (of no more rows) where
        that bucket holds at least `BOUND_RUNS` such runs. For deciding that a request cannot finish
        (a refusal or a drop it never recovers from). `floor_basis` says which figure it is."""
        return self._floor(rows, now)[0]

    def floor_basis(self, rows: int, now: float) -> str:
        """What `predict_floor(rows, now)` is, in words for a client's message: where age faded it,
        the run's own time too (a 100 ms model's refusal had quoted "about 24.7 ms of compute
        needed (the fastest recent run ...)", read as a run of 25 ms; a tester, session 58)."""
        seconds, bucket, count, seen = self._floor(rows, now)
        faded = f", {seen * 1000:.1f} ms when seen, faded with its age" if seconds < 0.9 * seen else ""
        if bucket is None:
            return f"the fastest recent run of {max(rows, 1)} rows or fewer{faded}"
        sizes = [n for _, n in self._seen[bucket].runs if n <= rows]
        low, high = min(sizes), max(sizes)
        of = f"{low} rows" if low == high else f"{low} to {high} rows"
        return f"the fastest of {count} recent runs of {of}{faded}"

    def _floor(self, rows: int, now: float) -> tuple[float, int | None, int, float]:
        """(seconds, the bucket whose runs set it or None for the fastest run of any size, how many
        runs of that bucket it is the fastest of, the seconds of that run unfaded). A bucket's
        fastest run bounds larger sizes only from its `BOUND_RUNS`th run on: alone, a hung run
        (1103 ms where 2 runs of 1 row took 105 ms) had refused every larger request for seconds,
        and a refused size never runs to correct it."""
        rows = max(rows, 1)
        own = self.bucket(rows)
        fastest_any, any_seen = float("inf"), 0.0
        bound, bound_bucket, bound_count, bound_seen = 0.0, None, 0, 0.0
        for b, seen in self._seen.items():
            if b > own:
                continue
            if b < own or rows >= 1 << b:  # every run of this bucket has no more rows (no list)
                count = len(seen.times)
                fastest = seen.times[0] if count else None
            else:
                fitting = [s for s, n in seen.runs if n <= rows]
                count = len(fitting)
                fastest = min(fitting, default=None)
            if fastest is None:
                continue
            raw, fastest = fastest, self._faded(seen, fastest, count, rows, now)
            if fastest < fastest_any:
                fastest_any, any_seen = fastest, raw
            if count >= BOUND_RUNS and fastest > bound:
                bound, bound_bucket, bound_count, bound_seen = fastest, b, count, raw
        if fastest_any == float("inf"):
            return 0.0, None, 0, 0.0
        if bound > fastest_any:
            return bound, bound_bucket, bound_count, bound_seen
        return fastest_any, None, 0, any_seen

    def _faded(self, seen: _Seen, fastest: float, count: int, rows: int, now: float) -> float:
        """A bucket's fastest recent run of `rows` rows or fewer (`count` such runs), faded with age.
        Fully where fewer than `BOUND_RUNS` runs show it: it may be an outlier (a cold start, a
        hang), and a request refused on it never runs to correct it. Where more do, only down to
        the fastest such run ever seen, itself fading `BOUND_HALF_LIVES` times slower: a floor faded
        below every run (a 100 ms model idle 5 s floored at 50 ms) admitted 60 ms requests that ran
        and ended late, 6 of 6 at 5 s apart; one that never faded refused for good the requests of a
        model whose runs also vary by their inputs (long inputs seen, a 3 ms short one refused
        with a 15 ms deadline after 20 s idle, 5 of 5)."""
        freshness = self._freshness(seen, now)
        faded = fastest * freshness
        if count < BOUND_RUNS:
            return faded
        best = min(s for n, s in seen.best.items() if n <= rows)
        return max(faded, best * float(freshness ** (1.0 / BOUND_HALF_LIVES)))

    def cold_only(self, rows: int) -> bool:
        """Whether the only run seen of this many rows (its bucket) is an instance's first."""
        seen = self._seen.get(self.bucket(rows))
        return seen is not None and seen.cold

    def cheap(self, rows: int, max_cpu_s: float, nbytes: int = 0) -> bool:
        """Whether recent runs of this many rows (its own bucket) cost their thread at most
        `max_cpu_s`, one of them of at least `nbytes` input bytes among them. Unknown: no (a first
        run of any size, or larger than those seen, goes through the executor, measured there)."""
        seen = self._seen.get(self.bucket(rows))
        if seen is None or seen.cpu is None or seen.cpu > max_cpu_s:
            return False
        return any(cpu <= max_cpu_s and size >= nbytes for cpu, size in seen.costs)
