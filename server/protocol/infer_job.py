"""One inference request from decode to encode, in two halves: what can be answered at once
(a response-cache hit, or the batcher's synchronous fast path) and what must wait for a batch.

Splitting it lets a stream answer fast-path requests inline, without a task per request, and
lets both RPCs share one request path (`RequestPath`, server/protocol/request_path.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from batcher.admission import Admission
from batcher.claim import Claim
from batcher.errors import ComputedThenCancelled, NotAccepting, TooManyRows
from batcher.types import QueueTrace, Tensors
from protos import grpc_service_pb2 as pb
from server.errors import ChangedByReload, InvalidRequest
from server.models.ensemble_notes import EnsembleNotes
from server.models.response_cache import request_key
from server.models.versions import ModelVersion
from server.protocol import codec
from server.protocol.answer_checks import ENCODE_OFF_LOOP_STRINGS, AnswerCheck, check_answer
from server.protocol.classification import Classes, requested_classes
from server.protocol.controls import Controls
from server.protocol.request_checks import check_request
from server.protocol.sequence_route import sequence_outputs
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_tensors import ShmTensors


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
    cache_generation: int = 0  # its model's cache generation at the lookup (ResponseCache.insert)
    queue_trace: QueueTrace | None = None  # set by tracing (server/observability) for a traced request
    ensemble_notes: EnsembleNotes | None = None  # set by tracing for a traced ensemble request
    claim: Claim | None = None  # latest-frame-wins: a newer frame may withdraw it while queued
    shm: ShmTensors | None = None  # tensors in shared memory: the job holds their regions mapped
    classes: Mapping[str, int] | None = None  # classification extension: output -> class count
    terms: Classes | None = None  # those classes with their labels, made once for `served`
    outputs: Tensors | None = None  # as computed (before classification): a shadow compares them
    owner: object | None = None  # the stream that sent it (its sequence's owner when it starts one)
    answer_limit: int | None = None  # the server's max_message_bytes (None: no limit)
    framed: bool = False  # its answer is a stream's frame (a ModelStreamInferResponse wraps it)
    # Outputs it had at once (a cache hit, the fast path) whose answer holds too many strings for
    # the event loop: `answer_now` leaves them to `answer_later`, which encodes them in a thread.
    made: Tensors | None = None
    made_from_cache: bool = False

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
        sequences = None if served.ensemble is not None else served.sequences is not None
        checked = check_request(signature, request, regions, controls, sequences=sequences)
        controls = checked.controls
        deadline = None if remaining_s is None else time.monotonic() + remaining_s
        admission = served.batcher.admission(
            checked.rows, deadline=deadline, priority=controls.priority, timeout_s=controls.timeout_s
        )
        classes = requested_classes(request, signature)
        inputs, names, shm = checked.inputs, checked.names, checked.shm
        job = cls(served, request, inputs, names, admission, controls, deadline, shm=shm, classes=classes)
        job.terms = job._classes()
        return job

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
        self.terms = self._classes()  # the new version's labels
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
        frame = self.request if framed else None
        check = AnswerCheck(self.names, self.shm, limit, frame, header, self.terms)
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
            self.cache_generation = cache.generation(served.name)
            hit = cache.lookup(self.cache_key)
            if hit is not None and self._strings(hit, self.terms) > ENCODE_OFF_LOOP_STRINGS:
                self.made, self.made_from_cache = hit, True  # encoded in a thread: answer_later
                self.lookup_ns = time.perf_counter_ns() - start
                return None
            if hit is not None:  # answered from the cache without the batcher, as Triton does
                response = self._encode(hit)
                served.stats.record_cache_hit(time.perf_counter_ns() - start)
                return response
            self.lookup_ns = time.perf_counter_ns() - start
            self.looked_up = True
        if served.ensemble is not None:
            return None  # its steps, through their models' batchers (answer_later)
        if self.classes and self.admission.rows * sum(self.classes.values()) > ENCODE_OFF_LOOP_STRINGS:
            return None  # its classes are made in a thread (answer_later), its run is not inline
        outputs = served.batcher.run_now(self.inputs, self.admission)
        if outputs is not None and self._strings(outputs, self.terms) > ENCODE_OFF_LOOP_STRINGS:
            self.made = outputs  # computed and counted: encoded in a thread by answer_later
            return None
        return None if outputs is None else self._computed(outputs)

    async def answer_later(self) -> pb.ModelInferResponse:
        """The response through the batcher's queue (after `answer_now` returned None)."""
        if self.made is not None:
            return await self._made_later(self.made)
        if self.served.ensemble is not None:  # its steps, through their models' batchers
            if self.served.batcher.stopped:  # retired (a step evicted) since it was prepared
                raise NotAccepting()  # its caller sends it to the version serving now
            c = self.controls
            notes = self.ensemble_notes or EnsembleNotes(self.served.version_str)  # its failure lines' fields
            notes.owner = self.owner  # its sequence steps' starts are its sender's
            outputs = await self.served.ensemble.run_counted(
                self.served.stats, self.inputs, self.admission, c.priority, c.sequence, self.request, notes
            )
            return await self._computed_later(outputs)
        if self.controls.sequence is not None:
            answered: list[pb.ModelInferResponse] = []

            async def answer(outputs: Tensors) -> None:
                # Encoded (its shm outputs written) in the sequence's turn, before its state is kept:
                # one whose output region was truncated during the run had advanced the state.
                answered.append(await self._computed_later(outputs))

            await sequence_outputs(
                self.served,
                self.controls.sequence,
                self.inputs,
                self.admission,
                self.queue_trace,
                self.owner,
                answer,
            )
            return answered[0]
        outputs = await self.served.batcher.enqueue(self.inputs, self.admission, self.queue_trace, self.claim)
        return await self._computed_later(outputs)

    async def _made_later(self, outputs: Tensors) -> pb.ModelInferResponse:
        """The answer of outputs `answer_now` had (`made`), encoded in a thread. A stream's newer
        frame may have withdrawn it meanwhile, as one still queued (Claim)."""
        self.made = None
        claim = self.claim
        if claim is not None:
            if claim.withdrawn is not None:
                raise claim.withdrawn
            claim.admitted()
            claim.settle()
        if not self.made_from_cache:
            return await self._computed_later(outputs)
        start = time.perf_counter_ns()
        response = await asyncio.to_thread(self._answer, self._prepare(outputs), self.terms)
        self.served.stats.record_cache_hit(self.lookup_ns + time.perf_counter_ns() - start)
        return response

    def _computed(self, outputs: Tensors) -> pb.ModelInferResponse:
        self._store(outputs)
        return self._answer(self._prepare(outputs), self.terms)

    async def _computed_later(self, outputs: Tensors) -> pb.ModelInferResponse:
        """As `_computed`; an answer with many strings is classified and encoded off the event loop:
        3,000,000 BYTES elements took 2-3 s to encode, 1,000,000 classes 2.5 s to make, and every
        other call on the server waited."""
        self._store(outputs)
        prepared = self._prepare(outputs)
        classes = self.terms
        if self._strings(prepared, classes) > ENCODE_OFF_LOOP_STRINGS:
            try:
                return await asyncio.to_thread(self._answer, prepared, classes)
            except asyncio.CancelledError:
                # Its run answered it (counted in queue, compute and inference_count): a success,
                # as one whose caller went once computed. As CANCELED, 6 of 6 such cancels left
                # queue 7 beside success 1.
                raise ComputedThenCancelled() from None
        return self._answer(prepared, classes)

    @staticmethod
    def _strings(outputs: Tensors, classes: Classes | None) -> int:
        """The strings an answer of `outputs` holds: BYTES elements, and classes once classified."""
        total = 0
        for name, array in outputs.items():
            if classes is not None and name in classes.counts:
                total += classes.strings(name, array)
            elif array.dtype == object:
                total += array.size
        return total

    def _store(self, outputs: Tensors) -> None:
        served = self.served
        if self.looked_up:
            start = time.perf_counter_ns()
            if served.response_cache is not None:  # None once this version was retired meanwhile
                served.response_cache.insert(self.cache_key, served.name, outputs, self.cache_generation)
            served.stats.cache_miss.add(self.lookup_ns + time.perf_counter_ns() - start)

    def _encode(self, outputs: Tensors) -> pb.ModelInferResponse:
        return self._answer(self._prepare(outputs), self.terms)

    def _prepare(self, outputs: Tensors) -> Tensors:
        """Sample the outputs (on the event loop: the sampler's queue is the loop's)."""
        served = self.served
        self.outputs = outputs
        if served.sampler is not None:  # computed or cached: queue references, or count a drop
            served.sampler.offer(self.inputs, outputs)
        return outputs

    def _classes(self) -> Classes | None:
        """The classification extension's terms for its outputs (server/protocol/classification.py)."""
        if not self.classes:
            return None
        served = self.served
        labels = served.labels
        if served.ensemble is not None:  # Triton: an output's labels come from the step making it
            labels = {**served.ensemble.output_labels(), **labels}
        return Classes(dict(self.classes), labels, served.config.max_batch_size > 0)

    def _answer(self, outputs: Tensors, classes: Classes | None) -> pb.ModelInferResponse:
        """Its answer of `outputs`, classified if asked (in a thread for many strings: `classes`,
        with its labels, is read on the event loop)."""
        return self._wire(outputs if classes is None else classes(outputs))

    def _wire(self, outputs: Tensors) -> pb.ModelInferResponse:
        served = self.served
        answer = codec.encode_response(
            served.name, served.version_str, self.request.id, outputs, self.names, self.shm
        )
        check_answer(answer, self.answer_limit, self.request if self.framed else None)
        return answer
