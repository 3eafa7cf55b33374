"""One inference request from decode to encode, in two halves: what can be answered at once
(a response-cache hit, or the batcher's synchronous fast path) and what must wait for a batch.

Splitting it lets a stream answer fast-path requests inline, without a task per request, and
lets both RPCs share one request path (`RequestPath`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from batcher.admission import Admission
from batcher.claim import Claim
from batcher.errors import ComputedThenCancelled, DeadlineExceeded, NotAccepting, TooManyRows
from batcher.types import QueueTrace, Tensors
from protos import grpc_service_pb2 as pb
from server.errors import ChangedByReload, FrameDropped, InvalidRequest, ShuttingDown
from server.models.ensemble import EnsembleNotes
from server.models.manager import ModelManager, OnDemand
from server.models.response_cache import request_key
from server.models.sequence_routing import Routed
from server.models.versions import ModelVersion
from server.observability.logs import SERVED_VERSION
from server.observability.metrics_reasons import record_failed
from server.protocol import codec
from server.protocol.answer_checks import AnswerCheck, check_answer
from server.protocol.classification import classify, requested_classes
from server.protocol.controls import Controls, parse_controls, try_parse_controls
from server.protocol.declared import check_declared_by_any
from server.protocol.request_checks import check_request
from server.protocol.sequence_route import sequence_outputs
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_tensors import ShmTensors

# Answers with more BYTES elements than this are encoded in a thread (about 35 ms of the loop's
# time here, where a whole answer of 1,000,000 strings had held it 0.55 s).
ENCODE_OFF_LOOP_STRINGS = 65_536


@dataclass(slots=True)
class InferJob:
    served: ModelVersion
    request: pb.ModelInferRequest
    inputs: Tensors
    names: Sequence[str]
    admission: Admission  # deadline, priority and rows, settled once against the model's policy
    controls: Controls  # the request's own terms, kept to settle them again on another version
    call_deadline: float | None  # the gRPC call's (absolute time.monotonic()), before any `timeout`
    cache_key: bytes = b""
    lookup_ns: int = 0
    looked_up: bool = False  # the cache was consulted: the miss is counted when outputs arrive
    queue_trace: QueueTrace | None = None  # set by tracing (server/observability) for a traced request
    ensemble_notes: EnsembleNotes | None = None  # set by tracing for a traced ensemble request
    claim: Claim | None = None  # latest-frame-wins: a newer frame may withdraw it while queued
    shm: ShmTensors | None = None  # tensors in shared memory: the job holds their regions mapped
    classes: Mapping[str, int] | None = None  # classification extension: output -> class count
    outputs: Tensors | None = None  # as computed (before classification): a shadow compares them
    owner: object | None = None  # the stream that sent it (its sequence's owner when it starts one)
    answer_limit: int | None = None  # the server's max_message_bytes (None: no limit)
    framed: bool = False  # its answer is a stream's frame (a ModelStreamInferResponse wraps it)

    @classmethod
    def prepare(
        cls,
        served: ModelVersion,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        regions: SharedMemoryRegistry | None = None,
        controls: Controls | None = None,
    ) -> InferJob:
        """Decode, validate and settle the request's terms (raises InvalidRequest naming the field,
        or TooManyRows). `controls`: its parameters as parsed for routing (None: parsed here)."""
        signature = served.signature
        # Copies, not views, where the inputs outlive the request (cache keys, samples).
        private = served.response_cache is not None or served.sampler is not None
        sequences = None if served.ensemble is not None else served.sequences is not None
        checked = check_request(signature, request, regions, controls, sequences=sequences, private=private)
        controls = checked.controls
        deadline = None if remaining_s is None else time.monotonic() + remaining_s
        admission = served.batcher.admission(
            checked.rows, deadline=deadline, priority=controls.priority, timeout_s=controls.timeout_s
        )
        classes = requested_classes(request, signature)
        inputs, names, shm = checked.inputs, checked.names, checked.shm
        return cls(served, request, inputs, names, admission, controls, deadline, shm=shm, classes=classes)

    def retarget(self, served: ModelVersion) -> None:
        """Point the job at `served`: the version now serving its model, after a reload retired the
        one it was prepared for before it reached that version's batcher. Checked and settled again
        against the new version (its signature or policy may differ); the call's deadline stands.
        A request that no longer fits is ChangedByReload (UNAVAILABLE): it was valid when admitted,
        and had been answered INVALID_ARGUMENT, which clients do not retry."""
        signature = served.signature
        c = self.controls
        try:
            rows = signature.check_inputs(self.inputs)
            names = signature.check_outputs(codec.requested_outputs(self.request))
            admission = served.batcher.admission(
                rows, deadline=self.call_deadline, priority=c.priority, timeout_s=c.timeout_s
            )
        except (InvalidRequest, TooManyRows) as exc:
            raise ChangedByReload(
                f"model '{served.name}' was reloaded with different inputs or outputs before the request"
                f" was computed, and the request no longer fits them: {exc}"
            ) from None
        self.names, self.admission = names, admission
        self.served = served
        self.looked_up = False  # the old version's cache: nothing to count or fill
        self.limit_answer(self.answer_limit, self.framed)  # its names and version: checked anew

    def limit_answer(self, limit: int | None, framed: bool) -> None:
        """Check its outputs before the batcher counts them as its answer (answer_checks.py)."""
        self.answer_limit, self.framed = limit, framed
        if limit is None and (self.shm is None or not self.shm.outputs):
            return
        served = self.served
        header = pb.ModelInferResponse(
            model_name=served.name, model_version=served.version_str, id=self.request.id
        )
        # The check holds no reference to the job: a cycle through it had kept a request's
        # shared-memory regions mapped, after they were unregistered, until a garbage collection.
        # Classified outputs are sized as classified (they had not been sized before counting).
        classes = None
        if self.classes:
            labels = served.labels
            if served.ensemble is not None:  # as _prepare: an output's labels from its step
                labels = {**served.ensemble.output_labels(), **labels}
            batched = served.config.max_batch_size > 0
            classes = functools.partial(classify, classes=dict(self.classes), labels=labels, batched=batched)
        frame = self.request if framed else None
        check = AnswerCheck(self.names, self.shm, limit, frame, header, classes)
        self.admission = self.admission._replace(accept=check)

    def answer_now(self) -> pb.ModelInferResponse | None:
        """The response if it needs no waiting (a cache hit, or an idle model's cheap run)."""
        if self.controls.sequence is not None:
            return None  # it waits for its sequence's turn (batcher/sequence.py)
        served = self.served
        cache = served.response_cache
        if cache is not None:
            start = time.perf_counter_ns()
            self.cache_key = request_key(served.name, served.version_str, self.inputs)
            hit = cache.lookup(self.cache_key)
            if hit is not None:  # answered from the cache without the batcher, as Triton does
                response = self._encode(hit)
                served.stats.record_cache_hit(time.perf_counter_ns() - start)
                return response
            self.lookup_ns = time.perf_counter_ns() - start
            self.looked_up = True
        if served.ensemble is not None:
            return None  # its steps, through their models' batchers (answer_later)
        outputs = served.batcher.run_now(self.inputs, self.admission)
        return None if outputs is None else self._computed(outputs)

    async def answer_later(self) -> pb.ModelInferResponse:
        """The response through the batcher's queue (after `answer_now` returned None)."""
        self._own_shared_inputs()
        if self.served.ensemble is not None:  # its steps, through their models' batchers
            c = self.controls
            notes = self.ensemble_notes or EnsembleNotes(self.served.version_str)  # its failure lines' fields
            outputs = await self.served.ensemble.run_counted(
                self.served.stats, self.inputs, self.admission, c.priority, c.sequence, self.request, notes
            )
            return await self._computed_later(outputs)
        if self.controls.sequence is not None:
            outputs = await sequence_outputs(
                self.served, self.controls.sequence, self.inputs, self.admission, self.queue_trace, self.owner
            )
            return await self._computed_later(outputs)
        outputs = await self.served.batcher.enqueue(self.inputs, self.admission, self.queue_trace, self.claim)
        return await self._computed_later(outputs)

    def _own_shared_inputs(self) -> None:
        """Copy inputs that view a client's shared memory before the request waits: a client that
        truncated its object while the request was queued or computing (an ensemble's steps, a
        second later) made the server's next read of the mapping a SIGBUS, and the process died with
        every request in it. The size is checked once more just before the copy."""
        shm = self.shm
        if shm is None or not shm.inputs:
            return
        for part in shm.inputs.values():
            part.region.check_size()
        inputs = dict(self.inputs)
        for name in shm.inputs:
            array = inputs.get(name)
            if array is not None and array.dtype != object:  # BYTES were copied when decoded
                owned = np.array(array, copy=True)
                owned.flags.writeable = False
                inputs[name] = owned
        self.inputs = inputs

    def _computed(self, outputs: Tensors) -> pb.ModelInferResponse:
        self._store(outputs)
        return self._wire(self._prepare(outputs))

    async def _computed_later(self, outputs: Tensors) -> pb.ModelInferResponse:
        """As `_computed`; an answer with many strings is encoded off the event loop: 3,000,000
        BYTES elements took 2-3 s to encode, and every other call on the server waited."""
        self._store(outputs)
        prepared = self._prepare(outputs)
        if sum(a.size for a in prepared.values() if a.dtype == object) > ENCODE_OFF_LOOP_STRINGS:
            return await asyncio.to_thread(self._wire, prepared)
        return self._wire(prepared)

    def _store(self, outputs: Tensors) -> None:
        served = self.served
        if self.looked_up:
            start = time.perf_counter_ns()
            if served.response_cache is not None:  # None once this version was retired meanwhile
                served.response_cache.insert(self.cache_key, served.name, outputs)
            served.stats.cache_miss.add(self.lookup_ns + time.perf_counter_ns() - start)

    def _encode(self, outputs: Tensors) -> pb.ModelInferResponse:
        return self._wire(self._prepare(outputs))

    def _prepare(self, outputs: Tensors) -> Tensors:
        """Sample the outputs and apply the classification extension: what goes on the wire."""
        served = self.served
        self.outputs = outputs
        if served.sampler is not None:  # computed or cached: queue references, or count a drop
            served.sampler.offer(self.inputs, outputs)
        if self.classes:  # the classification extension (server/protocol/classification.py)
            labels = served.labels
            if served.ensemble is not None:  # Triton: an output's labels come from the step making it
                labels = {**served.ensemble.output_labels(), **labels}
            outputs = classify(outputs, self.classes, labels, served.config.max_batch_size > 0)
        return outputs

    def _wire(self, outputs: Tensors) -> pb.ModelInferResponse:
        served = self.served
        answer = codec.encode_response(
            served.name, served.version_str, self.request.id, outputs, self.names, self.shm
        )
        check_answer(answer, self.answer_limit, self.request if self.framed else None)
        return answer


class RequestPath:
    """Route, prepare and answer requests for both RPCs, recording per-version statistics."""

    def __init__(
        self,
        models: ModelManager,
        is_stopping: Callable[[], bool],
        job_type: type[InferJob] = InferJob,
        regions: SharedMemoryRegistry | None = None,
        max_answer_bytes: int | None = None,
    ) -> None:
        self._models = models
        self._is_stopping = is_stopping
        self._job_type = job_type  # tracing's subclass notes when each stage ended
        self.regions = regions  # registered shared memory (None: requests naming a region are refused)
        self.max_answer_bytes = max_answer_bytes  # the server's max_message_bytes (None: no limit)
        self.framed = False  # its answers are a stream's frames (`frames`)

    def frames(self) -> RequestPath:
        """This path for a stream, whose answers are frames wrapping them (a few bytes more)."""
        framed = copy.copy(self)
        framed.framed = True
        return framed

    def needs_load(self, request: pb.ModelInferRequest) -> bool:
        """Whether the request's (lazy) model must load first (server/models/lazy.py)."""
        demand = self._models.on_demand
        return demand is not None and demand.needs_load(request.model_name)

    def model_of(self, request: pb.ModelInferRequest) -> ModelVersion | None:
        """The version the request names now, before a traffic policy routes it (None: none; `start`
        says why). A stream resolves each message once, here, and hands the version on."""
        try:
            return self._models.resolve(request.model_name, request.model_version)
        except Exception:
            return None

    def start(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        named: ModelVersion | None = None,
        owner: object | None = None,
    ) -> tuple[InferJob, pb.ModelInferResponse | None]:
        """Route and prepare a request, and answer it if that needs no waiting (see InferJob).
        `named`: `model_of(request)` in the same turn of the event loop, used as is when the request
        names a version (a traffic policy routes only requests naming none)."""
        if self._is_stopping():
            raise ShuttingDown("server is shutting down")
        # Parsed once for routing and the batcher; a refused parameter is named by `prepare`.
        controls = try_parse_controls(request.parameters)
        routed = Routed(request, None if controls is None else controls.sequence)
        if named is not None and request.model_version:
            served = named
            self._models.note_named(served, routed)
        else:
            served = self._models.resolve(request.model_name, request.model_version, routed)
        job: InferJob | None = None
        try:
            job = self._job_type.prepare(served, request, remaining_s, self.regions, controls)
            job.owner = owner
            job.limit_answer(self.max_answer_bytes, self.framed)
            response = job.answer_now()
        except Exception as exc:
            if job is not None and job.shm is not None:
                job.shm.release()  # as `finish` does
            self._models.sequence_routing.refused(served, routed)  # a start's note goes with it
            record_failed(served.stats, time.perf_counter_ns() - start_ns, exc)
            note_served(exc, served.version_str)
            raise
        if response is not None:
            elapsed_ns = time.perf_counter_ns() - start_ns
            served.stats.record_success(elapsed_ns)
            self._answered(job, elapsed_ns)
        return job, response

    def _answered(self, job: InferJob, elapsed_ns: int) -> None:
        """Offer an answered request to its model's shadow candidate (server/models/rollout.py);
        never one in shared memory (the region may change once answered) or of a sequence."""
        if job.shm is None and job.controls.sequence is None:
            request = job.request
            self._models.rollout.answered(job.served, request, bool(request.model_version), job.inputs,
                                          job.admission.rows, job.outputs, elapsed_ns)  # fmt: skip

    async def finish(self, job: InferJob, start_ns: int) -> pb.ModelInferResponse:
        """The answer of a request `start` could not answer at once."""
        try:
            return await self._finish(job, start_ns)
        finally:
            # Answered or failed, it needs its shared-memory regions no more. A failure's
            # traceback, in a reference cycle (grpc keeps an aborted call's AbortError; Python
            # 3.10 links every frame to its caller's), had kept them mapped after unregister
            # until a garbage collection.
            if job.shm is not None:
                job.shm.release()

    async def _finish(self, job: InferJob, start_ns: int) -> pb.ModelInferResponse:
        stats = job.served.stats
        try:
            try:
                response = await job.answer_later()
            except NotAccepting:
                # A stream prepares a request, then a task of its own submits it: a reload may retire
                # the version in between. Unless the server itself is stopping, submit it to the
                # version serving now. Resolving, retargeting and the batcher's admission check run
                # without a suspension point, so one retry cannot race another reload.
                if self._is_stopping():
                    raise
                routed = Routed(job.request, job.controls.sequence)
                served = self._models.resolve(job.request.model_name, job.request.model_version, routed)
                if served is job.served:
                    raise
                # Counted by the version serving now, also when it refuses the request: the retired
                # version's statistics go with it (ModelStatistics showed neither).
                stats = served.stats
                job.retarget(served)
                response = await job.answer_later()
        except ComputedThenCancelled:
            # Computed (counted in queue, compute and inference_count) before its caller went: a
            # success, as one whose answer was made but not yet written when its stream ended.
            stats.record_success(time.perf_counter_ns() - start_ns)
            raise
        except asyncio.CancelledError:
            if past_deadline(job.call_deadline):  # gRPC cut it at its deadline: a miss, not a cancel
                record_failed(stats, time.perf_counter_ns() - start_ns, CALL_DEADLINE_PASSED)
            else:
                stats.record_canceled()
            raise
        except FrameDropped:
            stats.dropped += 1  # neither a success nor a failure: answered "dropped"
            raise
        except Exception as exc:
            record_failed(stats, time.perf_counter_ns() - start_ns, exc)
            note_served(exc, job.served.version_str)
            raise
        elapsed_ns = time.perf_counter_ns() - start_ns
        stats.record_success(elapsed_ns)
        self._answered(job, elapsed_ns)
        return response

    async def infer(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        claim: Claim | None = None,
        owner: object | None = None,
    ) -> pb.ModelInferResponse:
        """Serve one request end to end; raises on any failure. `claim`: see InferJob.claim."""
        start_ns = time.perf_counter_ns()
        demand = self._models.on_demand
        if demand is not None and demand.needs_load(request.model_name):
            remaining_s = await await_load(demand, request, remaining_s, self.regions)
        job, response = self.start(request, remaining_s, start_ns, owner=owner)
        if response is not None:
            if claim is not None:
                claim.admitted()  # a latest-frame-wins frame answered at once: it supersedes the older
            return response
        job.claim = claim  # the batcher withdraws the frame it supersedes once it is queued
        return await self.finish(job, start_ns)


# What a request cut by its gRPC deadline during compute counts as (the caller got
# DEADLINE_EXCEEDED from gRPC; counted CANCELED before, and its span said CANCELLED).
CALL_DEADLINE_PASSED = DeadlineExceeded("deadline exceeded while the request was being computed")


# A client's gRPC deadline fires on its own clock, from when it sent the call: it cancels the call
# (RST_STREAM) before the server's copy of the deadline, counted from when the call arrived, by the
# call's transit time. A cancellation this close to the deadline is taken as the deadline (with 1 ms
# of slack, a loaded machine's transit made it a cancel, and the test counting it failed once).
DEADLINE_SLACK_S = 0.05


def past_deadline(deadline: float | None) -> bool:
    """Whether a call's gRPC deadline (absolute time.monotonic()) has passed, or is close enough
    that the caller's own timer, not the caller, cut it (DEADLINE_SLACK_S)."""
    return deadline is not None and time.monotonic() >= deadline - DEADLINE_SLACK_S


def note_served(exc: BaseException, version: str) -> None:
    """Note on a failure which version served the request (its log line names it)."""
    with contextlib.suppress(AttributeError):  # an exception type without a __dict__
        setattr(exc, SERVED_VERSION, version)


async def await_load(
    demand: OnDemand,
    request: pb.ModelInferRequest,
    remaining_s: float | None,
    regions: SharedMemoryRegistry | None = None,
) -> float | None:
    """Wait for a lazy model's load within the request's deadline: its gRPC deadline, or its
    `timeout` parameter when that is sooner (it had been counted only from after the load: a 1 s
    timeout was answered OK after a 5 s load). The wait ends DEADLINE_SLACK_S before the gRPC
    deadline, so the answer naming the load reaches the caller before its own timer fires (it had
    seen only gRPC's "Deadline Exceeded"). A request the load's signatures would refuse is refused
    first, as the loaded model would (declared.py). What is left of the deadline after the wait."""
    began = time.monotonic()
    controls = try_parse_controls(request.parameters)
    signatures = await demand.signatures(request.model_name)
    if signatures:  # an invalid request is refused without loading the model (and evicting)
        check_declared_by_any(signatures, request, regions, controls)
    if controls is None:  # a model not judged: its refused parameter is named without loading it
        controls = parse_controls(request.parameters)
    bound = min((b for b in (remaining_s, controls.timeout_s) if b is not None), default=None)
    slack = DEADLINE_SLACK_S if bound is not None and bound == remaining_s else 0.0
    left = None if bound is None else bound - (time.monotonic() - began)
    await demand.ready(request.model_name, None if left is None else max(0.0, left - slack))
    return None if bound is None else bound - (time.monotonic() - began)
