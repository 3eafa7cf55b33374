"""/metrics: the server's counters, gauges and histograms in Prometheus text form, on a threaded
HTTP server of its own (metrics_http.py).

Nothing here runs per request. The hot path counts into plain ints and fixed-bucket histograms
(batcher/stats.py); at a scrape the views (metrics_views.py) and the gauge sources read them and
metrics_page.py writes the page. OpenTelemetry's SDK and Prometheus exporter had sat between them
until the thirtieth session: the same page cost many times the CPU (metrics_page.py says why).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from wsgiref.simple_server import WSGIServer

from server.observability.metrics_http import start_metrics_server
from server.observability.metrics_page import Family, render
from server.observability.metrics_views import MetricViews, Sample, View

log = logging.getLogger(__name__)

# A gauge source yields (metric name, labels, value) at each scrape (see Metrics.add_gauge_source).
GaugeSource = Callable[[], Iterable[tuple[str, Mapping[str, str], float]]]
# What a source's names are: name -> (kind, HELP text); kind "counter" (a cumulative count, which
# Prometheus types `counter`) or "gauge". Each source module keeps its own, next to its names.
Catalog = Mapping[str, tuple[str, str]]


class Metrics:
    """The server's metrics: the page, and when `enabled` the /metrics endpoint serving it."""

    def __init__(self, views: MetricViews, enabled: bool = True) -> None:
        self.views = views
        self.enabled = enabled
        self._views = views.views()
        self._sources: list[GaugeSource] = []
        self._closers: list[Callable[[], None]] = []
        self._starters: list[Callable[[], None]] = []
        self._catalog: dict[str, tuple[str, str]] = {}
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def add_gauge_source(
        self,
        source: GaugeSource,
        catalog: Catalog,
        close: Callable[[], None] | None = None,
        start: Callable[[], None] | None = None,
    ) -> None:
        """Call `source` at each scrape; each (name, labels, value) it yields becomes a sample of
        the kind and HELP `catalog` gives that name (a name it lacks: an undescribed gauge). A
        source that raises is logged and skipped for that scrape. `start`: called at `start`, once
        the page is served; `close`: at `stop`, after the last scrape (a source polling a library
        on a thread of its own, NVML's)."""
        self._sources.append(source)
        self._catalog.update(catalog)
        if close is not None:
            self._closers.append(close)
        if start is not None:
            self._starters.append(start)

    def page(self) -> bytes:
        """The /metrics page now (empty when metrics are disabled)."""
        if not self.enabled:
            return b""
        return render([*map(_family, self._views), *self.views.histograms(), *self._gauges()])

    def _gauges(self) -> list[Family]:
        samples: dict[str, list[Sample]] = {}
        for source in list(self._sources):
            try:
                for name, labels, value in source():
                    samples.setdefault(name, []).append((dict(labels), value))
            except Exception:
                log.exception("metrics: gauge source %r failed; skipped in this scrape", source)
        families = []
        for name, points in samples.items():
            kind, description = self._catalog.get(name, ("gauge", ""))
            families.append(Family(name, kind, description, points))
        return families

    def start(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0: a free port); the bound port. Raises OSError if taken."""
        if not self.enabled:
            raise RuntimeError("metrics are disabled")
        server, thread = start_metrics_server(host, port, self.page)
        self._http = (server, thread)
        for begin in self._starters:
            begin()
        return int(server.server_port)

    def stop(self) -> None:
        """Stop the HTTP server (blocks up to its poll interval, 0.5 s), then close the sources."""
        if self._http is not None:
            server, thread = self._http
            self._http = None
            server.shutdown()
            server.server_close()
            thread.join(5)
        closers, self._closers = self._closers, []
        for close in closers:
            close()


def _family(view: View) -> Family:
    """A view's family for this scrape, its samples read as the page is written; a view that
    raises is logged and shows the samples it gave before (none, if it raised at once)."""
    return Family(view.name, view.kind, view.description, _logged(view))


def _logged(view: View) -> Iterator[Sample]:
    try:
        yield from view.samples()
    except Exception:
        log.exception("metrics: %s failed; skipped in this scrape", view.name)
