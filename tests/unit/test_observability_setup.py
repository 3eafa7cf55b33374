"""Tracing and log set-up from settings: exporter choice, sampler, trace context, JSON lines."""

from __future__ import annotations

import io
import json
import logging
from typing import Literal

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import get_current_span

from protos import grpc_service_pb2 as pb
from server.observability.logs import (
    PER_REQUEST_LIBRARY_LOGGERS,
    JsonFormatter,
    configure_logging,
    log_handler,
    request_fields,
)
from server.observability.tracing import build_tracing
from server.observability.tracing_env import choose_exporter
from server.settings import ServerSettings

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_tracing_is_off_unless_asked_for() -> None:
    assert ServerSettings().tracing is False
    assert build_tracing(ServerSettings(), InMemorySpanExporter(), environ={}) is None
    on = ServerSettings(tracing=True)
    assert build_tracing(on, InMemorySpanExporter(), environ={"OTEL_SDK_DISABLED": "true"}) is None
    assert build_tracing(on, InMemorySpanExporter(), environ={}) is not None


@pytest.mark.parametrize(
    ("setting", "env", "chosen"),
    [
        ("auto", {}, "console"),
        ("auto", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, "otlp"),
        ("auto", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, "otlp"),
        ("auto", {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}, "none"),
        ("auto", {"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ("auto", {"OTEL_TRACES_EXPORTER": "console,otlp"}, "console"),  # (the first one)
        ("otlp", {"OTEL_TRACES_EXPORTER": "zipkin"}, "otlp"),  # (not read: the setting chose)
        ("none", {"OTEL_EXPORTER_OTLP_ENDPOINT": "x"}, "none"),
        ("otlp", {}, "otlp"),
    ],
)
def test_the_exporter_follows_the_setting_then_the_otel_variables(
    setting: str, env: dict[str, str], chosen: str
) -> None:
    assert choose_exporter(setting, env) == chosen


def test_the_sampler_is_parent_based_on_the_ratio() -> None:
    tracing = build_tracing(
        ServerSettings(tracing=True, tracing_sample_ratio=0.25), InMemorySpanExporter(), {}
    )
    assert tracing is not None
    description = tracing.provider.sampler.get_description()
    assert description.startswith("ParentBased{root:TraceIdRatioBased{0.25}")
    assert tracing.provider.resource.attributes["service.name"] == "sluiceway"


def test_the_parent_is_read_from_w3c_metadata_only() -> None:
    tracing = build_tracing(ServerSettings(tracing=True), InMemorySpanExporter(), {})
    assert tracing is not None
    assert tracing.parent(None) is None and tracing.parent(()) is None
    assert tracing.parent((("authorization", "Bearer x"), ("x-bin", b"\0"))) is None
    context = tracing.parent((("traceparent", PARENT), ("tracestate", "a=1")))
    assert context is not None
    span = get_current_span(context).get_span_context()
    assert (span.trace_id, span.span_id, span.is_remote) == (
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        True,
    )
    assert span.trace_state.get("a") == "1"
    broken = tracing.parent((("traceparent", "00-zz-zz-01"),))
    assert broken is not None and not get_current_span(broken).get_span_context().is_valid


def test_json_lines_carry_request_fields_and_never_tensors() -> None:
    request = pb.ModelInferRequest(model_name="mlp", model_version="2", id="req-7")
    request.raw_input_contents.append(b"TENSOR-BYTES")
    out = io.StringIO()
    handler = log_handler("json")
    handler.setStream(out)  # type: ignore[attr-defined]
    logger = logging.getLogger("test.observability.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("request %s failed", "req-7", extra={**request_fields(request), "trace_id": "ab" * 16})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("with traceback")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first.keys() == {
        "time",
        "level",
        "logger",
        "message",
        "model",
        "version",
        "request_id",
        "trace_id",
    }
    assert (first["level"], first["logger"], first["message"]) == (
        "WARNING",
        "test.observability.json",
        "request req-7 failed",
    )
    assert (first["model"], first["version"], first["request_id"]) == ("mlp", "2", "req-7")
    assert first["time"].endswith("+00:00")
    assert "ValueError: boom" in second["exception"]
    assert "TENSOR" not in out.getvalue()


def test_request_fields_are_bounded_and_skip_what_is_empty() -> None:
    assert request_fields(pb.ModelInferRequest(model_name="m")) == {"model": "m"}
    assert request_fields(pb.ModelMetadataRequest(name="m", version="3")) == {"model": "m", "version": "3"}
    assert len(request_fields(pb.ModelInferRequest(id="x" * 10_000))["request_id"]) == 256
    assert request_fields(None) == {}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_workers_lines_name_it(fmt: Literal["text", "json"]) -> None:
    """Under --workers N, N processes write to one stderr: each line says which one wrote it."""
    out = io.StringIO()
    handler = log_handler(fmt, worker=3)
    handler.setStream(out)  # type: ignore[attr-defined]
    logger = logging.getLogger("test.observability.worker")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("model x failed to load")
    finally:
        logger.removeHandler(handler)
    line = out.getvalue().strip()
    if fmt == "json":
        assert json.loads(line)["worker"] == "3"
    else:
        assert "[worker 3] test.observability.worker: model x failed to load" in line
    plain = log_handler(fmt)
    assert "worker" not in plain.format(logging.makeLogRecord({"msg": "m", "levelname": "INFO"}))


def test_text_format_is_the_default() -> None:
    assert ServerSettings().log_format == "text"
    assert not isinstance(log_handler("text").formatter, JsonFormatter)
    assert isinstance(log_handler("json").formatter, JsonFormatter)


def test_a_text_line_cannot_be_split_by_what_a_client_sent() -> None:
    """A request id with a line break forged a second log line of the client's choosing."""
    handler = log_handler("text")
    record = logging.makeLogRecord(
        {"name": "server.x", "levelname": "ERROR", "levelno": 40, "msg": "failed (request_id a\nINFO FORGED)"}
    )
    line = handler.format(record)
    assert "\n" not in line and "request_id a\\nINFO FORGED" in line


def test_malformed_trace_headers_write_no_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """OpenTelemetry warned per request, quoting the header (a tracestate holding a bearer token)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    levels = {name: logging.getLogger(name).level for name in PER_REQUEST_LIBRARY_LOGGERS}
    configure_logging("INFO", "text")
    try:
        propagator = TraceContextTextMapPropagator()
        with caplog.at_level(logging.INFO):
            propagator.extract({"traceparent": "00-" + "a" * 600})
            good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            propagator.extract({"traceparent": good, "tracestate": "Authorization: Bearer SECRET"})
        assert "SECRET" not in caplog.text and "maximum length" not in caplog.text
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
