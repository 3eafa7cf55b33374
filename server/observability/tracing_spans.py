"""The spans of one inference request, made after the fact from timestamps the request path took.

A traced request gets a request span (`ModelInfer`, or `ModelStreamInfer` for each request of a
stream) when it arrives, as a child of the call's `traceparent`, and at its answer the children,
with their real start and end times:

    decode   route, decode, validate and settle the request's terms
    queue    waiting in the batcher's queue (queued requests only), until its batch's run began
    compute  the batch run (queued: linked to the `batch` span; a run that failed, or that the
             caller's deadline cut, from its start to the answer), the inline run / cache lookup,
             or an ensemble's steps
    step     an ensemble's request: one per step it started (model, version, outcome)
    encode   the response

One `batch` span per batch run holding a traced request: its rows, requests and gather/run/scatter
times, linked to every traced request in it (a child of the first of them). The batcher records
the run on the request's QueueTrace (batcher/types.py) and never imports OpenTelemetry.

A request the sampler drops costs its request span's sampling decision and nothing more; one
Triton's trace settings keep out (trace_settings.py: level OFF, trace_rate, trace_count) not even that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    get_current_span,
)
from opentelemetry.trace import set_span_in_context as in_context

from batcher.types import BatchRun, QueueTrace, Tensors
from protos import grpc_service_pb2 as pb
from server.errors import status_for
from server.models.ensemble_notes import EnsembleNotes, StepRun
from server.models.manager import ModelManager
from server.models.versions import ModelVersion
from server.observability.logs import MAX_FIELD_CHARS, REQUEST_TRACE
from server.observability.metrics_reasons import CALL_DEADLINE_PASSED, past_deadline
from server.observability.trace_settings import TraceSettings
from server.observability.tracing import Metadata, Tracing
from server.protocol.infer_job import InferJob
from server.protocol.load_order import Turn
from server.protocol.request_path import RequestPath
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.stream_order import Before

RPC_SERVICE = "inference.GRPCInferenceService"
MAX_ATTRIBUTE_CHARS = 256  # request ids and error messages come from callers: bounded


@dataclass(slots=True)
class TracedJob(InferJob):
    """An InferJob that notes when its stages ended (perf_counter_ns), for its spans."""

    span: Span | None = None  # the request span, while it is recording
    clock_ns: int = 0  # time.time_ns() - time.perf_counter_ns() when the request arrived
    start_ns: int = 0  # perf_counter_ns: it arrived
    prepared_ns: int = 0
    tried_ns: int = 0  # answer_now returned: queued from here when it returned None
    encode_ns: int = 0

    def answer_now(self) -> pb.ModelInferResponse | None:
        self.prepared_ns = time.perf_counter_ns()
        try:
            return InferJob.answer_now(self)
        finally:
            self.tried_ns = time.perf_counter_ns()

    def _prepare(self, outputs: Tensors) -> Tensors:  # the encode stage begins (InferJob._wire next)
        self.encode_ns = time.perf_counter_ns()
        return InferJob._prepare(self, outputs)


class TracedPath(RequestPath):
    """RequestPath with a span per request; `bind` gives one for a call's trace context."""

    def __init__(
        self,
        models: ModelManager,
        is_stopping: Callable[[], bool],
        tracing: Tracing,
        rpc: str = "ModelInfer",
        parent: Context | None = None,
        regions: SharedMemoryRegistry | None = None,
        max_answer_bytes: int | None = None,
        gate: TraceSettings | None = None,  # Triton's trace settings: which requests may get a span
    ) -> None:
        super().__init__(models, is_stopping, TracedJob, regions, max_answer_bytes)
        self._tracing = tracing
        self._tracer: Tracer = tracing.tracer
        self._rpc = rpc
        self._parent = parent
        self._gate = gate if gate is not None else TraceSettings(tracer=True, sample_ratio=1.0)
        # A valid caller's context is followed (ParentBased), not counted by trace_rate/trace_count.
        self._has_parent = parent is not None and get_current_span(parent).get_span_context().is_valid

    def bind(self, metadata: Metadata | None, rpc: str) -> TracedPath:
        """This path for one call: its RPC's name, and the parent its metadata carry."""
        return TracedPath(
            self._models, self._is_stopping, self._tracing, rpc, self._tracing.parent(metadata), self.regions,
            self.max_answer_bytes, self._gate,
        )  # fmt: skip

    def start(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        named: ModelVersion | None = None,
        owner: object | None = None,
        point: float | None = None,
        turn_pending: bool = False,
    ) -> tuple[InferJob, pb.ModelInferResponse | None]:
        if not self._gate.admit(request.model_name, self._has_parent):  # trace settings: no span
            REQUEST_TRACE.set(None)
            return super().start(request, remaining_s, start_ns, named, owner, point, turn_pending)
        clock_ns = time.time_ns() - time.perf_counter_ns()
        span = self._tracer.start_span(
            self._rpc, self._parent, SpanKind.SERVER, start_time=clock_ns + start_ns
        )
        # This task's failure lines name this request's trace (None: not sampled, no stale ids).
        ids = span.get_span_context()
        named_ids = (request.id[:MAX_FIELD_CHARS], ids.trace_id, ids.span_id)
        REQUEST_TRACE.set(named_ids if span.is_recording() else None)
        try:
            job, response = super().start(request, remaining_s, start_ns, named, owner, point, turn_pending)
        except BaseException as exc:
            if span.is_recording():
                self._end(span, request, None, clock_ns, exc)
            raise
        if not span.is_recording():
            return job, response
        traced = cast(TracedJob, job)  # this path's jobs are TracedJobs (job_type)
        traced.span, traced.clock_ns, traced.start_ns = span, clock_ns, start_ns
        if response is None and job.made is not None:
            pass  # answered at once (a cache hit, an inline run), encoded later: no queue, no steps
        elif response is None and job.served.ensemble is not None:  # its steps are noted there
            traced.ensemble_notes = EnsembleNotes(job.served.version_str, steps=[])
        elif response is None:
            traced.queue_trace = QueueTrace(context=span)  # the batcher notes its run there
        elif not turn_pending:  # else `finish` ends it once its turn has come
            self._end(span, request, traced, clock_ns, None)
        return job, response

    async def finish(
        self,
        job: InferJob,
        start_ns: int,
        turn: Turn | None = None,
        before: Before | None = None,
        made: pb.ModelInferResponse | None = None,
    ) -> pb.ModelInferResponse:
        traced = cast(TracedJob, job)
        span = traced.span
        if span is None:  # not sampled
            return await super().finish(job, start_ns, turn, before, made)
        try:
            response = await super().finish(job, start_ns, turn, before, made)
        except asyncio.CancelledError as exc:
            cut = CALL_DEADLINE_PASSED if past_deadline(job.call_deadline) else exc
            self._end(span, job.request, traced, traced.clock_ns, cut)
            raise
        except BaseException as exc:
            self._end(span, job.request, traced, traced.clock_ns, exc)
            raise
        self._end(span, job.request, traced, traced.clock_ns, None)
        return response

    def _end(
        self,
        span: Span,
        request: pb.ModelInferRequest,
        job: TracedJob | None,  # None: it failed before it was prepared and tried
        clock_ns: int,
        exc: BaseException | None,
    ) -> None:
        end_ns = time.perf_counter_ns()
        if job is not None:
            _children(self._tracer, in_context(span), job, clock_ns, end_ns)
        span.set_attributes(_request_attributes(self._rpc, request, job))
        _set_outcome(span, exc)
        span.end(end_time=clock_ns + end_ns)


def _set_outcome(span: Span, exc: BaseException | None) -> None:
    """`rpc.grpc.status_code`, and status ERROR with `CODE: message` for a failure."""
    if exc is None:
        span.set_attribute("rpc.grpc.status_code", 0)
        return
    code, message, _ = status_for(exc) if isinstance(exc, Exception) else (None, "cancelled", True)
    span.set_attribute("rpc.grpc.status_code", 1 if code is None else code.value[0])
    name = "CANCELLED" if code is None else code.name
    span.set_status(Status(StatusCode.ERROR, f"{name}: {message}"[:MAX_ATTRIBUTE_CHARS]))


def _request_attributes(
    rpc: str, request: pb.ModelInferRequest, job: TracedJob | None
) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "rpc.system": "grpc",
        "rpc.service": RPC_SERVICE,
        "rpc.method": rpc,
        "sluiceway.model": (job.served.name if job else request.model_name)[:MAX_ATTRIBUTE_CHARS],
        "sluiceway.model_version": (job.served.version_str if job else request.model_version)[
            :MAX_ATTRIBUTE_CHARS
        ],
    }
    if request.id:
        attributes["sluiceway.request_id"] = request.id[:MAX_ATTRIBUTE_CHARS]
    if job is not None:
        attributes["sluiceway.rows"] = job.admission.rows
    return attributes


def _children(tracer: Tracer, parent: Context, job: TracedJob, clock_ns: int, end_ns: int) -> None:
    """decode, queue, compute and encode under the request span, from the job's timestamps."""

    def child(
        name: str,
        start: int,
        end: int,
        attributes: dict[str, str | int | bool] | None = None,
        links: Sequence[Link] = (),
    ) -> None:
        span = tracer.start_span(
            name, parent, start_time=clock_ns + start, attributes=attributes, links=links
        )
        span.end(end_time=clock_ns + max(start, end))

    child("decode", job.start_ns, job.prepared_ns or end_ns)
    queued = job.queue_trace
    computed_until = job.encode_ns or end_ns
    notes = job.ensemble_notes
    if notes is not None:  # an ensemble's request: no queue of its own; its steps, each a span
        child("compute", job.tried_ns, computed_until, {"sluiceway.path": "ensemble"})
        for step in notes.steps or ():
            _step_span(tracer, parent, step, clock_ns, end_ns)
    elif queued is None:  # answered at once: from the cache, or run inline (the batcher's fast path)
        if job.encode_ns:
            hit = bool(job.cache_key) and not job.looked_up
            # Up to its encoding; or up to answer_now's return where its encoding came later, in a
            # thread (InferJob.made): the time between is neither.
            until = min(job.encode_ns, job.tried_ns or job.encode_ns)
            child("compute", job.prepared_ns, until, {"sluiceway.path": "cache" if hit else "inline"})
    else:
        run = queued.run
        # Its wait ends when its batch's run began, whatever the run's outcome: a run that failed or
        # that the caller's deadline cut (no BatchRun) had been shown inside the `queue` span.
        child("queue", job.tried_ns, run.gather_ns if run is not None else queued.taken_ns or computed_until)
        if run is not None:
            batch = _batch_span(tracer, run, clock_ns)
            link = Link(batch, {"sluiceway.batch.rows": run.rows, "sluiceway.batch.requests": run.requests})
            child("compute", run.run_ns, run.scatter_ns, {"sluiceway.path": "batch"}, [link])
        elif queued.taken_ns:
            child("compute", queued.taken_ns, computed_until, {"sluiceway.path": "batch"})
    if job.encode_ns:
        child("encode", job.encode_ns, end_ns)


def _step_span(tracer: Tracer, parent: Context, step: StepRun, clock_ns: int, end_ns: int) -> None:
    """One ensemble step's span: its model, the version that served it, and its outcome."""
    span = tracer.start_span(
        "step",
        parent,
        start_time=clock_ns + step.start_ns,
        attributes={
            "sluiceway.ensemble": step.ensemble[:MAX_ATTRIBUTE_CHARS],
            "sluiceway.step": step.index,
            "sluiceway.model": step.model[:MAX_ATTRIBUTE_CHARS],
            "sluiceway.model_version": step.version,
        },
    )
    _set_outcome(span, step.error)
    span.end(end_time=clock_ns + max(step.start_ns, step.end_ns or end_ns))


def _batch_span(tracer: Tracer, run: BatchRun, clock_ns: int) -> SpanContext:
    """The run's `batch` span, made by the first of its traced requests to be answered."""
    if isinstance(run.note, SpanContext):
        return run.note
    spans = [cast(Span, t.context) for t in run.traced]
    span = tracer.start_span(
        "batch",
        in_context(spans[0]),
        start_time=clock_ns + run.gather_ns,
        links=[Link(s.get_span_context()) for s in spans],
        attributes={
            "sluiceway.batch.rows": run.rows,
            "sluiceway.batch.requests": run.requests,
            "sluiceway.batch.traced_requests": len(spans),
            "sluiceway.batch.gather_us": (run.run_ns - run.gather_ns) // 1000,
            "sluiceway.batch.run_us": (run.scatter_ns - run.run_ns) // 1000,
            "sluiceway.batch.scatter_us": (run.end_ns - run.scatter_ns) // 1000,
        },
    )
    span.end(end_time=clock_ns + run.end_ns)
    run.note = span.get_span_context()
    return run.note
