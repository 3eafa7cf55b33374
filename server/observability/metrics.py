"""/metrics: OpenTelemetry SDK metrics in Prometheus text form, on prometheus_client's HTTP server.

Nothing here runs per request. The hot path counts into plain ints and fixed-bucket histograms
(batcher/stats.py); at scrape time OpenTelemetry observable instruments read the counters and
gauges (metrics_views.py), and the reader hands the SDK's exporter the histograms as
pre-aggregated OpenTelemetry histogram points: the Python SDK has no MetricProducer to take them,
and recording every value into an SDK histogram would cost the hot path a lock and a lookup each.

An explicit MeterProvider, never the global one; prometheus_client's registry is our own too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry

from server.observability.metrics_http import start_metrics_server
from server.observability.metrics_views import MetricViews, Samples

log = logging.getLogger(__name__)

SCOPE = "sluiceway"
# A gauge source yields (metric name, labels, value) at each scrape (see Metrics.add_gauge_source).
GaugeSource = Callable[[], Iterable[tuple[str, Mapping[str, str], float]]]
# What a source's names are: name -> (kind, HELP text); kind "counter" (a cumulative count, which
# Prometheus types `counter`) or "gauge". Each source module keeps its own, next to its names.
Catalog = Mapping[str, tuple[str, str]]


def _observe(samples: Samples) -> Callable[[CallbackOptions], Iterator[Observation]]:
    def callback(_: CallbackOptions) -> Iterator[Observation]:
        for labels, value in samples():
            yield Observation(value, labels)

    return callback


class _Reader(PrometheusMetricReader):
    """The OpenTelemetry Prometheus exporter, given extra pre-aggregated metrics at each collection
    (`_receive_metrics` is the SDK's documented hook for readers)."""

    def __init__(self, registry: CollectorRegistry, extra: Callable[[], list[Metric]]) -> None:
        super().__init__(registry=registry, scope_info_enabled=False)
        self._extra = extra
        self._resource = Resource.create({"service.name": SCOPE})

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        extra = self._extra()
        if extra:
            scope = ScopeMetrics(InstrumentationScope(SCOPE), extra, "")
            resource_metrics = [] if metrics_data is None else list(metrics_data.resource_metrics)
            resource_metrics.append(ResourceMetrics(self._resource, [scope], ""))
            metrics_data = MetricsData(resource_metrics)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)


class Metrics:
    """The server's metrics: the MeterProvider, and when `enabled` the /metrics endpoint."""

    def __init__(self, views: MetricViews, enabled: bool = True) -> None:
        self.views = views
        self.registry = CollectorRegistry()
        self._sources: list[GaugeSource] = []
        self._catalog: dict[str, tuple[str, str]] = {}
        self._reader = _Reader(self.registry, self._extra) if enabled else None
        self.meter_provider = MeterProvider(
            metric_readers=[self._reader] if self._reader is not None else [],
            resource=Resource.create({"service.name": SCOPE}),
            shutdown_on_exit=False,
        )
        meter = self.meter_provider.get_meter(SCOPE)
        for view in views.views():
            create = (
                meter.create_observable_counter if view.kind == "counter" else meter.create_observable_gauge
            )
            create(view.name, [_observe(view.samples)], unit="", description=view.description)
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def add_gauge_source(self, source: GaugeSource, catalog: Catalog) -> None:
        """Call `source` at each scrape; each (name, labels, value) it yields becomes a sample of
        the kind and HELP `catalog` gives that name (a name it lacks: an undescribed gauge). A
        source that raises is logged and skipped for that scrape."""
        self._sources.append(source)
        self._catalog.update(catalog)

    def _extra(self) -> list[Metric]:
        return [*self.views.histograms(), *self._gauges()]

    def _gauges(self) -> list[Metric]:
        points: dict[str, list[NumberDataPoint]] = {}
        for source in list(self._sources):
            try:
                for name, labels, value in source():
                    point = NumberDataPoint(attributes=dict(labels), start_time_unix_nano=0, time_unix_nano=0,
                                            value=value)  # fmt: skip
                    points.setdefault(name, []).append(point)
            except Exception:
                log.exception("metrics: gauge source %r failed; skipped in this scrape", source)
        return [self._metric(name, pts) for name, pts in points.items()]

    def _metric(self, name: str, points: list[NumberDataPoint]) -> Metric:
        kind, description = self._catalog.get(name, ("gauge", ""))
        data: Gauge | Sum = Gauge(data_points=points)
        if kind == "counter":
            temporality = AggregationTemporality.CUMULATIVE
            data = Sum(data_points=points, aggregation_temporality=temporality, is_monotonic=True)
        return Metric(name=name, description=description, unit="", data=data)

    def start(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0: a free port); the bound port. Raises OSError if taken."""
        if self._reader is None:
            raise RuntimeError("metrics are disabled")
        server, thread = start_metrics_server(host, port, self.registry)
        self._http = (server, thread)
        return int(server.server_port)

    def stop(self) -> None:
        """Stop the HTTP server (blocks up to its poll interval, 0.5 s) and the MeterProvider."""
        if self._http is not None:
            server, thread = self._http
            self._http = None
            server.shutdown()
            server.server_close()
            thread.join(5)
        self.meter_provider.shutdown()
