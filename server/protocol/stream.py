"""One ModelStreamInfer call: read requests, admit each, answer each exactly once, close.

A reader task takes requests off the stream while fewer than `max_in_flight` are unanswered or
answered but not yet written, and while those hold fewer than `max_held_bytes` of raw tensor bytes
(stream_bytes.py; beyond either it stops reading and HTTP/2 flow control pushes back on the
sender; a client that stops reading its answers stops the server reading its requests). Counting
requests only, 8 streams that never read held 256 answers of 0.5 MB each: 1.1 GB. A
request that needs no waiting (a cache hit, the batcher's fast path) is answered inline by the
reader, without a task; the others get a task each. Answers leave through one queue as they
complete, except for models with `preserve_ordering` and latest-frame-wins frames: those leave in
request order per model version, each waiting for the one before it (stream_order.py). A failed
request is answered with an error message and its id; the stream goes on. So is an answer over
the message limit (refused by the request path, answer_checks.py, and counted a failure): sent,
gRPC would fail the whole stream for it, and every later request on it would go unanswered. And
so is a frame over the limit, refused unparsed by the deserializer (frame_size.py): received by
grpc's own limit, it had ended the stream.

A session ends early in two ways, both after answering every request it has read: `finish()` (the
server is draining) and an idle timeout (nothing read or in flight for `idle_timeout_s`). Either
way the reader stops reading and `ended_by` says why, for the call's final status. A third ends it
at once: an answer waits to be written (queued, or in grpc's write) and its client has neither
read one nor sent anything for `idle_timeout_s` (its reader died): the session is closed and
`on_stalled` ends the call (cancelling grpc's task, the one way to end a call whose write is
stuck; the client is not reading any status), which frees what it holds. It had kept its slot and
its answers until its deadline, or for good. And with Triton's `triton_grpc_error` header, its first
error answer ends it: that answer is `error_frame`, the call's status, so it is delivered, not unsent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from batcher.claim import Claim
from batcher.errors import ComputedThenCancelled
from batcher.stats import ModelStats
from protos import grpc_service_pb2 as pb
from server.errors import FrameDropped
from server.protocol.answer_checks import FINAL_RESPONSE, fit_error_frame
from server.protocol.answer_turn import LateForTurn, when_set
from server.protocol.answers import stray_cancel
from server.protocol.frame_size import Oversized, received_ceiling
from server.protocol.infer_job import InferJob
from server.protocol.latest_frame import LatestFrames, dropped_response
from server.protocol.load_order import LoadOrder, Turn
from server.protocol.loop_pace import LoopPace
from server.protocol.malformed import Malformed
from server.protocol.request_path import RequestPath
from server.protocol.served_notes import counted_in
from server.protocol.stream_bytes import HeldBytes, Read, answer_bytes
from server.protocol.stream_frames import failure_frame, refusal, shutting_down
from server.protocol.stream_order import Before, StreamOrder
from server.protocol.stream_sequences import OnClose, SeenSequences
from server.protocol.stream_unsent import Unsent, UnsentLines, end_reason

Response = pb.ModelStreamInferResponse
# An answer with the bytes it releases once written (its own and its request's) and the statistics
# its outcome was counted in (None: none), where it is counted unsent if its call ends first.
Item = tuple[Response, int, ModelStats | None]
# While draining, a stream is ended once its caller has sent nothing for this long, or this long
# after the drain began, whichever comes first.
DRAIN_QUIET_S = 0.05
DRAIN_MAX_S = 1.0
Event = asyncio.Event


class StreamSession:
    """The state of one stream. `answers()` yields its responses; iterate it once."""

    def __init__(
        self,
        requests: AsyncIterator[Read],
        path: RequestPath,
        *,
        max_in_flight: int,
        deadline: float | None,  # the call's gRPC deadline, absolute time.monotonic()
        idle_timeout_s: float = 0.0,  # 0: never
        on_close: OnClose | None = None,  # given the sequences it drove, when it ends
        max_held_bytes: int | None = None,  # raw bytes of requests read and answers unwritten
        on_stalled: Callable[[], None] | None = None,  # ends the call (its client reads nothing)
        max_frame_bytes: int | None = None,  # the server's max_message_bytes (None: no limit)
        peer: str = "",  # the call's peer, for the line that names answers left unwritten
        unsent_lines: UnsentLines | None = None,  # the server's ration of those lines
        pace: LoopPace | None = None,  # holds reads while the loop lags (loop_pace.py)
        ends_on_error: bool = False,  # its first error answer ends it (triton_grpc_error header)
    ) -> None:
        self._ends_on_error = ends_on_error
        self.error_frame: Response | None = None  # that answer: the call's status, never written
        self._pace = pace
        self._peer = peer
        self._unsent_lines = unsent_lines or UnsentLines()
        self._unsent = Unsent()  # answers made and never written (stream_unsent.py)
        self._max_frame_bytes = max_frame_bytes
        self._requests = requests
        self._held = HeldBytes(max_held_bytes)
        self._on_stalled = on_stalled
        self._path = path
        self._deadline = deadline
        self._idle_timeout_s = idle_timeout_s
        self._on_close = on_close
        self._sequences = SeenSequences()
        self._answers: asyncio.Queue[Item | None] = asyncio.Queue()
        # One slot per request read and not yet written back: in flight or answered but unsent.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: set[asyncio.Task[None]] = set()
        self._order = StreamOrder()  # request order per model version, where kept (stream_order.py)
        self._frames = LatestFrames()  # latest-frame-wins (server/protocol/latest_frame.py)
        self._loads = LoadOrder()  # frames in read order per model across its load (load_order.py)
        self._reader: asyncio.Task[None] | None = None
        self._reading = False  # the reader waits for a slot or a message (safe to cancel)
        self._last_read = time.monotonic()
        self._last_written = self._last_read  # an answer last left (its client reads them)
        self._busy_at = 0.0  # last seen waiting for its own answers: not idle then
        self._drain_began = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.ended_by: str | None = None  # "drain", "idle", "stalled", "grpc_error": it stopped early
        self.answered = 0
        self._in_write: Item | None = None  # the answer in grpc's write (yielded, not yet taken)
        self._closed = False

    async def answers(self) -> AsyncGenerator[Response, None]:
        self._reader = asyncio.create_task(self._read())
        self._arm_idle_timer()
        failed = False
        try:
            while (item := await self._answers.get()) is not None:
                if self._ends_on_error and item[0].error_message:  # delivered as the call's status:
                    self.ended_by, self.error_frame = "grpc_error", item[0]  # not counted unsent
                    return  # the answers after it are (close: reason grpc_error_ended)
                self._in_write = item
                yield item[0]
                self._in_write = None
                self._last_written = time.monotonic()
                self.answered += 1
                self._held.written(item[1])
                self._slots.release()  # written: the slot may take the next request
            await self._reader  # re-raise a reader failure (a broken request stream)
        except Exception:
            failed = True
            raise
        finally:  # ended normally (nothing unsent), or the call ended under it (grpc cancelled it)
            self.close(end_reason(failed, self.ended_by, self._deadline))

    def close(self, reason: str = "cancelled") -> None:
        """Stop everything the session runs and release its sequences, once (when `answers()`
        ends, or at once for a stalled call, whose generator may only be finalized later). The
        answers not yet written are counted unsent for `reason` (stream_unsent.py), now and as the
        tasks cancelled here finish; one line says so once the last has."""
        if self._closed:
            return
        self._closed = True
        self._unsent.ended(reason)
        # The answer in grpc's write of a stalled call is grpc's: sent before the call's status
        # (late_status.py) once its client reads (a tester read it, counted unsent).
        taken = self._in_write is None or reason == "stalled"
        unwritten: list[Item | None] = [] if taken else [self._in_write]
        while not self._answers.empty():
            unwritten.append(self._answers.get_nowait())
        for item in unwritten:
            if item is not None:
                self._unsent.drop_answer(item[2], item[0])
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._reader is not None:
            self._reader.cancel()
        for task in list(self._pending):
            task.cancel()
        if self._on_close is not None:
            self._on_close(self._sequences)
        self._report_unsent()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if self._closed:
            self._report_unsent()

    def _report_unsent(self) -> None:
        if not self._pending:  # the last task cancelled by `close` has counted its answer
            ceiling = None if self._max_frame_bytes is None else received_ceiling(self._max_frame_bytes)
            self._unsent_lines.report(self._unsent, self._peer, ceiling, self._idle_timeout_s)

    def finish(self, why: str = "drain") -> None:
        """Stop admitting; the requests already admitted are still answered, then `answers()` ends.

        "idle": the reader is cancelled at once (the caller sends nothing). "drain": messages that
        still arrive are answered UNAVAILABLE, which tells the caller to stop sending; the reader
        is cancelled once the caller has been quiet for DRAIN_QUIET_S, or DRAIN_MAX_S after the
        drain began. Ending the call while a grpc.aio caller is still writing makes its client
        report "INTERNAL: Internal error from Core" instead of our status (grpc/grpc#36066).
        """
        if self.ended_by is not None:
            return
        self.ended_by = why
        if why == "drain":
            self._drain_began = time.monotonic()
            self._watch_drain()
        else:
            self._stop_reading()

    def _stop_reading(self) -> None:
        # The reader only awaits a slot or the next message: cancelling it there loses nothing
        # that was read. Once it gathers the pending answers it is left to finish.
        if self._reader is not None and self._reading:
            self._reader.cancel()

    def _watch_drain(self) -> None:
        now = time.monotonic()
        if self._reader is None or self._reader.done():
            return
        if now - self._last_read >= DRAIN_QUIET_S or now - self._drain_began >= DRAIN_MAX_S:
            self._stop_reading()
            if not self._reading:  # between two reads: look again once it waits for the next
                asyncio.get_running_loop().call_later(DRAIN_QUIET_S / 5, self._watch_drain)
            return
        asyncio.get_running_loop().call_later(DRAIN_QUIET_S / 5, self._watch_drain)

    async def _read(self) -> None:
        try:
            try:
                iterator = aiter(self._requests)
                while self.ended_by in (None, "drain"):
                    self._reading = True
                    await self._slots.acquire()  # a slot before a message: none read is dropped
                    try:
                        if self._pace is not None:
                            await self._pace.hold()
                        await self._held.room()
                        request = await anext(iterator)
                    except StopAsyncIteration:
                        self._slots.release()
                        break
                    finally:
                        self._reading = False
                    self._last_read = time.monotonic()
                    self._held.read(request)
                    if self.ended_by is None:
                        self._admit(request)
                    else:  # draining: answered, not admitted
                        self._send(shutting_down(request), None, request)
            except asyncio.CancelledError:
                if self.ended_by is None:
                    raise  # the call itself ended
            if self._pending:
                await asyncio.gather(*self._pending)
        finally:
            self._answers.put_nowait(None)  # the end of the answers, after every request's own

    def _arm_idle_timer(self, due: float | None = None) -> None:
        if self._idle_timeout_s > 0:
            loop = asyncio.get_running_loop()
            due = max(self._last_read, self._busy_at) + self._idle_timeout_s if due is None else due
            self._idle_timer = loop.call_at(loop.time() + max(0.0, due - time.monotonic()), self._idle_check)

    def _idle_check(self) -> None:
        """End a stream idle (nothing read, nothing in flight) or stalled (nothing written or read)
        for idle_timeout_s."""
        if self.ended_by is not None:
            return
        now = time.monotonic()
        unsent = self._in_write is not None or not self._answers.empty()  # the one in grpc's write counts
        quiet_s = now - max(self._last_written, self._last_read)
        if unsent and quiet_s >= self._idle_timeout_s and self._on_stalled is not None:
            self.ended_by = "stalled"
            self.close("stalled")  # its line names the answers left unwritten
            self._on_stalled()
            return
        if self._pending or unsent:
            self._busy_at = now  # waiting for its own answers is not idle
        elif now - max(self._last_read, self._busy_at) >= self._idle_timeout_s:
            self.finish("idle")
            return
        # Answers unwritten: checked again when it would stall (a full period on had cut at 2x).
        self._arm_idle_timer(now - quiet_s + self._idle_timeout_s if unsent and self._on_stalled else None)

    def _admit(self, request: Read) -> None:
        """Answer `request` inline if it needs no waiting, else hand it to a task of its own."""
        if isinstance(request, Malformed):  # with its id when it could be read (utf8_fields.py)
            self._send(refusal(f"INVALID_ARGUMENT: {request.reason}", request.head), None, request)
            return
        if isinstance(request, Oversized):  # this frame alone, with its id when it could be read
            self._send(refusal(f"RESOURCE_EXHAUSTED: {request.reason}", request.head), None, request)
            return
        job: InferJob | None = None
        try:
            job = self._start(request)
        finally:
            if self._on_close is not None:  # with the job's parsed sequence id, when it has one
                self._sequences.note(request, None if job is None else job.controls)

    def _start(self, request: pb.ModelInferRequest) -> InferJob | None:
        """Answer `request` at once, or hand it to a task; the job it prepared (None: it failed,
        or its task prepares it)."""
        start_ns = time.perf_counter_ns()
        # One lookup of the request's model per message, for latest-frame-wins, order and `start`
        # (which routes a request naming no version once, as a unary call's: RequestPath.start).
        served = self._path.model_of(request)
        try:  # a lazy model not loaded: by its config, for frames waiting for its load (frame_rules.py)
            rules = served or self._path.frame_rules(request)
            claim = self._frames.arrive(request, rules)  # withdraws the frame it supersedes, if any
        except Exception as exc:
            self._send(failure_frame(request, exc), None, request)
            return None
        after, done = self._order.place(request, rules, claim is not None)
        job: InferJob | None = None
        turn: Turn | None = None
        name = request.model_name
        if self._path.needs_load(request) or self._loads.waiting(name):
            # Its lazy model loads first, or an earlier frame of it still waits for that: it
            # reaches the batcher behind those (load_order.py); its task waits for both.
            turn = self._loads.enter(name)
        elif after is None or after.is_set():  # nothing earlier to wait for
            try:
                job, now = self._path.start(request, self._left_s(), start_ns, served, self._sequences)
            except Exception as exc:
                self._send(failure_frame(request, exc), done, request, counted_in(exc))
                return None
            if now is not None:
                if claim is not None:
                    claim.admitted()  # answered at once: the frame it supersedes is withdrawn now
                self._send(Response(infer_response=now), done, request, job.served.stats)
                return job
            if claim is not None:  # the batcher withdraws the frame it supersedes once it is queued
                job.claim = claim
        if turn is None and self._path.evictable(request):  # evicted before its task queues it, it
            turn = self._loads.enter(name)  # waits for the reload: the later frames behind it
        task = asyncio.create_task(self._answer_later(request, job, start_ns, after, done, claim, turn))
        self._pending.add(task)
        task.add_done_callback(self._task_done)
        return job

    async def _answer_later(
        self,
        request: pb.ModelInferRequest,
        job: InferJob | None,  # None: not started yet (it waited for an earlier answer)
        start_ns: int,
        after: Before | None,
        done: asyncio.Event | None,
        claim: Claim | None = None,
        turn: Turn | None = None,  # its place behind the frames of its model waiting for a load
    ) -> None:
        response: Response | None = None
        counted: ModelStats | None = None  # the statistics its outcome was counted in
        try:
            try:
                if job is None:
                    left = self._left_s()
                    # Once computed, it waits for `after` within its deadline (answer_turn.py).
                    job, result = await self._path.serve(request, left, claim, self._sequences, turn, after)
                else:
                    result = await self._path.finish(job, start_ns, turn, after)
                response = Response(infer_response=result)
                counted = job.served.stats  # the version that served it, after a reload too
            except ComputedThenCancelled as exc:  # computed, counted a success; its call ended
                self._unsent.drop(counted_in(exc), success=True)
                raise
            except FrameDropped as exc:
                response = dropped_response(request)
                counted = counted_in(exc)  # in `dropped`: unsent, counted as frame_dropped
            except asyncio.CancelledError as exc:  # not this task's own (the call ended): answered, as
                if (stray := stray_cancel(exc)) is None:  # unanswered it ended the stream statusless
                    raise
                response = failure_frame(request, stray)
            except Exception as exc:
                response = failure_frame(request, exc)
                counted = counted_in(exc)
                if isinstance(exc, LateForTurn) and after is not None and done is not None:
                    when_set(after, done.set)  # sent now; the answers after it wait for those before it
                    after = done = None
            if after is not None:
                await after.wait()
        finally:  # also when cancelled (the call ended): free the slot and the requests after it
            self._send(response, done, request, counted)

    def _send(
        self,
        response: Response | None,
        done: asyncio.Event | None,
        request: Read | None = None,
        counted: ModelStats | None = None,  # the statistics its outcome was counted in
    ) -> None:
        made = None if response is None else answer_bytes(response)  # its bytes (answer_bytes), counted once
        if response is not None:
            # Triton marks every stream answer (error frames too) final or not; ours are never
            # decoupled, so each is. Clients that read until the flag had waited forever.
            response.infer_response.parameters[FINAL_RESPONSE].bool_param = True
            fit_error_frame(response, self._max_frame_bytes)  # over it, gRPC ends the stream
        refused = response is not None and bool(response.error_message)
        held = self._held.answered(request, made, refused)
        if response is not None and self._closed:  # its call ended: it is never written
            self._unsent.drop_answer(counted, response)
        elif response is not None:
            self._answers.put_nowait((response, held, counted))  # its slot and bytes freed once written
        else:
            self._slots.release()
        if done is not None:
            done.set()

    def _left_s(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()
