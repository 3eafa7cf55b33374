"""The asyncio client: the same calls as `Client`, awaited, plus streaming sessions."""

from __future__ import annotations

import asyncio
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
from clients.stream import DEFAULT_MAX_IN_FLIGHT, StreamSession
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc

# The generated stub module has no annotations; results are cast where they are returned.
INFERENCE_STUB: Any = pb_grpc.GRPCInferenceServiceStub


@dataclass(frozen=True, slots=True)
class _Stubs:
    channel: grpc.aio.Channel
    inference: Any
    health: Any


class AsyncClient(ClientBase):
    """An asyncio client for one or more endpoints; same settings and behaviour as `Client`.

    Channels open on first use, inside the running event loop (grpc.aio channels belong to one
    loop). Once that loop is closed (one `asyncio.run` ended), the next call opens them again in
    its own; a call from a second loop while the first is open is refused, naming the mistake.
    `async with AsyncClient(...) as client:` or `await client.close()`.
    """

    def _init_transport(self) -> None:
        self._stubs_by_address: dict[str, _Stubs] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the channels belong to
        self._closed = False

    # -- inference ------------------------------------------------------------------------------

    async def infer(
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
        """See `Client.infer`."""
        request = tensors.build_request(
            model, inputs, version=version, request_id=request_id, priority=priority, outputs=outputs
        )
        response = await self._call(
            "ModelInfer", request, timeout_s, prepare=lambda left: tensors.set_timeout(request, left)
        )
        return tensors.decode_response(cast(pb.ModelInferResponse, response))

    def stream(
        self,
        model: str,
        *,
        version: str | int | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        frame_timeout_s: float | None = None,
        timeout_s: float | None = None,
        priority: int | None = None,
        outputs: Sequence[str] | None = None,
        latest_frame_wins: bool | None = None,
    ) -> StreamSession:
        """A streaming session over one ModelStreamInfer call: `async with client.stream("mlp") as s:`.

        Each frame carries `frame_timeout_s` (default `default_timeout_s`) as its `timeout`
        parameter; the whole call's deadline is `timeout_s` (default `stream_timeout_s`). A stream
        is not retried: if its endpoint fails, every unanswered frame fails with that error.
        `latest_frame_wins`: each frame's parameter (default: the model's setting); a frame a newer
        one superseded comes back with `dropped` set (README "Protocol", latest-frame-wins).
        """
        return StreamSession(
            self._open_stream,
            model,
            version=version_str(version),
            max_in_flight=max_in_flight,
            frame_timeout_s=self._timeout(frame_timeout_s, "frame_timeout_s"),
            max_message_bytes=self.channel_options.max_message_bytes,
            priority=priority,
            outputs=outputs,
            timeout_s=self.stream_timeout_s if timeout_s is None else self._timeout(timeout_s, "timeout_s"),
            latest_frame_wins=latest_frame_wins,
        )

    # -- health, metadata, repository -----------------------------------------------------------

    async def server_live(self, *, timeout_s: float | None = None) -> bool:
        return bool((await self._call("ServerLive", pb.ServerLiveRequest(), timeout_s)).live)

    async def server_ready(self, *, timeout_s: float | None = None) -> bool:
        return bool((await self._call("ServerReady", pb.ServerReadyRequest(), timeout_s)).ready)

    async def model_ready(
        self, model: str, *, version: str | int | None = None, timeout_s: float | None = None
    ) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version_str(version))
        return bool((await self._call("ModelReady", request, timeout_s)).ready)

    async def server_metadata(self, *, timeout_s: float | None = None) -> pb.ServerMetadataResponse:
        response = await self._call("ServerMetadata", pb.ServerMetadataRequest(), timeout_s)
        return cast(pb.ServerMetadataResponse, response)

    async def model_metadata(
        self, model: str, *, version: str | int | None = None, timeout_s: float | None = None
    ) -> pb.ModelMetadataResponse:
        request = pb.ModelMetadataRequest(name=model, version=version_str(version))
        return cast(pb.ModelMetadataResponse, await self._call("ModelMetadata", request, timeout_s))

    async def model_config(
        self, model: str, *, version: str | int | None = None, timeout_s: float | None = None
    ) -> mc.ModelConfig:
        request = pb.ModelConfigRequest(name=model, version=version_str(version))
        return cast(pb.ModelConfigResponse, await self._call("ModelConfig", request, timeout_s)).config

    async def model_statistics(
        self, model: str = "", *, version: str | int | None = None, timeout_s: float | None = None
    ) -> pb.ModelStatisticsResponse:
        request = pb.ModelStatisticsRequest(name=model, version=version_str(version))
        return cast(pb.ModelStatisticsResponse, await self._call("ModelStatistics", request, timeout_s))

    async def repository_index(
        self, *, ready: bool = False, timeout_s: float | None = None
    ) -> pb.RepositoryIndexResponse:
        request = pb.RepositoryIndexRequest(ready=ready)
        return cast(pb.RepositoryIndexResponse, await self._call("RepositoryIndex", request, timeout_s))

    async def load_model(
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
        await self._call_once(address, "RepositoryModelLoad", load_request(model, config, files), timeout_s)

    async def unload_model(
        self, model: str, *, timeout_s: float | None = None, endpoint: str | None = None
    ) -> None:
        """Unload `model`; sent once, to `endpoint` (needed when this client has several)."""
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        address = self.endpoint_for(endpoint, "unload_model")
        await self._call_once(address, "RepositoryModelUnload", request, timeout_s)

    async def _call_once(self, address: str, rpc: str, request: Any, timeout_s: float | None) -> Any:
        """One attempt at `address`, no retry, no effect on its health (it answered or it did not)."""
        stubs = self._stubs(address)
        try:
            return await getattr(stubs.inference, rpc)(
                request, timeout=self._timeout(timeout_s), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            self._raise_if_closed()
            raise from_rpc_error(exc) from exc
        except asyncio.CancelledError:
            self._raise_if_closed()
            raise

    def _raise_if_closed(self) -> None:
        """A call cut by close() (grpc.aio cancels the calls of a closed channel) is this error,
        not a bare CancelledError: the task was not cancelled, and gather/TaskGroup would say so."""
        if self._closed:
            raise closed_during_call() from None

    # -- lifecycle ------------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        stubs, self._stubs_by_address = list(self._stubs_by_address.values()), {}
        if self._loop is not None and self._loop.is_closed():
            return  # their loop is gone, and they with it
        for item in stubs:
            await item.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- the one call loop (mirrors Client._call; decisions are in Attempts) -------------------------

    async def _call(
        self, rpc: str, request: Any, timeout_s: float | None, prepare: Callable[[float], None] | None = None
    ) -> Any:
        attempts = self._attempts(timeout_s)
        started = False  # a client closed before the call refuses it (ClientClosed), not during
        while True:
            step = attempts.next()
            try:
                stubs = self._stubs(step.address)
            except ClientClosed as exc:
                if started:  # closed while this call waited to retry
                    raise closed_during_call() from exc
                raise
            started = True
            if step.probe:
                attempts.probed(step, await self._healthy(stubs, attempts.probe_timeout(step)))
                continue
            if prepare is not None:
                prepare(step.timeout_s)
            call = getattr(stubs.inference, rpc)
            try:
                response = await call(request, timeout=step.timeout_s, metadata=self._metadata)
            except grpc.RpcError as exc:
                self._raise_if_closed()
                await asyncio.sleep(attempts.failed(step, exc))  # raises the mapped error when not retrying
                continue
            except asyncio.CancelledError:
                self._raise_if_closed()
                raise
            attempts.succeeded(step)
            return response

    async def _open_stream(self, timeout_s: float) -> tuple[Any, Callable[[grpc.StatusCode], None]]:
        """A ModelStreamInfer call on a healthy endpoint, and how to report that endpoint failing."""
        attempts = self._attempts(timeout_s)
        while True:
            step = attempts.next()
            stubs = self._stubs(step.address)
            if not step.probe:
                break
            attempts.probed(step, await self._healthy(stubs, attempts.probe_timeout(step)))
        call = stubs.inference.ModelStreamInfer(timeout=step.left_s, metadata=self._metadata)

        def report(code: grpc.StatusCode) -> None:
            if code == grpc.StatusCode.UNAVAILABLE:
                self.pool.mark_suspect(step.address)  # its health check decides

        return call, report

    async def _healthy(self, stubs: _Stubs, timeout_s: float) -> bool:
        try:
            response = await stubs.health.Check(HEALTH_CHECK, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            return probe_failed_is_healthy(exc)
        return is_serving(response)

    def _own_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Channels made in a loop that is closed now are dropped (they can no longer be used or
        closed): a second `asyncio.run` failed with "Event loop is closed" from inside grpc."""
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError(
                "this AsyncClient's channels belong to another event loop that is still open: "
                "use one AsyncClient per event loop"
            )
        self._stubs_by_address.clear()
        self._loop = loop

    def _stubs(self, address: str) -> _Stubs:
        if self._closed:
            raise ClientClosed("the client is closed")
        self._own_loop(asyncio.get_running_loop())
        stubs = self._stubs_by_address.get(address)
        if stubs is None:
            options = self._grpc_options()
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(address, options=options)
            else:
                channel = grpc.aio.secure_channel(address, self._credentials, options=options)
            stubs = _Stubs(channel, INFERENCE_STUB(channel), health_pb2_grpc.HealthStub(channel))
            self._stubs_by_address[address] = stubs
        return stubs
