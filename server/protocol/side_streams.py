"""grpc's health and reflection services with their streams counted as streams.

A health Watch stream (or a reflection stream) stays open as long as its client wants, and
grpc.aio counts it against `max_concurrent_rpcs` like any call: 70 Watch streams on a server
allowing 64 concurrent RPCs refused every ModelInfer, ServerLive and health Check ("Concurrent RPC
limit exceeded"). Counted by the stream limits (`max_streams`, per connection, per peer), which
stay below `max_concurrent_rpcs`, they cannot take the room unary calls need.

A drain ends them: a Watch first gets its service's last status (NOT_SERVING once the drain has
begun), then each ends UNAVAILABLE. Cancelling their handlers' tasks instead had left grpc's calls
open until the shutdown grace ran out (one idle Watch held every SIGTERM ~5 s), and the watchers
never saw NOT_SERVING. A stream whose client stopped reading (a stopped sidecar: its flow-control
window full) is given STALLED_WRITE_S once the drain begins, then left as it is, counted as
stalled (calls.py): it owes no answer, and the server's stop no longer waits the whole grace for
it (it had: 5.6 s of a 5 s grace, 15.8 s of 15 s, nothing logged).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.errors import ShuttingDown, StreamLimitReached, for_caller
from server.protocol.answers import abort_with
from server.protocol.calls import CallTracker

T = TypeVar("T")
STALLED_WRITE_S = 1.0  # once the drain has begun, how long a side stream's write may wait


class _SideStream:
    """One such stream, as the tracker's drain sees it."""

    def __init__(self, calls: CallTracker) -> None:
        self._finished = asyncio.Event()
        self._calls = calls

    def finish(self, why: str = "drain") -> None:
        self._finished.set()

    async def write(self, context: Any, message: Any) -> bool:
        """`message` written to the stream; False when the drain has begun and the write has waited
        STALLED_WRITE_S since: the stream is then counted as stalled until its call ends."""
        writing = asyncio.ensure_future(context.write(message))
        ending: asyncio.Future[Any] | None = None
        try:
            if not self._finished.is_set():
                ending = asyncio.ensure_future(self._finished.wait())
                await asyncio.wait((writing, ending), return_when=asyncio.FIRST_COMPLETED)
            if not writing.done():
                await asyncio.wait((writing,), timeout=STALLED_WRITE_S)
            if writing.done():
                writing.result()  # its failure, if it failed
                return True
        finally:
            if ending is not None:
                ending.cancel()
            if not writing.done():
                writing.cancel()
            # Retrieved, whatever became of it: a client's cancel had left "never retrieved" errors.
            await asyncio.gather(writing, return_exceptions=True)
        self._calls.note_stalled()
        # Counted while grpc core holds the call: one that ended (its client killed, its deadline)
        # had let the stop close the endpoint on an answer still being sent.
        context.add_done_callback(lambda _: self._calls.stalled_ended())
        return False

    @staticmethod
    async def left(context: Any) -> None:
        """Wait, off the tracker, until the stalled call ends (the stop cancels it): a status sent
        behind the write its client never took fails in grpc core (too many operations)."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def end(_: object) -> None:
            if not ended.done():
                ended.set_result(None)

        context.add_done_callback(end)
        await ended

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


class _Watch(_SideStream):
    """One health Watch stream: woken when its service's status changes, and by the drain."""

    def __init__(self, calls: CallTracker) -> None:
        super().__init__(calls)
        self.changed = asyncio.Event()

    def finish(self, why: str = "drain") -> None:
        super().finish(why)
        self.changed.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()


def _drained() -> ShuttingDown:
    return ShuttingDown("server is shutting down: this stream is ended")


_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class LimitedHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpc_health has no types
    """grpc's health service (Check and Watch) over the statuses the server sets.

    Not grpc_health's servicer, whose Watch writes holding its service's lock: one Watch whose
    client stopped reading held up the service's other Watches, the next set or forget, and the
    drain the server's stop awaits. It also dropped a service's wait condition when any one Watch
    ended, and the others heard of no change again (grpc/grpc#43403). Here each Watch has its own
    wake-up and writes outside any lock; a drain wakes it rather than cancelling a write, so the
    last status it writes is one the client gets.
    """

    def __init__(self, calls: CallTracker) -> None:
        self._calls = calls
        # "" serves until told otherwise, as in grpc_health; the server sets it NOT_SERVING first.
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._watches: dict[str, set[_Watch]] = {}  # the open Watches of each service
        self._shutting_down = False

    def set(self, service: str, status: int) -> None:
        """`service`'s status (a HealthCheckResponse.ServingStatus); ignored once draining."""
        if self._shutting_down:
            return
        self._statuses[service] = status
        self._wake(service)

    def forget(self, service: str) -> None:
        """Drop `service`'s status (a model name the server forgot): Check answers NOT_FOUND and
        a Watch SERVICE_UNKNOWN, as for a name never set; each name had been kept for good (an
        upload-only name's ~250 bytes). A drain's NOT_SERVING stays: Watches are told that last."""
        if self._shutting_down or self._statuses.pop(service, None) is None:
            return
        self._wake(service)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good: later sets and forgets are ignored."""
        self._shutting_down = True
        for service in self._statuses:
            self._statuses[service] = _NOT_SERVING
            self._wake(service)

    def _wake(self, service: str) -> None:
        for watch in self._watches.get(service, ()):
            watch.changed.set()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        status = self._statuses.get(request.service)
        if status is None:
            # Cut as every status message (a 20,000-byte name had come back RESOURCE_EXHAUSTED).
            why = for_caller(f"the server has no health service {request.service!r}")
            await context.abort(grpc.StatusCode.NOT_FOUND, why)
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        watch = _Watch(self._calls)
        try:
            with self._calls.stream(context.peer(), watch):
                stalled = not await self._follow(request.service, watch, context)
                if not stalled:
                    raise _drained()
            await watch.left(context)  # an abort would wait on the writes its client never takes
        except (StreamLimitReached, ShuttingDown) as exc:
            await abort_with(context, exc)  # RESOURCE_EXHAUSTED naming the limit, or UNAVAILABLE

    async def _follow(self, service: str, watch: _Watch, context: Any) -> bool:
        """Write `service`'s status each time it differs from the last one written, until the
        drain; the status the drain left is written before it returns. Statuses set and set back
        while a write waits are not told, as in grpc_health. False: the stream stalled."""
        self._watches.setdefault(service, set()).add(watch)
        last: int | None = None
        try:
            while True:
                watch.changed.clear()  # before reading: a change from here on wakes the wait below
                status = self._statuses.get(service, _UNKNOWN)
                if status != last:
                    if not await watch.write(context, health_pb2.HealthCheckResponse(status=status)):
                        return False
                    last = status
                elif watch.finished:
                    return True
                else:
                    await watch.changed.wait()
        finally:
            open_watches = self._watches[service]
            open_watches.discard(watch)
            if not open_watches:
                del self._watches[service]


class LimitedReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]  # untyped
    def __init__(self, service_names: tuple[str, ...], pool: Any, calls: CallTracker) -> None:
        super().__init__(service_names, pool=pool)
        self._calls = calls

    async def ServerReflectionInfo(self, request_iterator: Any, context: Any) -> None:
        # Written with context.write, not yielded: a yield waiting on a client that stopped
        # reading could not be given up.
        session = _SideStream(self._calls)
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
                    if not await session.write(context, response):
                        break  # stalled
            await session.left(context)
        except (StreamLimitReached, ShuttingDown) as exc:
            await abort_with(context, exc)  # RESOURCE_EXHAUSTED naming the limit, or UNAVAILABLE
