"""A CancelledError that is not the call's own cancellation (a future or task the server cancelled,
awaited by a handler) is answered UNAVAILABLE at once. grpc.aio sends no status for a handler
that raises CancelledError: its client waited until its deadline (DEADLINE_EXCEEDED "Deadline
Exceeded", 5 s of 5 s), for good without one (a helper's probe, forty-first session). The call's
own cancel (its client went, its deadline passed) still ends the handler as before. Python 3.11+:
3.10's tasks cannot tell the two apart (no Task.cancelling), and keep the old behaviour."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from server.protocol.answers import answers_errors
from server.protocol.calls import CallTracker, StreamLimits
from server.protocol.request_path import RequestPath
from server.protocol.stream import StreamSession
from tests.support.aborting_context import Aborted, AbortingContext


async def cancelled_by_the_server() -> None:
    """Await a future that something else cancels (a batcher's, a load's, an instance's)."""
    future = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(future.cancel)
    await future


class Service:
    def __init__(self) -> None:
        self.calls = CallTracker(StreamLimits(8, 8, 8))
        self.waiting = asyncio.Event()

    @answers_errors
    async def Stray(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await cancelled_by_the_server()
        return b"never"

    @answers_errors
    async def Hangs(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.waiting.set()
        await asyncio.Event().wait()
        return b"never"


pytestmark = pytest.mark.skipif(not hasattr(asyncio.Task, "cancelling"), reason="Python 3.11+")


async def test_a_stray_cancel_in_a_unary_handler_is_answered_unavailable() -> None:
    context = AbortingContext()
    with pytest.raises(Aborted):
        await asyncio.wait_for(Service().Stray(b"", cast(grpc.aio.ServicerContext, context)), 5)
    assert context.status is not None and context.status[0] == grpc.StatusCode.UNAVAILABLE


async def test_the_call_s_own_cancel_still_ends_the_handler_unanswered() -> None:
    context = AbortingContext()
    service = Service()
    call = asyncio.ensure_future(service.Hangs(b"", cast(grpc.aio.ServicerContext, context)))
    await asyncio.wait_for(service.waiting.wait(), 5)  # the handler runs: the cancel is the call's
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert context.status is None


async def test_over_grpc_the_client_gets_unavailable_promptly_not_its_deadline() -> None:
    service = Service()

    async def stray(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await service.Stray(request, context)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", {
        "Stray": grpc.unary_unary_rpc_method_handler(stray, lambda b: b, lambda b: b)}),))  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            began = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary("/t.T/Stray")(b"x", timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value.details()
            assert time.monotonic() - began < 2
    finally:
        await server.stop(0)


class StrayPath:
    """Every request waits in a batcher whose future the server cancels."""

    def model_of(self, request: pb.ModelInferRequest) -> None:
        return None

    def needs_load(self, request: pb.ModelInferRequest) -> bool:
        return False

    def evictable(self, request: pb.ModelInferRequest) -> bool:
        return False

    def frame_rules(self, request: pb.ModelInferRequest) -> None:
        return None

    def start(self, request: pb.ModelInferRequest, *args: object, **kw: object) -> tuple[Any, None]:
        return SimpleNamespace(id=request.id, served=SimpleNamespace(stats=None)), None

    async def finish(self, job: Any, *args: object) -> pb.ModelInferResponse:
        if job.id == "2":
            await cancelled_by_the_server()
        return pb.ModelInferResponse(id=job.id)


async def test_a_stray_cancel_of_a_stream_frame_answers_that_frame_and_the_stream_goes_on() -> None:
    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        for i in range(1, 4):
            yield pb.ModelInferRequest(model_name="m", id=str(i))

    stream = StreamSession(requests(), cast(RequestPath, StrayPath()), max_in_flight=8, deadline=None)
    got = await asyncio.wait_for(_all(stream.answers()), 5)  # today: CancelledError out of answers()
    by_id = {a.infer_response.id: a.error_message for a in got}
    assert by_id["1"] == "" and by_id["3"] == ""
    assert by_id["2"].startswith("UNAVAILABLE: "), by_id


async def _all(answers: AsyncIterator[pb.ModelStreamInferResponse]) -> list[pb.ModelStreamInferResponse]:
    return [a async for a in answers]
