"""A stream frame's result, how answers and errors become results, and grpc core's own failures
(clients/stream.py)."""

from __future__ import annotations

import asyncio
import importlib
import weakref
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass

import grpc

from clients import tensors
from clients.errors import (
    FrameDropped,
    InternalError,
    SluicewayError,
    Unavailable,
    from_rpc_error,
    from_stream_message,
)
from protos import grpc_service_pb2 as pb

# grpc core's failure to start an operation on a call that already failed at the transport
# (ExecuteBatchError): done_writing() raises it as it is, where write() turns it into INTERNAL.
CORE_ERROR: type[Exception] = importlib.import_module("grpc._cython.cygrpc").BaseError
# The details of that INTERNAL status: the client's own transport failed, not the server.
CORE_DETAILS = "Internal error from Core"


# The response parameter of a frame the server dropped (server/protocol/latest_frame.py).
FRAME_DROPPED = "frame_dropped"


@dataclass(frozen=True, slots=True)
class StreamResult:
    """One frame's answer: outputs, or the error for this frame only. `dropped`: the server dropped
    the frame (latest-frame-wins: a newer one superseded it); no outputs, `error` a FrameDropped.
    It had come as a success with no outputs, and `unwrap()["logits"]` raised KeyError."""

    request_id: str
    outputs: dict[str, tensors.Array] | None
    error: SluicewayError | None = None
    dropped: bool = False

    def unwrap(self) -> dict[str, tensors.Array]:
        """The outputs, or raise this frame's error."""
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


def result_of(response: pb.ModelStreamInferResponse) -> StreamResult:
    rid = response.infer_response.id
    if response.error_message:
        return StreamResult(rid, None, from_stream_message(response.error_message, rid))
    flag = response.infer_response.parameters.get(FRAME_DROPPED)
    if flag is not None and flag.bool_param:
        why = f"frame {rid!r} was dropped by the server: a newer frame of this stream superseded it"
        return StreamResult(rid, None, FrameDropped(why, request_id=rid), dropped=True)
    try:
        return StreamResult(rid, tensors.decode_response(response.infer_response))
    except ValueError as exc:  # a malformed answer fails its frame, not the stream
        return StreamResult(rid, None, InternalError(f"undecodable answer: {exc}", request_id=rid))


def for_frame(error: SluicewayError, request_id: str) -> SluicewayError:
    return copy_error(error, request_id)


def copy_error(error: SluicewayError, request_id: str | None = None) -> SluicewayError:
    """A fresh exception of the same class for each raise: one instance raised again and again
    would grow its traceback with every receiver."""
    copy = type(error)(error.message, error.code, request_id, error.retry_after_s, error.reason)
    copy.__cause__ = error.__cause__
    return copy


async def within(waiting: Awaitable[object], timeout_s: float) -> bool:
    """Whether `waiting` ended within timeout_s (it is cancelled if not)."""
    try:
        await asyncio.wait_for(waiting, timeout_s)  # asyncio.timeout is 3.11+ (Python 3.10 is served)
    except asyncio.TimeoutError:
        return False
    return True


def expire_later(delay_s: float, expire: Callable[[str], None], rid: str) -> asyncio.TimerHandle:
    """`expire(rid)` in `delay_s`, holding its session weakly. A timer left armed held its session
    and its unreceived answers until its time: one was armed for every frame answered while its
    write ran, and never cancelled (about 150 sessions, 3 x 256 KiB each, in a tester's run of
    streams left unread). `send` no longer arms those; held weakly, no timer can keep one."""
    method = weakref.WeakMethod(expire)

    def fire() -> None:
        alive = method()
        if alive is not None:
            alive(rid)

    return asyncio.get_running_loop().call_later(delay_s, fire)


def check_id(rid: str, unanswered: Container[str], expired: Container[str]) -> None:
    """ValueError for an id in flight, or one whose frame failed here for want of an answer and
    whose late answer has not come: refused, not matched (answers leave the server in completion
    order, so the old late answer may come before or after the new one's; it had been returned as
    the new frame's result)."""
    if rid in unanswered:
        raise ValueError(f"request id {rid!r} is already in flight on this stream")
    if rid in expired:
        raise ValueError(
            f"request id {rid!r} failed here for want of an answer, and its late answer has not "
            "come yet: use another id"
        )


async def written(
    operation: Awaitable[object], quiet_s: float, heard: Callable[[], float], on_cut: Callable[[], None]
) -> bool:
    """Await a write: True once done (its error raised), False when it was cancelled because the
    stream heard nothing for `quiet_s` while it waited (`heard()`: the loop time of the stream's
    last answer; `on_cut()` is called then, before the write is cancelled, so that a caller's
    cancel knows it too: its frames had failed "the stream was closed", not Unavailable). A
    server answering earlier frames is alive, though it does not read yet. The write is a task of
    its own (cancelling the call does not end a write still connecting), watched by a timer
    (asyncio.wait in a loop had cost ~40 us a frame, this about half). A caller's cancel is
    raised once the write ended, whatever its outcome."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(operation)
    start = loop.time()
    cut = False
    timer: asyncio.TimerHandle

    def watch() -> None:
        nonlocal cut, timer
        quiet = loop.time() - max(heard(), start)
        if quiet < quiet_s:
            timer = loop.call_later(quiet_s - quiet, watch)
        else:
            cut = True
            on_cut()
            task.cancel()

    timer = loop.call_later(quiet_s, watch)
    # A caller's cancel waits for the write to end, then is raised: a message half-written cannot
    # be taken back, and grpc cancelled the whole call with a cancelled write (every frame in
    # flight failed). The watch still bounds the wait.
    cancelled = False
    try:
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = cancelled or not task.done()
        if cancelled:
            raise asyncio.CancelledError
        if cut:
            return False
        task.result()  # the write's error, if any
    finally:
        timer.cancel()
    return True


def write_failure(exc: grpc.RpcError, rid: str | None = None) -> SluicewayError:
    """A failed write's (or the call's, `rid` None) error. INTERNAL "Internal error from Core" is
    grpc core failing to send on a connection that failed (a frozen or killed server's): no server
    said INTERNAL (the reader had raised it to receivers as InternalError)."""
    error = from_rpc_error(exc)
    if error.code == grpc.StatusCode.INTERNAL and error.message == CORE_DETAILS:
        where = "" if rid is None else f" while sending frame {rid!r}"
        return Unavailable(f"the stream's connection failed{where}")
    return error
