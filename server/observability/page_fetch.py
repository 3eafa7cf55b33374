"""Fetching a /metrics page for `sluiceway top` within one deadline for the whole answer.

urllib's timeout bounds each socket read, not the answer: a server trickling a byte every few
seconds (headers or body) held `top` for as long as it liked. Here a timer shuts the connection's
socket down at the deadline, which ends any read under way, and the answer is refused as late
rather than parsed from the part that came.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.request
from typing import Any


class PageTooSlow(Exception):
    """The whole answer did not come within the deadline."""


class PageTooLarge(Exception):
    """The answer is larger than the bound."""


def fetch_page(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """The body at `url`, read within `timeout_s` in all and at most `max_bytes` long;
    PageTooSlow, PageTooLarge, or urllib's and http.client's errors."""
    cut = threading.Event()
    timers: list[threading.Timer] = []

    def watch(connection: http.client.HTTPConnection) -> None:
        timer = threading.Timer(timeout_s, _cut, (connection, cut))
        timer.daemon = True
        timers.append(timer)
        timer.start()

    opener = urllib.request.build_opener(_Handler(watch), _TlsHandler(watch))
    try:
        with opener.open(url, timeout=timeout_s) as reply:  # the operator's URL
            page: bytes = reply.read(max_bytes + 1)
    except (OSError, http.client.HTTPException):
        if cut.is_set():
            raise PageTooSlow(f"the whole answer took longer than {timeout_s:g} s") from None
        raise
    finally:
        for timer in timers:
            timer.cancel()
    if cut.is_set():  # the read ended at the cut, with part of the page
        raise PageTooSlow(f"the whole answer took longer than {timeout_s:g} s")
    if len(page) > max_bytes:
        raise PageTooLarge
    return page


def _cut(connection: http.client.HTTPConnection, cut: threading.Event) -> None:
    cut.set()
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Handler(urllib.request.HTTPHandler):
    def __init__(self, watch: Any) -> None:
        super().__init__()
        self._watch = watch

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)

    def _connection(self, *args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection(*args, **kwargs)
        self._watch(connection)
        return connection


class _TlsHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: Any) -> None:
        super().__init__()
        self._watch = watch

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._context)  # type: ignore[attr-defined]

    def _connection(self, *args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        connection = http.client.HTTPSConnection(*args, **kwargs)
        self._watch(connection)
        return connection
