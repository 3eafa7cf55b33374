"""ModelStats.record_batch pinned where mutation testing (scripts/mutation.sh) found it untested."""

from __future__ import annotations

import time

from batcher.stats import ModelStats


def test_each_request_of_a_batch_is_charged_the_whole_batch() -> None:
    stats = ModelStats()
    before = time.time_ns() // 1_000_000
    stats.record_batch(rows=4, requests=2, input_ns=100, infer_ns=1000, output_ns=10)
    after = time.time_ns() // 1_000_000
    assert (stats.compute_input.count, stats.compute_input.ns) == (2, 200)
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (2, 2000)
    assert (stats.compute_output.count, stats.compute_output.ns) == (2, 20)
    assert isinstance(stats.last_inference_ms, int) and before <= stats.last_inference_ms <= after
