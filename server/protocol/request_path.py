"""The request path both RPCs share: route a request to a version, prepare it (InferJob), answer it
at once or after its batch, and record the outcome in the version's statistics (a preserve_ordering
answer's once its turn has come: answer_turn.py); and, for a lazy model not loaded, the wait for its
load within the request's deadline (load_wait.py `await_load`).
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable

from batcher.claim import Claim
from batcher.errors import ComputedThenCancelled, NotAccepting
from protos import grpc_service_pb2 as pb
from server.errors import FrameDropped, ShuttingDown
from server.models.frame_rules import FrameRules
from server.models.manager import ModelManager
from server.models.sequence_routing import Routed
from server.models.versions import ModelVersion
from server.observability.metrics_reasons import record_cut, record_failed
from server.protocol.answer_turn import count_missed, wait_turn
from server.protocol.controls import try_parse_controls
from server.protocol.infer_job import InferJob
from server.protocol.load_order import Turn
from server.protocol.load_wait import await_load
from server.protocol.served_notes import note_served
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.stream_order import Before


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
        turn_pending: bool = False,
    ) -> tuple[InferJob, pb.ModelInferResponse | None]:
        """Route and prepare a request, and answer it if that needs no waiting (see InferJob).
        `named`: `model_of(request)` in the same turn of the event loop, used as is when the request
        names a version (a traffic policy routes only requests naming none). `point`: the routing
        point its lazy model's early judge drew (`await_load`): routed by it, it reaches the
        version it was judged by. `turn_pending`: an answer made at once waits for its turn, and
        `finish` counts it then."""
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
        if response is not None and not turn_pending:
            self._succeeded(job, start_ns)
        return job, response

    def _succeeded(self, job: InferJob, start_ns: int) -> None:
        """Count a success; offer it to its model's shadow candidate (server/models/rollout.py),
        never one in shared memory (the region may change once answered) or of a sequence."""
        elapsed_ns = time.perf_counter_ns() - start_ns
        job.served.stats.record_success(elapsed_ns)
        if job.shm is None and job.controls.sequence is None:
            request = job.request
            self._models.rollout.answered(job.served, request, bool(request.model_version), job.inputs,
                                          job.admission.rows, job.outputs, elapsed_ns)  # fmt: skip

    async def finish(
        self,
        job: InferJob,
        start_ns: int,
        turn: Turn | None = None,
        before: Before | None = None,
        made: pb.ModelInferResponse | None = None,
    ) -> pb.ModelInferResponse:
        """The answer of a request `start` could not answer at once (or `made`, the one it made
        with `turn_pending`). `turn`: a stream frame's place in its lazy model's order
        (load_order.py), let go once it is queued, or has failed. `before`: the answer ahead of it
        (preserve_ordering), waited for within its deadline before it counts (answer_turn.py)."""
        try:
            if made is None:
                made = await self._finish(job, start_ns, turn)
            await self._in_turn(job, start_ns, before)
            return made
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
                if job.made is None and _evicted(self._models, job):  # since prepared: its next load
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
        return response

    async def _in_turn(self, job: InferJob, start_ns: int, before: Before | None) -> None:
        """Count the job's success once the answer `before` it is out, within its deadline."""
        if before is not None:
            try:
                await wait_turn(before, job.admission.hard)
            except BaseException as exc:
                stats = job.served.stats
                counted = count_missed(stats, time.perf_counter_ns() - start_ns, exc, job.call_deadline)
                note_served(counted, job.served.version_str, stats)
                raise counted from None
        self._succeeded(job, start_ns)

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
        before: Before | None = None,
    ) -> tuple[InferJob, pb.ModelInferResponse]:
        """Serve one request end to end; raises on any failure. `claim`: see InferJob.claim. The
        job comes back with the response: its version (`job.served`, the one serving it after a
        reload too) is the one whose statistics counted the outcome (a stream notes them). `turn`:
        a stream frame's place behind its earlier frames of the model held for a load
        (load_order.py): it reaches the batcher after them, and lets the next go once it has.
        `before`: the answer ahead of it (preserve_ordering): see `finish`."""
        start_ns = time.perf_counter_ns()
        pending = before is not None and not before.is_set()
        try:
            job, response = await self._start_in_turn(request, remaining_s, start_ns, owner, turn, pending)
        finally:
            if turn is not None:  # reached the batcher's door, or failed: the next frame may go
                turn.admitted()
        if response is not None:
            if claim is not None:
                claim.admitted()  # a latest-frame-wins frame answered at once: it supersedes the older
            return job, response if not pending else await self.finish(job, start_ns, None, before, response)
        job.claim = claim  # the batcher withdraws the frame it supersedes once it is queued
        # `finish` queues it before its first suspension: the next frame's turn resumes after that.
        return job, await self.finish(job, start_ns, None, before)

    async def _start_in_turn(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        owner: object | None,
        turn: Turn | None,
        turn_pending: bool,
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
        return self.start(request, remaining_s, start_ns, owner=owner, point=point, turn_pending=turn_pending)


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
