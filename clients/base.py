"""What the sync and asyncio clients share: settings, endpoints, deadlines and request building.

The two clients differ only in how they wait (blocking calls and `time.sleep` versus awaits);
every decision (which endpoint, how long, whether to retry) lives here and in endpoints.py.
"""

from __future__ import annotations

import math
import numbers
import random
import time
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from clients.endpoints import (
    RECHECK_BACKOFF,
    Attempts,
    Backoff,
    ChannelOptions,
    Clock,
    EndpointPool,
    RetryPolicy,
)
from clients.errors import SluicewayError
from clients.security import AUTHORIZATION, TlsOptions, bearer_metadata

DEFAULT_TIMEOUT_S = 10.0
# A stream is one long call; its deadline bounds a forgotten session. Frames get their own timeout.
DEFAULT_STREAM_TIMEOUT_S = 3600.0
DEFAULT_RETRY = RetryPolicy()
DEFAULT_CHANNEL_OPTIONS = ChannelOptions()

HEALTH_CHECK = health_pb2.HealthCheckRequest(service="")  # "": the whole server


class ClientClosed(RuntimeError):
    """A call made on a client after its close()."""


def closed_during_call() -> SluicewayError:
    """A call that close() cut short: CANCELLED, the same from both clients (the sync one had
    retried it as a server's CANCELLED and then raised a bare RuntimeError)."""
    return SluicewayError("the client was closed during the call", grpc.StatusCode.CANCELLED)


def is_serving(response: health_pb2.HealthCheckResponse) -> bool:
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def probe_failed_is_healthy(exc: grpc.RpcError) -> bool:
    """A server without the health service cannot say; that it answered at all is enough."""
    code: Any = exc.code() if callable(getattr(exc, "code", None)) else None
    return bool(code == grpc.StatusCode.UNIMPLEMENTED)


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def check_metadata(metadata: Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """Metadata gRPC will send, checked once here: a capital letter in a key or a non-ASCII value
    failed every call as INTERNAL ("Invalid metadata", as if the server had failed), and a
    `-bin` key with a str value raised a bare TypeError."""
    for key, value in metadata:
        if not key or not set(key) <= _KEY_CHARS or key.startswith("grpc-"):
            raise ValueError(
                f"metadata key {key!r}: lower-case letters, digits, '-', '_' and '.' only (not 'grpc-')"
            )
        if key.endswith("-bin"):
            if not isinstance(value, bytes):
                raise ValueError(f"metadata {key!r}: a '-bin' key takes bytes, got {type(value).__name__}")
        elif not isinstance(value, str) or not all(" " <= c <= "~" for c in value):
            raise ValueError(
                f"metadata {key!r}: the value must be printable ASCII text (or use a '-bin' key)"
            )
    return tuple(metadata)


# The longest timeout a call, stream or frame takes (about 31.7 years). grpc's deadline overflowed
# past ~9.2e9 s (failing DEADLINE_EXCEEDED at once), and the request's `timeout` parameter, int64
# microseconds, past ~9.2e12 s (protobuf's bare "Value out of range").
MAX_TIMEOUT_S = 1e9


def check_timeout(value: float, name: str) -> float:
    """Deadlines are finite and positive: a call without one can hang forever on a dead peer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # True had been 1 s
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    if value > MAX_TIMEOUT_S:
        raise ValueError(f"{name} must be at most {MAX_TIMEOUT_S:g} s (MAX_TIMEOUT_S), got {value!r}")
    return float(value)


def check_endpoint(address: object, name: str) -> str:
    """An endpoint is a non-empty "host:port" string: "" had been taken, and every call failed UNKNOWN."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"{name} must be a 'host:port' address, got {address!r}")
    return address


class ClientBase:
    """Settings and shared logic of `Client` and `AsyncClient`.

    endpoints: "host:port" or a list of them (the primaries); fallback: used only while every
    primary is down. default_timeout_s: deadline of calls that pass no `timeout_s` (never
    infinite); stream_timeout_s: deadline of a whole streaming session. retry: when failed calls
    are retried (`NO_RETRY` for never); recheck: backoff between health checks of a down endpoint.
    channel_options: message sizes and keepalive. tls: `TlsOptions` (TLS, mutual TLS, server name;
    plaintext when None), or credentials: any grpc.ChannelCredentials instead. token: sent as
    `authorization: Bearer <token>` with every call, streams and health checks included.
    metadata: sent with every call. clock/rng: injectable for tests.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        fallback: str | None = None,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_timeout_s: float = DEFAULT_STREAM_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        channel_options: ChannelOptions = DEFAULT_CHANNEL_OPTIONS,
        recheck: Backoff = RECHECK_BACKOFF,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        tls: TlsOptions | None = None,
        token: str | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        primaries = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        for address in primaries:
            check_endpoint(address, "endpoints")
        if fallback is not None:
            check_endpoint(fallback, "fallback")
        self.default_timeout_s = check_timeout(default_timeout_s, "default_timeout_s")
        self.stream_timeout_s = check_timeout(stream_timeout_s, "stream_timeout_s")
        self.retry = retry
        self.channel_options = channel_options
        if tls is not None and credentials is not None:
            raise ValueError("pass tls or credentials, not both")
        if token is not None and any(key.lower() == AUTHORIZATION for key, _ in metadata):
            raise ValueError("pass token or an authorization entry in metadata, not both")
        self.tls = tls
        self._credentials = tls.credentials() if tls is not None else credentials
        self._metadata = (*check_metadata(metadata), *bearer_metadata(token))
        self._clock = clock
        self._rng = rng or random.Random()
        self.pool = EndpointPool(primaries, fallback, recheck=recheck, clock=clock, rng=self._rng)
        self._init_transport()

    def _init_transport(self) -> None:
        """Set up the (empty) channel table: channels open on first use."""

    def endpoint_for(self, endpoint: str | None, what: str) -> str:
        """The one server a repository change goes to: `endpoint`, or this client's only one. A
        load or unload changes one server's models: it is neither load-balanced nor retried
        elsewhere (a refusal on one endpoint was retried on the next, which then did it)."""
        addresses = self.pool.addresses
        if endpoint is None:
            if len(addresses) == 1:
                return addresses[0]
            raise ValueError(f"{what} changes one server's models: name it, endpoint= one of {addresses}")
        if endpoint not in addresses:
            raise ValueError(f"{what}: endpoint {endpoint!r} is not one of this client's, {addresses}")
        return endpoint

    def endpoint_health(self) -> dict[str, bool]:
        """address -> whether the client currently considers it healthy (its cached view)."""
        return self.pool.health()

    def _timeout(self, timeout_s: float | None, name: str = "timeout_s") -> float:
        return self.default_timeout_s if timeout_s is None else check_timeout(timeout_s, name)

    def _attempts(self, timeout_s: float | None) -> Attempts:
        return Attempts(self.pool, self.retry, self._timeout(timeout_s), clock=self._clock, rng=self._rng)

    def _grpc_options(self) -> list[tuple[str, int | str]]:
        tls_args = self.tls.channel_args() if self.tls is not None else []
        return [*self.channel_options.as_grpc(), *tls_args]


def version_str(version: str | int | None) -> str:
    """The protocol's version string: "" lets the server choose."""
    return "" if version is None else str(version)
