"""One inference request from decode to encode, in two halves: what can be answered at once
(a response-cache hit, or the batcher's synchronous fast path) and what must wait for a batch.

Splitting it lets a stream answer fast-path requests inline, without a task per request, and
lets both RPCs share one request path (`RequestPath`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from batcher.admission import Admission
from batcher.types import QueueTrace, Tensors
from protos import grpc_service_pb2 as pb
from server.errors import ShuttingDown
from server.models.manager import ModelManager, ModelVersion
from server.models.response_cache import request_key
from server.observability.metrics_reasons import record_failed
from server.protocol import codec
from server.protocol.controls import parse_controls


@dataclass(slots=True)
class InferJob:
    served: ModelVersion
    request: pb.ModelInferRequest
    inputs: Tensors
    names: Sequence[str]
    admission: Admission  # deadline, priority and rows, settled once against the model's policy
    cache_key: bytes = b""
    lookup_ns: int = 0
    looked_up: bool = False  # the cache was consulted: the miss is counted when outputs arrive
    queue_trace: QueueTrace | None = None  # set by tracing (server/observability) for a traced request

    @classmethod
    def prepare(
        cls, served: ModelVersion, request: pb.ModelInferRequest, remaining_s: float | None
    ) -> InferJob:
        """Decode, validate and settle the request's terms (raises InvalidRequest naming the field,
        or TooManyRows)."""
        signature = served.signature
        inputs = codec.decode_inputs(request)
        rows = signature.check_inputs(inputs)
        names = signature.check_outputs(codec.requested_outputs(request))
        controls = parse_controls(request.parameters)
        deadline = None if remaining_s is None else time.monotonic() + remaining_s
        admission = served.batcher.admission(
            rows, deadline=deadline, priority=controls.priority, timeout_s=controls.timeout_s
        )
        return cls(served, request, inputs, names, admission)

    def answer_now(self) -> pb.ModelInferResponse | None:
        """The response if it needs no waiting (a cache hit, or an idle model's cheap run)."""
        served = self.served
        cache = served.response_cache
        if cache is not None:
            start = time.perf_counter_ns()
            self.cache_key = request_key(served.name, served.version_str, self.inputs)
            hit = cache.lookup(self.cache_key)
            if hit is not None:  # answered from the cache without the batcher, as Triton does
                response = self._encode(hit)
                served.stats.cache_hit.add(time.perf_counter_ns() - start)
                return response
            self.lookup_ns = time.perf_counter_ns() - start
            self.looked_up = True
        outputs = served.batcher.run_now(self.inputs, self.admission)
        return None if outputs is None else self._computed(outputs)

    async def answer_later(self) -> pb.ModelInferResponse:
        """The response through the batcher's queue (after `answer_now` returned None)."""
        outputs = await self.served.batcher.enqueue(self.inputs, self.admission, self.queue_trace)
        return self._computed(outputs)

    def _computed(self, outputs: Tensors) -> pb.ModelInferResponse:
        served = self.served
        if self.looked_up:
            start = time.perf_counter_ns()
            if served.response_cache is not None:  # None once this version was retired meanwhile
                served.response_cache.insert(self.cache_key, served.name, outputs)
            served.stats.cache_miss.add(self.lookup_ns + time.perf_counter_ns() - start)
        return self._encode(outputs)

    def _encode(self, outputs: Tensors) -> pb.ModelInferResponse:
        served = self.served
        if served.sampler is not None:  # computed or cached: queue references, or count a drop
            served.sampler.offer(self.inputs, outputs)
        return codec.encode_response(served.name, served.version_str, self.request.id, outputs, self.names)


class RequestPath:
    """Route, prepare and answer requests for both RPCs, recording per-version statistics."""

    def __init__(
        self, models: ModelManager, is_stopping: Callable[[], bool], job_type: type[InferJob] = InferJob
    ) -> None:
        self._models = models
        self._is_stopping = is_stopping
        self._job_type = job_type  # tracing's subclass notes when each stage ended

    def preserves_order(self, request: pb.ModelInferRequest) -> bool:
        """Whether the request's model answers a stream's requests in request order."""
        try:
            served = self._models.resolve(request.model_name, request.model_version)
        except Exception:
            return False  # it will fail in `start`, with the reason
        return served.config.dynamic_batching.preserve_ordering

    def start(
        self, request: pb.ModelInferRequest, remaining_s: float | None, start_ns: int
    ) -> tuple[InferJob, pb.ModelInferResponse | None]:
        """Route and prepare a request, and answer it if that needs no waiting (see InferJob)."""
        if self._is_stopping():
            raise ShuttingDown("server is shutting down")
        served = self._models.resolve(request.model_name, request.model_version)
        try:
            job = self._job_type.prepare(served, request, remaining_s)
            response = job.answer_now()
        except Exception as exc:
            record_failed(served.stats, time.perf_counter_ns() - start_ns, exc)
            raise
        if response is not None:
            served.stats.record_success(time.perf_counter_ns() - start_ns)
        return job, response

    async def finish(self, job: InferJob, start_ns: int) -> pb.ModelInferResponse:
        """The answer of a request `start` could not answer at once."""
        stats = job.served.stats
        try:
            response = await job.answer_later()
        except asyncio.CancelledError:
            stats.record_canceled()
            raise
        except Exception as exc:
            record_failed(stats, time.perf_counter_ns() - start_ns, exc)
            raise
        stats.record_success(time.perf_counter_ns() - start_ns)
        return response

    async def infer(self, request: pb.ModelInferRequest, remaining_s: float | None) -> pb.ModelInferResponse:
        """Serve one request end to end; raises on any failure."""
        start_ns = time.perf_counter_ns()
        job, response = self.start(request, remaining_s, start_ns)
        return response if response is not None else await self.finish(job, start_ns)
