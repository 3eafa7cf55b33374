"""Exactly one gRPC status for whatever a unary handler raises: the inference, shared-memory and
admin services share it (server/errors.py's `status_for` is the one exception table)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar

import grpc

from server.errors import WorkCancelled, status_for
from server.observability.logs import failure_fields, failure_message
from server.protocol.calls import CallTracker
from server.protocol.rich_status import error_info_trailer, retry_info_trailer

log = logging.getLogger(__name__)


class Tracked(Protocol):
    calls: CallTracker  # a drain waits for the calls it counts


Self = TypeVar("Self", bound=Tracked)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Self, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


@dataclass(frozen=True, slots=True)
class Status:
    """The one gRPC status a failure is answered with."""

    code: grpc.StatusCode
    message: str
    trailer: tuple[tuple[str, bytes], ...] | None = None


def status_of(exc: Exception, request: object = None) -> Status:
    """`exc`'s status: a RetryInfo in the trailer when it says when to retry (`retry_after_s`), else
    an ErrorInfo when its class names a reason (`error_reason`, e.g. RUN_TIMED_OUT: never send it
    again); an unexpected exception is logged, and answered INTERNAL with a generic message."""
    code, message, expected = status_for(exc)
    if not expected:
        fields = failure_fields(request, exc)
        log.error(failure_message("request failed", fields), exc_info=exc, extra=fields)
    retry_after_s = getattr(exc, "retry_after_s", None)
    if retry_after_s is not None:
        return Status(code, message, retry_info_trailer(code, message, retry_after_s))
    reason = getattr(exc, "error_reason", None)
    if isinstance(reason, str) and reason:
        return Status(code, message, error_info_trailer(code, message, reason))
    return Status(code, message)


def stray_cancel(exc: asyncio.CancelledError) -> WorkCancelled | None:
    """The error to answer for `exc` when it is not the running task's own cancellation (no cancel
    request pending on the task, Python 3.11+): a future or task the server cancelled, awaited
    here, which grpc.aio would answer with nothing. None for the task's own (its client went, its
    deadline passed, the server ended the call), and on Python 3.10, which cannot tell them apart."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if task is None or cancelling is None or cancelling():
        return None
    log.error("a request's work was cancelled by the server, not by its caller", exc_info=exc)
    return WorkCancelled(
        "the server cancelled the work this request waited for before it was answered (a model "
        "unloaded or replaced, or the server stopping); it may be sent again"
    )


async def abort_as(context: grpc.aio.ServicerContext, status: Status) -> NoReturn:
    """End the call with `status`. Call it outside an `except` clause, holding no exception: grpc
    keeps the AbortError it raises in the call's state, which its traceback's frames reference (a
    reference cycle), and an exception it was raised while handling (its __context__) stayed in
    that cycle with its own frames: a failed request's job and its shared-memory regions, mapped
    after their unregister until a garbage collection."""
    if status.trailer is not None:
        await context.abort(status.code, status.message, trailing_metadata=status.trailer)
    await context.abort(status.code, status.message)
    raise AssertionError("unreachable: context.abort raises")  # grpc's stub is not typed NoReturn


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception, request: object = None) -> NoReturn:
    """End the call with `exc`'s status (`status_of`), for failures that hold no request's job."""
    await abort_as(context, status_of(exc, request))


def answers_errors(handler: Handler[Self, Req, Resp]) -> Handler[Self, Req, Resp]:
    """Answer whatever a unary handler raises with its one gRPC status; the call is counted in
    `self.calls` while it runs."""

    @functools.wraps(handler)
    async def wrapped(self: Self, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        self.calls.enter()
        try:
            try:
                return await handler(self, request, context)
            except Exception as exc:
                status = status_of(exc, request)
            except asyncio.CancelledError as exc:
                if (stray := stray_cancel(exc)) is None:
                    raise  # the call's own: grpc ends it
                status = status_of(stray, request)
            await abort_as(context, status)  # outside the `except`: see abort_as
        finally:
            self.calls.exit()

    return wrapped


def answers_errors_untracked(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """As `answers_errors`, for a service whose calls a drain does not wait for (admin)."""

    @functools.wraps(handler)
    async def wrapped(self: object, request: object, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as exc:
            status = status_of(exc, request)
        except asyncio.CancelledError as exc:
            if (stray := stray_cancel(exc)) is None:
                raise
            status = status_of(stray, request)
        await abort_as(context, status)  # outside the `except`: see abort_as

    return wrapped
