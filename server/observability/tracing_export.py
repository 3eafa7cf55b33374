"""The export of finished spans: OpenTelemetry's BatchSpanProcessor, every span it loses counted.

BatchSpanProcessor drops a span when its queue is full and says so in one log line for the whole
run (its logger filters repeats); an export that fails loses its batch with one line more. Neither
moved a counter, so a collector that was down or slow lost spans unseen. Here the processor's
queue is never let overflow: a span that would not fit is dropped before it reaches the queue and
counted (`queue_full`), and a batch the exporter gives up on is counted too (`export_failed`):
`sluiceway_spans_dropped_total{reason}` on /metrics.

The queue's length is known from our side: spans handed in, less spans handed to the exporter.
A batch leaves the queue just before it is handed over, so for that instant the count is high by
that batch: a span ending then may be dropped though it would have fitted. Never the other way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from server.observability.tracing_env import DEFAULT_MAX_QUEUE_SIZE

log = logging.getLogger(__name__)

DROPPED = "sluiceway_spans_dropped_total"
METRICS = {
    DROPPED: (
        "counter",
        "Sampled spans never exported: reason queue_full (the export queue was full: the exporter "
        "is behind) or export_failed (the exporter gave up on their batch)",
    ),
}


class SpanDrops:
    """Counts of spans lost on their way out, by reason (written under the processor's lock)."""

    def __init__(self) -> None:
        self.queue_full = 0
        self.export_failed = 0

    def gauge_values(self) -> Iterator[tuple[str, Mapping[str, str], float]]:
        """The counts for /metrics (a gauge source: server/observability/metrics.py)."""
        yield DROPPED, {"reason": "queue_full"}, float(self.queue_full)
        yield DROPPED, {"reason": "export_failed"}, float(self.export_failed)


class CountedBatchProcessor(SpanProcessor):
    """A BatchSpanProcessor whose queue never overflows: what would not fit is counted in `drops`.

    Spans end on the event loop thread; the processor's worker thread exports them."""

    def __init__(
        self,
        exporter: SpanExporter,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        drops: SpanDrops | None = None,
        schedule_delay_millis: float | None = None,  # None: OTEL_BSP_SCHEDULE_DELAY or its default
        max_export_batch_size: int | None = None,  # None: OTEL_BSP_MAX_EXPORT_BATCH_SIZE or its default
        export_timeout_millis: float | None = None,  # None: OTEL_BSP_EXPORT_TIMEOUT or its default
    ) -> None:
        self.drops = drops if drops is not None else SpanDrops()
        self._max_queue_size = max_queue_size
        self._queued = 0  # handed to the batch processor, not yet to the exporter
        self._lock = threading.Lock()
        counted = _CountedExporter(exporter, self._handed_over, self._failed)
        self._inner = BatchSpanProcessor(
            counted,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=max_export_batch_size,
            export_timeout_millis=export_timeout_millis,
        )

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return  # (the batch processor exports sampled spans only)
        with self._lock:
            full = self._queued >= self._max_queue_size
            if full:
                self.drops.queue_full += 1
                first = self.drops.queue_full == 1
            else:
                self._queued += 1
        if not full:
            self._inner.on_end(span)
        elif first:  # one line for the run, as OpenTelemetry's: the counter tells how many
            log.warning(
                "span export queue full (%d spans, OTEL_BSP_MAX_QUEUE_SIZE): dropping spans, counted in %s",
                self._max_queue_size,
                DROPPED,
            )

    def _handed_over(self, count: int) -> None:
        with self._lock:
            self._queued -= count

    def _failed(self, count: int) -> None:
        with self._lock:
            self.drops.export_failed += count

    def shutdown(self) -> None:
        self._inner.shutdown()  # type: ignore[no-untyped-call]  # (unannotated in the SDK)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountedExporter(SpanExporter):
    """The exporter, telling the processor how many spans left its queue, and which were lost."""

    def __init__(
        self, inner: SpanExporter, handed_over: Callable[[int], None], failed: Callable[[int], None]
    ) -> None:
        self._inner = inner
        self._handed_over = handed_over
        self._failed = failed

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._handed_over(len(spans))  # out of the queue: room for as many more
        result = SpanExportResult.FAILURE
        try:
            result = self._inner.export(spans)
            return result
        finally:
            if result != SpanExportResult.SUCCESS:  # it gave up (or raised: the processor logs that)
                self._failed(len(spans))

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)
