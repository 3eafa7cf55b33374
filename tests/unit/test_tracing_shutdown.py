"""Tracing's shutdown is bounded: an exporter stuck on a collector that is down or slow had held the
server's exit for 23-32 s after SIGTERM with a 5 s grace. The console exporter's lines."""

from __future__ import annotations

import io
import json
import sys
import threading
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from server.observability.tracing import _EXPORTERS, Tracing


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


def test_the_console_exporter_writes_a_span_an_object_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside --log-format json's one object a line: indented, 5 requests' spans took 694 lines that
    were not JSON objects among 12 that were (a tester, session 55)."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTERS["console"]("none")))
    tracer = provider.get_tracer("t")
    for name in ("ModelInfer", "batch"):
        with tracer.start_as_current_span(name, attributes={"model": "mlp"}):
            pass
    provider.shutdown()
    lines = err.getvalue().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["ModelInfer", "batch"]
