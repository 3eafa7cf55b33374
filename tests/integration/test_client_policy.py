"""The client's pure parts, no server: errors, tensors, backoff, endpoint choice, retries, reordering.

Endpoint and retry decisions run on a fake clock and a seeded random source; the call loops and
the stream session run against fake stubs and a fake stream call.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest

from clients import (
    NO_RETRY,
    AsyncClient,
    Backoff,
    Client,
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    NotFound,
    Overloaded,
    RetryPolicy,
    SluicewayError,
    StreamResult,
    Unavailable,
    error_for,
    tensors,
)
from clients.endpoints import Attempts, ChannelOptions, EndpointPool
from clients.errors import ERROR_BY_CODE, from_rpc_error, from_stream_message
from clients.stream import StreamSession
from protos import grpc_service_pb2 as pb
from server.protocol.rich_status import retry_info_trailer
from tests.support.client_fakes import FakeClock, FakeRpcError

CODE = grpc.StatusCode


# -- errors ---------------------------------------------------------------------------------------


def test_every_status_class_is_mapped_and_others_get_the_base() -> None:
    expected = {
        CODE.NOT_FOUND: NotFound,
        CODE.INVALID_ARGUMENT: InvalidArgument,
        CODE.DEADLINE_EXCEEDED: DeadlineExceeded,
        CODE.RESOURCE_EXHAUSTED: Overloaded,
        CODE.UNAVAILABLE: Unavailable,
        CODE.INTERNAL: InternalError,
    }
    assert {code: cls for code, cls in ERROR_BY_CODE.items()} == expected
    for code, cls in expected.items():
        error = error_for(code, "why")
        assert type(error) is cls and error.code == code and error.message == "why"
        assert isinstance(error, SluicewayError)
    other = error_for(CODE.PERMISSION_DENIED, "no")
    assert type(other) is SluicewayError and other.code == CODE.PERMISSION_DENIED
    rpc = from_rpc_error(FakeRpcError(CODE.RESOURCE_EXHAUSTED, "queue is full"))
    assert isinstance(rpc, Overloaded) and rpc.message == "queue is full"


def test_stream_messages_map_to_the_same_classes() -> None:
    error = from_stream_message("INVALID_ARGUMENT: input 'x': bad: shape", "id-7")
    assert isinstance(error, InvalidArgument)
    assert error.message == "input 'x': bad: shape" and error.request_id == "id-7"
    assert isinstance(from_stream_message("RESOURCE_EXHAUSTED: full"), Overloaded)
    odd = from_stream_message("something else entirely")
    assert (
        type(odd) is SluicewayError and odd.code == CODE.UNKNOWN and odd.message == "something else entirely"
    )


# -- tensors --------------------------------------------------------------------------------------


def test_request_encoding_and_response_decoding_round_trip() -> None:
    arrays: dict[str, np.ndarray] = {
        wire: np.arange(6).reshape(2, 3).astype(dtype) for wire, dtype in tensors.DTYPE_BY_WIRE.items()
    }
    arrays["BYTES"] = np.array([["a", "", "é"], ["x" * 300, "b", "c"]])
    request = tensors.build_request("m", arrays, version=3, request_id="r", priority=2, outputs=["o"])
    assert request.model_version == "3" and request.id == "r"
    assert request.parameters["priority"].int64_param == 2
    assert [o.name for o in request.outputs] == ["o"]
    assert [t.datatype for t in request.inputs] == list(arrays)
    response = pb.ModelInferResponse(raw_output_contents=request.raw_input_contents)
    for tensor in request.inputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    decoded = tensors.decode_response(response)
    for wire, array in arrays.items():
        if wire == "BYTES":
            assert decoded[wire].dtype == object
            assert decoded[wire].tolist() == [[s.encode() for s in row] for row in array.tolist()]
        else:
            assert decoded[wire].dtype == array.dtype
            np.testing.assert_array_equal(decoded[wire], array)
            assert not decoded[wire].flags.writeable  # a view of the message, not a copy


def test_big_endian_and_strided_inputs_are_sent_little_endian_and_contiguous() -> None:
    array = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    request = tensors.build_request("m", {"x": array})
    assert request.raw_input_contents[0] == np.ascontiguousarray(array, dtype="<i4").tobytes()
    with pytest.raises(TypeError):
        tensors.build_request("m", {"x": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError):
        tensors.build_request("m", {"x": np.array([1, 2], dtype=object)})


def test_timeout_parameter_is_whole_microseconds_and_never_zero() -> None:
    request = tensors.build_request("m", {"x": np.zeros(1, np.float32)})
    tensors.set_timeout(request, 0.25)
    assert request.parameters["timeout"].int64_param == 250_000
    tensors.set_timeout(request, 1e-9)
    assert request.parameters["timeout"].int64_param == 1


def test_channel_options_are_explicit() -> None:
    options = dict(ChannelOptions().as_grpc())
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 64 << 20
    assert {
        "grpc.keepalive_time_ms",
        "grpc.keepalive_timeout_ms",
        "grpc.keepalive_permit_without_calls",
    } <= set(options)


def test_deadlines_are_never_infinite() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            Client("127.0.0.1:1", default_timeout_s=bad)
    client = Client("127.0.0.1:1")
    assert client.default_timeout_s == 10.0
    with pytest.raises(ValueError):
        client.infer("m", {"x": np.zeros(1)}, timeout_s=float("inf"))
    client.close()


# -- backoff and retry decisions ------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jittered_within_bounds() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, full in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]):
        delays = [backoff.delay(attempt, rng) for _ in range(50)]
        assert all(full * 0.5 <= d <= full for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_retry_only_retryable_codes_within_attempts_and_deadline() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=Backoff(0.1, 1.0, jitter=0.0))
    rng = random.Random(0)
    assert policy.delay(CODE.UNAVAILABLE, 0, 10.0, rng) == pytest.approx(0.1)
    assert policy.delay(CODE.RESOURCE_EXHAUSTED, 1, 10.0, rng) == pytest.approx(0.2)
    assert policy.delay(CODE.CANCELLED, 1, 10.0, rng) == pytest.approx(0.2)  # only servers cancel
    assert policy.delay(CODE.UNAVAILABLE, 2, 10.0, rng) is None  # third attempt was the last
    for code in (CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, CODE.DEADLINE_EXCEEDED, CODE.INTERNAL):
        assert policy.delay(code, 0, 10.0, rng) is None
    assert policy.delay(CODE.UNAVAILABLE, 0, 0.05, rng) is None  # would sleep past the deadline
    assert NO_RETRY.delay(CODE.UNAVAILABLE, 0, 10.0, rng) is None


# -- endpoint selection ---------------------------------------------------------------------------


def pool_of(primaries: list[str], fallback: str | None = None) -> tuple[EndpointPool, FakeClock]:
    clock = FakeClock()
    recheck = Backoff(initial_s=1.0, max_s=8.0, jitter=0.0)
    return EndpointPool(primaries, fallback, recheck=recheck, clock=clock, rng=random.Random(0)), clock


def test_round_robin_over_healthy_primaries_skips_down_ones() -> None:
    pool, _ = pool_of(["a", "b", "c"], fallback="f")
    assert [pool.choose().address for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    pool.mark_down("b")
    assert [pool.choose().address for _ in range(4)] == ["a", "c", "a", "c"]
    assert pool.health() == {"a": True, "b": False, "c": True, "f": True}


def test_down_endpoint_is_rechecked_after_a_growing_backoff() -> None:
    pool, clock = pool_of(["a", "b"])
    pool.mark_down("a")
    assert {pool.choose().address for _ in range(4)} == {"b"}
    clock.now += 1.0  # first re-check after 1 s
    choice = pool.choose()
    assert (choice.address, choice.probe) == ("a", True)
    assert pool.choose().address == "b"  # the check is claimed: nobody else probes "a" meanwhile
    pool.mark_down("a")  # the check failed: next one after 2 s
    clock.now += 1.5
    assert {pool.choose().address for _ in range(4)} == {"b"}
    clock.now += 0.5
    assert pool.choose() == type(choice)("a", True)
    pool.mark_up("a")
    assert [pool.choose().address for _ in range(4)] == ["b", "a", "b", "a"]


def test_fallback_only_while_every_primary_is_down() -> None:
    pool, clock = pool_of(["a", "b"], fallback="f")
    assert "f" not in {pool.choose().address for _ in range(10)}
    pool.mark_down("a")
    assert "f" not in {pool.choose().address for _ in range(10)}
    pool.mark_down("b")
    assert {pool.choose().address for _ in range(5)} == {"f"}
    clock.now += 1.0  # a primary due for its check is preferred over the fallback
    choice = pool.choose()
    assert choice.probe and choice.address in {"a", "b"}
    pool.mark_up(choice.address)  # its check passed
    assert "f" not in {pool.choose().address for _ in range(5)}


def test_everything_down_tries_the_endpoint_due_first_rather_than_failing_untried() -> None:
    pool, _ = pool_of(["a", "b"], fallback="f")
    pool.mark_down("a")
    pool.mark_down("a")  # "a" now waits longer than "b" and "f"
    pool.mark_down("b")
    pool.mark_down("f")
    choice = pool.choose()
    assert choice.address == "b" and not choice.probe
    with pytest.raises(ValueError):
        EndpointPool(["a", "a"])
    with pytest.raises(ValueError):
        EndpointPool([])


def test_attempts_fail_over_at_once_then_back_off_and_never_retry_past_the_deadline() -> None:
    pool, clock = pool_of(["a", "b"])
    policy = RetryPolicy(max_attempts=10, backoff=Backoff(0.5, 0.5, jitter=0.0))
    attempts = Attempts(pool, policy, 2.0, clock=clock, rng=random.Random(0))
    step = attempts.next()
    assert step.address == "a" and step.timeout_s == pytest.approx(2.0)
    # "b" is not tried yet: no wait (a refused connection had waited the backoff first).
    assert attempts.failed(step, FakeRpcError(CODE.UNAVAILABLE)) == 0.0
    assert pool.health()["a"] is False
    clock.now += 0.01
    step = attempts.next()
    assert step.address == "b" and step.timeout_s == pytest.approx(1.99)
    # Every endpoint tried: the backoff, then a new round.
    assert attempts.failed(step, FakeRpcError(CODE.RESOURCE_EXHAUSTED)) == pytest.approx(0.5)
    assert pool.health()["b"] is True  # a full queue is not a dead endpoint
    clock.now += 0.5
    step = attempts.next()
    assert (step.address, step.probe) == ("a", True)  # it answered UNAVAILABLE: checked first
    attempts.probed(step, False)
    clock.now += 1.19
    step = attempts.next()  # 0.3 s left: less than the next backoff, so the error is final
    assert step.address == "b"
    with pytest.raises(Overloaded):
        attempts.failed(step, FakeRpcError(CODE.RESOURCE_EXHAUSTED))
    late = Attempts(pool, policy, 1.0, clock=clock, rng=random.Random(0))
    clock.now += 1.0
    with pytest.raises(DeadlineExceeded):
        late.next()


class OverloadWithHint(FakeRpcError):
    """RESOURCE_EXHAUSTED with a google.rpc.RetryInfo in its rich status, as the server sends it."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(CODE.RESOURCE_EXHAUSTED, "queue is full")
        self._trailer = retry_info_trailer(CODE.RESOURCE_EXHAUSTED, "queue is full", retry_after_s)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return (("other", b"x"), *self._trailer)


def test_retry_info_sets_the_wait_or_gives_up_at_once() -> None:
    assert from_rpc_error(OverloadWithHint(0.3)).retry_after_s == pytest.approx(0.3)
    assert from_rpc_error(FakeRpcError(CODE.RESOURCE_EXHAUSTED)).retry_after_s is None
    pool, clock = pool_of(["a"])
    policy = RetryPolicy(max_attempts=10, backoff=Backoff(0.05, 0.05, jitter=0.0))
    attempts = Attempts(pool, policy, 2.0, clock=clock, rng=random.Random(0))
    # The hint is longer than the backoff: wait for it.
    assert attempts.failed(attempts.next(), OverloadWithHint(0.3)) == pytest.approx(0.3)
    clock.now += 0.3
    # A hint past the deadline: the overload answer now, not a DEADLINE_EXCEEDED later.
    with pytest.raises(Overloaded) as caught:
        attempts.failed(attempts.next(), OverloadWithHint(5.0))
    assert caught.value.retry_after_s == pytest.approx(5.0)


def test_retry_info_of_one_endpoint_does_not_delay_trying_another() -> None:
    pool, clock = pool_of(["a", "b"])
    policy = RetryPolicy(max_attempts=10, backoff=Backoff(0.05, 0.05, jitter=0.0))
    attempts = Attempts(pool, policy, 2.0, clock=clock, rng=random.Random(0))
    assert attempts.failed(attempts.next(), OverloadWithHint(5.0)) == 0.0
    assert attempts.next().address == "b"


# -- the sync and async call loops against fake stubs ---------------------------------------------


class FakeStubs:
    """Stands in for a channel's stubs: ModelInfer answers from a script of errors and successes."""

    def __init__(self, address: str, script: list[grpc.StatusCode | None], log: list[Any]) -> None:
        self.address, self.script, self.log = address, script, log
        self.inference = self
        self.health = self

    def ModelInfer(
        self, request: pb.ModelInferRequest, timeout: float, metadata: object
    ) -> pb.ModelInferResponse:
        self.log.append((self.address, request.parameters["timeout"].int64_param, timeout))
        code = self.script.pop(0) if self.script else None
        if code is not None:
            raise FakeRpcError(code)
        response = pb.ModelInferResponse(raw_output_contents=[np.float32([1, 2]).tobytes()])
        response.outputs.add(name="y", datatype="FP32", shape=[1, 2])
        return response


def fake_client(client: Any, scripts: dict[str, list[grpc.StatusCode | None]], log: list[Any]) -> Any:
    stubs = {address: FakeStubs(address, script, log) for address, script in scripts.items()}
    client._stubs = lambda address: stubs[address]
    return client


def test_sync_call_loop_retries_elsewhere_and_sends_the_remaining_time() -> None:
    log: list[Any] = []
    retry = RetryPolicy(backoff=Backoff(0.001, 0.001))
    client = fake_client(
        Client(["a", "b"], retry=retry, default_timeout_s=5.0), {"a": [CODE.UNAVAILABLE], "b": []}, log
    )
    out = client.infer("m", {"x": np.zeros((1, 1), np.float32)})
    np.testing.assert_array_equal(out["y"], [[1, 2]])
    assert [entry[0] for entry in log] == ["a", "b"]
    for _, timeout_us, deadline_s in log:
        assert 0 < deadline_s <= 5.0 and timeout_us == pytest.approx(deadline_s * 1e6, rel=0.01)
    log.clear()
    client = fake_client(Client(["a"], retry=retry), {"a": [CODE.INVALID_ARGUMENT]}, log)
    with pytest.raises(InvalidArgument):
        client.infer("m", {"x": np.zeros(1, np.float32)})
    assert len(log) == 1  # never retried


async def test_async_call_loop_gives_up_after_max_attempts_with_the_last_error() -> None:
    log: list[Any] = []
    retry = RetryPolicy(max_attempts=3, backoff=Backoff(0.001, 0.001))
    client = AsyncClient(["a"], retry=retry)

    class AsyncStubs(FakeStubs):
        async def ModelInfer(self, *args: Any, **kwargs: Any) -> pb.ModelInferResponse:  # type: ignore[override]
            return super().ModelInfer(*args, **kwargs)

    stubs = AsyncStubs("a", [CODE.RESOURCE_EXHAUSTED] * 5, log)
    client._stubs = lambda address: stubs  # type: ignore[method-assign]
    with pytest.raises(Overloaded):
        await client.infer("m", {"x": np.zeros(1, np.float32)})
    assert len(log) == 3


# -- the stream's reorder buffer against a fake call -----------------------------------------------


class FakeStreamCall:
    def __init__(self) -> None:
        self.sent: list[pb.ModelInferRequest] = []
        self.answers: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False

    async def write(self, request: pb.ModelInferRequest) -> None:
        self.sent.append(request)

    async def done_writing(self) -> None:
        self.answers.put_nowait(grpc.aio.EOF)

    async def read(self) -> Any:
        item = await self.answers.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True

    def answer(self, index: int, error: str = "") -> None:
        request = self.sent[index]
        response = pb.ModelStreamInferResponse(error_message=error)
        response.infer_response.id = request.id
        if not error:
            response.infer_response.outputs.add(name="y", datatype="FP32", shape=[1])
            response.infer_response.raw_output_contents.append(np.float32([index]).tobytes())
        self.answers.put_nowait(response)


def session_on(call: FakeStreamCall, max_in_flight: int = 8) -> tuple[StreamSession, list[grpc.StatusCode]]:
    reports: list[grpc.StatusCode] = []

    async def open_stream(timeout_s: float) -> tuple[Any, Callable[[grpc.StatusCode], None]]:
        return call, reports.append

    session = StreamSession(
        open_stream, "m", version="", max_in_flight=max_in_flight, frame_timeout_s=1.0, timeout_s=60.0
    )
    return session, reports


async def test_stream_results_come_back_in_sending_order_whatever_the_answer_order() -> None:
    call = FakeStreamCall()
    session, _ = session_on(call)
    async with session as stream:
        ids = [await stream.send({"x": np.zeros(1, np.float32)}) for _ in range(6)]
        assert len(set(ids)) == 6 and stream.in_flight == 6
        assert all(r.parameters["timeout"].int64_param == 1_000_000 for r in call.sent)
        for index in (3, 1, 5, 0, 2):
            call.answer(index, error="UNAVAILABLE: model not ready" if index == 2 else "")
        got = [await stream.recv_result() for _ in range(4)]  # frame 4 is not answered yet
        assert [r.request_id for r in got] == ids[:4]
        assert [r.outputs["y"][0] for r in got if r.outputs is not None] == [0, 1, 3]
        assert isinstance(got[2].error, Unavailable) and got[2].error.request_id == ids[2]
        with pytest.raises(Unavailable):
            got[2].unwrap()
        call.answer(4)
        assert (await stream.recv())["y"][0] == 4
        assert (await stream.recv())["y"][0] == 5  # answered long ago, held in order
        await stream.done_sending()
        assert [r async for r in stream] == []


async def test_stream_send_waits_while_max_in_flight_frames_are_not_received() -> None:
    """A slot is freed when the caller receives a result, not when its answer arrives: answered
    results the caller did not read had piled up without bound (tests/integration/
    test_client_stream_bounds.py)."""
    call = FakeStreamCall()
    session, _ = session_on(call, max_in_flight=2)
    async with session as stream:
        await stream.send({"x": np.zeros(1, np.float32)})
        await stream.send({"x": np.zeros(1, np.float32)})
        third = asyncio.create_task(stream.send({"x": np.zeros(1, np.float32)}))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not third.done() and stream.in_flight == 2 and len(call.sent) == 2
        call.answer(1)  # answered out of order: held for the caller, the slot still taken
        for _ in range(5):
            await asyncio.sleep(0)
        assert not third.done() and stream.in_flight == 1 and stream.unreceived == 2
        call.answer(0)
        assert (await stream.recv())["y"][0] == 0  # received: its slot is free
        await third
        assert len(call.sent) == 3
        with pytest.raises(ValueError):
            await stream.send({"x": np.zeros(1, np.float32)}, request_id=call.sent[2].id)


async def test_a_broken_stream_fails_every_unanswered_frame_and_reports_the_endpoint() -> None:
    call = FakeStreamCall()
    session, reports = session_on(call)
    async with session as stream:
        ids = [await stream.send({"x": np.zeros(1, np.float32)}) for _ in range(3)]
        call.answer(0)
        call.answers.put_nowait(FakeRpcError(CODE.UNAVAILABLE, "socket closed"))
        assert (await stream.recv())["y"][0] == 0
        for rid in ids[1:]:
            with pytest.raises(Unavailable) as info:
                await stream.recv()
            assert info.value.request_id == rid
        with pytest.raises(Unavailable):
            await stream.send({"x": np.zeros(1, np.float32)})
    assert reports == [CODE.UNAVAILABLE]


class EndingStreamCall(FakeStreamCall):
    """A call that can end with a status the reader has not read yet: grpc.aio's write() on a
    finished call raises a bare InvalidStateError, the status being the reader's to report."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = False

    async def write(self, request: pb.ModelInferRequest) -> None:
        if self.ended:
            raise asyncio.InvalidStateError("RPC already finished.")
        await super().write(request)

    def end(self, error: BaseException) -> None:
        self.ended = True
        self.answers.put_nowait(error)


async def test_a_stream_ended_before_done_sending_raises_its_error_from_iteration_and_recv() -> None:
    """`async for` ended normally (StopAsyncIteration) when the stream died before done_sending(),
    and recv() raised a bare EOFError: the error showed only at the next send()."""
    call = EndingStreamCall()
    session, _ = session_on(call)
    async with session as stream:
        got: list[StreamResult] = []

        async def consume() -> None:
            async for result in stream:
                got.append(result)

        consumer = asyncio.create_task(consume())
        await stream.send({"x": np.zeros(1, np.float32)})
        call.answer(0)
        call.end(FakeRpcError(CODE.UNAVAILABLE, "Socket closed"))
        with pytest.raises(Unavailable, match="Socket closed"):
            await consumer
        assert [r.outputs["y"][0] for r in got if r.outputs is not None] == [0]
        for _ in range(2):  # every receiver, every time (a fresh exception each)
            with pytest.raises(Unavailable, match="Socket closed"):
                await stream.recv()
        with pytest.raises(Unavailable, match="Socket closed"):
            await stream.send({"x": np.zeros(1, np.float32)})


async def test_a_stream_that_fails_after_done_sending_ends_iteration_after_the_failed_frames() -> None:
    call = EndingStreamCall()
    session, _ = session_on(call)
    async with session as stream:
        await stream.send({"x": np.zeros(1, np.float32)})
        await stream.send({"x": np.zeros(1, np.float32)})
        call.answer(0)
        call.answers.put_nowait(FakeRpcError(CODE.UNAVAILABLE, "Socket closed"))
        await stream.done_sending()  # before the reader sees the failure
        results = [result async for result in stream]
    assert results[0].error is None and isinstance(results[1].error, Unavailable)


async def test_a_write_to_a_call_that_just_ended_fails_with_its_status_not_cancelled() -> None:
    """The stream's reader had not recorded the call's status yet: the frame failed CANCELLED
    "the stream ended" where the server had refused the stream RESOURCE_EXHAUSTED."""
    call = EndingStreamCall()
    session, _ = session_on(call)
    async with session as stream:
        await stream.send({"x": np.zeros(1, np.float32)})
        call.end(FakeRpcError(CODE.RESOURCE_EXHAUSTED, "too many open streams on this connection"))
        with pytest.raises(Overloaded, match="too many open streams"):
            await stream.send({"x": np.zeros(1, np.float32)})
        assert stream.in_flight == 0 and len(call.sent) == 1
        with pytest.raises(Overloaded, match="too many open streams"):  # the frame sent before
            await stream.recv()
        with pytest.raises(Overloaded, match="too many open streams"):  # then the stream's error
            await stream.recv()


def test_a_failed_attempt_goes_to_an_untried_endpoint_at_once_then_backs_off() -> None:
    """Client([closed port, live], timeout_s=0.05) failed a third to half of first calls: the retry
    slept the backoff (25-50 ms) before trying the live endpoint, or gave up when it did not fit."""
    log: list[Any] = []
    slow = RetryPolicy(backoff=Backoff(5.0, 5.0))  # any wait would pass the 1 s deadline
    client = fake_client(
        Client(["a", "b"], retry=slow, default_timeout_s=1.0), {"a": [CODE.UNAVAILABLE], "b": []}, log
    )
    np.testing.assert_array_equal(client.infer("m", {"x": np.zeros((1, 1), np.float32)})["y"], [[1, 2]])
    assert [entry[0] for entry in log] == ["a", "b"]
    log.clear()
    client = fake_client(Client(["a"], retry=slow, default_timeout_s=1.0), {"a": [CODE.UNAVAILABLE]}, log)
    with pytest.raises(Unavailable):  # one endpoint: a retry would wait past the deadline
        client.infer("m", {"x": np.zeros(1, np.float32)})
    assert len(log) == 1
    pool, clock = pool_of(["a"], fallback="f")
    attempts = Attempts(
        pool, RetryPolicy(backoff=Backoff(0.5, 0.5, jitter=0.0)), 2.0, clock=clock, rng=random.Random(0)
    )
    assert attempts.failed(attempts.next(), FakeRpcError(CODE.UNAVAILABLE)) == 0.0  # no primary up
    step = attempts.next()
    assert (step.address, step.probe) == ("f", False)
    assert attempts.failed(step, FakeRpcError(CODE.UNAVAILABLE)) == pytest.approx(0.5)  # all tried


def test_closing_a_sync_client_under_a_call_fails_it_cancelled_not_retried() -> None:
    """The closed channel's CANCELLED was retried as a server's, and the retry raised a bare
    RuntimeError("the client is closed")."""
    log: list[Any] = []
    client = Client(["a", "b"], retry=RetryPolicy(backoff=Backoff(0.001, 0.001)))

    class ClosedUnderTheCall(FakeStubs):
        def ModelInfer(self, *args: Any, **kwargs: Any) -> pb.ModelInferResponse:
            client.close()  # as another thread would, while the call is in flight
            return super().ModelInfer(*args, **kwargs)

    stubs = {address: ClosedUnderTheCall(address, [CODE.CANCELLED], log) for address in ("a", "b")}

    def stubs_of(address: str) -> Any:
        if client._closed:
            raise RuntimeError("the client is closed")
        return stubs[address]

    client._stubs = stubs_of  # type: ignore[method-assign]
    with pytest.raises(SluicewayError) as caught:
        client.infer("m", {"x": np.zeros(1, np.float32)})
    assert caught.value.code == CODE.CANCELLED and "closed during the call" in caught.value.message
    assert len(log) == 1


def test_bytes_given_as_lists_keep_their_trailing_nul_bytes() -> None:
    """np.asarray made a fixed-width "S" array of the list, which drops trailing NULs."""
    for given in ([[b"a\x00", b"\x00\x00", b"z"]], [["a\x00", "\x00", ""]], b"tail\x00"):
        request = tensors.build_request("m", {"x": given})
        expected = np.array(given, dtype=object)
        assert request.inputs[0].datatype == "BYTES" and list(request.inputs[0].shape) == list(expected.shape)
        items = [item.encode() if isinstance(item, str) else item for item in expected.reshape(-1)]
        assert request.raw_input_contents[0] == b"".join(len(i).to_bytes(4, "little") + i for i in items)
