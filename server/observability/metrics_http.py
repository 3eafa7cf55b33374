"""The /metrics HTTP server: the page (metrics_page.py) on prometheus_client's threaded WSGI server,
its connections bounded in number and in the time each may wait between reads.

prometheus_client's own start_http_server gives every connection a thread with no timeout: 500
connections that never finished their request line held 500 threads while they stayed open, and
2,000 of them slowed a scrape to 6.4 s. Here a connection idle for READ_TIMEOUT_S is closed, and
past MAX_CONNECTIONS at once a new one is closed unanswered (a scraper retries at its next
interval). As Triton's metrics port, only GET /metrics (or /metrics/) is the page: another path
(`//metrics` too) is 400 and another method 405, so a probe at / is not mistaken for a scrape
target. A scraper that accepts gzip gets the page gzipped (zlib works without the GIL).
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import ThreadingWSGIServer

from server.observability.metrics_page import CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
READ_TIMEOUT_S = 10.0


METRICS_PATHS = ("/metrics", "/metrics/")
REQUEST_LINE = "sluiceway.request_line"  # the environ key _Handler puts the request line under

_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def metrics_app(page: Callable[[], bytes]) -> _WsgiApp:
    """`page()` for GET /metrics, whatever the query (as Triton's); 405 for another method, 400
    for another path (Triton's answers)."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET":
            start_response("405 Method Not Allowed", [("Allow", "GET")])
            return [b"Method Not Allowed\n"]
        if _raw_path(environ) not in METRICS_PATHS:
            start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"the metrics are at /metrics\n"]
        body = page()
        headers = [("Content-Type", CONTENT_TYPE)]
        if accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = gzip.compress(body, compresslevel=6)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return serve


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip: named (any case) or by `*`, with a q above 0
    (`gzip;q=0` refuses it: it had been sent gzip all the same)."""
    weights: dict[str, float] = {}
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[coding.strip().lower()] = q
    return weights.get("gzip", weights.get("*", 0.0)) > 0.0


def _raw_path(environ: dict[str, Any]) -> str:
    """The path as the request line wrote it: http.server turns a leading `//` into `/` (against
    open redirects), so PATH_INFO alone let `//metrics` through."""
    line = str(environ.get(REQUEST_LINE) or "")
    parts = line.split(" ")
    return parts[1].split("?", 1)[0] if len(parts) >= 2 else str(environ.get("PATH_INFO"))


class _Handler(WSGIRequestHandler):
    timeout = READ_TIMEOUT_S  # socketserver.StreamRequestHandler: the socket's timeout for each read

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ[REQUEST_LINE] = self.requestline
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _BoundedServer(ThreadingWSGIServer):
    """A thread per connection (daemon threads, as prometheus_client's), at most MAX_CONNECTIONS."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0  # connections closed unanswered, past MAX_CONNECTIONS

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that timed out or went away: one debug line, not a traceback on stderr."""
        log.debug("metrics connection from %s ended with an error", client_address, exc_info=True)


class _BoundedServer6(_BoundedServer):
    address_family = socket.AF_INET6


def start_metrics_server(
    host: str, port: int, page: Callable[[], bytes]
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `page()` on host:port (0: a free port) from a daemon thread; OSError if taken."""
    server_class = _BoundedServer6 if ":" in host else _BoundedServer
    server: WSGIServer = make_server(host, port, metrics_app(page), server_class, handler_class=_Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
