"""One stream's percentiles in the real-time harness read as the run's HDR histogram reads them:
with one stream, its p99 and the run's p99 are the same figure (134 ms against 162 before)."""

from __future__ import annotations

import numpy as np

from loadtest.realtime_worker import stream_percentiles_us
from loadtest.stats import latency_summary, new_histogram


def test_one_streams_p99_is_the_runs_p99() -> None:
    rng = np.random.default_rng(3)
    latencies_s = list(rng.lognormal(mean=-3.0, sigma=0.6, size=90))  # 90 frames: p99 is near the top
    latencies_s[-1] = 0.162  # one slow frame
    histogram = new_histogram()
    for seconds in latencies_s:
        histogram.record_value(int(seconds * 1e6))
    run = latency_summary(histogram)
    p50, p99, most = stream_percentiles_us(latencies_s)
    assert run["p99"] is not None and run["p50"] is not None
    assert abs(p99 - run["p99"]) <= 0.001 * run["p99"] + 1  # within the histogram's precision
    assert abs(p50 - run["p50"]) <= 0.001 * run["p50"] + 1
    assert most == max(latencies_s) * 1e6
