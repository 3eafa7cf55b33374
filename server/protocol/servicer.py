"""The GRPCInferenceService handlers: decode, validate, route, submit, encode, answer once.

Every handler turns exceptions into exactly one gRPC status through `errors.status_for` (the
`answers_errors` decorator); a stream (server/protocol/stream.py) answers each of its requests
exactly once with a result or an error message, and keeps going.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server import triton_text
from server.backends.cuda_shm import CudaSharedMemory, NoCudaSharedMemory
from server.errors import (
    InvalidRequest,
    ModelControlDisabled,
    ModelNotFound,
    ModelNotReady,
    ShuttingDown,
    StreamIdle,
    StreamLimitReached,
    StreamStalled,
)
from server.models.control import NOT_ALLOWED, RepositoryControl
from server.models.load_request import check_unload_parameters
from server.models.manager import ModelManager
from server.models.versions import READY, ModelVersion, version_number
from server.observability.log_settings import LogSettings
from server.observability.metrics_reasons import DEADLINE_SLACK_S
from server.observability.trace_settings import TraceSettings
from server.observability.tracing import Tracing
from server.observability.tracing_spans import TracedPath
from server.protocol.answers import abort_as, abort_with, answers_errors, stray_cancel
from server.protocol.calls import CallTracker, QuietRefusals
from server.protocol.late_status import LateStatuses
from server.protocol.loop_pace import LoopPace
from server.protocol.request_path import RequestPath
from server.protocol.settings_service import SettingsRpcs
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_service import SharedMemoryRpcs
from server.protocol.statistics import to_proto
from server.protocol.stream import StreamSession
from server.protocol.stream_frames import frame_status, wants_grpc_error
from server.protocol.stream_unsent import UnsentLines
from server.protocol.unary_order import UnaryOrder

log = logging.getLogger(__name__)

SERVER_NAME = "sluiceway"
SERVER_VERSION = "0.1.0"
# Exactly what works, in Triton's names; tests/triton/test_extensions.py calls each one. Not listed:
# cuda_shared_memory (no GPU regions), parameters (no model reads custom request parameters).
EXTENSIONS = (
    "model_repository",
    "model_repository(unload_dependents)",  # Triton's name for RepositoryModelUnload's parameter
    "model_configuration",
    "statistics",
    "schedule_policy",
    "binary_tensor_data",
    "system_shared_memory",
    "classification",
    "sequence",
    "trace",  # TraceSetting (settings_service.py)
    "logging",  # LogSettings
)


class InferenceServicer(SharedMemoryRpcs, SettingsRpcs, pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        models: ModelManager,
        calls: CallTracker,
        is_stopping: Callable[[], bool],
        *,
        stream_max_in_flight: int,
        stream_idle_timeout_s: float,
        stream_max_held_bytes: int | None = None,
        refusals: QuietRefusals | None = None,
        max_message_bytes: int | None = None,
        tracing: Tracing | None = None,
        shm: SharedMemoryRegistry | None = None,
        cuda_shm: CudaSharedMemory | None = None,
        repository: RepositoryControl | None = None,
        pace: LoopPace | None = None,  # stream reads held while new calls wait (loop_pace.py)
        trace_settings: TraceSettings | None = None,
        log_settings: LogSettings | None = None,
    ) -> None:
        self._models = models
        self._repository = repository  # model control modes (server/models/control.py)
        self.calls = calls
        # The shared-memory RPCs (shm_service.py); tests that build a bare servicer get none allowed.
        self.shm = shm or SharedMemoryRegistry(allowed=False, max_regions=1, max_bytes=1)
        self.cuda_shm = cuda_shm or NoCudaSharedMemory("CUDA shared memory is not available")
        # Triton's TraceSetting and LogSettings (settings_service.py); bare servicers get defaults.
        self.trace_settings = trace_settings or TraceSettings(tracer=tracing is not None, sample_ratio=1.0)
        self.log_settings = log_settings or LogSettings("INFO", json_lines=False)
        self._stream_max_in_flight = stream_max_in_flight
        self._stream_idle_timeout_s = stream_idle_timeout_s
        self._stream_max_held_bytes = stream_max_held_bytes
        self._refusals = refusals or QuietRefusals(1)
        self._unary_order = UnaryOrder()  # preserve_ordering across unary calls
        self._late_statuses = LateStatuses()  # a stalled stream's end, sent after its handler's
        self._pace = pace
        self._unsent_lines = UnsentLines()  # lines for streams that ended with answers unwritten
        self._is_stopping = is_stopping
        # An answer over max_message_bytes fails alone, RESOURCE_EXHAUSTED (answer_checks.py).
        self._path = RequestPath(models, is_stopping, regions=self.shm, max_answer_bytes=max_message_bytes)
        # Tracing on: a span per request, through a path bound to each call's trace context.
        self._traced = None if tracing is None else TracedPath(
            models, is_stopping, tracing, regions=self.shm, max_answer_bytes=max_message_bytes,
            gate=self.trace_settings,
        )  # fmt: skip

    def close(self) -> None:
        """The server stops: stream-end lines the ration still holds are logged now."""
        self._unsent_lines.close()

    # -- health and metadata ----------------------------------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self._is_stopping() and self._models.all_ready)

    @answers_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        if request.version:
            version_number(request.version)  # a malformed version is an error, as in Triton
        try:
            self._models.resolve(request.name, request.version)
        except Exception:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self._is_stopping())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        # cuda_shared_memory only where CUDA regions can be registered (a GPU, onnxruntime-gpu).
        cuda = () if isinstance(self.cuda_shm, NoCudaSharedMemory) else ("cuda_shared_memory",)
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=[*EXTENSIONS, *cuda]
        )

    @answers_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        await self._load_if_lazy(request.name, context)
        served = self._models.resolve(request.name, request.version)
        signature = served.signature
        entry = self._models.entry(request.name)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[str(v) for v in entry.order],
            platform=served.config.platform or served.config.backend,  # Triton's: e.g. identity
            inputs=[
                tensor(name=s.name, datatype=s.datatype.wire, shape=signature.wire_shape(s))
                for s in signature.inputs.values()
            ],
            outputs=[
                tensor(name=s.name, datatype=s.datatype.wire, shape=signature.wire_shape(s))
                for s in signature.outputs.values()
            ],
        )

    @answers_errors
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        await self._load_if_lazy(request.name, context)
        served = self._models.resolve(request.name, request.version)
        return pb.ModelConfigResponse(config=served.config)

    async def _load_if_lazy(self, name: str, context: grpc.aio.ServicerContext) -> None:
        """A lazy model not loaded (never, or evicted) is loaded by its metadata or config as by a
        request: perf_analyzer and tritonclient ask for both before the first inference, and were
        refused UNAVAILABLE "not loaded (lazy)" for good. Bounded by the call's deadline, as a
        request's wait (ModelReady never loads: readiness probes must not)."""
        demand = self._models.on_demand
        if demand is None or not demand.needs_load(name):
            return
        remaining = context.time_remaining()
        await demand.ready(name, None if remaining is None else max(0.0, remaining - DEADLINE_SLACK_S))

    @answers_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            # Triton's answers (its core's ServerModelStatistics): a model with no version ready,
            # known or not, and a version not ready are INVALID_ARGUMENT in its words; an empty
            # list broke clients reading model_stats[0], and NOT_FOUND was not Triton's code.
            try:
                loaded = self._models.entry(request.name).versions
            except ModelNotFound:
                loaded = {}
            if not loaded:
                return self._refused_early_statistics(request)
            versions = (
                [self._statistics_version(request.name, request.version)]
                if request.version
                else [*loaded.values()]
            )
        else:
            versions = list(self._models.ready_versions())
        # Triton lists models by name and each model's versions oldest first (its ordered maps).
        versions.sort(key=lambda v: (v.name, v.version))
        demand = self._models.on_demand
        early = [] if request.name or demand is None else list(demand.refused_early.each())
        return pb.ModelStatisticsResponse(
            model_stats=[to_proto(v.name, v.version_str, v.stats) for v in versions]
            + [to_proto(name, str(number), stats) for name, number, stats in early]
        )

    def _refused_early_statistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        """A lazy model not loaded: the versions that counted requests refused before its load
        (server/models/early_refusals.py); without any, not available (as Triton), never loading it."""
        demand = self._models.on_demand
        early = {} if demand is None else demand.refused_early.of(request.name)
        shown = [(str(n), stats) for n, stats in sorted(early.items())]  # oldest first, as Triton
        shown = [(v, stats) for v, stats in shown if not request.version or v == request.version]
        if not shown:
            raise InvalidRequest(f"requested model '{request.name}' is not available")
        return pb.ModelStatisticsResponse(model_stats=[to_proto(request.name, v, s) for v, s in shown])

    def _statistics_version(self, name: str, version: str) -> ModelVersion:
        try:
            return self._models.resolve(name, version)
        except (ModelNotFound, ModelNotReady) as exc:  # Triton's words and code: a version not served
            raise InvalidRequest(f"{triton_text.version_not_available(name)}; {exc}") from None

    # -- repository ---------------------------------------------------------------------------

    @answers_errors  # ShuttingDown: a stop during the start's listing
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        await self._models.listed()  # not the half-read repository of a server starting
        index = pb.RepositoryIndexResponse.ModelIndex
        models: list[pb.RepositoryIndexResponse.ModelIndex] = []
        for entry in sorted(self._models.entries(), key=lambda e: e.name):
            if request.ready and entry.state != READY:
                continue
            if entry.versions:
                models.extend(
                    index(name=entry.name, version=str(v), state=entry.state, reason=entry.reason)
                    for v in entry.order
                )
            else:
                models.append(index(name=entry.name, state=entry.state, reason=entry.reason))
        return pb.RepositoryIndexResponse(models=models)

    @answers_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        if self._is_stopping():
            raise ShuttingDown("server is shutting down")
        check_repository_name(request.model_name, loading=True)
        # The mode may refuse; `config` and `file:` parameters are applied (models/load_request.py).
        await self._control().load_rpc(request.model_name, dict(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @answers_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        check_repository_name(request.model_name, loading=False)
        dependents = check_unload_parameters(dict(request.parameters))
        await self._control().unload_rpc(request.model_name, dependents=dependents)
        return pb.RepositoryModelUnloadResponse()

    def _control(self) -> RepositoryControl:
        if self._repository is None:  # a bare servicer (tests): no repository control
            raise ModelControlDisabled(NOT_ALLOWED)
        return self._repository

    # -- inference ----------------------------------------------------------------------------

    @answers_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        traced = self._traced
        path = self._path if traced is None else traced.bind(context.invocation_metadata(), "ModelInfer")
        remaining = context.time_remaining()
        # Ordered (preserve_ordering): once computed, it waits for `before` within its deadline.
        served = await self._unary_order.answer(
            self._path.model_of(request), lambda before: path.serve(request, remaining, before=before)
        )
        return served[1]

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        if self._is_stopping():
            await self._refusals.read_until_quiet(request_iterator)
            await abort_with(context, ShuttingDown("server is shutting down"))
        remaining = context.time_remaining()
        traced = self._traced
        handler = asyncio.current_task()  # grpc's task for this call: cancelling it ends the call

        def end_call() -> None:  # its client reads no answer: free its slot and what it holds
            if handler is not None:
                handler.cancel()  # frees what the call holds here, and sends nothing: so
            why = (
                f"stream ended by the server: its client read no answer and sent nothing for "
                f"{self._stream_idle_timeout_s:g} s while answers waited (stream_idle_timeout_s); "
                "open a new stream and read its answers"
            )
            self._late_statuses.send(context, StreamStalled(why))

        path = (
            self._path if traced is None else traced.bind(context.invocation_metadata(), "ModelStreamInfer")
        )
        session = StreamSession(
            request_iterator,
            path.frames(),
            max_in_flight=self._stream_max_in_flight,
            deadline=None if remaining is None else time.monotonic() + remaining,
            idle_timeout_s=self._stream_idle_timeout_s,
            on_close=self._models.release_sequences,
            max_held_bytes=self._stream_max_held_bytes,
            on_stalled=end_call,
            max_frame_bytes=path.max_answer_bytes,
            peer=context.peer(),
            unsent_lines=self._unsent_lines,
            pace=self._pace,
            ends_on_error=wants_grpc_error(context.invocation_metadata()),
        )
        failed: Exception | None = None  # a stray cancel's answer (answers.py `stray_cancel`)
        try:
            with self.calls.stream(context.peer(), session):
                answers = session.answers()
                try:
                    async for response in answers:
                        yield response
                finally:
                    await answers.aclose()
        except StreamLimitReached as exc:
            await self._refusals.read_until_quiet(request_iterator)
            await abort_with(context, exc)
        except asyncio.CancelledError as exc:
            if (failed := stray_cancel(exc)) is None:
                raise  # the call's own (its client went, or end_call above)
        if failed is not None:  # outside the except (abort_as holds none)
            await abort_with(context, failed)
        if session.error_frame is not None:  # triton_grpc_error: outside the except (abort_as holds none)
            await abort_as(context, frame_status(session.error_frame.error_message))
        if session.ended_by == "drain":  # every request read was answered; the rest were not read
            await abort_with(
                context,
                ShuttingDown(
                    f"server is shutting down: {session.answered} answers sent on this stream; a "
                    "request without an answer was not read: send it to another server"
                ),
            )
        if session.ended_by == "idle":
            await abort_with(
                context,
                StreamIdle(
                    f"stream idle for {self._stream_idle_timeout_s:g} s with nothing in flight "
                    "(stream_idle_timeout_s); open a new stream"
                ),
            )


# A model is a directory of the repository: longer names cannot exist (NAME_MAX).
MAX_MODEL_NAME_BYTES = 255


def check_repository_name(name: str, *, loading: bool) -> None:
    """Refuse a RepositoryModelLoad/Unload name that cannot be a model directory (INVALID_ARGUMENT),
    in Triton's words for a load; "...", "..m" pass and are then not found in the repository."""
    size = len(name.encode("utf-8", "surrogatepass"))
    trimmed = name.strip()
    if not trimmed:
        raise InvalidRequest(triton_text.EMPTY_MODEL_NAME)
    if size > MAX_MODEL_NAME_BYTES:
        raise InvalidRequest(f"model_name is {size} bytes; a model name is at most {MAX_MODEL_NAME_BYTES}")
    if trimmed in (".", "..") or any(c in name for c in "/\\\0"):
        if loading:
            raise InvalidRequest(f"{triton_text.path_traversal(name)} ('/', '\\', NUL, '.' or '..')")
        # Triton's unload does not name traversal; it only finds no such model.
        raise InvalidRequest(f"model_name '{name}' is not a model directory name")
