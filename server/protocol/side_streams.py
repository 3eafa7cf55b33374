"""grpc's health and reflection services with their streams counted as streams.

A health Watch stream (or a reflection stream) stays open as long as its client wants, and
grpc.aio counts it against `max_concurrent_rpcs` like any call: 70 Watch streams on a server
allowing 64 concurrent RPCs refused every ModelInfer, ServerLive and health Check ("Concurrent RPC
limit exceeded"). Counted by the stream limits (`max_streams`, per connection, per peer), which
stay below `max_concurrent_rpcs`, they cannot take the room unary calls need; a drain ends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from server.errors import StreamLimitReached
from server.protocol.answers import abort_with
from server.protocol.calls import CallTracker


class _SideStream:
    """One such stream, as the tracker's drain sees it: ending it cancels its handler."""

    def __init__(self) -> None:
        self._task = asyncio.current_task()

    def finish(self, why: str = "drain") -> None:
        if self._task is not None:
            self._task.cancel()


class LimitedHealth(health_aio.HealthServicer):  # type: ignore[misc]  # grpc_health has no types
    def __init__(self, calls: CallTracker) -> None:
        super().__init__()
        self._calls = calls

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        try:
            with self._calls.stream(context.peer(), _SideStream()):
                await super().Watch(request, context)
        except StreamLimitReached as exc:
            await abort_with(context, exc)  # RESOURCE_EXHAUSTED naming the limit


class LimitedReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]  # untyped
    def __init__(self, service_names: tuple[str, ...], pool: Any, calls: CallTracker) -> None:
        super().__init__(service_names, pool=pool)
        self._calls = calls

    async def ServerReflectionInfo(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        try:
            with self._calls.stream(context.peer(), _SideStream()):
                async for response in super().ServerReflectionInfo(request_iterator, context):
                    yield response
        except StreamLimitReached as exc:
            await abort_with(context, exc)  # RESOURCE_EXHAUSTED naming the limit
