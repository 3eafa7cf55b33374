"""`sluiceway top --workers N`: every worker's /metrics summed, each worker's resets its own; and
the security flags, parsed as the load-test harness parses them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from clients.security_flags import MAX_TOKEN_FILE_BYTES
from server.observability.top import (
    RESET_NOTE,
    add_top_parser,
    caption,
    rows_of_workers,
    security_of,
    worker_urls,
)
from server.observability.top_reader import Sample, add_metrics


def metrics(success: int, rows: int, runs: int, under_ms: int, over_ms: int, queue: int) -> str:
    return f"""\
# TYPE nv_inference_request_success gauge
nv_inference_request_success{{model="mlp",version="1"}} {success}
# TYPE nv_inference_count gauge
nv_inference_count{{model="mlp",version="1"}} {rows}
# TYPE nv_inference_exec_count gauge
nv_inference_exec_count{{model="mlp",version="1"}} {runs}
# TYPE sluiceway_request_duration_us histogram
sluiceway_request_duration_us_bucket{{model="mlp",version="1",le="1000.0"}} {under_ms}
sluiceway_request_duration_us_bucket{{model="mlp",version="1",le="+Inf"}} {under_ms + over_ms}
sluiceway_request_duration_us_count{{model="mlp",version="1"}} {under_ms + over_ms}
sluiceway_request_duration_us_sum{{model="mlp",version="1"}} 1
# TYPE sluiceway_queue_requests gauge
sluiceway_queue_requests{{model="mlp",version="1"}} {queue}
# TYPE sluiceway_cost_per_million_inferences gauge
sluiceway_cost_per_million_inferences{{model="mlp",version="1"}} 0.5
"""


def sample(at: float, text: str) -> Sample:
    out = Sample(at=at)
    add_metrics(out, text, counts=True)
    return out


def test_workers_add_up() -> None:
    before = [sample(0.0, metrics(100, 100, 50, 100, 0, 0)), sample(0.0, metrics(0, 0, 0, 0, 0, 0))]
    after = [sample(2.0, metrics(300, 300, 100, 300, 0, 2)), sample(2.0, metrics(200, 200, 50, 150, 50, 1))]
    (row,) = rows_of_workers(before, after)
    assert row.rate == 200.0  # 400 answers in 2 s, 200 on each worker
    assert row.batch == 4.0  # 400 rows in 100 runs
    assert row.queue == 3 and row.cost == 0.5  # queues add up; the cost per inference does not
    # 350 under 1 ms and 50 above: the median under 1 ms, the 99th above.
    assert row.p50_us == 1000.0 and row.p99_us == float("inf")


def test_one_workers_reset_blanks_the_sum() -> None:
    """Worker 1 reloaded: its drop would have cancelled worker 0's growth in a plain sum."""
    before = [sample(0.0, metrics(100, 100, 50, 100, 0, 0)), sample(0.0, metrics(500, 500, 100, 500, 0, 0))]
    after = [sample(2.0, metrics(300, 300, 100, 300, 0, 0)), sample(2.0, metrics(40, 40, 10, 40, 0, 0))]
    (row,) = rows_of_workers(before, after)
    assert row.rate is None and row.batch is None and row.p50_us is None


def test_a_worker_that_did_not_answer_blanks_the_sum() -> None:
    before = [sample(0.0, metrics(100, 100, 50, 100, 0, 0)), sample(0.0, metrics(0, 0, 0, 0, 0, 0))]
    gone = Sample(at=2.0, metrics_error="refused", counts_error="refused")
    (row,) = rows_of_workers(before, [sample(2.0, metrics(300, 300, 100, 300, 0, 0)), gone])
    assert row.rate is None


URLS = ["http://127.0.0.1:8002/metrics", "http://127.0.0.1:8003/metrics"]
REFUSED = f"{URLS[1]}: <urlopen error [Errno 111] Connection refused>"


def unanswered(at: float) -> Sample:
    return Sample(at, metrics_error=REFUSED, counts_error=REFUSED)  # as _metrics_sample leaves it


def test_a_worker_that_did_not_answer_is_said_and_its_queue_is_no_total() -> None:
    """The caption had blamed a reload ("a counter went down") and the queue column had shown the
    one worker that answered as the total (a tester: worker 1's port had nothing listening)."""
    before = [sample(0.0, metrics(100, 100, 50, 100, 0, 0)), sample(0.0, metrics(0, 0, 0, 0, 0, 5))]
    after = [
        sample(2.0, metrics(300, 300, 100, 300, 0, 2)),
        Sample(2.0, metrics_error=REFUSED, counts_error=REFUSED),
    ]
    table = rows_of_workers(before, after)
    assert [(row.rate, row.queue, row.cost) for row in table] == [(None, None, 0.5)]
    assert caption(table, before, after, URLS).splitlines() == [
        f"sum of 2 workers' /metrics, from {URLS[0]} on",
        "-: not counted this interval (1 of 2 workers did not answer)",
        REFUSED,
    ]


def test_a_worker_back_since_the_previous_reading_is_said_with_that_reading() -> None:
    before = [
        sample(0.0, metrics(100, 100, 50, 100, 0, 0)),
        Sample(0.0, metrics_error=REFUSED, counts_error=REFUSED),
    ]
    after = [sample(2.0, metrics(300, 300, 100, 300, 0, 2)), sample(2.0, metrics(0, 0, 0, 0, 0, 5))]
    table = rows_of_workers(before, after)
    assert [(row.rate, row.queue) for row in table] == [(None, 7)]  # both answered now: the queue is whole
    assert caption(table, before, after, URLS).splitlines()[1:] == [
        "-: not counted this interval (1 of 2 workers did not answer)",
        f"{REFUSED} (at the previous reading)",
    ]


def test_a_reset_is_still_said_as_one() -> None:
    before = [sample(0.0, metrics(100, 100, 50, 100, 0, 0)), sample(0.0, metrics(500, 500, 100, 500, 0, 0))]
    after = [sample(2.0, metrics(300, 300, 100, 300, 0, 0)), sample(2.0, metrics(40, 40, 10, 40, 0, 0))]
    table = rows_of_workers(before, after)
    assert caption(table, before, after, URLS).splitlines()[1:] == [RESET_NOTE]


def test_worker_urls_are_the_next_ports() -> None:
    assert worker_urls("http://127.0.0.1:8002/metrics", 3) == [
        "http://127.0.0.1:8002/metrics",
        "http://127.0.0.1:8003/metrics",
        "http://127.0.0.1:8004/metrics",
    ]
    assert worker_urls("http://[::1]:9000/metrics", 2)[1] == "http://[::1]:9001/metrics"
    with pytest.raises(ValueError, match="--workers 2 needs a host and port in --metrics-url"):
        worker_urls("http://example.com/metrics", 2)
    with pytest.raises(ValueError, match="--workers must be 1 to 64"):
        worker_urls("http://127.0.0.1:8002/metrics", 0)


def top_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_top_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["top", *argv])


def test_security_flags(tmp_path: Path) -> None:
    assert security_of(top_args()) == (None, ())
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    tls, metadata = security_of(top_args("--token-file", str(token), "--tls"))
    assert metadata == (("authorization", "Bearer s3cret"),)
    assert tls is not None and tls.root_certificates is None
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        security_of(top_args("--tls-cert", str(token)))
    with pytest.raises(ValueError, match="pass --token or --token-file, not both"):
        security_of(top_args("--token", "a", "--token-file", str(token)))
    with pytest.raises(ValueError, match="--tls-ca: cannot read"):
        security_of(top_args("--tls-ca", str(tmp_path / "missing.pem")))
    with pytest.raises(ValueError, match="--token: a token must be"):
        security_of(top_args("--token", "two words"))


@pytest.mark.timeout(30)  # a FIFO had blocked the read for good
def test_a_token_or_pem_file_that_is_no_regular_file_or_too_large_is_refused_unread(tmp_path: Path) -> None:
    """`--token-file /dev/zero` had read until MemoryError, a FIFO had hung `top` (a tester)."""
    os.mkfifo(tmp_path / "fifo")
    with (tmp_path / "large").open("wb") as file:
        file.truncate(MAX_TOKEN_FILE_BYTES + 1)  # sparse: nothing of it is read
    with pytest.raises(ValueError, match=r"^--token-file /dev/zero: not a regular file \(a device\)$"):
        security_of(top_args("--token-file", "/dev/zero"))
    with pytest.raises(ValueError, match=r"^--tls-ca \S+/fifo: not a regular file \(a FIFO\)$"):
        security_of(top_args("--tls-ca", str(tmp_path / "fifo")))
    limit = r"larger than 65536 bytes \(64 KiB\), the limit for --token-file$"
    with pytest.raises(ValueError, match=rf"^--token-file \S+/large: {limit}"):
        security_of(top_args("--token-file", str(tmp_path / "large")))
