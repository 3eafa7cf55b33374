"""Spans lost on their way out are counted (sluiceway_spans_dropped_total): those that found the
export queue full while the exporter was behind, and those of a batch the exporter gave up on.
OpenTelemetry's BatchSpanProcessor alone dropped them with one log line for the whole run."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client.parser import text_string_to_metric_families

from server.app import SluicewayServer
from server.observability.tracing import build_tracing
from server.observability.tracing_env import read_tracing_env
from server.observability.tracing_export import DROPPED, CountedBatchProcessor
from server.settings import ServerSettings

BOUND_S = 30.0  # an upper bound on any wait here


class HeldExporter(SpanExporter):
    """Exports nothing until released: a collector that is down or slow."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.exported: list[ReadableSpan] = []
        self.result = result

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        assert self.release.wait(BOUND_S), "never released"
        self.exported.extend(spans)
        return self.result

    def shutdown(self) -> None:
        self.release.set()


@pytest.fixture
def held() -> Iterator[HeldExporter]:
    exporter = HeldExporter()
    yield exporter
    exporter.release.set()


def end_spans(provider: TracerProvider, count: int) -> None:
    tracer = provider.get_tracer("test")
    for i in range(count):
        tracer.start_span(f"s{i}").end()


def test_spans_that_find_the_export_queue_full_are_counted(held: HeldExporter) -> None:
    processor = CountedBatchProcessor(held, max_queue_size=4, max_export_batch_size=1)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    try:
        end_spans(provider, 1)  # a batch of one: the exporter takes it, and holds
        assert held.entered.wait(BOUND_S)
        end_spans(provider, 4 + 3)  # 4 fill the queue: 3 find it full
        assert processor.drops.queue_full == 3
        held.release.set()
        assert processor.force_flush(int(BOUND_S * 1000))
        assert len(held.exported) == 1 + 4  # the queue's spans were not dropped for them
        assert (processor.drops.queue_full, processor.drops.export_failed) == (3, 0)
    finally:
        provider.shutdown()


def test_spans_of_a_batch_the_exporter_gives_up_on_are_counted() -> None:
    exporter = HeldExporter(SpanExportResult.FAILURE)
    exporter.release.set()
    processor = CountedBatchProcessor(exporter, max_queue_size=8, max_export_batch_size=8)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    try:
        end_spans(provider, 5)
        assert processor.force_flush(int(BOUND_S * 1000))
        assert (processor.drops.queue_full, processor.drops.export_failed) == (0, 5)
    finally:
        provider.shutdown()


def test_the_queue_size_is_otel_bsp_max_queue_size() -> None:
    def size(env: dict[str, str]) -> int:
        return read_tracing_env("console", env).batching.max_queue_size

    assert size({}) == 2048
    assert size({"OTEL_BSP_MAX_QUEUE_SIZE": "64"}) == 64
    # (A value that is not a whole number above 0 is refused: tests/unit/test_tracing_env.py.)


async def test_a_traced_servers_metrics_show_the_drops(tmp_path: Path) -> None:
    """What /metrics shows of the server's counts, by reason, typed counter (async: the server is
    built in an event loop)."""
    settings = ServerSettings(
        host="127.0.0.1", port=0, model_repository=tmp_path, cache_dir=tmp_path, tracing=True,
        tracing_exporter="console",
    )  # fmt: skip
    server = SluicewayServer(settings)
    try:
        assert server.tracing is not None
        server.tracing.drops.queue_full = 7
        text = server.metrics.page().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        family = families[DROPPED.removesuffix("_total")]  # the parser strips `_total`
        assert family.type == "counter" and family.documentation
        got = {s.labels["reason"]: s.value for s in family.samples if s.name == DROPPED}
        assert got == {"queue_full": 7.0, "export_failed": 0.0}
    finally:
        server.metrics.stop()
        if server.tracing is not None:
            server.tracing.shutdown(BOUND_S)


def test_tracing_built_for_otlp_counts_into_its_drops() -> None:
    settings = ServerSettings(tracing=True, tracing_exporter="otlp")
    tracing = build_tracing(settings, environ={"OTEL_BSP_MAX_QUEUE_SIZE": "1024"})
    assert tracing is not None
    try:
        [processor] = tracing.provider._active_span_processor._span_processors  # (the SDK's own)
        assert isinstance(processor, CountedBatchProcessor) and processor.drops is tracing.drops
    finally:
        tracing.shutdown(BOUND_S)
