"""One client process of the real-time streams mode (loadtest/realtime.py): N ModelStreamInfer
calls, each sending one chunk every 1/rate seconds on an absolute schedule, and what each saw.

Chunk k of a stream is due at `start_at + offset + k / rate` (computed from k, so sleeping late
never shifts later chunks); its latency counts from that due time, so a client that falls behind
cannot hide it. A stream keeps real time when every chunk due inside the window was answered
(computed, or dropped by latest-frame-wins) before the next chunk was due, without errors.

No gRPC deadline goes out (the server takes a stream's deadline as each chunk's): a stream is
bounded here, cancelled `drain_s` after the window. A stream the server ends or refuses (a stream
limit) counts every chunk of its schedule it did not answer as an error with the server's status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
import re
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc
import numpy as np

from loadtest.channels import aio_channel, metadata
from loadtest.hdr_figures import nearest_rank
from loadtest.scenario import PLAINTEXT, Security
from loadtest.start import Stopped, common_start
from loadtest.stats import HIGHEST_US, LOWEST_US, MESSAGE_CHARS, new_histogram
from loadtest.worker import CHANNEL_OPTIONS, METHOD_STREAM, ended_with, sleep_until, with_id
from protos import grpc_service_pb2 as pb

STREAMS_PER_CHANNEL = 64  # below the server's max_streams_per_connection (128 by default)
_STATUS = re.compile(r"^([A-Z_]+):")
NO_ANSWER = "NO_ANSWER"


@dataclass(frozen=True)
class RealtimePlan:
    address: str
    streams: int
    first_stream: int  # global index of this process's first stream
    rate: float  # chunks/s of each stream
    payloads: tuple[bytes, ...]  # serialized requests, sent in turn (chunk k: payloads[k % n])
    start_at: float  # time.monotonic(): the same instant in every process
    warmup_s: float
    duration_s: float
    drain_s: float
    sequence: bool  # send sequence_id / sequence_start / sequence_end (one sequence per stream)
    sequence_base: int
    latest_frame_wins: bool  # send the latest_frame_wins request parameter
    seed: int = 0
    security: Security = PLAINTEXT

    @property
    def window(self) -> tuple[float, float]:
        begin = self.start_at + self.warmup_s
        return begin, begin + self.duration_s


@dataclass
class StreamResult:
    """One stream's chunks due inside the window, and how they ended."""

    index: int
    scheduled: int = 0
    computed: int = 0
    dropped: int = 0
    late: int = 0  # computed or failed after the next chunk was due, or never answered
    errors: dict[str, int] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)  # the server's first message per status
    p50_us: float | None = None  # latency of computed chunks
    p99_us: float | None = None
    max_us: float | None = None

    @property
    def real_time(self) -> bool:
        return self.scheduled > 0 and self.late == 0 and not self.errors


@dataclass
class ProcessResult:
    streams: list[StreamResult]
    histogram: bytes  # latencies (us) of computed chunks in the window, HdrHistogram-encoded
    lag_p99_us: float  # how late this process sent chunks after their due time
    cpu_s: float


def worker_main(conn: Connection) -> None:
    """Process entry point: run one plan from `conn`, send back ("ok", ProcessResult) or an error."""
    try:
        import uvloop

        run: Callable[[Any], Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        plan = conn.recv()
        conn.send(("ok", run(run_plan(plan, lambda: common_start(conn)))))
    except Stopped:
        return
    except Exception:
        conn.send(("error", traceback.format_exc()))


async def run_plan(
    plan: RealtimePlan, start_time: Callable[[], Awaitable[float]] | None = None
) -> ProcessResult:
    """Every stream of the plan; with `start_time`, start_at is what it returns once every channel
    is connected (the coordinator's common start, loadtest/start.py)."""
    histogram = new_histogram()
    lags: list[float] = []
    rng = random.Random(plan.seed + plan.first_stream)
    channels = math.ceil(plan.streams / STREAMS_PER_CHANNEL)
    # A local subchannel pool per channel: each its own TCP connection (and its own stream cap).
    options = (*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1))
    opened = [aio_channel(plan.address, plan.security, options) for _ in range(channels)]
    chans = [await c.__aenter__() for c in opened]
    try:
        for chan in chans:
            await asyncio.wait_for(chan.channel_ready(), timeout=max(5.0, plan.start_at - time.monotonic()))
        if start_time is not None:
            plan = dataclasses.replace(plan, start_at=await start_time())
        before = os.times()
        results = await asyncio.gather(
            *(
                _stream(
                    chans[i // STREAMS_PER_CHANNEL], plan, i, rng.uniform(0, 1 / plan.rate), histogram, lags
                )
                for i in range(plan.streams)
            )
        )
        after = os.times()
    finally:
        for c in opened:
            await c.__aexit__(None, None, None)
    lag_p99 = float(np.percentile(lags, 99)) * 1e6 if lags else 0.0
    cpu_s = (after.user - before.user) + (after.system - before.system)
    return ProcessResult(
        list(results), histogram.encode() if histogram.get_total_count() else b"", lag_p99, cpu_s
    )


def _suffixes(plan: RealtimePlan, sid: int) -> tuple[bytes, bytes, bytes]:
    """Encoded parameters for a stream's first, middle and last chunk, appended to its payloads
    (protobuf merges a concatenated message: map entries are added, so nothing is re-serialized)."""

    def encode(start: bool, end: bool) -> bytes:
        request = pb.ModelInferRequest()
        if plan.sequence:
            request.parameters["sequence_id"].uint64_param = sid
            request.parameters["sequence_start"].bool_param = start
            request.parameters["sequence_end"].bool_param = end
        if plan.latest_frame_wins:
            request.parameters["latest_frame_wins"].bool_param = True
        data: bytes = request.SerializeToString()
        return data

    return encode(True, False), encode(False, False), encode(False, True)


async def _stream(
    channel: grpc.aio.Channel,
    plan: RealtimePlan,
    local: int,
    offset: float,
    histogram: Any,
    lags: list[float],
) -> StreamResult:
    index = plan.first_stream + local
    result = StreamResult(index)
    period = 1.0 / plan.rate
    begin, end = plan.window
    first_due = plan.start_at + offset
    chunks = max(1, math.ceil((end - first_due) * plan.rate))
    first, middle, last = _suffixes(plan, plan.sequence_base + index)
    pending: dict[str, float] = {}  # request id -> due time
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    open_stream = channel.stream_stream(
        METHOD_STREAM, response_deserializer=pb.ModelStreamInferResponse.FromString
    )
    call = open_stream(metadata=metadata(plan.security))  # no deadline: bounded by wait_for below
    written = [0]  # chunks handed to the stream so far

    def measured(due: float) -> bool:
        return begin <= due < end

    def settle(due: float, latency: float, code: str) -> None:
        if not measured(due):
            return
        result.scheduled += 1
        if code == "dropped":
            result.dropped += 1
            return
        if latency > period:
            result.late += 1
        if code == "computed":
            result.computed += 1
            latencies.append(latency)
            histogram.record_value(min(HIGHEST_US, max(LOWEST_US, round(latency * 1e6))))
        else:
            errors[code] += 1

    async def receive() -> None:
        async for answer in call:
            due = pending.pop(answer.infer_response.id, None)
            if due is None:
                continue
            if answer.error_message:
                match = _STATUS.match(answer.error_message)
                code = match.group(1) if match else "STREAM_ERROR"
                result.messages.setdefault(code, answer.error_message[:MESSAGE_CHARS])
            elif answer.infer_response.parameters["frame_dropped"].bool_param:
                code = "dropped"
            else:
                code = "computed"
            settle(due, time.monotonic() - due, code)
            if not pending and sent_all.is_set():
                return

    async def send() -> None:
        for k in range(chunks):
            due = first_due + k * period
            await sleep_until(due)
            request_id = f"{index}-{k}"
            pending[request_id] = due
            written[0] = k + 1  # pending from here: counted once, whether or not the write succeeds
            suffix = first if k == 0 else last if k == chunks - 1 else middle
            if measured(due):
                lags.append(time.monotonic() - due)
            await call.write(with_id(plan.payloads[k % len(plan.payloads)] + suffix, request_id))
        sent_all.set()
        await call.done_writing()

    async def send_then_receive() -> None:
        await send()
        await receiver

    sent_all = asyncio.Event()
    receiver = asyncio.create_task(receive())
    status, message = NO_ANSWER, ""
    try:
        await asyncio.wait_for(send_then_receive(), timeout=max(0.1, end + plan.drain_s - time.monotonic()))
    except grpc.aio.AioRpcError as exc:
        status, message = exc.code().name, exc.details() or ""
    except (TimeoutError, asyncio.TimeoutError, asyncio.InvalidStateError):
        # Writing to a stream the server has ended (refused at open, say) raises InvalidStateError.
        status, message = await ended_with(call, status)
    finally:
        call.cancel()
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
    # Sent and never answered, then never sent: a refused stream's chunks are errors with the
    # server's status, offered all the same (they had vanished: 1 chunk offered, NO_ANSWER).
    for due in [*pending.values(), *(first_due + k * period for k in range(written[0], chunks))]:
        settle(due, math.inf, status)
    if message and errors[status]:
        result.messages.setdefault(status, message[:MESSAGE_CHARS])
    result.errors = dict(errors)
    if latencies:
        result.p50_us, result.p99_us, result.max_us = stream_percentiles_us(latencies)
    return result


def stream_percentiles_us(latencies_s: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max of one stream's latencies, in microseconds. Nearest rank, as the run's HDR
    figures read their percentiles: interpolated, one stream's p99 had read 134 ms where the
    run's, of the same frames, read 162."""
    values = np.sort(np.asarray(latencies_s)) * 1e6

    def at(percent: float) -> float:  # ceil(p * n / 100); hdrh's half-up rank had read lower
        return float(values[nearest_rank(percent, len(values)) - 1])

    return at(50.0), at(99.0), float(values[-1])
