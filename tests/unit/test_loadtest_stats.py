"""Load-test arithmetic without a server: windows, goodput, HDR merging, percentiles, ratios, plans."""

from __future__ import annotations

import pytest

from loadtest.results import summarize
from loadtest.runner import RunRecord, ServerTotals, plan_step
from loadtest.scenario import Scenario, Step, Target, parse_target, parse_targets, split_evenly
from loadtest.stats import (
    MESSAGE_CHARS,
    OK,
    Counts,
    Recorder,
    cdf_points,
    latency_summary,
    merge_counts,
    merge_histograms,
    new_histogram,
)
from loadtest.worker import with_id
from protos import grpc_service_pb2 as pb

WINDOW = (10.0, 20.0)


def test_recorder_counts_only_requests_scheduled_in_the_window() -> None:
    recorder = Recorder(WINDOW, deadline_s=None)
    recorder.record(9.9, 10.1, "OK")  # warm-up request answered inside the window
    recorder.record(12.0, 12.001, "OK")
    recorder.record(13.0, 13.5, "UNAVAILABLE")
    recorder.record(19.9, 20.5, "OK")  # scheduled inside, answered after: latency counts
    counts = recorder.counts(cpu_s=0.5)
    assert counts.scheduled == 3
    assert counts.outcomes == {"OK": 2, "UNAVAILABLE": 1}
    assert counts.errors == {"UNAVAILABLE": 1}
    # Throughput counts answers arriving inside the window, whenever they were scheduled.
    assert counts.ok_in_window == 2
    histogram = merge_histograms([counts.histogram])
    assert histogram.get_total_count() == 2
    assert histogram.get_max_value() == pytest.approx(600_000, rel=1e-3)


def test_goodput_counts_answers_within_the_deadline_from_the_scheduled_time() -> None:
    recorder = Recorder(WINDOW, deadline_s=0.050)
    recorder.record(11.0, 11.020, "OK")
    recorder.record(12.0, 12.080, "OK")  # late: served but not good
    recorder.record(13.0, 13.049, "OK")  # just inside the deadline is good
    recorder.record(14.0, 14.050, "DEADLINE_EXCEEDED")
    counts = recorder.counts(cpu_s=0.0)
    assert counts.ok_in_window == 3
    assert counts.good_in_window == 2


def test_lag_is_recorded_for_measured_sends_only() -> None:
    recorder = Recorder(WINDOW, deadline_s=None)
    recorder.sending(5.0, 5.5)
    recorder.sending(12.0, 12.002)
    lag = merge_histograms([recorder.counts(0.0).lag_histogram])
    assert lag.get_total_count() == 1
    assert lag.get_max_value() == pytest.approx(2000, rel=1e-3)


def test_merge_counts_sums_counters_and_histograms_exactly() -> None:
    parts = []
    for offset in range(3):
        recorder = Recorder(WINDOW, deadline_s=None)
        for i in range(100):
            recorder.record(11.0, 11.0 + (offset * 100 + i + 1) / 1e6 * 10, "OK")
        recorder.record(12.0, 12.1, "RESOURCE_EXHAUSTED")
        parts.append(recorder.counts(cpu_s=0.25))
    merged = merge_counts(parts)
    assert merged.scheduled == 303
    assert merged.outcomes == {"OK": 300, "RESOURCE_EXHAUSTED": 3}
    assert merged.cpu_s == pytest.approx(0.75)
    summary = latency_summary(merge_histograms([merged.histogram]))
    # Latencies 10, 20, ... 3000 us: percentiles of the union, not of any one part.
    assert summary["min"] == pytest.approx(10, abs=0.1)
    assert summary["p50"] == pytest.approx(1500, rel=0.01)
    assert summary["p90"] == pytest.approx(2700, rel=0.01)
    assert summary["p99"] == pytest.approx(2970, rel=0.01)
    assert summary["max"] == pytest.approx(3000, rel=0.01)


def test_percentiles_are_ordered_and_empty_histograms_are_blank() -> None:
    histogram = new_histogram()
    for value in (100, 200, 300, 50_000):
        histogram.record_value(value)
    summary = latency_summary(histogram)
    assert summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["p99_9"] <= summary["max"]
    assert all(value is None for value in latency_summary(new_histogram()).values())
    points = cdf_points(histogram)
    assert points[0][0] == pytest.approx(100, rel=1e-3)
    assert points[-1] == (pytest.approx(50_000, rel=1e-3), 100.0)
    assert [p for _, p in points] == sorted(p for _, p in points)


def _record(target: Target, ok: int, good: int, server: ServerTotals | None, round_: int = 0) -> RunRecord:
    recorder = Recorder(WINDOW, deadline_s=None)
    for i in range(ok):
        recorder.record(11.0 + i * 1e-3, 11.001 + i * 1e-3, "OK")
    counts = recorder.counts(cpu_s=1.0)
    counts = Counts(**{**counts.__dict__, "good_in_window": good})
    return RunRecord(0, Step("closed", 4), target, round_, counts, 10.0, 2, server)


def test_summary_ratios_server_blanks_and_rates() -> None:
    a, b = Target("a", "127.0.0.1:1", "mlp"), Target("b", "127.0.0.1:2", "mlp")
    scenario = Scenario(targets=(a, b), steps=(Step("closed", 4),), rounds=2)
    records = [
        _record(a, 100, 100, ServerTotals(200, 50, 100, 2_000_000)),
        _record(b, 150, 120, None),
        _record(a, 100, 100, ServerTotals(200, 150, 100, 2_000_000), round_=1),
        _record(b, 150, 120, ServerTotals(1, 1, 1, 1), round_=1),
    ]
    entries = {e["target"]: e for e in summarize(scenario, records)["results"]}
    assert entries["a"]["throughput_rps"] == pytest.approx(10.0)  # 200 answers over 2 x 10 s
    assert entries["a"]["server"] == {
        "avg_batch_size": 2.0,
        "avg_queue_us": 20.0,
        "computed_rows": 400,
        "metrics": None,  # the target has no /metrics URL
    }
    # A round without statistics (a peer) leaves the figures blank instead of failing.
    assert entries["b"]["server"] == {
        "avg_batch_size": None,
        "avg_queue_us": None,
        "computed_rows": None,
        "metrics": None,
    }
    assert entries["b"]["late_ok"] == 60  # 300 successes in the window, 240 within the deadline
    assert entries["b"]["goodput_rps"] == pytest.approx(12.0)
    assert entries["b"]["ratios"]["throughput_rps"] == pytest.approx(1.5)
    assert entries["b"]["ratios"]["goodput_rps"] == pytest.approx(1.2)
    assert entries["a"]["ratios"]["throughput_rps"] == 1.0
    assert entries["a"]["client_cpu"] == {
        "seconds": 2.0,
        "percent_of_core": 10.0,
        "processes": 2,
        "connections": 1,
    }


def test_error_answers_are_timed_from_send_and_client_outcomes_are_not() -> None:
    recorder = Recorder(WINDOW, deadline_s=0.05)
    recorder.record(11.0, 11.004, "RESOURCE_EXHAUSTED", sent=11.003)  # said no 1 ms after sending
    recorder.record(11.0, 11.060, "DEADLINE_EXCEEDED", sent=11.001)
    recorder.record(11.0, 11.002, "CLIENT_LATE")  # never sent: no time to reject
    recorder.record(11.0, 11.070, "OK", sent=11.0)  # a late success
    counts = recorder.counts(cpu_s=0.0)
    rejects = merge_histograms([counts.reject_histogram])
    assert rejects.get_total_count() == 2
    assert rejects.get_value_at_percentile(50) == pytest.approx(1000, rel=0.01)
    assert rejects.get_max_value() == pytest.approx(59000, rel=0.01)
    assert (counts.ok_in_window, counts.good_in_window) == (1, 0)


def test_with_id_sets_the_id_of_a_preserialized_request() -> None:
    request = pb.ModelInferRequest(model_name="mlp", id="old")
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0\0\0\0")
    parsed = pb.ModelInferRequest.FromString(with_id(request.SerializeToString(), "s3-" + "9" * 200))
    assert parsed.id == "s3-" + "9" * 200
    assert parsed.model_name == "mlp" and parsed.raw_input_contents == [b"\0\0\0\0"]


def test_plans_split_concurrency_and_rate_over_processes() -> None:
    target = Target("t", "127.0.0.1:1", "mlp")
    scenario = Scenario(targets=(target,), steps=(), processes=4, deadline_ms=20, arrival="constant")
    closed = plan_step(scenario, Step("closed", 6), target, (b"x",), seed=1, start_at=100.0)
    assert [p.concurrency for p in closed] == [2, 2, 1, 1]
    assert closed[0].window == (101.0, 106.0)
    assert closed[0].deadline_s == pytest.approx(0.020)
    opened = plan_step(scenario, Step("open", 400), target, (b"x",), seed=1, start_at=0.0)
    assert [p.rate for p in opened] == [100.0] * 4
    # Constant arrivals: the processes' phases interleave into one sequence 1/400 s apart.
    assert [p.phase_s for p in opened] == pytest.approx([0, 0.0025, 0.005, 0.0075])
    assert len({p.seed for p in opened}) == 4
    assert len(plan_step(scenario, Step("stream", 1), target, (b"x",), 1, 0.0)) == 1


def test_target_parsing() -> None:
    assert parse_target("127.0.0.1:9001", "mlp") == Target("sluiceway", "127.0.0.1:9001", "mlp")
    targets = parse_targets("a=127.0.0.1:1,triton=localhost:2/mlp_onnx", "mlp")
    assert targets == (Target("a", "127.0.0.1:1", "mlp"), Target("triton", "localhost:2", "mlp_onnx"))
    with pytest.raises(ValueError, match="distinct"):
        parse_targets("a=127.0.0.1:1,a=127.0.0.1:2", "mlp")
    assert split_evenly(5, 2) == [3, 2] and split_evenly(1, 4) == [1]


def test_the_first_message_of_each_error_status_is_kept_and_merged() -> None:
    a, b = Recorder((0.0, 10.0), None), Recorder((0.0, 10.0), None)
    a.record(1.0, 1.1, "INVALID_ARGUMENT", 1.0, "batch-size must be <= 8")
    a.record(2.0, 2.1, "INVALID_ARGUMENT", 2.0, "another")
    a.record(3.0, 3.1, OK, 3.0, "")
    b.record(1.0, 1.1, "UNAVAILABLE", 1.0, "x" * 1000)
    b.record(1.5, 1.6, "INVALID_ARGUMENT", 1.5, "from b")
    merged = merge_counts([a.counts(0.0), b.counts(0.0)])
    assert merged.messages["INVALID_ARGUMENT"] == "batch-size must be <= 8"  # the first, a's
    assert merged.messages["UNAVAILABLE"] == "x" * MESSAGE_CHARS and OK not in merged.messages
    assert merged.errors == {"INVALID_ARGUMENT": 3, "UNAVAILABLE": 1}


def test_latency_from_the_send_leaves_out_the_clients_lag() -> None:
    """perf_analyzer times from its own send; ours from the scheduled time, lag included. Both are
    reported, so the two harnesses' figures can be compared (they had read 0.05-0.3 ms apart)."""
    target = Target("a", "127.0.0.1:1", "mlp")
    recorder = Recorder(WINDOW, deadline_s=None)
    for k in range(10):  # sent 0.5 ms after its scheduled time, answered 1 ms after the send
        scheduled = WINDOW[0] + k
        recorder.sending(scheduled, scheduled + 0.0005)
        recorder.record(scheduled, scheduled + 0.0015, OK, sent=scheduled + 0.0005)
    recorder.record(WINDOW[0] + 0.5, WINDOW[0] + 0.6, "UNAVAILABLE", sent=WINDOW[0] + 0.55)  # an error
    record = RunRecord(0, Step("open", 1), target, 0, recorder.counts(0.0), 10.0, 1, None)
    (entry,) = summarize(Scenario(targets=(target,), steps=(Step("open", 1),)), [record])["results"]
    assert entry["latency_us"]["p50"] == pytest.approx(1500, rel=0.01)
    assert entry["client_lag_us"]["p50"] == pytest.approx(500, rel=0.01)
    assert entry["latency_from_send_us"]["p50"] == pytest.approx(1000, rel=0.01)
    assert entry["latency_from_send_us"]["max"] == pytest.approx(1000, rel=0.01)  # successes only
