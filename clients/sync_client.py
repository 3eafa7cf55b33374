"""The blocking client: numpy in, numpy out, deadlines, retries and failover across endpoints."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2_grpc

from clients import tensors
from clients.base import (
    HEALTH_CHECK,
    ClientBase,
    ClientClosed,
    closed_during_call,
    is_serving,
    probe_failed_is_healthy,
    version_str,
)
from clients.errors import from_rpc_error
from clients.repository import load_request
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc

# The generated stub module has no annotations; results are cast where they are returned.
INFERENCE_STUB: Any = pb_grpc.GRPCInferenceServiceStub


@dataclass(frozen=True, slots=True)
class _Stubs:
    channel: grpc.Channel
    inference: Any
    health: Any


class Client(ClientBase):
    """A thread-safe blocking client for one or more sluiceway (KServe v2 gRPC) endpoints.

    `Client("127.0.0.1:8001")` or `Client(["a:8001", "b:8001"], fallback="cloud:443")`. Calls go
    round-robin to healthy endpoints; UNAVAILABLE, RESOURCE_EXHAUSTED and a server-side CANCELLED
    (as during its shutdown) are retried with jittered exponential backoff (`retry=RetryPolicy(...)`,
    `NO_RETRY` to turn off) within the call's deadline, never past it; request errors never are.
    The fallback is used only while every primary is down. Every call has a deadline:
    `timeout_s`, else `default_timeout_s` (10 s). One channel per endpoint, opened on first use.
    Errors are `clients.errors` exceptions. Use as a context manager, or call `close()`.
    """

    def _init_transport(self) -> None:
        self._stubs_by_address: dict[str, _Stubs] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._closing = threading.Event()  # set by close(): wakes calls waiting to retry

    # -- inference ------------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, tensors.Array],
        *,
        version: str | int | None = None,
        timeout_s: float | None = None,
        priority: int | None = None,
        request_id: str | None = None,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, tensors.Array]:
        """Run `model` on `inputs` (name -> array); returns output name -> array (read-only views).

        `timeout_s` is both the gRPC deadline and the request's `timeout` parameter, so the server
        drops the request from its queue once nobody waits for it. `priority`: 1 is highest.
        """
        request = tensors.build_request(
            model, inputs, version=version, request_id=request_id, priority=priority, outputs=outputs
        )
        response = self._call(
            "ModelInfer", request, timeout_s, prepare=lambda left: tensors.set_timeout(request, left)
        )
        return tensors.decode_response(cast(pb.ModelInferResponse, response))

    # -- health, metadata, repository -----------------------------------------------------------

    def server_live(self, *, timeout_s: float | None = None) -> bool:
        return bool(self._call("ServerLive", pb.ServerLiveRequest(), timeout_s).live)

    def server_ready(self, *, timeout_s: float | None = None) -> bool:
        return bool(self._call("ServerReady", pb.ServerReadyRequest(), timeout_s).ready)

    def model_ready(
        self, model: str, *, version: str | int | None = None, timeout_s: float | None = None
    ) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version_str(version))
        return bool(self._call("ModelReady", request, timeout_s).ready)

    def server_metadata(self, *, timeout_s: float | None = None) -> pb.ServerMetadataResponse:
        return cast(
            pb.ServerMetadataResponse, self._call("ServerMetadata", pb.ServerMetadataRequest(), timeout_s)
        )

    def model_metadata(
        self, model: str, *, version: str | int | None = None, timeout_s: float | None = None
    ) -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=model, version=version_str(version))
        return cast(pb.ModelMetadataResponse, self._call("ModelMetadata", request, timeout_s))

    def model_config(
        self, model: str, *, version: str | int | None = None, timeout_s: float | None = None
    ) -> mc.ModelConfig:
        request = pb.ModelConfigRequest(name=model, version=version_str(version))
        return cast(pb.ModelConfigResponse, self._call("ModelConfig", request, timeout_s)).config

    def model_statistics(
        self, model: str = "", *, version: str | int | None = None, timeout_s: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Statistics of one model (every version unless `version`), or of every model for ""."""
        request = pb.ModelStatisticsRequest(name=model, version=version_str(version))
        return cast(pb.ModelStatisticsResponse, self._call("ModelStatistics", request, timeout_s))

    def repository_index(
        self, *, ready: bool = False, timeout_s: float | None = None
    ) -> pb.RepositoryIndexResponse:
        request = pb.RepositoryIndexRequest(ready=ready)
        return cast(pb.RepositoryIndexResponse, self._call("RepositoryIndex", request, timeout_s))

    def load_model(
        self,
        model: str,
        *,
        config: str | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout_s: float | None = None,
        endpoint: str | None = None,
    ) -> None:
        """Load (or reload) `model`; `config` and `files` as in clients/repository.py. Sent once, to
        `endpoint` (needed when this client has several): see ClientBase.endpoint_for."""
        address = self.endpoint_for(endpoint, "load_model")
        self._call_once(address, "RepositoryModelLoad", load_request(model, config, files), timeout_s)

    def unload_model(
        self, model: str, *, timeout_s: float | None = None, endpoint: str | None = None
    ) -> None:
        """Unload `model`; sent once, to `endpoint` (needed when this client has several)."""
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        self._call_once(
            self.endpoint_for(endpoint, "unload_model"), "RepositoryModelUnload", request, timeout_s
        )

    def _call_once(self, address: str, rpc: str, request: Any, timeout_s: float | None) -> Any:
        """One attempt at `address`, no retry, no effect on its health (it answered or it did not)."""
        stubs = self._stubs(address)
        try:
            return getattr(stubs.inference, rpc)(
                request, timeout=self._timeout(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            if self._closed:
                raise closed_during_call() from exc
            raise from_rpc_error(exc) from exc

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stubs, self._stubs_by_address = list(self._stubs_by_address.values()), {}
        self._closing.set()
        for item in stubs:
            item.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the one call loop ----------------------------------------------------------------------

    def _call(
        self, rpc: str, request: Any, timeout_s: float | None, prepare: Callable[[float], None] | None = None
    ) -> Any:
        """Send `request` to `rpc` on the endpoints, retrying as the policy says; the response.
        close() from another thread fails it CANCELLED (`closed_during_call`), not retried."""
        attempts = self._attempts(timeout_s)
        started = False  # a client closed before the call refuses it (ClientClosed), not during
        while True:
            step = attempts.next()
            try:
                stubs = self._stubs(step.address)
            except ClientClosed as exc:
                if started:
                    raise closed_during_call() from exc
                raise
            started = True
            if step.probe:
                attempts.probed(step, self._healthy(stubs, attempts.probe_timeout(step)))
                continue
            if prepare is not None:
                prepare(step.timeout_s)
            try:
                response = getattr(stubs.inference, rpc)(
                    request, timeout=step.timeout_s, metadata=self._metadata
                )
            except grpc.RpcError as exc:
                if self._closed:  # its channel was closed under it: CANCELLED, not the server's
                    raise closed_during_call() from exc
                # attempts.failed raises the mapped error when not retrying; close() ends the wait.
                if self._closing.wait(attempts.failed(step, exc)):
                    raise closed_during_call() from exc
                continue
            attempts.succeeded(step)
            return response

    def _healthy(self, stubs: _Stubs, timeout_s: float) -> bool:
        try:
            return is_serving(stubs.health.Check(HEALTH_CHECK, timeout=timeout_s, metadata=self._metadata))
        except grpc.RpcError as exc:
            return probe_failed_is_healthy(exc)

    def _stubs(self, address: str) -> _Stubs:
        with self._lock:
            if self._closed:
                raise ClientClosed("the client is closed")
            stubs = self._stubs_by_address.get(address)
            if stubs is None:
                options = self._grpc_options()
                if self._credentials is None:
                    channel = grpc.insecure_channel(address, options=options)
                else:
                    channel = grpc.secure_channel(address, self._credentials, options=options)
                stubs = _Stubs(channel, INFERENCE_STUB(channel), health_pb2_grpc.HealthStub(channel))
                self._stubs_by_address[address] = stubs
            return stubs
