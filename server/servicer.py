"""The GRPCInferenceService handlers: decode, validate, route, submit, encode, answer once.

Every handler turns exceptions into exactly one gRPC status through `errors.status_for`; a stream
answers each of its requests exactly once with a result or an error message, and keeps going.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.errors import ShuttingDown, status_for
from server.infer_job import InferJob
from server.models import READY, ModelManager
from server.statistics import to_proto

log = logging.getLogger(__name__)

SERVER_NAME = "sluiceway"
SERVER_VERSION = "0.1.0"
EXTENSIONS = (
    "model_repository",
    "model_configuration",
    "statistics",
    "schedule_policy",
    "binary_tensor_data",
)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, models: ModelManager, stream_max_in_flight: int, is_stopping: Callable[[], bool]
    ) -> None:
        self._models = models
        self._stream_max_in_flight = stream_max_in_flight
        self._is_stopping = is_stopping

    # -- health and metadata ----------------------------------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self._is_stopping() and self._models.all_ready)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            self._models.resolve(request.name, request.version)
        except Exception:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self._is_stopping())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            served = self._models.resolve(request.name, request.version)
        except Exception as exc:
            await _abort(context, exc)
        signature = served.signature
        entry = self._models.entry(request.name)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[str(v) for v in entry.order],
            platform=served.config.platform,
            inputs=[
                tensor(name=s.name, datatype=s.datatype.wire, shape=signature.wire_shape(s))
                for s in signature.inputs.values()
            ],
            outputs=[
                tensor(name=s.name, datatype=s.datatype.wire, shape=signature.wire_shape(s))
                for s in signature.outputs.values()
            ],
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        try:
            served = self._models.resolve(request.name, request.version)
        except Exception as exc:
            await _abort(context, exc)
        return pb.ModelConfigResponse(config=served.config)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        try:
            if request.name:
                versions = (
                    [self._models.resolve(request.name, request.version)]
                    if request.version
                    else [*self._models.entry(request.name).versions.values()]
                )
            else:
                versions = list(self._models.ready_versions())
        except Exception as exc:
            await _abort(context, exc)
        return pb.ModelStatisticsResponse(
            model_stats=[to_proto(v.name, v.version_str, v.stats) for v in versions]
        )

    # -- repository ---------------------------------------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        index = pb.RepositoryIndexResponse.ModelIndex
        models = []
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

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        try:
            if self._is_stopping():
                raise ShuttingDown("server is shutting down")
            await self._models.load(request.model_name)
        except Exception as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        try:
            await self._models.unload(request.model_name)
        except Exception as exc:
            await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    # -- inference ----------------------------------------------------------------------------

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            return await self._infer(request, context.time_remaining())
        except Exception as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # One reader task admits requests (at most stream_max_in_flight at once: beyond that the
        # server stops reading and HTTP/2 flow control pushes back); each request is answered by
        # its own task through one queue, so answers leave as they complete.
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self._stream_max_in_flight)
        pending: set[asyncio.Task[None]] = set()
        remaining = context.time_remaining()
        stream_deadline = None if remaining is None else time.monotonic() + remaining
        ordered_tail: list[asyncio.Event] = []  # last answer of a preserve_ordering model

        def left_s() -> float | None:
            return None if stream_deadline is None else stream_deadline - time.monotonic()

        async def answer(
            request: pb.ModelInferRequest,
            job: InferJob | None,
            start_ns: int,
            after: asyncio.Event | None,
            done: asyncio.Event | None,
        ) -> None:
            try:
                try:
                    if job is None:
                        result = await self._infer(request, left_s())
                    else:
                        result = await self._finish(job, start_ns)
                    response = pb.ModelStreamInferResponse(infer_response=result)
                except Exception as exc:
                    response = _stream_error(request, exc)
                if after is not None:
                    await after.wait()
                answers.put_nowait(response)
            finally:
                if done is not None:
                    done.set()
                slots.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    start_ns = time.perf_counter_ns()
                    after = done = None
                    if self._preserves_order(request):
                        after = ordered_tail[0] if ordered_tail else None
                        done = asyncio.Event()
                        ordered_tail[:] = [done]
                    job = None
                    if after is None or after.is_set():
                        # Nothing earlier to wait for: answer inline when that needs no waiting
                        # (a cache hit or the fast path), without a task for this request.
                        inline: pb.ModelStreamInferResponse | None = None
                        try:
                            job, now = self._start(request, left_s(), start_ns)
                            if now is not None:
                                inline = pb.ModelStreamInferResponse(infer_response=now)
                        except Exception as exc:
                            inline = _stream_error(request, exc)
                        if inline is not None:
                            answers.put_nowait(inline)
                            if done is not None:
                                done.set()
                            slots.release()
                            continue
                    task = asyncio.create_task(answer(request, job, start_ns, after, done))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.gather(*pending)
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
            await reader  # re-raise a reader failure (a broken request stream)
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    def _preserves_order(self, request: pb.ModelInferRequest) -> bool:
        try:
            served = self._models.resolve(request.model_name, request.model_version)
        except Exception:
            return False
        return served.config.dynamic_batching.preserve_ordering

    async def _infer(self, request: pb.ModelInferRequest, remaining_s: float | None) -> pb.ModelInferResponse:
        """Serve one request end to end; raises on any failure. Records per-version statistics."""
        start = time.perf_counter_ns()
        job, response = self._start(request, remaining_s, start)
        return response if response is not None else await self._finish(job, start)

    def _start(
        self, request: pb.ModelInferRequest, remaining_s: float | None, start_ns: int
    ) -> tuple[InferJob, pb.ModelInferResponse | None]:
        """Route and prepare a request, and answer it if that needs no waiting (see InferJob)."""
        if self._is_stopping():
            raise ShuttingDown("server is shutting down")
        served = self._models.resolve(request.model_name, request.model_version)
        try:
            job = InferJob.prepare(served, request, remaining_s)
            response = job.answer_now()
        except Exception:
            served.stats.record_failure(time.perf_counter_ns() - start_ns)
            raise
        if response is not None:
            served.stats.record_success(time.perf_counter_ns() - start_ns)
        return job, response

    async def _finish(self, job: InferJob, start_ns: int) -> pb.ModelInferResponse:
        stats = job.served.stats
        try:
            response = await job.answer_later()
        except Exception:
            stats.record_failure(time.perf_counter_ns() - start_ns)
            raise
        stats.record_success(time.perf_counter_ns() - start_ns)
        return response


def _stream_error(request: pb.ModelInferRequest, exc: Exception) -> pb.ModelStreamInferResponse:
    """A stream answers a failed request with an error message and keeps going."""
    code, message, expected = status_for(exc)
    if not expected:
        log.error("stream request failed", exc_info=exc)
    return pb.ModelStreamInferResponse(
        error_message=f"{code.name}: {message}",
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    code, message, expected = status_for(exc)
    if not expected:
        log.error("request failed", exc_info=exc)
    await context.abort(code, message)
