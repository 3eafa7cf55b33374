"""grpc's health and reflection services with their streams counted as streams.

A health Watch stream (or a reflection stream) stays open as long as its client wants, and
grpc.aio counts it against `max_concurrent_rpcs` like any call: 70 Watch streams on a server
allowing 64 concurrent RPCs refused every ModelInfer, ServerLive and health Check ("Concurrent RPC
limit exceeded"). Counted by the stream limits (`max_streams`, per connection, per peer), which
stay below `max_concurrent_rpcs`, they cannot take the room unary calls need.

A drain ends them: a Watch first gets its service's last status (NOT_SERVING once the drain has
begun), then each ends UNAVAILABLE. Cancelling their handlers' tasks instead had left grpc's calls
open until the shutdown grace ran out (one idle Watch held every SIGTERM ~5 s), and the watchers
never saw NOT_SERVING.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from server.errors import ShuttingDown, StreamLimitReached
from server.protocol.answers import abort_with
from server.protocol.calls import CallTracker

T = TypeVar("T")


class _SideStream:
    """One such stream, as the tracker's drain sees it."""

    def __init__(self) -> None:
        self._finished = asyncio.Event()

    def finish(self, why: str = "drain") -> None:
        self._finished.set()

    async def until_finished(self, work: Awaitable[T]) -> asyncio.Future[T] | None:
        """`work` done (its future), or None when the stream was finished first (`work` cancelled)."""
        doing = asyncio.ensure_future(work)
        ending = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait((doing, ending), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending.cancel()
            if not doing.done():
                doing.cancel()
                await asyncio.gather(doing, return_exceptions=True)
        return doing if not doing.cancelled() else None


class _StatusesWritten:
    """A Watch's context that remembers the last status written to it."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self.last: int | None = None  # a HealthCheckResponse.ServingStatus

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        self.last = message.status  # before: a drain may cancel the write once grpc has the message
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _drained() -> ShuttingDown:
    return ShuttingDown("server is shutting down: this stream is ended")


class LimitedHealth(health_aio.HealthServicer):  # type: ignore[misc]  # grpc_health has no types
    def __init__(self, calls: CallTracker) -> None:
        super().__init__()
        self._calls = calls
        self._watching: Counter[str] = Counter()  # open Watches per service

    async def forget(self, service: str) -> None:
        """Drop `service`'s status (a model name the server forgot): Check answers NOT_FOUND and
        a Watch SERVICE_UNKNOWN, as for a name never set; each name had been kept for good (an
        upload-only name's ~250 bytes). A drain's NOT_SERVING stays: Watches are told that last."""
        if self._gracefully_shutting_down or service not in self._server_status:
            return
        condition = self._server_watchers.get(service)
        if condition is None:
            del self._server_status[service]
            return
        async with condition:
            self._server_status.pop(service, None)
            condition.notify_all()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        session, written = _SideStream(), _StatusesWritten(context)
        try:
            with self._calls.stream(context.peer(), session):
                watched = await session.until_finished(self._watch(request.service, written))
                if watched is not None:
                    watched.result()  # it ended (raises what it raised)
                    return
                # The status Check answers (grpc_health's record; NOT_SERVING once draining).
                last = self._server_status.get(
                    request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                )
                if written.last != last:
                    await context.write(health_pb2.HealthCheckResponse(status=last))
                raise _drained()
        except (StreamLimitReached, ShuttingDown) as exc:
            await abort_with(context, exc)  # RESOURCE_EXHAUSTED naming the limit, or UNAVAILABLE

    async def _watch(self, service: str, context: _StatusesWritten) -> None:
        """grpc_health's Watch, but the service's wait condition is dropped when its last Watch ends:
        grpc_health 1.81 drops it when any Watch of the service ends, and the Watches still open
        then waited on a condition nobody notified, hearing of no change until a drain (upstream
        grpc/grpc#43403)."""
        condition = self._server_watchers[service]
        self._watching[service] += 1
        last: int | None = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                    if status != last:  # statuses set and set back meanwhile are not told: as grpc_health
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                    await condition.wait()
        finally:
            self._watching[service] -= 1
            if not self._watching[service]:
                del self._watching[service]
                self._server_watchers.pop(service, None)


class LimitedReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]  # untyped
    def __init__(self, service_names: tuple[str, ...], pool: Any, calls: CallTracker) -> None:
        super().__init__(service_names, pool=pool)
        self._calls = calls

    async def ServerReflectionInfo(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        session = _SideStream()
        try:
            with self._calls.stream(context.peer(), session):
                answers = super().ServerReflectionInfo(request_iterator, context).__aiter__()
                while True:
                    step = await session.until_finished(answers.__anext__())
                    if step is None:
                        raise _drained()
                    try:
                        response = step.result()
                    except StopAsyncIteration:
                        return
                    yield response
        except (StreamLimitReached, ShuttingDown) as exc:
            await abort_with(context, exc)  # RESOURCE_EXHAUSTED naming the limit, or UNAVAILABLE
