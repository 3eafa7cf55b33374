"""Latency histograms (HDR), per-process counters, and merging them into one step's figures.

Latencies are microseconds from a request's *scheduled* send time to its answer, so a client that
falls behind its schedule cannot hide the wait (no coordinated omission). Each worker keeps one
HdrHistogram and ships it encoded; the coordinator decodes and adds, which is exact.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from loadtest import hdr_figures

# 1 us .. 1 hour at 3 significant digits: every latency a bounded run can produce.
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99_9": 99.9}
OK = "OK"
MESSAGE_CHARS = 300  # of an error status's first message, kept per status


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


@dataclass
class Counts:
    """What one worker (or, summed, one step) saw. Plain data: it crosses process boundaries."""

    # Requests scheduled inside the measurement window, and how they ended (OK or a status name).
    scheduled: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    # Successful answers that arrived inside the window, and those of them within the deadline.
    ok_in_window: int = 0
    good_in_window: int = 0
    cpu_s: float = 0.0
    histogram: bytes = b""
    # How late the client sent measured requests after their scheduled time (us): a client that
    # cannot keep its schedule shows here, and its lateness is inside the latencies too.
    lag_histogram: bytes = b""
    # Error answers from the server (a status, not a client-side outcome): us from the moment the
    # request was sent, so a server that sheds load shows how fast it says no.
    reject_histogram: bytes = b""
    # Successful answers (unary): us from the moment the request was sent, as perf_analyzer counts
    # (it times from its own send). The scheduled-time latency above adds the client's lag: at 200
    # requests/s, light load, ours had read 0.05-0.3 ms above perf_analyzer's with no way to tell.
    send_histogram: bytes = b""
    # The first message seen with each error status (the server's details): the count alone
    # ("INVALID_ARGUMENT: 688") left an operator guessing why.
    messages: dict[str, str] = field(default_factory=dict)
    # Seconds from the window's start to the last answer, when --max-requests ended the load before
    # the window did (None: it ran the whole window). Rates use it: 500 requests done in 0.5 s of
    # a 2 s window had read as 250/s.
    stopped_after_s: float | None = None
    # Measured requests that failed because the target could not be reached (UNAVAILABLE with the
    # channel's connection gone): a server that died, not an answer to measure. The run exits 3.
    unreachable: int = 0

    @property
    def ok(self) -> int:
        return self.outcomes.get(OK, 0)

    @property
    def errors(self) -> dict[str, int]:
        return {code: n for code, n in sorted(self.outcomes.items()) if code != OK}


class Recorder:
    """Counts one worker's answers against its measurement window and deadline."""

    def __init__(self, window: tuple[float, float], deadline_s: float | None) -> None:
        self.begin, self.end = window
        self.deadline_s = deadline_s
        self.histogram = new_histogram()
        self.lag = new_histogram()
        self.rejects = new_histogram()
        self.from_send = new_histogram()
        self.outcomes: Counter[str] = Counter()
        self.scheduled = 0
        self.ok_in_window = 0
        self.good_in_window = 0
        self.issued = 0  # requests sent (or refused by the client) inside the window
        self.messages: dict[str, str] = {}
        self.last_done = self.begin
        self.stopped_after_s: float | None = None
        self.unreachable = 0

    def measured(self, scheduled: float) -> bool:
        return self.begin <= scheduled < self.end

    def issue(self, at: float) -> None:
        """One more request, sent (or scheduled) at `at`: only those inside the window count
        toward --max-requests (warm-up had used up the limit: 0 requests measured)."""
        if at >= self.begin:
            self.issued += 1

    def limit_reached(self) -> None:
        """The load ended at --max-requests: rates are over the time it took, not the window."""
        self.stopped_after_s = max(1e-3, min(self.end, self.last_done) - self.begin)

    def sending(self, scheduled: float, now: float) -> None:
        """A request scheduled at `scheduled` is being sent at `now`."""
        if self.measured(scheduled):
            self.lag.record_value(min(HIGHEST_US, max(LOWEST_US, round((now - scheduled) * 1e6))))

    def record(
        self,
        scheduled: float,
        done: float,
        code: str,
        sent: float | None = None,
        message: str = "",
        unreachable: bool = False,
    ) -> None:
        """One request that was scheduled at `scheduled` ended at `done` with status `code`.

        `sent`: when it went out, for server error answers (their time to reject); None when the
        outcome was the client's own (never sent, or no answer). `unreachable`: it failed because
        the connection to the target was gone, not by the target's answer.
        """
        latency = done - scheduled
        if code == OK and self.begin <= done <= self.end:
            self.ok_in_window += 1
            if self.deadline_s is None or latency <= self.deadline_s:
                self.good_in_window += 1
        if message and code != OK and code not in self.messages:
            self.messages[code] = message[:MESSAGE_CHARS]
        if not self.measured(scheduled):
            return
        self.last_done = max(self.last_done, done)
        self.scheduled += 1
        self.outcomes[code] += 1
        self.unreachable += unreachable
        if code == OK:
            self.histogram.record_value(min(HIGHEST_US, max(LOWEST_US, round(latency * 1e6))))
            if sent is not None:
                self.from_send.record_value(min(HIGHEST_US, max(LOWEST_US, round((done - sent) * 1e6))))
        elif sent is not None:
            self.rejects.record_value(min(HIGHEST_US, max(LOWEST_US, round((done - sent) * 1e6))))

    def counts(self, cpu_s: float) -> Counts:
        return Counts(
            scheduled=self.scheduled,
            outcomes=dict(self.outcomes),
            ok_in_window=self.ok_in_window,
            good_in_window=self.good_in_window,
            cpu_s=cpu_s,
            histogram=_encode(self.histogram),
            lag_histogram=_encode(self.lag),
            reject_histogram=_encode(self.rejects),
            send_histogram=_encode(self.from_send),
            messages=dict(self.messages),
            stopped_after_s=self.stopped_after_s,
            unreachable=self.unreachable,
        )


def merge_histograms(encoded: Iterable[bytes]) -> HdrHistogram:
    merged = new_histogram()
    for blob in encoded:
        if blob:
            merged.decode_and_add(blob)
    return merged


def merge_counts(parts: Iterable[Counts]) -> Counts:
    """Sum of counters, CPU and histograms (re-encoded) over workers, rounds or both."""
    parts = list(parts)
    outcomes: Counter[str] = Counter()
    messages: dict[str, str] = {}
    for part in parts:
        outcomes.update(part.outcomes)
        for code, message in part.messages.items():
            messages.setdefault(code, message)
    histogram = merge_histograms(part.histogram for part in parts)
    lag = merge_histograms(part.lag_histogram for part in parts)
    rejects = merge_histograms(part.reject_histogram for part in parts)
    from_send = merge_histograms(part.send_histogram for part in parts)
    return Counts(
        scheduled=sum(p.scheduled for p in parts),
        outcomes=dict(outcomes),
        ok_in_window=sum(p.ok_in_window for p in parts),
        good_in_window=sum(p.good_in_window for p in parts),
        cpu_s=sum(p.cpu_s for p in parts),
        histogram=_encode(histogram),
        lag_histogram=_encode(lag),
        reject_histogram=_encode(rejects),
        send_histogram=_encode(from_send),
        messages=messages,
        # Stopped early only if every part did (workers share the limit): the longest of them.
        stopped_after_s=(
            max(p.stopped_after_s for p in parts if p.stopped_after_s is not None)
            if parts and all(p.stopped_after_s is not None for p in parts)
            else None
        ),
        unreachable=sum(p.unreachable for p in parts),
    )


def _encode(histogram: HdrHistogram) -> bytes:
    return histogram.encode() if histogram.get_total_count() else b""


def latency_summary(histogram: HdrHistogram) -> dict[str, float | None]:
    """p50/p90/p99/p99.9, mean, min and max in microseconds; None when nothing was recorded."""
    keys = [*PERCENTILES, "mean", "min", "max"]
    if histogram.get_total_count() == 0:
        return dict.fromkeys(keys)
    seen = hdr_figures.recorded(histogram)  # hdrh's own figures walk every counter in Python
    summary: dict[str, float | None] = {
        key: float(hdr_figures.value_at_percentile(histogram, seen, pct)) for key, pct in PERCENTILES.items()
    }
    summary["mean"] = round(hdr_figures.mean(seen), 1)
    summary["min"] = float(histogram.get_min_value())
    summary["max"] = float(histogram.get_max_value())
    return summary


def cdf_points(histogram: HdrHistogram, max_points: int = 300) -> list[tuple[float, float]]:
    """(latency us, % of answers at or below it) for each recorded bucket, thinned to about
    max_points but always keeping the first and the last (the maximum)."""
    if histogram.get_total_count() == 0:
        return []
    points = hdr_figures.cdf(hdr_figures.recorded(histogram))
    step = max(1, len(points) // max_points)
    thinned = points[::step]
    if thinned[-1] != points[-1]:
        thinned.append(points[-1])
    return thinned


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None when either is missing or base is 0."""
    if value is None or base is None or base == 0:
        return None
    return value / base
