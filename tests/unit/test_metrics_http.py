"""The /metrics HTTP server (server/observability/metrics_http.py): scrapes answered; a connection
idle past the read timeout closed; past MAX_CONNECTIONS at once a new one closed unanswered.
prometheus_client's own server had held a thread per idle connection for as long as it stayed
open (500 connections, 500 threads)."""

from __future__ import annotations

import gzip
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from server.observability import metrics_http
from server.observability.metrics_page import Family, render

WAIT_S = 10.0  # bounds every wait below; none is a sleep standing in for an event


def page() -> bytes:
    return render([Family("sluiceway_test_scrapes_total", "counter", "a counter to scrape", [({}, 1)])])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_S) as answer:
        return str(answer.read().decode())


def _idle(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    conn.sendall(b"GET /metr")  # a request line never finished
    return conn


def _closed_by_server(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""  # EOF: the server closed it (blocks up to WAIT_S)
    except TimeoutError:
        return False


@pytest.fixture()
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(metrics_http, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(metrics_http._Handler, "timeout", 0.5)
    server, thread = metrics_http.start_metrics_server("127.0.0.1", 0, page)
    yield int(server.server_port)
    server.shutdown()
    server.server_close()
    thread.join(WAIT_S)


def test_a_scrape_is_answered(started: int) -> None:
    assert "sluiceway_test_scrapes_total 1.0" in _scrape(started)


def test_a_connection_idle_past_the_read_timeout_is_closed(started: int) -> None:
    conn = _idle(started)
    with conn:
        assert _closed_by_server(conn)
    assert "sluiceway_test_scrapes_total" in _scrape(started)


def test_past_the_most_connections_a_new_one_is_closed_unanswered(
    started: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_http._Handler, "timeout", 2 * WAIT_S)  # the four stay while tested
    held = [_idle(started) for _ in range(4)]
    try:
        extra = socket.create_connection(("127.0.0.1", started), timeout=WAIT_S)
        with extra:
            extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert _closed_by_server(extra)  # nothing answered: the four hold every slot
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + WAIT_S  # the four's threads see their EOF and free their slots
    while True:
        try:
            assert "sluiceway_test_scrapes_total" in _scrape(started)
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise


def _status(port: int, method: str, path: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_only_get_metrics_is_the_page_as_on_tritons_metrics_port(started: int) -> None:
    assert _status(started, "GET", "/metrics") == 200
    assert _status(started, "GET", "/metrics/") == 200
    assert _status(started, "GET", "/metrics?name[]=sluiceway_test_scrapes_total") == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{started}/metrics?name[]=other", timeout=WAIT_S) as page:
        assert b"sluiceway_test_scrapes_total 1.0" in page.read()  # the whole page, as Triton's
    assert _status(started, "GET", "/") == 400
    assert _status(started, "GET", "/favicon.ico") == 400
    assert _status(started, "GET", "/metricsx") == 400
    assert _status(started, "GET", "//metrics") == 400  # http.server had read it as /metrics
    assert _status(started, "GET", "//metrics/") == 400
    assert _status(started, "POST", "/metrics") == 405
    assert _status(started, "HEAD", "/metrics") == 405


def test_the_page_is_text_format_and_gzipped_for_a_scraper_that_asks(started: int) -> None:
    plain = urllib.request.Request(f"http://127.0.0.1:{started}/metrics")
    with urllib.request.urlopen(plain, timeout=WAIT_S) as answer:
        assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert answer.headers["Content-Encoding"] is None
        assert answer.read() == page()
    zipped = urllib.request.Request(
        f"http://127.0.0.1:{started}/metrics", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(zipped, timeout=WAIT_S) as answer:
        assert answer.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(answer.read()) == page()


@pytest.mark.parametrize(
    ("header", "gzipped"),
    [
        ("gzip", True),
        ("GZIP", True),  # content-codings are case-insensitive
        ("deflate, gzip;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),  # refused: it had been sent gzip all the same
        ("identity, gzip;q=0", False),
        ("*, gzip;q=0", False),
        ("br", False),
        ("", False),
    ],
)
def test_gzip_only_where_the_scraper_takes_it(header: str, gzipped: bool) -> None:
    assert metrics_http.accepts_gzip(header) is gzipped
