"""One client process: an asyncio loop (grpc.aio) running closed, open or streaming load.

The coordinator starts these with the spawn method and hands each a WorkerPlan over a pipe; the
worker answers with the Counts of that plan. Requests are pre-serialized bytes and answers of
unary calls stay bytes (only the first is parsed, as a sanity check), so the client spends its
CPU on gRPC itself, not on protobuf. Every loop stops at the end of its window or after
`max_requests`, whichever comes first, and waits at most `drain_s` for answers after that.

No gRPC deadline goes out unless the plan has one (`deadline_s`), as with perf_analyzer: a call
still unanswered `drain_s` after the window is cancelled here and counted NO_ANSWER (a hidden
10 s deadline had bounded each call, and each stream's frames, instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import re
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import grpc

from loadtest.channels import aio_channel, metadata
from loadtest.scenario import WorkerPlan
from loadtest.start import CONNECT_WAIT_S, UNREACHABLE, Stopped, TargetUnreachable, common_start
from loadtest.stats import OK, Counts, Recorder
from protos import grpc_service_pb2 as pb

METHOD_INFER = "/inference.GRPCInferenceService/ModelInfer"
METHOD_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
# Outcomes the client itself decides (not gRPC status codes).
CLIENT_LATE = "CLIENT_LATE"  # the deadline had passed before the client could send
CLIENT_BACKLOG = "CLIENT_BACKLOG"  # max_in_flight requests were unanswered at the send time
NO_ANSWER = "NO_ANSWER"  # still unanswered when the drain time ran out
BAD_RESPONSE = "BAD_RESPONSE"  # an answer without outputs
# A closed-loop user whose request found the connection gone waits this long at most (or until the
# channel is ready again) before its next: it had spun on instant failures, 65,225 UNAVAILABLE in
# ~4 s at 140% of a core, once the server died. Answers, refusals included, never wait.
CONNECTION_BACKOFF_S = 0.1
_STREAM_STATUS = re.compile(r"^([A-Z_]+):")
_ID_FIELD_TAG = b"\x1a"  # ModelInferRequest.id: field 3, length-delimited


def worker_main(conn: Connection) -> None:
    """Process entry point: serve plans from `conn` until it sends None.

    Ctrl-C reaches the terminal's whole process group: the coordinator takes it (it keeps the steps
    measured and stops its workers), so a worker ignores it (each had printed a 30-line
    CancelledError ... KeyboardInterrupt traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        uvloop.run(_serve(conn))
    except ImportError:
        asyncio.run(_serve(conn))


async def _serve(conn: Connection) -> None:
    conn.send(("ready", None))
    while True:
        plan = await asyncio.to_thread(conn.recv)
        if plan is None:
            return
        try:
            conn.send(("ok", await run_plan(plan, lambda: common_start(conn))))
        except Stopped:
            return
        except TargetUnreachable as exc:
            conn.send((UNREACHABLE, str(exc)))
        except Exception:  # the coordinator reports it; this worker can take the next plan
            conn.send(("error", traceback.format_exc()))


StartTime = Callable[[], Awaitable[float]]


async def run_plan(plan: WorkerPlan, start_time: StartTime | None = None) -> Counts:
    """Run one plan in this process's loop and count what happened. With `start_time`, the plan's
    start_at is replaced by what it returns once the channel is connected (the coordinator's
    common start, set when every worker is connected, rather than a fixed delay ahead)."""
    # Several connections: each its own (grpc shares one per target in a process by default).
    options = CHANNEL_OPTIONS + (OWN_CONNECTION if plan.connections > 1 else ())
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(aio_channel(plan.address, plan.security, options))
            for _ in range(plan.connections)
        ]
        # Connect before the start time, so connection set-up is not part of the first latency.
        connect_s = max(CONNECT_WAIT_S, plan.start_at - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), timeout=connect_s)
        except (TimeoutError, asyncio.TimeoutError):
            unreachable = f"{plan.address} accepted no connection within {connect_s:.0f} s"
            raise TargetUnreachable(unreachable) from None
        if start_time is not None:
            plan = dataclasses.replace(plan, start_at=await start_time())
        recorder = Recorder(plan.window, plan.deadline_s)
        cpu = asyncio.create_task(_cpu_in_window(plan.window))
        await sleep_until(plan.start_at)
        if plan.mode == "closed":
            await _closed(channels, plan, recorder)
        elif plan.mode == "open":
            await _open(channels, plan, recorder)
        else:
            await _streams(channels, plan, recorder)
        if recorder.issued >= plan.max_requests:
            recorder.limit_reached()
        cpu_s = await cpu
    return recorder.counts(cpu_s)


async def sleep_until(when: float) -> None:
    """Return no earlier than `when` (time.monotonic()).

    uvloop truncates a timer to whole milliseconds and can wake up to ~1 ms early: a closed loop
    that started then would schedule its first request before the window and not count it, and an
    open loop would send before the scheduled time its latency is counted from.
    """
    while (delay := when - time.monotonic()) > 0:
        await asyncio.sleep(delay)


async def _cpu_in_window(window: tuple[float, float]) -> float:
    """User + system CPU seconds of this whole process (all threads) inside the window."""
    await sleep_until(window[0])
    before = os.times()
    await sleep_until(window[1])
    after = os.times()
    return (after.user - before.user) + (after.system - before.system)


Infer = Callable[..., Awaitable[Any]]


def connection_lost(channel: grpc.aio.Channel, code: str) -> bool:
    """UNAVAILABLE with the channel no longer connected: the target could not be reached (died,
    refused the connection), rather than an UNAVAILABLE it answered with, which is a measurement."""
    return code == "UNAVAILABLE" and channel.get_state() != grpc.ChannelConnectivity.READY


async def back_off(channel: grpc.aio.Channel, until: float) -> None:
    """Until the channel is connected again, at most CONNECTION_BACKOFF_S and never past `until`."""
    timeout = min(CONNECTION_BACKOFF_S, until - time.monotonic())
    if timeout > 0:
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(channel.channel_ready(), timeout)


class _Unary:
    """Sends one pre-serialized request and records how it ended."""

    def __init__(self, channel: grpc.aio.Channel, plan: WorkerPlan, recorder: Recorder) -> None:
        # No serializers: requests go out as the bytes we hold and answers come back as bytes.
        self.infer: Infer = channel.unary_unary(METHOD_INFER)
        self.channel = channel
        self.plan, self.recorder = plan, recorder
        self.metadata = metadata(plan.security)
        self.checked = False

    async def send(self, payload: bytes, scheduled: float) -> bool:
        """Send and record one request; True when it failed because the target was unreachable."""
        plan, recorder = self.plan, self.recorder
        timeout = None  # no deadline asked, none sent: the end of the step bounds the call
        if plan.deadline_s is not None:
            timeout = plan.deadline_s - (time.monotonic() - scheduled)
            if timeout <= 0:
                recorder.record(scheduled, time.monotonic(), CLIENT_LATE)
                return False
        sent = time.monotonic()
        if plan.mode != "closed":  # a closed loop sends the moment it schedules: no lag to record
            recorder.sending(scheduled, sent)
        message, lost = "", False
        try:
            answer = await self.infer(payload, timeout=timeout, metadata=self.metadata)
            code = OK if self.checked or self._looks_right(answer) else BAD_RESPONSE
        except grpc.aio.AioRpcError as exc:
            code, message = exc.code().name, exc.details() or ""
            lost = connection_lost(self.channel, code)
        except asyncio.CancelledError:
            recorder.record(scheduled, time.monotonic(), NO_ANSWER)
            raise
        recorder.record(scheduled, time.monotonic(), code, sent, message, unreachable=lost)
        return lost

    def _looks_right(self, answer: bytes) -> bool:
        self.checked = bool(pb.ModelInferResponse.FromString(answer).outputs)
        return self.checked


async def _closed(channels: list[grpc.aio.Channel], plan: WorkerPlan, recorder: Recorder) -> None:
    """`concurrency` users, each sending its next request as soon as the last one is answered (user
    i on connection i mod `connections`); a request still unanswered `drain_s` after the window is
    cancelled (counted NO_ANSWER)."""
    unaries = [_Unary(channel, plan, recorder) for channel in channels]
    end = plan.window[1]

    async def user(index: int) -> None:
        unary, k = unaries[index % len(unaries)], index
        while recorder.issued < plan.max_requests:
            now = time.monotonic()
            if now >= end:
                return
            recorder.issue(now)
            if await unary.send(plan.payloads[k % len(plan.payloads)], now):
                await back_off(unary.channel, end)
            k += 1

    users = {asyncio.create_task(user(i)) for i in range(plan.concurrency)}
    await _drain(users, end + plan.drain_s - time.monotonic())


async def _open(channels: list[grpc.aio.Channel], plan: WorkerPlan, recorder: Recorder) -> None:
    """Requests at scheduled times (Poisson or constant), whether or not earlier ones are answered;
    round-robin over the connections."""
    unaries = [_Unary(channel, plan, recorder) for channel in channels]
    rng = random.Random(plan.seed)
    poisson = plan.arrival == "poisson"
    end = plan.window[1]
    in_flight: set[asyncio.Task[bool]] = set()
    scheduled = plan.start_at + (rng.expovariate(plan.rate) if poisson else plan.phase_s)
    k = 0
    while scheduled < end and recorder.issued < plan.max_requests:
        if scheduled > time.monotonic():
            await sleep_until(scheduled)
        else:
            await asyncio.sleep(0)  # behind schedule: still let the calls in flight progress
        recorder.issue(scheduled)
        if len(in_flight) >= plan.max_in_flight:
            recorder.record(scheduled, time.monotonic(), CLIENT_BACKLOG)
        else:
            unary = unaries[k % len(unaries)]
            task = asyncio.create_task(unary.send(plan.payloads[k % len(plan.payloads)], scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        k += 1
        scheduled += rng.expovariate(plan.rate) if poisson else 1.0 / plan.rate
    await _drain(in_flight, plan.drain_s)


async def _drain(tasks: set[asyncio.Task[Any]], timeout_s: float) -> None:
    """Wait up to `timeout_s` for `tasks`, then cancel the rest (their calls count NO_ANSWER);
    a task's own failure is raised, as gather would."""
    if not tasks:
        return
    _, late = await asyncio.wait(set(tasks), timeout=max(0.0, timeout_s))
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


async def _streams(channels: list[grpc.aio.Channel], plan: WorkerPlan, recorder: Recorder) -> None:
    """`concurrency` ModelStreamInfer calls, each sending `rate` frames/s, offsets spread randomly
    (stream i on connection i mod `connections`)."""
    rng = random.Random(plan.seed)
    answers = pb.ModelStreamInferResponse.FromString
    openers = [channel.stream_stream(METHOD_STREAM, response_deserializer=answers) for channel in channels]
    await asyncio.gather(
        *(
            _one_stream(
                openers[i % len(openers)],
                plan,
                recorder,
                i,
                rng.uniform(0, 1.0 / plan.rate),
                channels[i % len(channels)],
            )
            for i in range(plan.concurrency)
        )
    )


async def _one_stream(
    open_stream: Callable[..., Any],
    plan: WorkerPlan,
    recorder: Recorder,
    index: int,
    offset: float,
    channel: grpc.aio.Channel,
) -> None:
    end = plan.window[1]
    bound_s = end - time.monotonic() + plan.drain_s
    # No gRPC deadline: the server takes a stream's deadline as each frame's. wait_for bounds it.
    call = open_stream(metadata=metadata(plan.security))
    pending: dict[str, float] = {}
    space = asyncio.Semaphore(plan.max_in_flight)
    next_frame = [plan.start_at + offset]  # the next frame's scheduled time (send_then_wait moves it)

    async def receive() -> None:
        async for answer in call:
            scheduled = pending.pop(answer.infer_response.id, None)
            if scheduled is None:
                continue
            space.release()
            match = _STREAM_STATUS.match(answer.error_message)
            code = OK if not answer.error_message else match.group(1) if match else "STREAM_ERROR"
            recorder.record(scheduled, time.monotonic(), code, message=answer.error_message)

    async def send_then_wait() -> None:
        scheduled, k = next_frame[0], 0
        while scheduled < end and recorder.issued < plan.max_requests:
            await sleep_until(scheduled)
            # A frame waits for room here; its latency still counts from its scheduled time.
            await space.acquire()
            recorder.issue(scheduled)
            request_id = f"{index}-{k}"
            pending[request_id] = scheduled
            recorder.sending(scheduled, time.monotonic())
            await call.write(with_id(plan.payloads[k % len(plan.payloads)], request_id))
            k += 1
            scheduled += 1.0 / plan.rate
            next_frame[0] = scheduled
        await call.done_writing()
        await receiver

    receiver = asyncio.create_task(receive())
    status, message = NO_ANSWER, ""
    try:
        await asyncio.wait_for(send_then_wait(), timeout=max(0.1, bound_s))
    except grpc.aio.AioRpcError as exc:
        status, message = exc.code().name, exc.details() or ""
    except (TimeoutError, asyncio.TimeoutError, asyncio.InvalidStateError):
        status, message = await ended_with(call, status)
    finally:
        call.cancel()
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        now = time.monotonic()
        lost = connection_lost(channel, status)
        for scheduled in pending.values():
            recorder.record(scheduled, now, status, message=message, unreachable=lost)
        # A stream the server ended (refused at open, say: too many streams) sends no more frames:
        # those its plan still held count as failed with its status, so the offered rate and the
        # errors are the plan's (a refused stream had vanished from the report).
        if status != NO_ANSWER:
            scheduled = next_frame[0]
            while scheduled < end and recorder.issued < plan.max_requests:
                recorder.issue(scheduled)
                recorder.record(scheduled, now, status, message=message, unreachable=lost)
                scheduled += 1.0 / plan.rate


async def ended_with(call: Any, default: str) -> tuple[str, str]:
    """The status and message the server ended `call` with, if it has ended (else `default`)."""
    if not call.done():
        return default, ""
    code = await call.code()
    if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
        return default, ""
    return code.name, await call.details() or ""


def with_id(payload: bytes, request_id: str) -> bytes:
    """The pre-serialized request with its `id` set.

    Protobuf merges concatenated messages and the last value of a scalar field wins, so appending
    an encoded `id` field sets it without parsing or re-serializing the request.
    """
    data = request_id.encode()
    return payload + _ID_FIELD_TAG + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
