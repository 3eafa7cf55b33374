"""The load-test harness sends no deadline unless asked (as perf_analyzer): a hidden 10 s gRPC
deadline had gone out with every unary call, and each stream's (which the server takes as each
frame's). A bounded step still ends: calls unanswered `drain_s` after the window are cancelled
and counted NO_ANSWER, and results.json says what deadline was sent.

Fake channels stand in for grpc.aio ones: they record what each call was given."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, cast

import grpc
import pytest

from loadtest import realtime_worker, worker
from loadtest.results import summarize
from loadtest.scenario import Scenario, Step, Target, WorkerPlan, describe_deadline
from loadtest.stats import OK, Recorder, new_histogram
from protos import grpc_service_pb2 as pb

ANSWER: bytes = pb.ModelInferResponse(
    outputs=[pb.ModelInferResponse.InferOutputTensor(name="y")]
).SerializeToString()


class UnaryChannel:
    """ModelInfer that answers at once, or (hang) never, as a stopped server: then only a gRPC
    deadline, if one was sent, ends the call (DEADLINE_EXCEEDED, as grpc would)."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.timeouts: list[float | None] = []

    def unary_unary(self, method: str) -> Any:
        return self.infer

    async def infer(self, payload: bytes, timeout: float | None = None, metadata: Any = None) -> bytes:
        self.timeouts.append(timeout)
        if not self.hang:
            return ANSWER
        if timeout is None:
            await asyncio.Event().wait()  # never answered
        else:
            await asyncio.sleep(timeout)
        empty = grpc.aio.Metadata()
        raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, empty, empty, "Deadline Exceeded")


class StreamCall:
    """A ModelStreamInfer call that answers every frame at once, by its id."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()

    async def write(self, payload: bytes) -> None:
        request_id = pb.ModelInferRequest.FromString(payload).id
        await self.answers.put(
            pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id=request_id))
        )

    async def done_writing(self) -> None:
        await self.answers.put(None)

    def __aiter__(self) -> StreamCall:
        return self

    async def __anext__(self) -> pb.ModelStreamInferResponse:
        answer = await self.answers.get()
        if answer is None:
            raise StopAsyncIteration
        return answer

    def cancel(self) -> bool:
        return False

    def done(self) -> bool:
        return True


class StreamChannel:
    def __init__(self) -> None:
        self.opened: list[dict[str, Any]] = []  # the keyword arguments of each stream opened

    def stream_stream(self, method: str, response_deserializer: Any = None) -> Any:
        def open_stream(**kwargs: Any) -> StreamCall:
            self.opened.append(kwargs)
            return StreamCall()

        return open_stream


# The window is long beside the few milliseconds a step takes when nothing stalls: a closed-loop
# user sends nothing once its window is over, and a stall of this process (a busy machine, a niced
# mutmut run) between the plan's making and the users' start had left a 0.05 s window with no call.
WINDOW_S = 0.5


def plan(mode: str, deadline_s: float | None = None, concurrency: int = 2) -> WorkerPlan:
    return WorkerPlan(
        address="127.0.0.1:1", mode=mode, concurrency=concurrency, rate=100.0,  # type: ignore[arg-type]
        arrival="constant", phase_s=0.0, payloads=(b"",), deadline_s=deadline_s,
        start_at=time.monotonic() + 0.01, warmup_s=0.0, duration_s=WINDOW_S, drain_s=0.2,
        max_requests=20, max_in_flight=100, seed=1,
    )  # fmt: skip


def run_step(channel: object, mode: str, deadline_s: float | None = None, concurrency: int = 2) -> Recorder:
    """One step of `mode` over `channel`, planned inside the event loop that runs it (so that the
    loop's start does not eat into the window); its recorder."""

    async def main() -> Recorder:
        step = plan(mode, deadline_s, concurrency)
        recorder = Recorder(step.window, deadline_s)
        await worker.sleep_until(step.start_at)
        loops = {"closed": worker._closed, "open": worker._open, "stream": worker._streams}
        await loops[step.mode]([cast(grpc.aio.Channel, channel)], step, recorder)
        return recorder

    return asyncio.run(main())


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_no_grpc_deadline_is_sent_unless_one_is_asked(mode: str) -> None:
    channel = UnaryChannel()
    recorder = run_step(channel, mode)
    assert channel.timeouts and set(channel.timeouts) == {None}  # it had been 10 s (drain_s here)
    assert recorder.outcomes == {OK: recorder.scheduled}


def test_an_asked_deadline_is_sent_counting_from_the_scheduled_time() -> None:
    channel = UnaryChannel()
    run_step(channel, "open", deadline_s=1.0)
    assert channel.timeouts and all(t is not None and 0 < t <= 1.0 for t in channel.timeouts)


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_call_never_answered_is_cancelled_at_the_end_of_the_step_and_counted(mode: str) -> None:
    """Without a deadline a stopped server's calls would wait for good: the step still ends,
    `drain_s` after its window, and counts them NO_ANSWER (not a DEADLINE_EXCEEDED nobody asked
    for)."""
    channel = UnaryChannel(hang=True)
    recorder = run_step(channel, mode)
    assert recorder.scheduled > 0
    assert recorder.outcomes == {worker.NO_ANSWER: recorder.scheduled}


def test_a_stream_is_opened_without_a_deadline() -> None:
    channel = StreamChannel()
    recorder = run_step(channel, "stream", concurrency=2)
    assert len(channel.opened) == 2
    assert all(kwargs.get("timeout") is None for kwargs in channel.opened), channel.opened
    assert recorder.scheduled > 0 and recorder.outcomes == {OK: recorder.scheduled}


def test_a_realtime_stream_is_opened_without_a_deadline() -> None:
    channel = StreamChannel()

    async def one_stream() -> realtime_worker.StreamResult:
        realtime = realtime_worker.RealtimePlan(
            "127.0.0.1:1", 1, 0, 100.0, (b"",), time.monotonic() + 0.01, 0.0, WINDOW_S, 0.2, False, 0, False
        )
        return await realtime_worker._stream(
            cast(grpc.aio.Channel, channel), realtime, 0, 0.0, new_histogram(), []
        )

    result = asyncio.run(one_stream())
    assert channel.opened and all(kwargs.get("timeout") is None for kwargs in channel.opened)
    assert result.scheduled > 0 and result.computed == result.scheduled and not result.errors


def test_results_say_what_deadline_was_sent() -> None:
    target = Target("t", "127.0.0.1:1", "mlp")
    none = summarize(Scenario(targets=(target,), steps=(Step("open", 1.0),)), [])["deadline_sent"]
    assert none == {
        "grpc_deadline_ms": None,
        "timeout_parameter_us": None,
        "unanswered_cancelled_after_s": 10.0,
    }
    assert describe_deadline(none).startswith("deadline sent: none")
    asked = summarize(Scenario(targets=(target,), steps=(), deadline_ms=50.0), [])["deadline_sent"]
    assert asked["grpc_deadline_ms"] == 50.0 and asked["timeout_parameter_us"] == 50_000.0
    assert math.isclose(asked["unanswered_cancelled_after_s"], 1.05)
    assert describe_deadline(asked).startswith("deadline sent: 50 ms")
