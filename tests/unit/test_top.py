"""`sluiceway top`'s arithmetic: rates, batch sizes and percentiles from two readings."""

from __future__ import annotations

import argparse

import pytest
from rich.console import Console

from server.observability.top import add_top_parser, percentile, render, rows, run_top
from server.observability.top_reader import Sample, add_metrics
from tests.support.nothing_listening import nothing_listening

METRICS = """\
# TYPE sluiceway_request_duration_us histogram
sluiceway_request_duration_us_bucket{model="mlp",version="1",le="100.0"} 10
sluiceway_request_duration_us_bucket{model="mlp",version="1",le="1000.0"} 90
sluiceway_request_duration_us_bucket{model="mlp",version="1",le="+Inf"} 100
sluiceway_request_duration_us_count{model="mlp",version="1"} 100
sluiceway_request_duration_us_sum{model="mlp",version="1"} 40000
# TYPE sluiceway_queue_requests gauge
sluiceway_queue_requests{model="mlp",version="1"} 3
# TYPE sluiceway_deadline_outcome_total counter
sluiceway_deadline_outcome_total{model="mlp",version="1",outcome="on_time"} 95
sluiceway_deadline_outcome_total{model="mlp",version="1",outcome="shed"} 4
sluiceway_deadline_outcome_total{model="mlp",version="1",outcome="late"} 1
"""


def top_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_top_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["top", *argv])


def test_percentiles_come_from_the_buckets_counted_between_readings() -> None:
    before = {100.0: 10.0, 1000.0: 10.0, float("inf"): 10.0}
    after = {100.0: 20.0, 1000.0: 100.0, float("inf"): 110.0}
    # Between the readings: 10 under 100 µs, 80 more under 1 ms, 10 more above.
    assert percentile(before, after, 0.05) == 100.0
    assert percentile(before, after, 0.5) == 1000.0
    assert percentile(before, after, 0.99) == float("inf")
    assert percentile(after, after, 0.5) is None


def test_rows_from_statistics_and_metrics() -> None:
    key = ("mlp", "1")
    before = Sample(at=10.0, success={key: 100}, rows={key: 400}, runs={key: 100})
    after = Sample(at=12.0, success={key: 300}, rows={key: 1200}, runs={key: 200})
    add_metrics(after, METRICS)
    assert after.queue[key] == 3
    assert after.misses[key] == 5
    (row,) = rows(before, after)
    assert row.rate == 100.0  # 200 answers in 2 s
    assert row.batch == 8.0  # 800 rows in 100 runs
    assert row.p50_us == 1000.0 and row.p99_us == float("inf")
    assert row.queue == 3 and row.misses == 5
    console = Console(record=True, width=140)
    console.print(render([row]))
    text = console.export_text()
    assert "mlp" in text and "100.0" in text and "8.00" in text


def test_a_server_that_is_not_there_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # grpc's whole debug string (`<_InactiveRpcError ... debug_error_string ...>`) was printed.
    with nothing_listening() as address:
        assert run_top(top_args("--target", address, "--interval", "0.1", "--once")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sluiceway top: {address}: UNAVAILABLE: ")
    assert "debug_error_string" not in err


def test_a_cached_models_requests_are_counted_once() -> None:
    """success counts cache hits already: adding cache_hit again showed a cached model at twice the
    rate of an uncached one with the same traffic."""
    from protos import grpc_service_pb2 as pb
    from server.observability.top_reader import sample_of

    response = pb.ModelStatisticsResponse()
    stats = response.model_stats.add(name="cached", version="1", inference_count=1, execution_count=1)
    stats.inference_stats.success.count = 287
    stats.inference_stats.cache_hit.count = 286
    assert sample_of(response, 1.0).success == {("cached", "1"): 287}


def test_a_reset_between_readings_is_not_counted() -> None:
    """A model reloaded between two readings restarts its counters: the difference had shown a
    negative rate (-1186 req/s) and percentiles of a histogram that went down. That interval
    reads `-`, as Prometheus takes a counter that went down as a reset."""
    key = ("mlp", "1")
    before = Sample(at=10.0, success={key: 5000}, rows={key: 5000}, runs={key: 900})
    after = Sample(at=13.0, success={key: 1400}, rows={key: 1400}, runs={key: 300})
    before.buckets[key] = {100.0: 1000.0, 1000.0: 4900.0, float("inf"): 5000.0}
    after.buckets[key] = {100.0: 1200.0, 1000.0: 1390.0, float("inf"): 1400.0}
    before.misses[key], after.misses[key] = 40.0, 2.0
    (row,) = rows(before, after)
    assert row.rate is None and row.batch is None and row.misses is None
    assert row.p50_us is None and row.p99_us is None
    # A bucket that went down while the total grew is a reset too, never a mixed percentile.
    assert percentile(before.buckets[key], after.buckets[key], 0.5) is None
    console = Console(record=True, width=140)
    console.print(render([row]))
    assert "-1" not in console.export_text()


def test_a_reset_seen_only_in_the_histogram_blanks_the_row() -> None:
    key = ("mlp", "1")
    before = Sample(at=10.0, success={key: 100}, rows={key: 100}, runs={key: 50})
    after = Sample(at=12.0, success={key: 300}, rows={key: 300}, runs={key: 150})
    before.buckets[key] = {100.0: 90.0, float("inf"): 100.0}
    after.buckets[key] = {100.0: 20.0, float("inf"): 120.0}  # restarted, then counted 120
    (row,) = rows(before, after)
    assert row.rate is None and row.p50_us is None and row.p99_us is None
