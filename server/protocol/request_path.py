"""The request path both RPCs share: route a request to a version, prepare it (InferJob), answer it
at once or after its batch, and record the outcome in the version's statistics; and, for a lazy
model not loaded, the wait for its load within the request's deadline (`await_load`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Callable, Mapping

from batcher.claim import Claim
from batcher.errors import ComputedThenCancelled, NotAccepting
from batcher.stats import ModelStats
from protos import grpc_service_pb2 as pb
from server.errors import FrameDropped, ShuttingDown
from server.models.early_refusals import counted_version
from server.models.frame_rules import FrameRules
from server.models.lazy_sequences import SequencesBeforeLoad
from server.models.manager import ModelManager
from server.models.on_demand import OnDemand
from server.models.sequence_routing import Routed
from server.models.versions import ModelVersion
from server.observability.logs import SERVED_VERSION
from server.observability.metrics_reasons import DEADLINE_SLACK_S, record_cut, record_failed
from server.protocol.controls import Controls, parse_controls, try_parse_controls
from server.protocol.declared import check_declared_by_any
from server.protocol.infer_job import InferJob
from server.protocol.load_order import Turn
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.validate import Signature

_COUNTED_IN = "counted_in"  # set on an exception by `note_served`: the ModelStats it was counted in


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

    def evictable(self, request: pb.ModelInferRequest) -> bool:
        """Whether the request's model is lazy: evicted between a stream frame's preparing and its
        task's run, it waits for the next load (`_load_again_for`) and the stream's later frames of
        the model queue behind it (load_order.py)."""
        demand = self._models.on_demand
        return demand is not None and demand.is_lazy(request.model_name)

    def frame_rules(self, request: pb.ModelInferRequest) -> FrameRules | None:
        """Latest-frame-wins' view of the request's lazy model while not loaded, read from its
        config (None: not such a model, or not known): its frames waiting for the load take part."""
        demand = self._models.on_demand
        return None if demand is None else demand.frame_rules(request.model_name)

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
        point: float | None = None,
    ) -> tuple[InferJob, pb.ModelInferResponse | None]:
        """Route and prepare a request, and answer it if that needs no waiting (see InferJob).
        `named`: `model_of(request)` in the same turn of the event loop, used as is when the request
        names a version (a traffic policy routes only requests naming none). `point`: the routing
        point its lazy model's early judge drew (`await_load`): routed by it, it reaches the
        version it was judged by."""
        if self._is_stopping():
            raise ShuttingDown("server is shutting down")
        # Parsed once for routing and the batcher; a refused parameter is named by `prepare`.
        controls = try_parse_controls(request.parameters)
        routed = Routed(request, None if controls is None else controls.sequence, point)
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
            note_served(exc, served.version_str, served.stats)
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

    async def finish(self, job: InferJob, start_ns: int, turn: Turn | None = None) -> pb.ModelInferResponse:
        """The answer of a request `start` could not answer at once. `turn`: a stream frame's place
        in its lazy model's order (load_order.py), let go once it is queued, or has failed."""
        try:
            return await self._finish(job, start_ns, turn)
        finally:
            if turn is not None:
                turn.admitted()
            # Answered or failed, it needs its shared-memory regions no more. A failure's
            # traceback, in a reference cycle (grpc keeps an aborted call's AbortError; Python
            # 3.10 links every frame to its caller's), had kept them mapped after unregister
            # until a garbage collection.
            if job.shm is not None:
                job.shm.release()

    async def _finish(self, job: InferJob, start_ns: int, turn: Turn | None) -> pb.ModelInferResponse:
        stats = job.served.stats
        try:
            try:
                if _evicted(self._models, job):  # since it was prepared: wait for its next load
                    await _load_again_for(self._models, job)
                    raise NotAccepting()  # its version is gone: to the one serving now, as below
                _queued(turn)
                response = await job.answer_later()
            except NotAccepting:
                # A stream prepares a request, then a task of its own submits it: a reload may retire
                # the version in between. Unless the server itself is stopping, submit it to the
                # version serving now. Resolving, retargeting and the batcher's admission check run
                # without a suspension point, so one retry cannot race another reload.
                if self._is_stopping():
                    raise
                await _load_again_for(self._models, job)
                routed = Routed(job.request, job.controls.sequence)
                served = self._models.resolve(job.request.model_name, job.request.model_version, routed)
                if served is job.served:
                    raise
                # Counted by the version serving now, also when it refuses the request: the retired
                # version's statistics go with it (ModelStatistics showed neither).
                stats = served.stats
                job.retarget(served)
                _queued(turn)
                response = await job.answer_later()
        except ComputedThenCancelled as exc:
            # Computed (counted in queue, compute and inference_count) before its caller went: a
            # success, as one whose answer was made but not yet written when its stream ended
            # (which the stream counts unsent, in the statistics noted here).
            stats.record_success(time.perf_counter_ns() - start_ns)
            note_served(exc, job.served.version_str, stats)
            raise
        except asyncio.CancelledError:
            record_cut(stats, time.perf_counter_ns() - start_ns, job.call_deadline)
            raise
        except FrameDropped as exc:
            stats.dropped += 1  # neither a success nor a failure: answered "dropped"
            note_served(exc, job.served.version_str, stats)  # unsent, it counts there too
            raise
        except Exception as exc:
            record_failed(stats, time.perf_counter_ns() - start_ns, exc)
            note_served(exc, job.served.version_str, stats)
            raise
        elapsed_ns = time.perf_counter_ns() - start_ns
        stats.record_success(elapsed_ns)
        self._answered(job, elapsed_ns)
        return response

    async def infer(self, request: pb.ModelInferRequest, remaining_s: float | None) -> pb.ModelInferResponse:
        """Serve one request end to end (`serve`), for its response alone."""
        return (await self.serve(request, remaining_s))[1]

    async def serve(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        claim: Claim | None = None,
        owner: object | None = None,
        turn: Turn | None = None,
    ) -> tuple[InferJob, pb.ModelInferResponse]:
        """Serve one request end to end; raises on any failure. `claim`: see InferJob.claim. The
        job comes back with the response: its version (`job.served`, the one serving it after a
        reload too) is the one whose statistics counted the outcome (a stream notes them). `turn`:
        a stream frame's place behind its earlier frames of the model held for a load
        (load_order.py): it reaches the batcher after them, and lets the next go once it has."""
        start_ns = time.perf_counter_ns()
        try:
            job, response = await self._start_in_turn(request, remaining_s, start_ns, owner, turn)
        finally:
            if turn is not None:  # reached the batcher's door, or failed: the next frame may go
                turn.admitted()
        if response is not None:
            if claim is not None:
                claim.admitted()  # a latest-frame-wins frame answered at once: it supersedes the older
            return job, response
        job.claim = claim  # the batcher withdraws the frame it supersedes once it is queued
        # `finish` queues it before its first suspension: the next frame's turn resumes after that.
        return job, await self.finish(job, start_ns)

    async def _start_in_turn(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        owner: object | None,
        turn: Turn | None,
    ) -> tuple[InferJob, pb.ModelInferResponse | None]:
        """`start` the request once its lazy model is loaded and its turn (if any) has come."""
        demand = self._models.on_demand
        point = None
        while True:
            if demand is not None and demand.needs_load(request.model_name):
                sequences = self._models.sequences_before_load
                remaining_s, point = await await_load(demand, sequences, request, remaining_s, self.regions)
            if turn is None or turn.came:
                break
            waited = time.monotonic()
            await turn.wait()  # behind the stream's earlier frames of the model (load_order.py)
            if remaining_s is not None:  # the time spent behind them counts too
                remaining_s -= time.monotonic() - waited
            # Then once more round: evicted meanwhile, it waits for the next load in its place.
        return self.start(request, remaining_s, start_ns, owner=owner, point=point)


def _queued(turn: Turn | None) -> None:
    """The job is queued in the step that follows (`answer_later` reaches the batcher before its
    first suspension): the stream's next frame of the model may go after it (load_order.py)."""
    if turn is not None:
        turn.admitted()


def _evicted(models: ModelManager, job: InferJob) -> bool:
    """Whether the job's lazy model was evicted between its preparing and its run (a stream's task
    runs it later; an ensemble goes with an evicted step). Such a frame had failed UNAVAILABLE at
    an ensemble's step ("not ready (unloaded)": 1 to 2 of 300 frames). Not a coroutine: it runs
    for every queued request."""
    demand = models.on_demand
    return demand is not None and demand.needs_load(job.request.model_name)


async def _load_again_for(models: ModelManager, job: InferJob) -> bool:
    """Wait for the job's lazy model's next load, if it needs one (`_evicted`), within the call's
    deadline, as a request arriving then would; whether it did."""
    demand = models.on_demand
    if demand is None or not _evicted(models, job):
        return False
    deadline = job.call_deadline
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    # A start holds its id meanwhile, as one waiting in `await_load`: its continuations read by the
    # stream since (waiting for the same load) had been refused "never started" by the early judge.
    with models.sequences_before_load.hold(job.request.model_name, job.controls.sequence):
        await demand.ready(job.request.model_name, left)
    return True


def note_served(exc: BaseException, version: str, stats: ModelStats) -> None:
    """Note on a failure which version served the request (its log line names it) and the
    statistics it was counted in (a stream whose answer is never written counts it unsent there)."""
    with contextlib.suppress(AttributeError):  # an exception type without a __dict__
        setattr(exc, SERVED_VERSION, version)
        setattr(exc, _COUNTED_IN, stats)


def counted_in(exc: BaseException) -> ModelStats | None:
    """The statistics a failure was counted in, as noted by `note_served` (None: in none). Read it
    where the failure is caught, before any await: one exception may fail every request of a run."""
    stats = getattr(exc, _COUNTED_IN, None)
    return stats if isinstance(stats, ModelStats) else None


async def await_load(
    demand: OnDemand,
    sequences: SequencesBeforeLoad,
    request: pb.ModelInferRequest,
    remaining_s: float | None,
    regions: SharedMemoryRegistry | None = None,
) -> tuple[float | None, float | None]:
    """Wait for a lazy model's load within the request's deadline: its gRPC deadline, or its
    `timeout` parameter when that is sooner (it had been counted only from after the load: a 1 s
    timeout was answered OK after a 5 s load). The wait ends DEADLINE_SLACK_S before the gRPC
    deadline, so the answer naming the load reaches the caller before its own timer fires (it had
    seen only gRPC's "Deadline Exceeded"). A request the load's signatures would refuse is refused
    first, as the loaded model would (declared.py), and counted in the version it would have reached
    (early_refusals.py); so is a sequence's continuation no load could find live (`sequences`,
    lazy_sequences.py: a start waiting for the load holds its id meanwhile). What is left of the
    deadline after the wait, and the routing point drawn to judge a request naming no version (the
    traffic policy routes it by that point once loaded, as it was judged; None: none drawn)."""
    controls = try_parse_controls(request.parameters)
    with sequences.hold(request.model_name, None if controls is None else controls.sequence):
        return await _judge_and_wait(demand, request, remaining_s, regions, controls, sequences)


def _ensemble(signatures: Mapping[int, Signature]) -> bool:
    """The signatures are an ensemble's (its own: sequences are its steps' to judge)."""
    return any(signature.sequences is None for signature in signatures.values())


async def _judge_and_wait(
    demand: OnDemand,
    request: pb.ModelInferRequest,
    remaining_s: float | None,
    regions: SharedMemoryRegistry | None,
    controls: Controls | None,
    sequences: SequencesBeforeLoad,
) -> tuple[float | None, float | None]:
    began = time.monotonic()
    name = request.model_name
    signatures = await demand.signatures(name)
    point = None
    if signatures:  # an invalid request is refused without loading the model (and evicting)
        # Routed first, as the loaded model routes before its checks: a sticky key parameter of the
        # wrong type is refused here, counted nowhere (InvalidRequest), as once loaded.
        unnamed_to, point = _route_early(demand, request, controls, sequences, _ensemble(signatures))
        try:
            check_declared_by_any(signatures, request, regions, controls, unnamed_to=unnamed_to)
            if controls is not None and demand.needs_load(name) and not _ensemble(signatures):
                # Still not loaded: no sequence is live. Not so for an ensemble's sequence step,
                # loaded with live sequences while the ensemble is not: its steps judge that.
                sequences.check(name, controls.sequence)
        except Exception as exc:
            # Counted as the loaded model's refusal would be (it had been counted nowhere).
            number = counted_version(signatures, request.model_version, unnamed_to)
            if number is not None:
                stats = demand.refused_early.stats_for(name, number)
                record_failed(stats, int((time.monotonic() - began) * 1e9), exc)
                note_served(exc, str(number), stats)
            raise
    if controls is None:  # a model not judged: its refused parameter is named without loading it
        controls = parse_controls(request.parameters)
    bound = min((b for b in (remaining_s, controls.timeout_s) if b is not None), default=None)
    slack = DEADLINE_SLACK_S if bound is not None and bound == remaining_s else 0.0
    left = None if bound is None else bound - (time.monotonic() - began)
    await demand.ready(name, None if left is None else max(0.0, left - slack))
    return None if bound is None else bound - (time.monotonic() - began), point


def _route_early(
    demand: OnDemand,
    request: pb.ModelInferRequest,
    controls: Controls | None,
    sequences: SequencesBeforeLoad,
    ensemble: bool,
) -> tuple[int | None, float | None]:
    """The version a request naming none will be routed to once its model is loaded, and the
    routing point drawn for it (kept for that routing: a policy splitting the traffic picks at
    random without a routing key). (None, None) when not known here: it names a version, the
    routing is not known (its config could not be read), or it continues a sequence whose start
    waits for the same load (it goes where its start goes: judged by every version unless one
    version takes all the traffic)."""
    routing = demand.routing(request.model_name)
    if request.model_version or routing is None:
        return None, None
    unnamed_to, point = routing.pick(request, demand.draw)  # a wrong sticky key raises, as once loaded
    sequence = None if controls is None else controls.sequence
    if not ensemble and sequences.follows_start(request.model_name, sequence):
        return routing.only, point
    return unnamed_to, point
