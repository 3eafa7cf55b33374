"""The OTEL_* variables tracing reads: a value it cannot use is a bad setting, as a SLUICEWAY_* one
(exit 2, one line naming the variable, its value and the problem). OpenTelemetry's own reading of
them had ended start-up in a traceback (OTEL_BSP_MAX_QUEUE_SIZE=0, OTEL_EXPORTER_OTLP_TIMEOUT=abc),
or logged one and served on (a missing certificate), or warned and used its default (=abc)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.cli import main
from server.observability.tracing import build_tracing
from server.observability.tracing_env import BadOtelVariable, read_tracing_env, tracing_env_problem
from server.observability.tracing_export import CountedBatchProcessor
from server.settings import ServerSettings
from tests.unit.test_settings_flags import clean_environment

__all__ = ["clean_environment"]  # autouse: no SLUICEWAY_* leaks in, and nothing starts
BOUND_S = 30.0  # an upper bound on a tracing shutdown here
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:22689"}  # nothing listens: nothing is sent


@pytest.fixture(autouse=True)
def no_otel_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("OTEL_", "SLUICEWAY_")):
            monkeypatch.delenv(name)
    yield


# (exporter setting, variables, what the line must say): those the tester found first, then the
# rest of what tracing reads. Each had a traceback, a traceback logged, or a silent default.
BAD = [
    ("auto", {"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "OTEL_BSP_MAX_QUEUE_SIZE='0'"),
    ("otlp", {"OTEL_EXPORTER_OTLP_TIMEOUT": "abc"}, "OTEL_EXPORTER_OTLP_TIMEOUT='abc'"),
    (
        "otlp",
        {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nope.pem"},
        "CERTIFICATE='/nope.pem' with tracing on: cannot read it",
    ),
    ("auto", {"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
    ("auto", {"OTEL_BSP_MAX_QUEUE_SIZE": "abc"}, "OTEL_BSP_MAX_QUEUE_SIZE='abc'"),
    ("console", {"OTEL_BSP_SCHEDULE_DELAY": "1.5"}, "OTEL_BSP_SCHEDULE_DELAY='1.5'"),
    ("console", {"OTEL_BSP_EXPORT_TIMEOUT": "-1"}, "OTEL_BSP_EXPORT_TIMEOUT='-1'"),
    (
        "console",
        {"OTEL_BSP_MAX_QUEUE_SIZE": "64", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "128"},
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE='128' with tracing on: larger than the queue",
    ),
    ("otlp", {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": ""}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=''"),
    ("otlp", {"OTEL_EXPORTER_OTLP_TIMEOUT": "nan"}, "not a number of seconds above 0"),
    ("otlp", {"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "brotli"}, "='brotli' with tracing on: not gzip"),
    ("otlp", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "only OTLP over gRPC"),
    ("otlp", {"OTEL_EXPORTER_OTLP_INSECURE": "yes"}, "OTEL_EXPORTER_OTLP_INSECURE='yes'"),
    ("otlp", {"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": "/"}, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY='/'"),
    ("otlp", {"OTEL_EXPORTER_OTLP_HEADERS": "Bearer s3cret"}, "entry 1 of 1 is not name=value"),
    ("otlp", {"OTEL_EXPORTER_OTLP_HEADERS": "a=1,x!y=s3cret"}, "header name 'x!y' is not a gRPC one"),
    (
        "otlp",
        {"OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES": "UNAVAILABLE,nope"},
        "'NOPE' is not a gRPC status code",
    ),
    (
        "otlp",
        {"OTEL_PYTHON_EXPORTER_OTLP_GRPC_TRACES_CREDENTIAL_PROVIDER": "nope"},
        "'nope' is not installed",
    ),
    ("auto", {"OTEL_SPAN_EVENT_COUNT_LIMIT": "lots"}, "OTEL_SPAN_EVENT_COUNT_LIMIT='lots'"),
    ("auto", {"OTEL_RESOURCE_ATTRIBUTES": "team=ml,oops"}, "item 'oops' is not key=value"),
    ("auto", {"OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "nope"}, "'nope' is not installed"),
    ("auto", {"OTEL_SDK_DISABLED": "1"}, "OTEL_SDK_DISABLED='1' with tracing on: not true or false"),
]


@pytest.mark.parametrize(("setting", "env", "said"), BAD)
def test_a_bad_otel_value_exits_2_with_one_line_naming_it(
    setting: str,
    env: dict[str, str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in {**ENDPOINT, **env}.items():
        monkeypatch.setenv(name, value)
    flags = ["--tracing", "--tracing-exporter", setting, "--model-repository", str(tmp_path)]
    assert main(["serve", *flags]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sluiceway: invalid environment variable OTEL_"), lines
    assert said in lines[0], lines
    assert "s3cret" not in lines[0]  # header values may be credentials: never shown


def test_the_line_is_json_when_the_logs_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "0")
    flags = ["--tracing", "--log-format", "json", "--model-repository", str(tmp_path)]
    assert main(["serve", *flags]) == 2
    record = json.loads(capsys.readouterr().err)
    assert record["level"] == "ERROR" and "OTEL_BSP_MAX_QUEUE_SIZE='0'" in record["message"], record


@pytest.mark.parametrize(
    ("setting", "env"),
    [
        ("auto", {"OTEL_SDK_DISABLED": "true", "OTEL_BSP_MAX_QUEUE_SIZE": "0"}),  # tracing is off
        ("none", {"OTEL_BSP_MAX_QUEUE_SIZE": "0"}),  # no batching: not read
        ("console", {"OTEL_EXPORTER_OTLP_TIMEOUT": "abc"}),  # no OTLP exporter: not read
        ("auto", {"OTEL_SDK_DISABLED": " FALSE ", "OTEL_ATTRIBUTE_COUNT_LIMIT": "unset"}),
        ("otlp", {"OTEL_EXPORTER_OTLP_TIMEOUT": "2.5", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}),
        ("otlp", {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b, X-Team = ml"}),
        ("auto", {"OTEL_RESOURCE_ATTRIBUTES": "team=ml,zone=a=b", "OTEL_BSP_MAX_QUEUE_SIZE": ""}),
    ],
)
def test_what_tracing_does_not_read_or_can_use_passes(setting: str, env: dict[str, str]) -> None:
    assert tracing_env_problem(setting, env) is None


def test_without_tracing_no_otel_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "0")
    with pytest.raises(AssertionError, match="the server was about to start"):
        main(["serve", "--model-repository", str(tmp_path)])


def test_values_opentelemetry_refused_build_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue below OpenTelemetry's default batch (512) had raised "max_export_batch_size must be
    less than or equal to max_queue_size": the batch is capped at the queue. `none`, the standard word
    for no compression, had raised InvalidCompressionValueException."""
    env = {**ENDPOINT, "OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_EXPORTER_OTLP_COMPRESSION": "none"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # (the exporter reads the process's environment)
    tracing = build_tracing(ServerSettings(tracing=True, tracing_exporter="otlp"))
    assert tracing is not None
    try:
        [processor] = tracing.provider._active_span_processor._span_processors  # (the SDK's own)
        assert isinstance(processor, CountedBatchProcessor)
        assert processor._max_queue_size == 100
    finally:
        tracing.shutdown(BOUND_S)
    assert read_tracing_env("otlp", {"OTEL_BSP_MAX_QUEUE_SIZE": "100"}).batching.max_export_batch_size == 100


def test_build_tracing_refuses_what_the_cli_refuses() -> None:
    with pytest.raises(BadOtelVariable, match="OTEL_BSP_MAX_QUEUE_SIZE='0'"):
        build_tracing(ServerSettings(tracing=True), environ={"OTEL_BSP_MAX_QUEUE_SIZE": "0"})


@pytest.mark.timeout(30)  # a FIFO opened plainly would block for good
def test_a_fifo_as_the_otlp_certificate_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check had opened the file, which for a FIFO waits for a writer: start-up hung."""
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    for name, value in {**ENDPOINT, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(fifo)}.items():
        monkeypatch.setenv(name, value)
    flags = ["--tracing", "--tracing-exporter", "otlp", "--model-repository", str(tmp_path)]
    assert main(["serve", *flags]) == 2
    assert "not a regular file (a FIFO)" in capsys.readouterr().err
