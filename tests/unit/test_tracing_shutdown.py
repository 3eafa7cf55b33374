"""Tracing's shutdown is bounded: an exporter stuck on a collector that is down or slow had held the
server's exit for 23-32 s after SIGTERM with a 5 s grace."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from server.observability.tracing import Tracing


class StuckExporter(SpanExporter):
    """Blocks in export until released, as an exporter retrying a dead collector does."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(30)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_a_stuck_export_is_left_behind_after_the_timeout() -> None:
    exporter = StuckExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracing = Tracing(provider)
    with tracing.tracer.start_as_current_span("request"):
        pass
    try:
        assert tracing.shutdown(timeout_s=0.2) is False  # returned at the timeout, export still stuck
    finally:
        exporter.release.set()


def test_a_quick_export_is_flushed_and_reported_done() -> None:
    exporter = StuckExporter()
    exporter.release.set()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracing = Tracing(provider)
    with tracing.tracer.start_as_current_span("request"):
        pass
    assert tracing.shutdown(timeout_s=30) is True
