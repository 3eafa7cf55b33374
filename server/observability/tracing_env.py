"""The OTEL_* variables the server's tracing reads, checked before anything of it is built.

OpenTelemetry's SDK reads most of them itself, and what it made of a value it could not use
varied: a traceback that ended start-up (OTEL_BSP_MAX_QUEUE_SIZE=0, OTEL_EXPORTER_OTLP_TIMEOUT=abc,
OTEL_EXPORTER_OTLP_COMPRESSION=none), an ERROR with a traceback and serving on (a missing
OTEL_EXPORTER_OTLP_CERTIFICATE), or a warning and its default. Here each is a bad setting, as a
SLUICEWAY_* one: `sluiceway serve` exits 2 with one line naming the variable, its value and the
problem. Not a warning and a default: the OTLP exporter reads OTEL_EXPORTER_OTLP_TRACES_TIMEOUT
(and the certificate files) itself whatever it is given, so no default can stand in for those.

A variable is checked when what tracing builds reads it (the OTLP ones only for the OTLP exporter),
whether or not a more specific one (OTEL_EXPORTER_OTLP_TRACES_*) overrides it. Empty is unset,
except where OpenTelemetry cannot read an empty value (the OTLP timeouts). Standard library only:
the CLI checks these before its heavy imports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from protos.regular_files import MAX_PEM_FILE_BYTES, RefusedFile, read_regular_file

EXPORTERS = ("otlp", "console", "none")
DEFAULT_MAX_QUEUE_SIZE = 2048  # OpenTelemetry's defaults for OTEL_BSP_*
DEFAULT_SCHEDULE_DELAY_MS = 5000
DEFAULT_MAX_EXPORT_BATCH_SIZE = 512
DEFAULT_EXPORT_TIMEOUT_MS = 30000
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_OTLP = ("OTEL_EXPORTER_OTLP_TRACES_", "OTEL_EXPORTER_OTLP_")  # the specific one first: it wins
_FILES = ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE")
# OpenTelemetry's span limits (its SpanLimits reads them): a whole number, or "unset" for none.
_SPAN_LIMITS = (
    "OTEL_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_EVENT_COUNT_LIMIT", "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
)  # fmt: skip
_WHOLE = re.compile(r"[0-9]+")
_METADATA_NAME = re.compile(r"[0-9a-z_.-]+")  # what gRPC accepts (it refused every export else)
_STATUS_CODES = frozenset(
    (
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    )
)  # fmt: skip  (grpc.StatusCode's names: not imported for this)


class BadOtelVariable(ValueError):
    """An OTEL_* value tracing cannot use; the message names it, its value and the problem."""

    def __init__(self, name: str, value: str | None, problem: str) -> None:
        shown = f"={value!r}" if value is not None else " (its value not shown: it may hold credentials)"
        super().__init__(f"invalid environment variable {name}{shown} with tracing on: {problem}")


@dataclass(frozen=True)
class Batching:
    """The batch span processor's sizes and times (OTEL_BSP_*), passed to it explicitly."""

    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    schedule_delay_ms: int = DEFAULT_SCHEDULE_DELAY_MS
    max_export_batch_size: int = DEFAULT_MAX_EXPORT_BATCH_SIZE
    export_timeout_ms: int = DEFAULT_EXPORT_TIMEOUT_MS


@dataclass(frozen=True)
class TracingEnv:
    """What the OTEL_* variables say: the exporter ("otlp", "console" or "none"), the batching,
    and the OTLP compression ("gzip" or "none")."""

    exporter: str
    batching: Batching
    compression: str = "none"


def disabled(env: Mapping[str, str]) -> bool:
    """OTEL_SDK_DISABLED: true turns tracing off; false or empty leave it on; anything else is bad."""
    value = env.get("OTEL_SDK_DISABLED", "")
    word = value.strip().lower()
    if word not in ("", "true", "false"):
        raise BadOtelVariable("OTEL_SDK_DISABLED", value, "not true or false")
    return word == "true"


def read_tracing_env(setting: str, env: Mapping[str, str]) -> TracingEnv:
    """The OTEL_* values tracing uses with `tracing_exporter` = `setting`; BadOtelVariable for the
    first one it cannot use."""
    for name in _SPAN_LIMITS:
        value = env.get(name, "")
        if value.strip() and value.strip().lower() != "unset" and not _WHOLE.fullmatch(value.strip()):
            raise BadOtelVariable(name, value, "not a whole number (or 'unset' for no limit)")
    _resource_attributes(env)
    _names_in_group(env, "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "opentelemetry_resource_detector", "*")
    exporter = choose_exporter(setting, env)
    batching = _batching(env) if exporter != "none" else Batching()
    compression = _otlp(env) if exporter == "otlp" else "none"
    return TracingEnv(exporter, batching, compression)


def tracing_env_problem(setting: str, env: Mapping[str, str]) -> str | None:
    """The first OTEL_* value tracing cannot use, as one line ("sluiceway: ..."), else None."""
    try:
        if not disabled(env):
            read_tracing_env(setting, env)
    except BadOtelVariable as exc:
        return f"sluiceway: {exc}"
    return None


def choose_exporter(setting: str, env: Mapping[str, str]) -> str:
    """The exporter ("otlp", "console" or "none"): the setting, unless "auto": then the first of
    OTEL_TRACES_EXPORTER when set, else "otlp" when an OTLP endpoint variable is set, else "console"."""
    if setting != "auto":
        return setting
    value = env.get("OTEL_TRACES_EXPORTER", "")
    named = [word.strip().lower() for word in value.split(",") if word.strip()]
    for word in named:
        if word not in EXPORTERS:
            known = ", ".join(EXPORTERS)
            problem = f"{word!r} is not an exporter sluiceway has ({known}; or set --tracing-exporter)"
            raise BadOtelVariable("OTEL_TRACES_EXPORTER", value, problem)
    if named:
        return named[0]
    return "otlp" if any(env.get(name) for name in _ENDPOINTS) else "console"


def _whole(env: Mapping[str, str], name: str, default: int, least: int) -> int:
    value = env.get(name, "")
    if not value.strip():
        return default
    if not _WHOLE.fullmatch(value.strip()) or int(value) < least:
        raise BadOtelVariable(name, value, f"not a whole number of at least {least}")
    return int(value)


def _batching(env: Mapping[str, str]) -> Batching:
    queue = _whole(env, "OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE, 1)
    # Unset, a batch is at most the queue (OpenTelemetry's 512 in a smaller queue had raised).
    batch = _whole(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", min(DEFAULT_MAX_EXPORT_BATCH_SIZE, queue), 1)
    if batch > queue:
        name = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
        problem = f"larger than the queue it is taken from (OTEL_BSP_MAX_QUEUE_SIZE, {queue})"
        raise BadOtelVariable(name, env[name], problem)
    return Batching(
        max_queue_size=queue,
        schedule_delay_ms=_whole(env, "OTEL_BSP_SCHEDULE_DELAY", DEFAULT_SCHEDULE_DELAY_MS, 1),
        max_export_batch_size=batch,
        export_timeout_ms=_whole(env, "OTEL_BSP_EXPORT_TIMEOUT", DEFAULT_EXPORT_TIMEOUT_MS, 0),
    )


def _otlp(env: Mapping[str, str]) -> str:
    """Checks what the OTLP exporter reads; its compression ("gzip" or "none")."""
    compression = "none"
    for prefix in reversed(_OTLP):  # the generic ones first, so the specific one's value wins
        value = env.get(prefix + "PROTOCOL", "")
        if value.strip() and value.strip().lower() != "grpc":
            problem = "only OTLP over gRPC is built in (grpc, to the collector's gRPC port)"
            raise BadOtelVariable(prefix + "PROTOCOL", value, problem)
        timeout = env.get(prefix + "TIMEOUT")
        if timeout is not None and not _positive_seconds(timeout):  # (empty too: the exporter raised)
            raise BadOtelVariable(prefix + "TIMEOUT", timeout, "not a number of seconds above 0")
        value = env.get(prefix + "COMPRESSION", "")
        if value.strip().lower() not in ("", "gzip", "none"):
            raise BadOtelVariable(prefix + "COMPRESSION", value, "not gzip or none")
        compression = value.strip().lower() or compression
        value = env.get(prefix + "INSECURE", "")
        if value.strip().lower() not in ("", "true", "false"):
            raise BadOtelVariable(prefix + "INSECURE", value, "not true or false")
        for file in _FILES:
            _readable_file(env, prefix + file)
        _headers(env, prefix + "HEADERS")
        provider = prefix.replace("OTEL_EXPORTER_OTLP_", "OTEL_PYTHON_EXPORTER_OTLP_GRPC_")
        _names_in_group(env, provider + "CREDENTIAL_PROVIDER", "opentelemetry_otlp_credential_provider")
    value = env.get("OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES", "")
    for code in (word.strip().upper() for word in value.split(",") if word.strip()):
        if code not in _STATUS_CODES:
            problem = f"{code!r} is not a gRPC status code (UNAVAILABLE, DEADLINE_EXCEEDED, ...)"
            raise BadOtelVariable("OTEL_PYTHON_EXPORTER_OTLP_GRPC_RETRYABLE_ERROR_CODES", value, problem)
    return compression


def _positive_seconds(value: str) -> bool:
    try:
        seconds = float(value)  # as the exporter reads it (seconds, though the spec says ms)
    except ValueError:
        return False
    return math.isfinite(seconds) and seconds > 0


def _readable_file(env: Mapping[str, str], name: str) -> None:
    """A PEM file the exporter reads: a regular one of at most MAX_PEM_FILE_BYTES (a plain open
    of a FIFO here had blocked start-up, as the server's own TLS files had)."""
    path = env.get(name, "")
    if not path:
        return
    try:
        read_regular_file(path, MAX_PEM_FILE_BYTES)
    except RefusedFile as err:
        raise BadOtelVariable(name, path, str(err)) from None
    except OSError as err:
        raise BadOtelVariable(name, path, f"cannot read it: {err.strerror or err}") from None


def _headers(env: Mapping[str, str], name: str) -> None:
    """name=value pairs, comma-separated, %-encoded as need be; values are not shown (credentials).
    OpenTelemetry dropped a pair it could not read with a warning; gRPC refused every export that
    carried a name or value it does not accept."""
    entries = [entry for entry in re.split(r"[ \t]*,[ \t]*", env.get(name, "")) if entry.strip()]
    for index, entry in enumerate(entries, 1):
        key, equals, value = entry.partition("=")
        key = unquote(key).strip().lower()
        if not equals or not key:
            raise BadOtelVariable(name, None, f"entry {index} of {len(entries)} is not name=value")
        if not _METADATA_NAME.fullmatch(key):
            problem = f"header name {key!r} is not a gRPC one (letters, digits, - _ .)"
            raise BadOtelVariable(name, None, problem)
        decoded = unquote(value).strip()
        if any(c in value for c in '"\\;') or not (value + decoded).isascii() or not decoded.isprintable():
            problem = f'the value of header {key!r} is not printable ASCII (write " \\ ; %-encoded)'
            raise BadOtelVariable(name, None, problem)


def _resource_attributes(env: Mapping[str, str]) -> None:
    value = env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not value:
        return
    for item in value.split(","):
        key, equals, _ = item.partition("=")
        if not equals or not key.strip():
            raise BadOtelVariable("OTEL_RESOURCE_ATTRIBUTES", value, f"item {item!r} is not key=value")


def _names_in_group(env: Mapping[str, str], name: str, group: str, *also: str) -> None:
    """Each name in the variable (comma-separated) is a registered entry point of `group`."""
    value = env.get(name, "")
    names = [word.strip() for word in value.split(",") if word.strip()]
    if not names:
        return
    from importlib.metadata import entry_points  # here: only when the variable is set

    known = set(entry_points(group=group).names) | set(also)
    for word in names:
        if word not in known:
            listed = ", ".join(sorted(known)) or "none"
            problem = f"{word!r} is not installed (entry points {group}: {listed})"
            raise BadOtelVariable(name, value, problem)
