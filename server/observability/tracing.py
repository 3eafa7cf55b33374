"""OpenTelemetry tracing, built from settings: a TracerProvider object of the server's own (never
the global one), its exporter chosen by settings and the standard OTEL_* variables, a
ParentBased(TraceIdRatioBased) sampler, and the W3C trace context read from a call's metadata.

Off by default (`tracing = false`): then nothing here is built and the request path pays one
`is None` check per call. The spans themselves are made in tracing_spans.py.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.observability.tracing_env import Batching, disabled, read_tracing_env
from server.observability.tracing_export import CountedBatchProcessor, SpanDrops
from server.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = "sluiceway"
INSTRUMENTATION = "sluiceway.server"
# Metadata keys of the W3C trace context (gRPC metadata keys are lower case).
TRACE_KEYS = ("traceparent", "tracestate")

Metadata = Sequence[tuple[str, str | bytes]]


class Tracing:
    """The server's tracer and how a call's trace context is read. `shutdown()` flushes spans;
    `drops` counts the spans lost on their way out (sluiceway_spans_dropped_total)."""

    def __init__(self, provider: TracerProvider, drops: SpanDrops | None = None) -> None:
        self.provider = provider
        self.drops = drops if drops is not None else SpanDrops()
        self.tracer: Tracer = provider.get_tracer(INSTRUMENTATION)
        self._propagator = TraceContextTextMapPropagator()

    def parent(self, metadata: Metadata | None) -> Context | None:
        """The trace context a call's `traceparent`/`tracestate` metadata carry (None: none)."""
        if not metadata:
            return None
        carrier = {k: v for k, v in metadata if k in TRACE_KEYS and isinstance(v, str)}
        return self._propagator.extract(carrier) if carrier else None

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Export what is buffered and stop the exporter (blocking: call it off the event loop);
        False when that took longer than `timeout_s` and was left behind (a daemon thread, which
        ends with the process): with the collector down or slow, the exit had taken 23-32 s after
        SIGTERM with a 5 s grace, waiting for the exporter's retries."""
        done = threading.Event()

        def flush() -> None:
            try:
                self.provider.shutdown()
            finally:
                done.set()

        threading.Thread(target=flush, name="tracing shutdown", daemon=True).start()
        return done.wait(timeout_s)


def build_tracing(
    settings: ServerSettings,
    exporter: SpanExporter | None = None,
    environ: Mapping[str, str] | None = None,
) -> Tracing | None:
    """The server's tracing, or None when it is off (the setting, or OTEL_SDK_DISABLED=true).

    `exporter` (tests): spans go there at once, synchronously, instead of the exporter settings and
    the OTEL_* variables choose. An OTEL_* value it cannot use raises BadOtelVariable (tracing_env.py;
    `sluiceway serve` checks them first and exits 2)."""
    env = os.environ if environ is None else environ
    if not settings.tracing or disabled(env):
        return None
    told = read_tracing_env(settings.tracing_exporter, env)  # before the SDK reads any of them
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio)),
        resource=_resource(),
        shutdown_on_exit=False,  # no atexit hook: the server shuts it down when it stops
    )
    drops = SpanDrops()
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        make = _EXPORTERS.get(told.exporter)
        if make is not None:
            # Batches spans on its own thread; OTEL_BSP_* variables size and time it. A span that
            # finds its queue full is dropped and counted (BatchSpanProcessor alone drops silently).
            provider.add_span_processor(_batched(make(told.compression), told.batching, drops))
        log.info("tracing on: exporter %s, sample ratio %g", told.exporter, settings.tracing_sample_ratio)
    return Tracing(provider, drops)


def _batched(exporter: SpanExporter, batching: Batching, drops: SpanDrops) -> CountedBatchProcessor:
    """Every OTEL_BSP_* value passed explicitly: OpenTelemetry's own reading of them logged a
    traceback for a value it could not read, and raised for one it would not take."""
    return CountedBatchProcessor(
        exporter,
        batching.max_queue_size,
        drops,
        schedule_delay_millis=batching.schedule_delay_ms,
        max_export_batch_size=batching.max_export_batch_size,
        export_timeout_millis=batching.export_timeout_ms,
    )


def _otlp(compression: str) -> SpanExporter:
    """OTLP over gRPC; the exporter reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT,
    _CERTIFICATE and _INSECURE itself (tracing_env.py checked them). The compression is passed: it
    refused `none`, the standard word for no compression."""
    from grpc import Compression
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    chosen = Compression.Gzip if compression == "gzip" else Compression.NoCompression
    return OTLPSpanExporter(compression=chosen)


def _console(compression: str) -> SpanExporter:
    """To stderr (stdout carries the server's ready line), a span an object a line: indented, each
    took dozens of lines among the JSON log's one-object-a-line records (a tester, session 55)."""
    return ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")


_EXPORTERS: dict[str, Callable[[str], SpanExporter]] = {"otlp": _otlp, "console": _console}


def _resource() -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, with service.name "sluiceway" unless set."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    return resource
