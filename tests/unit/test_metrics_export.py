"""The /metrics exporter in this process, over fake model versions: names, gauge sources, cost,
and the HTTP endpoint's start and stop."""

from __future__ import annotations

import importlib
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batcher.stats import ModelStats
from server.backends.batch_padding import PaddedRunner, Padding
from server.models.rollout import Rollout
from server.models.versions import READY
from server.observability.metrics import Metrics
from server.observability.metrics_views import Costs, MetricViews, View


def version(name: str, stats: ModelStats, cached: bool = False) -> Any:
    batcher = SimpleNamespace(queued_requests=2, queued_bytes=512, in_flight_batches=1)
    config = SimpleNamespace(response_cache=SimpleNamespace(enable=cached), metric_tags={})
    devices = ("cuda:0", "cuda:0", "cpu")  # two instances on a GPU, one on the CPU
    padding = Padding(64)
    return SimpleNamespace(
        name=name, version_str="1", stats=stats, batcher=batcher, config=config, devices=devices,
        backends=[*padded(padding), SimpleNamespace()],  # the GPU ones pad, the CPU one not
        padding=padding,  # the version's own (its instances' count of shape changes)
    )  # fmt: skip


def padded(padding: Padding, sizes: tuple[int, ...] = (1, 9, 40), instances: int = 2) -> list[Any]:
    """Instances of one version padding batches (batch_padding.PaddedRunner): the first has run
    batches of `sizes` rows."""
    runners = [PaddedRunner(SimpleNamespace(), padding) for _ in range(instances)]  # type: ignore[arg-type]
    for rows in sizes:
        runners[0].size.size_for(rows)
    return [SimpleNamespace(io=SimpleNamespace(runner=runner)) for runner in runners]


class FakeModels:
    def __init__(self, *versions: Any) -> None:
        self.list = [SimpleNamespace(state=READY, versions={1: v}) for v in versions]
        self.rollout = Rollout()  # rollback counts (server/models/rollout.py)
        self.on_demand = None  # no lazy models (their early refusals: server/models/early_refusals.py)

    def entries(self) -> list[Any]:
        return list(self.list)


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.page().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def key(name: str, model: str | None = "mlp", **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    if model is not None:
        labels = {"model": model, "version": "1", **labels}
    return name, frozenset(labels.items())


@pytest.fixture
def stats() -> ModelStats:
    s = ModelStats()
    for _ in range(4):
        s.record_success(200_000)
    s.record_batch(rows=4, requests=4, input_ns=0, infer_ns=1_000_000, output_ns=0)
    s.run_cpu_s = 0.002
    return s


@pytest.fixture
def metrics(stats: ModelStats) -> Iterator[Metrics]:
    cpu = iter([10.0, 10.01] + [10.01] * 100)  # 10 ms of process CPU since the start
    views = MetricViews(FakeModels(version("mlp", stats)), lambda: 3, Costs(36.0, 360.0), lambda: next(cpu))
    m = Metrics(views)
    yield m
    m.stop()


def test_names_types_and_no_unit_suffixes(metrics: Metrics) -> None:
    got = samples(metrics)
    assert got[key("nv_inference_request_success")] == 4
    assert got[key("nv_inference_request_duration_us")] == pytest.approx(800.0)
    assert got[key("nv_inference_pending_request_count")] == 2
    assert got[key("sluiceway_queue_bytes")] == 512
    assert got[key("sluiceway_streams_open", None)] == 3
    assert got[key("sluiceway_deadline_outcome_total", outcome="on_time")] == 4
    assert got[key("sluiceway_request_duration_us_bucket", le="200")] == 4
    assert got[key("sluiceway_request_duration_us_bucket", le="100")] == 0
    assert got[key("sluiceway_batch_size_sum")] == 4
    assert key("nv_cache_num_hits_per_model") not in got  # the model has no response cache
    assert got[key("sluiceway_model_instances", device="cuda:0")] == 2
    assert got[key("sluiceway_model_instances", device="cpu")] == 1
    # Each change a cuDNN plan build: the version's instances' changes together (1, 16, 64: 3).
    assert got[key("sluiceway_padded_shape_changes_total")] == 3


def test_shape_changes_go_on_when_the_watchdog_replaces_an_instance(metrics: Metrics) -> None:
    """A tester's finding: the count was summed over the instances serving, so a replaced instance
    (InstanceFactory.replacer puts a fresh one in its place) took its changes with it: 7 went to 4."""
    (entry,) = metrics.views._models.list  # type: ignore[attr-defined]
    version = entry.versions[1]
    before = samples(metrics)[key("sluiceway_padded_shape_changes_total")]
    (fresh,) = padded(version.padding, sizes=(2,), instances=1)  # the replacement: the version's count
    version.backends[0] = fresh
    assert samples(metrics)[key("sluiceway_padded_shape_changes_total")] == before + 1
    text = metrics.page().decode()
    assert "# TYPE nv_inference_count gauge" in text and "otel_scope" not in text
    assert "microseconds" not in text  # no unit suffix added to our names


def test_cpu_per_inference_and_cost(metrics: Metrics) -> None:
    got = samples(metrics)
    # 2 ms of runs + the other 8 ms of process CPU (one version: all of it), over 4 inferences.
    assert got[key("sluiceway_cpu_seconds_per_inference")] == pytest.approx(0.0025)
    # 1e6 x (2.5 ms x 36/3600 per core-second + 1 ms of runs / 4 x 360/3600 per GPU-second)
    assert got[key("sluiceway_cost_per_million_inferences")] == pytest.approx(
        1e6 * (0.0025 * 0.01 + 0.00025 * 0.1)
    )


def test_no_cost_without_prices(stats: ModelStats) -> None:
    m = Metrics(MetricViews(FakeModels(version("mlp", stats)), lambda: 0))
    try:
        got = samples(m)
        assert key("sluiceway_cost_per_million_inferences") not in got
        assert got[key("sluiceway_cpu_seconds_per_inference")] > 0
    finally:
        m.stop()


def test_gauge_sources_and_a_failing_one(metrics: Metrics) -> None:
    def drift() -> Iterator[tuple[str, dict[str, str], float]]:
        yield "sluiceway_drift_psi", {"model": "mlp", "version": "1", "feature": "0"}, 0.25

    def broken() -> Iterator[tuple[str, dict[str, str], float]]:
        raise RuntimeError("a bug in a source")
        yield  # a generator

    metrics.add_gauge_source(broken, {})
    metrics.add_gauge_source(drift, {})
    assert samples(metrics)[key("sluiceway_drift_psi", feature="0")] == 0.25


def test_a_view_that_fails_midway_keeps_what_it_gave_and_the_rest_of_the_page(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    def half() -> Iterator[tuple[dict[str, str], float]]:
        yield {"model": "mlp", "version": "1"}, 5
        raise RuntimeError("a bug in a view")

    metrics._views.insert(0, View("sluiceway_half", "gauge", "a view that fails", half))
    got = samples(metrics)
    assert got[key("sluiceway_half")] == 5  # written before it failed; the page is still whole
    assert got[key("nv_inference_request_success")] == 4
    assert "sluiceway_half failed" in caplog.text


def families(metrics: Metrics) -> dict[str, Any]:
    text = metrics.page().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_source_counters_are_prometheus_counters_with_help(metrics: Metrics) -> None:
    """A source's cumulative counts are typed `counter` (rate() and increase() expect it), each
    name keeps its one `_total`, and every name carries the HELP its catalog gives."""

    def loads() -> Iterator[tuple[str, dict[str, str], float]]:
        yield "sluiceway_model_loads_total", {}, 3.0
        yield "sluiceway_model_memory_used_bytes", {}, 1024.0
        yield "sluiceway_undescribed", {}, 1.0

    catalog = {
        "sluiceway_model_loads_total": ("counter", "Loads done"),
        "sluiceway_model_memory_used_bytes": ("gauge", "Bytes used"),
    }
    metrics.add_gauge_source(loads, catalog)
    got = families(metrics)
    text = metrics.page().decode()
    assert got["sluiceway_model_loads"].type == "counter"  # the parser strips `_total`
    assert got["sluiceway_model_loads"].documentation == "Loads done"
    assert "sluiceway_model_loads_total 3.0" in text and "_total_total" not in text
    assert got["sluiceway_model_memory_used_bytes"].type == "gauge"
    assert got["sluiceway_model_memory_used_bytes"].documentation == "Bytes used"
    assert got["sluiceway_undescribed"].type == "gauge"  # still shown, without HELP


@pytest.mark.parametrize(
    "module",
    [
        "server.models.load_metrics",
        "server.observability.sampling",
        "server.models.rollout",
        "server.observability.tracing_export",
        "server.protocol.rpc_slots",
        "server.protocol.calls",
        "server.protocol.message_wait",
        "server.protocol.loop_pace",
    ],
)
def test_every_source_catalog_types_totals_as_counters(module: str) -> None:
    """Each catalog describes every name; a `_total` name is a counter, any other a gauge."""
    catalog = importlib.import_module(module).METRICS
    for name, (kind, description) in catalog.items():
        assert description, name
        assert kind == ("counter" if name.endswith("_total") else "gauge"), name


def test_http_endpoint_on_a_free_port(metrics: Metrics) -> None:
    port = metrics.start("127.0.0.1", 0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert b"nv_inference_request_success" in response.read()
    metrics.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)


def test_disabled_metrics_serve_nothing(stats: ModelStats) -> None:
    m = Metrics(MetricViews(FakeModels(version("mlp", stats)), lambda: 0), enabled=False)
    assert m.page() == b""
    with pytest.raises(RuntimeError):
        m.start("127.0.0.1", 0)
    m.stop()


def test_a_reloaded_version_is_not_charged_the_cpu_of_the_version_it_replaced() -> None:
    """All the process CPU since start-up went to a reloaded version's first requests: a 25 us
    MLP read 117 ms of CPU per inference after a reload."""
    old = ModelStats()
    for _ in range(1000):
        old.record_success(1000)
    old.record_batch(rows=1000, requests=1000, input_ns=0, infer_ns=1, output_ns=0)
    old.run_cpu_s = 0.1
    cpu = [10.0]
    models = FakeModels(version("mlp", old))
    views = MetricViews(models, lambda: 0, Costs(), lambda: cpu[0])
    cpu[0] += 1.1  # 0.1 s of runs, 1.0 s of the rest: 1 ms a request
    [(_, before)] = views._cpu_each()
    assert before == pytest.approx(0.0011)
    new = ModelStats()
    for _ in range(10):
        new.record_success(1000)
    new.record_batch(rows=10, requests=10, input_ns=0, infer_ns=1, output_ns=0)
    new.run_cpu_s = 0.001
    models.list = [SimpleNamespace(state=READY, versions={1: version("mlp", new)})]  # the reload
    cpu[0] += 0.011  # its 10 requests: 1 ms of runs, 10 ms of the rest
    [(_, after)] = views._cpu_each()
    assert after == pytest.approx(0.0011, rel=0.05)  # was (1.001 + 0.001) / 10 = 0.1 s


def test_a_cached_models_hits_count_as_its_inferences() -> None:
    """Its share of the process CPU, by requests answered (hits included), went over its computed
    rows alone: 300 requests' worth charged to 2 inferences."""
    s = ModelStats()
    for _ in range(300):
        s.record_success(1000)
    for _ in range(298):
        s.cache_hit.add(1000)
    s.record_batch(rows=2, requests=2, input_ns=0, infer_ns=1, output_ns=0)
    cpu = [10.0]
    views = MetricViews(FakeModels(version("cached", s, cached=True)), lambda: 0, Costs(), lambda: cpu[0])
    cpu[0] += 0.3  # 1 ms a request answered
    [(_, per_inference)] = views._cpu_each()
    assert per_inference == pytest.approx(0.001)  # was 0.15


def test_a_version_ready_and_in_its_early_refusals_is_shown_once_as_ready(stats: ModelStats) -> None:
    """A lazy model evicted while it drained (or loaded while a refusal was judged) is for a while
    both ready and in its early refusals: its series had been written twice (a tester)."""
    early = ModelStats()
    refused = SimpleNamespace(
        each=lambda: [("mlp", 1, early), ("lazy", 2, early)],
        series=lambda name: SimpleNamespace(tags={}, cached=False),
    )
    models = FakeModels(version("mlp", stats))
    models.on_demand = SimpleNamespace(refused_early=refused)
    m = Metrics(MetricViews(models, lambda: 0))
    shown = [(labels["model"], labels["version"]) for labels, _ in m.views._shown()]
    assert shown == [("mlp", "1"), ("lazy", "2")]  # the views give it once (the page also keeps one)
    text = m.page().decode()
    assert text.count('nv_inference_request_success{model="mlp",version="1"}') == 1
    assert samples(m)[key("nv_inference_request_success")] == 4  # the ready version's
    assert samples(m)[key("nv_inference_request_success", model="lazy", version="2")] == 0
