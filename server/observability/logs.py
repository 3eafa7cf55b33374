"""Log set-up: text or one JSON object a line (stdlib logging), with a request's fields when known.

JSON fields: time (UTC, ISO 8601, ms), level, logger, message, then those of worker (under
`--workers N`), model, version, request_id, trace_id and span_id a record carries
(`extra=request_fields(request)`), then `exception` (the formatted traceback) when there is one.
Nothing else of a record is written, and no request's tensors are ever logged: a request is named
by its model, version and id only. Text lines carry `[worker N]` under `--workers N`.

Under load the server logs nothing per request at INFO: successful and refused requests are not
logged, unexpected failures are logged at ERROR, and grpc.aio's lines about answers to callers
already gone are dropped (server/protocol/grpc_logs.py).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Record attributes written when present, in this order.
REQUEST_FIELDS = ("worker", "model", "version", "request_id", "trace_id", "span_id")
MAX_FIELD_CHARS = 256  # request ids and names come from callers: bounded


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "":
                entry[name] = str(value)[:MAX_FIELD_CHARS]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def request_fields(request: object) -> dict[str, str]:
    """`extra` for a log line about a request: its model, version and id (never its tensors).
    Works for any request message with model_name/name, model_version/version and id fields."""
    fields: dict[str, str] = {}
    for attribute, key in (
        ("model_name", "model"),
        ("name", "model"),
        ("model_version", "version"),
        ("version", "version"),
        ("id", "request_id"),
    ):
        value = getattr(request, attribute, None)
        if isinstance(value, str) and value and key not in fields:
            fields[key] = value[:MAX_FIELD_CHARS]
    return fields


class _WorkerField(logging.Filter):
    """Marks each record with its worker's number: `--workers N` interleaves N processes' lines."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


SERVED_VERSION = "served_version"  # set on an exception by the request path: the version that ran it
# (request id, trace id, span id) of the request the current task last started (tracing on and
# sampled), or None: each request's start sets it, in the task that logs its failure (a unary call's
# handler and the tasks it starts, an ensemble's steps; a stream frame's start on the reader, its
# finish in a task created right after). Not on the exception: one failed batch raises the same
# exception object into every request in it. Ids are formatted only when a line is written.
REQUEST_TRACE: ContextVar[tuple[str, int, int] | None] = ContextVar("sluiceway_request_trace", default=None)


def trace_fields(request_id: str) -> dict[str, str]:
    """`trace_id` and `span_id` of the request `request_id` this task started, when traced."""
    traced = REQUEST_TRACE.get()
    if traced is None or traced[0] != request_id:
        return {}
    return {"trace_id": format(traced[1], "032x"), "span_id": format(traced[2], "016x")}


def failure_fields(request: object, exc: BaseException) -> dict[str, str]:
    """`request_fields`, with the version that served the request when it named none (the request
    path notes it on the exception): an error line about a routed request had no version."""
    fields = request_fields(request)
    served = getattr(exc, SERVED_VERSION, None)
    if isinstance(served, str) and served:
        fields.setdefault("version", served)
    fields.update(trace_fields(fields.get("request_id", "")))
    return fields


def failure_message(what: str, fields: dict[str, str]) -> str:
    """`what` and the request's fields in words, for text lines (which carry no fields)."""
    named = ", ".join(f"{key} {value}" for key, value in fields.items())
    return f"{what} ({named})" if named else what


def log_handler(fmt: Literal["text", "json"], worker: int | None = None) -> logging.Handler:
    """A stderr handler writing the chosen format; `worker`: the process's number under --workers."""
    handler = logging.StreamHandler()
    text = TEXT_FORMAT if worker is None else TEXT_FORMAT.replace("%(name)s", "[worker %(worker)s] %(name)s")
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(text))
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    return handler


# Libraries that warn once per request about what a client sent (a malformed traceparent or
# tracestate), quoting it: 2,000 bad requests wrote 2,000 lines, with a client's text in them.
GRPC_CYTHON_LOGGER = "grpc._cython.cygrpc"
PER_REQUEST_LIBRARY_LOGGERS = ("opentelemetry.trace.propagation.tracecontext", "opentelemetry.trace.span")


def configure_logging(level: str, fmt: Literal["text", "json"], worker: int | None = None) -> None:
    """The root logger's level and handler, as logging.basicConfig does (nothing when the root
    logger has handlers already, e.g. under pytest)."""
    logging.basicConfig(level=level, handlers=[log_handler(fmt, worker)])
    for name in PER_REQUEST_LIBRARY_LOGGERS:  # a bad header only starts a fresh trace: no line
        logging.getLogger(name).setLevel(logging.ERROR)
    # grpc's Cython layer writes a DEBUG line per RPC ("Loaded running loop"): at DEBUG (a verbose
    # log_verbose_level, --log-level DEBUG) 300 RPCs wrote 300 such lines and none of the server's.
    logging.getLogger(GRPC_CYTHON_LOGGER).setLevel(logging.INFO)


class TextFormatter(logging.Formatter):
    """Text lines, one per record: line breaks in a message (a request id can hold any) are
    written as \\n, or a client could forge a line of its own (JSON escapes them already)."""

    iso8601 = False  # Triton's log_format ISO8601 (LogSettings): UTC ISO 8601 times, not local ones

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if not self.iso8601:
            return super().formatTime(record, datefmt)
        moment = datetime.fromtimestamp(record.created, timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).replace("\r", "\\r").replace("\n", "\\n")
