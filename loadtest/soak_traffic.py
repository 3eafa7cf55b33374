"""The soak's traffic: closed-loop unary clients, ModelStreamInfer streams matched by request id,
calls and streams cancelled mid-flight, channels closed with calls in flight, and reloads.

Every loop ends at the end of the window (`end`, a loop-clock time) and every call has a gRPC
deadline, so nothing here can run for ever. Each request is settled into its class's ClassTally
exactly once: ok, an error status, cancelled by this client, or unanswered (a loss). A request's
`timeout` parameter (REQUEST_TIMEOUT_S) is shorter than its gRPC deadline (CALL_TIMEOUT_S), so a
server that answers gives its own answer first; the client's deadline firing means no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from clients.errors import QUEUE_SIZE_REACHED, from_stream_message
from clients.tensors import build_request, set_timeout
from loadtest.soak_report import BAD_ANSWER, NO_ANSWER, QUEUE_FULL, WATCHDOG, ClassTally
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

REQUEST_TIMEOUT_S = 10.0  # the `timeout` parameter: the server answers by then
CALL_TIMEOUT_S = 20.0  # the gRPC deadline: past it without an answer is a loss
CANCELLED_BY_CLIENT = "CANCELLED_BY_CLIENT"
STUB: Any = pb_grpc.GRPCInferenceServiceStub  # generated, unannotated


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of each kind of traffic runs at once."""

    unary_mlp: int = 4
    unary_resnet: int = 1
    streams: int = 3
    stream_window: int = 16  # frames in flight per stream
    frames_per_stream: int = 400  # then the stream half-closes and a new one opens
    stream_rate_hz: float = 100.0  # frames/s of each stream
    cancel_rate_hz: float = 50.0  # cancellations (calls, streams, channels) per second
    fault_raise: int = 1
    fault_hang: int = 2
    reload_every_s: float = 2.0
    hostile_pause_s: float = 0.02
    raise_every: int = 50  # mlp_raises raises every N-th run: bounds the loops' overtime
    hang_every: int = 20  # mlp_hangs hangs every N-th run
    seed: int = 0


@dataclass(slots=True)
class Books:
    """The tallies of one soak, by class name, in the order classes first appear."""

    tallies: dict[str, ClassTally] = field(default_factory=dict)

    def of(self, name: str) -> ClassTally:
        return self.tallies.setdefault(name, ClassTally())


def settle(tally: ClassTally, status: str | None, detail: str = "") -> None:
    """Record one request's outcome: None is OK; `detail` is the error's message."""
    if status is None:
        tally.ok += 1
    elif status == NO_ANSWER:
        tally.unanswered += 1
    elif status == CANCELLED_BY_CLIENT:
        tally.cancelled += 1
    else:
        tally.errors[status] += 1
        tally.examples.setdefault(status, detail[:300])


def status_of(code: grpc.StatusCode, details: str, elapsed_s: float, deadline_s: float) -> str:
    """An error's class: the watchdog's and a full queue's UNAVAILABLE apart, a client-side deadline
    as no answer."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and elapsed_s >= 0.95 * deadline_s:
        return NO_ANSWER
    if code == grpc.StatusCode.UNAVAILABLE and "run_timeout_s" in details:
        return WATCHDOG
    if code == grpc.StatusCode.UNAVAILABLE and QUEUE_SIZE_REACHED in details:
        return QUEUE_FULL
    return str(code.name)


def stream_status(code: grpc.StatusCode) -> str:
    """How the frames left on a stream that failed as a whole are settled: the stream's deadline
    (the client's) means they were never answered."""
    return NO_ANSWER if code == grpc.StatusCode.DEADLINE_EXCEEDED else f"STREAM {code.name}"


def mlp_request(model: str, rows: int, rid: str) -> pb.ModelInferRequest:
    features = np.full((rows, 64), 0.25, np.float32)
    request = build_request(model, {"features": features}, request_id=rid)
    set_timeout(request, REQUEST_TIMEOUT_S)
    return request


def frame_request(rid: str) -> pb.ModelInferRequest:
    request = build_request("resnet_u8", {"frame": np.zeros((1, 224, 224, 3), np.uint8)}, request_id=rid)
    set_timeout(request, REQUEST_TIMEOUT_S)
    return request


def answer_status(response: pb.ModelInferResponse, rid: str, rows: int) -> str | None:
    """None when the answer is the one asked for (its id, one output of `rows` rows)."""
    shape = list(response.outputs[0].shape) if response.outputs else []
    return None if response.id == rid and shape[:1] == [rows] else BAD_ANSWER


async def unary(stub: Any, tally: ClassTally, request: pb.ModelInferRequest, rows: int) -> None:
    tally.sent += 1
    started = time.monotonic()
    try:
        response = await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        elapsed, details = time.monotonic() - started, err.details() or ""
        settle(tally, status_of(err.code(), details, elapsed, CALL_TIMEOUT_S), details)
    else:
        elapsed = time.monotonic() - started
        settle(tally, answer_status(response, request.id, rows))
    tally.slowest_s = max(tally.slowest_s, elapsed)


def _now() -> float:
    return asyncio.get_running_loop().time()


async def pace(start: float, n: int, rate_hz: float) -> None:
    """Wait for the n-th slot of a schedule of `rate_hz` from `start` (open-loop pacing)."""
    delay = start + n / rate_hz - _now()
    if delay > 0:
        await asyncio.sleep(delay)


async def closed_loop(
    stub: Any,
    tally: ClassTally,
    end: float,
    make: Callable[[int], tuple[pb.ModelInferRequest, int]],
    until: Callable[[], bool] = lambda: True,
    overtime: int = 0,
) -> None:
    """One request at a time until `end`: `make(n)` gives the n-th request and its rows. Past
    `end`, on while `until()` is false, at most `overtime` requests more: on a machine too busy
    to reach a fault's N-th run in the window, the soak still sees the fault it checks for."""
    n = extra = 0
    while _now() < end or (not until() and extra < overtime):
        extra += _now() >= end
        request, rows = make(n)
        await unary(stub, tally, request, rows)
        n += 1


class StreamBook:
    """One stream's frames: sent and not answered (with their rows), and answered."""

    def __init__(self, tally: ClassTally) -> None:
        self.tally = tally
        self.pending: dict[str, int] = {}
        self.answered: set[str] = set()

    def sent(self, rid: str, rows: int) -> None:
        self.tally.sent += 1
        self.pending[rid] = rows

    def received(self, response: pb.ModelStreamInferResponse) -> bool:
        """Settle the frame this answer is for; False for a duplicate or unknown id."""
        rid = response.infer_response.id
        rows = self.pending.pop(rid, None)
        if rows is None:
            if rid in self.answered:
                self.tally.duplicates += 1
            else:
                self.tally.unknown_ids += 1
            return False
        self.answered.add(rid)
        if response.error_message:
            error = from_stream_message(response.error_message, rid)
            settle(self.tally, status_of(error.code, error.message, 0.0, CALL_TIMEOUT_S), error.message)
        else:
            settle(self.tally, answer_status(response.infer_response, rid, rows))
        return True

    def close(self, status: str, detail: str = "") -> None:
        """The stream is over: what is still pending is settled with `status`."""
        for _ in self.pending:
            settle(self.tally, status, detail)
        self.pending.clear()


async def one_stream(stub: Any, tally: ClassTally, model: str, prefix: str, plan: Plan, end: float) -> None:
    """Frames with unique ids while `end` is ahead (at most frames_per_stream, stream_window in
    flight), then half-close and read to the end; every id must be answered exactly once."""
    book = StreamBook(tally)
    window = asyncio.Semaphore(plan.stream_window)
    call = stub.ModelStreamInfer(timeout=max(0.0, end - _now()) + CALL_TIMEOUT_S)

    async def write() -> None:
        start = _now()
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            for n in range(plan.frames_per_stream):
                await pace(start, n, plan.stream_rate_hz)
                await window.acquire()
                if _now() >= end:
                    break
                rid, rows = f"{prefix}-{n}", 1 + n % 4
                book.sent(rid, rows)
                await call.write(mlp_request(model, rows, rid))
            await call.done_writing()

    writer = asyncio.create_task(write())
    leftover, detail = NO_ANSWER, "the stream ended without answering"  # lost
    try:
        while (response := await call.read()) is not grpc.aio.EOF:
            if book.received(response):
                window.release()
    except grpc.aio.AioRpcError as err:
        leftover, detail = stream_status(err.code()), err.details() or ""
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    book.close(leftover, detail)


async def stream_loop(stub: Any, tally: ClassTally, model: str, index: int, plan: Plan, end: float) -> None:
    generation = 0
    while _now() < end:
        await one_stream(stub, tally, model, f"{model}.{index}.{generation}", plan, end)
        generation += 1


async def cancelled_stream(stub: Any, tally: ClassTally, prefix: str, rng: random.Random) -> None:
    """Send a few frames, read some answers, then cancel the call: the rest are cancelled by us."""
    book = StreamBook(tally)
    call = stub.ModelStreamInfer(timeout=CALL_TIMEOUT_S)
    frames = rng.randint(2, 24)
    to_read = rng.randint(0, frames)
    leftover, detail = CANCELLED_BY_CLIENT, ""
    try:
        for n in range(frames):
            rid = f"{prefix}-{n}"
            book.sent(rid, 1)
            await call.write(mlp_request("mlp", 1, rid))
        while to_read > 0 and (response := await call.read()) is not grpc.aio.EOF:
            to_read -= int(book.received(response))
    except grpc.aio.AioRpcError as err:
        leftover, detail = stream_status(err.code()), err.details() or ""
    call.cancel()
    book.close(leftover, detail)


async def cancelled_call(stub: Any, tally: ClassTally, request: pb.ModelInferRequest, delay_s: float) -> None:
    """A call cancelled `delay_s` after it was sent (settled by its answer if that came first)."""
    tally.sent += 1
    call = stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    await asyncio.sleep(delay_s)  # pacing: how far the call gets before the client gives up
    if call.cancel():
        settle(tally, CANCELLED_BY_CLIENT)
        return
    await _settle_done(tally, call, request)


async def _settle_done(tally: ClassTally, call: Any, request: pb.ModelInferRequest) -> None:
    code = await call.code()
    if code == grpc.StatusCode.OK:
        settle(tally, answer_status(await call, request.id, request.inputs[0].shape[0]))
    elif code == grpc.StatusCode.CANCELLED:  # only this client cancels (it closed the channel)
        settle(tally, CANCELLED_BY_CLIENT)
    else:
        details = await call.details() or ""
        settle(tally, status_of(code, details, 0.0, CALL_TIMEOUT_S), details)


async def closed_channel(address: str, tally: ClassTally, prefix: str, delay_s: float) -> None:
    """A client that goes away: four calls on a channel of its own, then the channel closes."""
    channel = grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = STUB(channel)
    requests = [mlp_request("mlp", 1 + i, f"{prefix}-{i}") for i in range(4)]
    calls = [stub.ModelInfer(request, timeout=CALL_TIMEOUT_S) for request in requests]
    tally.sent += len(calls)
    await asyncio.sleep(delay_s)
    await channel.close()
    for call, request in zip(calls, requests, strict=True):
        await _settle_done(tally, call, request)


async def cancel_loop(address: str, stub: Any, books: Books, plan: Plan, end: float) -> None:
    """Cancelled calls (mlp and camera frames), cancelled streams and closed channels, in turn."""
    rng = random.Random(plan.seed)
    n, start = 0, _now()
    while _now() < end:
        await pace(start, n, plan.cancel_rate_hz)
        rid = f"cancel-{n}"
        if n % 10 == 9:
            await cancelled_stream(stub, books.of("cancel_stream"), rid, rng)
        elif n % 10 == 4:
            await closed_channel(address, books.of("cancel_channel"), rid, rng.uniform(0, 0.004))
        else:
            request = frame_request(rid) if n % 2 else mlp_request("mlp", 1 + n % 8, rid)
            await cancelled_call(stub, books.of("cancel_unary"), request, rng.uniform(0, 0.004))
        n += 1


async def reload_loop(stub: Any, tally: ClassTally, model: str, every_s: float, end: float) -> None:
    """RepositoryModelLoad(model) every `every_s` until `end`: each reload must succeed."""
    while _now() + every_s < end:
        await asyncio.sleep(every_s)  # pacing between reloads
        tally.sent += 1
        started = time.monotonic()
        try:
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=model), timeout=60)
        except grpc.aio.AioRpcError as err:
            details = err.details() or ""
            settle(tally, status_of(err.code(), details, time.monotonic() - started, 60), details)
        else:
            settle(tally, None)


def traffic(address: str, stub: Any, books: Books, plan: Plan, end: float) -> list[asyncio.Task[None]]:
    """Every normal, faulty, cancelling and reloading loop of the soak, started."""
    tasks: list[asyncio.Task[None]] = []

    def start(coro: Any) -> None:
        tasks.append(asyncio.create_task(coro))

    for i in range(plan.unary_mlp):
        start(closed_loop(stub, books.of("unary_mlp"), end, _mlp_maker("mlp", f"m{i}")))
    for i in range(plan.unary_resnet):
        start(closed_loop(stub, books.of("unary_resnet_u8"), end, _frame_maker(f"r{i}")))
    for i in range(plan.streams):
        start(stream_loop(stub, books.of("stream_mlp"), "mlp", i, plan, end))
    raised, hung = (books.of("fault_raise"), books.of("stream_fault_raise")), books.of("fault_hang")

    def have_raised() -> bool:
        return any(tally.errors["INTERNAL"] for tally in raised)

    def have_hung() -> bool:
        return hung.errors[WATCHDOG] > 0

    # Past the window each closed-loop request is a run of its own once the other loops stop,
    # so 2N more requests (N: the fault's period) reach the fault even when two loops share runs.
    for i in range(plan.fault_raise):
        maker = _mlp_maker("mlp_raises", f"fr{i}")
        start(closed_loop(stub, raised[0], end, maker, have_raised, 2 * plan.raise_every))
    start(stream_loop(stub, raised[1], "mlp_raises", 0, plan, end))
    for i in range(plan.fault_hang):
        maker = _mlp_maker("mlp_hangs", f"fh{i}")
        start(closed_loop(stub, hung, end, maker, have_hung, 2 * plan.hang_every))
    start(cancel_loop(address, stub, books, plan, end))
    if plan.reload_every_s > 0:
        start(reload_loop(stub, books.of("reload"), "mlp", plan.reload_every_s, end))
    return tasks


def _mlp_maker(model: str, prefix: str) -> Callable[[int], tuple[pb.ModelInferRequest, int]]:
    def make(n: int) -> tuple[pb.ModelInferRequest, int]:
        rows = 1 + n % 8
        return mlp_request(model, rows, f"{prefix}-{n}"), rows

    return make


def _frame_maker(prefix: str) -> Callable[[int], tuple[pb.ModelInferRequest, int]]:
    return lambda n: (frame_request(f"{prefix}-{n}"), 1)
