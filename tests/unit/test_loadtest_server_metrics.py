"""The load-test report's server-side figures from /metrics: counters as window deltas, gauges as
read at the window's end, several windows merged."""

from __future__ import annotations

import pytest

from loadtest.server_metrics import difference, parse, total

TEXT = """\
# TYPE sluiceway_deadline_outcome_total counter
sluiceway_deadline_outcome_total{model="mlp",version="1",outcome="on_time"} 90
sluiceway_deadline_outcome_total{model="mlp",version="1",outcome="shed"} 4
sluiceway_deadline_outcome_total{model="resnet",version="1",outcome="on_time"} 7
# TYPE sluiceway_batch_dispatch_total counter
sluiceway_batch_dispatch_total{model="mlp",version="1",reason="idle"} 50
# TYPE sluiceway_cpu_seconds_per_inference gauge
sluiceway_cpu_seconds_per_inference{model="mlp",version="1"} 0.0005
# TYPE sluiceway_padded_shape_changes_total counter
sluiceway_padded_shape_changes_total{model="mlp",version="1"} 6
# TYPE sluiceway_shared_session_runs_total counter
sluiceway_shared_session_runs_total{model="mlp",version="1"} 12
# TYPE sluiceway_shared_session_rows_total counter
sluiceway_shared_session_rows_total{model="mlp",version="1"} 300
"""


def test_parse_keeps_one_model_and_names_its_figures() -> None:
    figures = dict(parse(TEXT, "mlp"))
    assert figures == {
        "deadline_on_time": 90.0,
        "deadline_shed": 4.0,
        "dispatch_idle": 50.0,
        "gauge_cpu_us_per_inference": 500.0,
        "padded_shape_changes": 6.0,  # each a cuDNN plan build on a GPU: a counter, a window's delta
        "shared_runs": 12.0,  # the session host's runs and their rows: the batches a GPU ran
        "shared_rows": 300.0,
    }


def test_counters_are_deltas_and_gauges_are_last_values() -> None:
    start = (("deadline_on_time", 10.0), ("gauge_cpu_us_per_inference", 900.0))
    end = (("deadline_on_time", 90.0), ("gauge_cpu_us_per_inference", 500.0))
    window = difference(end, start)
    assert dict(window) == {"deadline_on_time": 80.0, "gauge_cpu_us_per_inference": 500.0}
    later = (("deadline_on_time", 5.0), ("gauge_cpu_us_per_inference", 400.0))
    assert total([window, later]) == {"deadline_on_time": 85.0, "gauge_cpu_us_per_inference": 400.0}


def test_an_endless_page_is_read_to_its_bound_and_gives_no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTP server answering an endless body had grown the harness's memory without end."""
    import urllib.request

    from loadtest import server_metrics

    asked: list[int] = []

    class Endless:
        def __enter__(self) -> Endless:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self, size: int = -1) -> bytes:
            assert size > 0, "read without a bound"
            asked.append(size)
            return b"#" * size

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Endless())
    assert server_metrics.read("http://127.0.0.1:1/metrics", "mlp") == ()
    assert asked == [server_metrics.MAX_PAGE_BYTES + 1]
