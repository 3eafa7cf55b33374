"""server/protocol/side_streams.py: health Watch and reflection streams count against the stream
limits while open, are refused naming the limit they would pass, and a drain ends them. A stand-in
context (its peer, its writes, its abort) replaces grpc's; tests/integration/test_hostile_sizes.py
opens the same streams on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from server.protocol.calls import CallTracker, StreamLimits
from server.protocol.side_streams import LimitedHealth, LimitedReflection

PEER = "ipv4:127.0.0.1:5000"
SERVICES = ("inference.GRPCInferenceService", "grpc.reflection.v1alpha.ServerReflection")


class Aborted(Exception):
    pass


class Context:
    """What the two services use of grpc.aio's ServicerContext."""

    def __init__(self, peer: str = PEER) -> None:
        self._peer = peer
        self.written: list[Any] = []
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.first_write = asyncio.Event()

    def peer(self) -> str:
        return self._peer

    async def write(self, message: Any) -> None:
        self.written.append(message)
        self.first_write.set()

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details)
        raise Aborted


class Held:
    """A stream already open (the limits' other holder)."""

    def finish(self, why: str = "drain") -> None:
        pass


def tracker(total: int = 4, per_connection: int = 4, per_peer: int = 4) -> CallTracker:
    return CallTracker(StreamLimits(total, per_connection, per_peer))


def watch(calls: CallTracker, context: Context) -> Any:
    return LimitedHealth(calls).Watch(health_pb2.HealthCheckRequest(service=""), context)


DRAINED = (grpc.StatusCode.UNAVAILABLE, "server is shutting down: this stream is ended")
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_watch_counts_while_open_and_a_drain_ends_it_unavailable() -> None:
    calls, context = tracker(), Context()
    task = asyncio.create_task(watch(calls, context))
    await asyncio.wait_for(context.first_write.wait(), 30)
    assert (calls.open_streams, calls.active) == (1, 1)
    calls.finish_streams()
    with pytest.raises(Aborted):  # the call ends: a cancelled handler left grpc's call open
        await asyncio.wait_for(task, 30)
    assert (calls.open_streams, calls.active) == (0, 0)
    assert context.aborted == DRAINED
    assert [m.status for m in context.written] == [SERVING]  # "" is SERVING until a drain says not


@pytest.mark.parametrize("shutdown_first", [True, False])
async def test_a_drained_watch_sees_not_serving_once_before_it_ends(shutdown_first: bool) -> None:
    # The server's drain marks every service NOT_SERVING, then ends the streams; whether the
    # watch wrote NOT_SERVING itself or the drain's end writes it, the client sees it once.
    calls, context = tracker(), Context()
    health = LimitedHealth(calls)
    health.set("mlp", SERVING)
    task = asyncio.create_task(health.Watch(health_pb2.HealthCheckRequest(service="mlp"), context))
    await asyncio.wait_for(context.first_write.wait(), 30)
    health.enter_graceful_shutdown()
    if shutdown_first:  # let the watch write the change itself
        for _ in range(1000):
            if len(context.written) == 2:
                break
            await asyncio.sleep(0)
    calls.finish_streams()
    with pytest.raises(Aborted):
        await asyncio.wait_for(task, 30)
    assert [m.status for m in context.written] == [SERVING, NOT_SERVING]
    assert context.aborted == DRAINED


@pytest.mark.parametrize(
    ("limits", "held_by", "message"),
    [
        ((1, 4, 4), "ipv4:127.0.0.2:1", "too many open streams on this server (max_streams=1)"),
        ((4, 1, 4), PEER, "too many open streams on this connection (max_streams_per_connection=1)"),
        (
            (4, 4, 1),
            "ipv4:127.0.0.1:6000",
            "too many open streams from ipv4:127.0.0.1 (max_streams_per_peer=1)",
        ),
    ],
)
async def test_a_watch_past_a_limit_is_refused_naming_it(
    limits: tuple[int, int, int], held_by: str, message: str
) -> None:
    calls, context = tracker(*limits), Context()
    with calls.stream(held_by, Held()), pytest.raises(Aborted):
        await watch(calls, context)
    assert context.aborted == (grpc.StatusCode.RESOURCE_EXHAUSTED, message)
    assert context.written == []
    assert (calls.open_streams, calls.active) == (0, 0)


async def test_a_watch_from_another_connection_is_not_held_to_this_ones_limit() -> None:
    calls, context = tracker(per_connection=1), Context("ipv4:127.0.0.1:6000")
    with calls.stream(PEER, Held()):
        task = asyncio.create_task(watch(calls, context))
        await asyncio.wait_for(context.first_write.wait(), 30)
        assert calls.open_streams == 2
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert context.aborted is None and calls.open_streams == 0


def reflection(calls: CallTracker) -> LimitedReflection:
    return LimitedReflection(SERVICES, None, calls)


async def list_services_then(more: asyncio.Event) -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
    yield reflection_pb2.ServerReflectionRequest(list_services="")
    await more.wait()  # never set: the client keeps its stream open


async def test_a_reflection_stream_answers_counts_while_open_and_a_drain_ends_it_unavailable() -> None:
    calls, context = tracker(), Context()
    task = asyncio.create_task(
        reflection(calls).ServerReflectionInfo(list_services_then(asyncio.Event()), context)
    )
    await asyncio.wait_for(context.first_write.wait(), 30)
    names = [service.name for service in context.written[0].list_services_response.service]
    assert sorted(names) == sorted(SERVICES)
    assert (calls.open_streams, calls.active) == (1, 1)
    calls.finish_streams()
    with pytest.raises(Aborted):
        await asyncio.wait_for(task, 30)
    assert (calls.open_streams, calls.active) == (0, 0)
    assert context.aborted == DRAINED and len(context.written) == 1


async def test_a_reflection_stream_that_ends_is_no_longer_counted() -> None:
    calls, context = tracker(), Context()

    async def one_request() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    await reflection(calls).ServerReflectionInfo(one_request(), context)
    assert len(context.written) == 1 and context.aborted is None
    assert (calls.open_streams, calls.active) == (0, 0)


async def test_a_reflection_stream_past_a_limit_is_refused_naming_it() -> None:
    calls, context = tracker(per_connection=1), Context()
    with calls.stream(PEER, Held()), pytest.raises(Aborted):
        await reflection(calls).ServerReflectionInfo(list_services_then(asyncio.Event()), context)
    assert context.written == [], "a refused stream answered"
    assert context.aborted == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too many open streams on this connection (max_streams_per_connection=1)",
    )
    assert calls.open_streams == 0


async def test_a_reflection_stream_answers_from_the_pool_it_was_given() -> None:
    # The server hands reflection a pool of its own descriptors; a symbol only that pool has is found.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(
        descriptor_pb2.FileDescriptorProto(
            name="side_streams_only.proto",
            package="sidecheck",
            service=[descriptor_pb2.ServiceDescriptorProto(name="Only")],
        )
    )

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(file_containing_symbol="sidecheck.Only")

    servicer = LimitedReflection(("sidecheck.Only",), pool, tracker())
    context = Context()
    await servicer.ServerReflectionInfo(ask(), context)
    (answer,) = context.written
    assert answer.WhichOneof("message_response") == "file_descriptor_response"
    (raw,) = answer.file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(raw).name == "side_streams_only.proto"
