"""A streaming session over one ModelStreamInfer call: ordered results, bounded frames in flight.

The server answers frames in completion order, each with its request's id; the session hands
results back in the order frames were sent (a reorder buffer of one future per frame, matched by
id). A failed frame is a result holding that frame's error; the stream goes on. `send` waits
while `max_in_flight` frames are unanswered, so a fast producer cannot queue without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from clients import tensors
from clients.errors import (
    DeadlineExceeded,
    InternalError,
    MessageTooLarge,
    SluicewayError,
    from_rpc_error,
    from_stream_message,
)
from protos import grpc_service_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 64
# A frame with no answer this long after its timeout fails on the client (the server's own
# DEADLINE_EXCEEDED answer normally comes first).
FRAME_GRACE_S = 1.0
# How long a clean close waits for the server to end the call before cancelling it.
CLOSE_GRACE_S = 5.0

# (deadline) -> (grpc.aio stream-stream call, report(status) of the endpoint's failure)
OpenStream = Callable[[float], Awaitable[tuple[Any, Callable[[grpc.StatusCode], None]]]]


@dataclass(frozen=True, slots=True)
class StreamResult:
    """One frame's answer: outputs, or the error for this frame only."""

    request_id: str
    outputs: dict[str, tensors.Array] | None
    error: SluicewayError | None = None

    def unwrap(self) -> dict[str, tensors.Array]:
        """The outputs, or raise this frame's error."""
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


class StreamSession:
    """`async with client.stream(model) as s:` then `await s.send(...)` and `await s.recv()`.

    - `send(inputs, request_id=None) -> request_id` (ids are generated when not given, and must be
      unique among unanswered frames); waits while `max_in_flight` frames are unanswered.
    - `recv()` -> the next result in sending order as an outputs dict, raising that frame's error.
    - `async for result in s` yields `StreamResult`s (so one failed frame does not end the loop);
      it ends after `done_sending()` once every result is received. One receiver at a time.
    - A stream that ends before `done_sending()` (its server failed, refused it, or ended it idle)
      fails each unanswered frame, then `recv()` and iteration raise its error.
    """

    def __init__(
        self,
        open_stream: OpenStream,
        model: str,
        *,
        version: str,
        max_in_flight: int,
        frame_timeout_s: float,
        timeout_s: float,
        priority: int | None = None,
        outputs: Sequence[str] | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._open = open_stream
        self._model, self._version = model, version
        self._priority, self._outputs = priority, list(outputs or ())
        self._frame_timeout_s, self._timeout_s = frame_timeout_s, timeout_s
        self._max_message_bytes = max_message_bytes
        self._timers: dict[str, asyncio.TimerHandle] = {}  # per frame: fails it when no answer comes
        self._expired: set[str] = set()  # frames failed by their timer whose answer may still come
        self.max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._unanswered: dict[str, asyncio.Future[StreamResult]] = {}
        self._order: deque[asyncio.Future[StreamResult]] = deque()  # sent, not yet received
        self._write_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()
        self._sent = asyncio.Event()  # wakes a receiver waiting for something to be sent
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]
        self._call: Any = None
        self._report: Callable[[grpc.StatusCode], None] = lambda code: None
        self._reader: asyncio.Task[None] | None = None
        self._done_sending = False
        self._closed = False
        self._failure: SluicewayError | None = None  # the whole stream's error, once it ended
        # It ended before done_sending(): receivers raise its error once the results run out.
        self._cut_short = False

    @property
    def in_flight(self) -> int:
        """Frames sent and not answered yet (never more than max_in_flight)."""
        return len(self._unanswered)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> StreamSession:
        self._call, self._report = await self._open(self._timeout_s)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose(cancel=exc_type is not None)

    async def aclose(self, *, cancel: bool = False) -> None:
        """End the session: half-close and let the server finish when nothing is unanswered,
        else cancel the call. Unanswered frames then fail with CANCELLED."""
        if self._closed or self._reader is None:
            return
        self._closed = True
        if not cancel and not self._unanswered:
            await self.done_sending()
            await asyncio.wait({self._reader}, timeout=CLOSE_GRACE_S)
        if not self._reader.done():
            self._call.cancel()
            self._reader.cancel()
            await asyncio.wait({self._reader})

    async def done_sending(self) -> None:
        """No more frames: half-close the request stream; iteration ends after the last result."""
        async with self._write_lock:
            if self._done_sending:
                return
            self._done_sending = True
            self._sent.set()
            if self._failure is None:
                # A failure here is the call's end, which the reader reports.
                with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                    await self._call.done_writing()

    # -- sending --------------------------------------------------------------------------------

    async def send(
        self,
        inputs: Mapping[str, tensors.Array],
        request_id: str | None = None,
        *,
        priority: int | None = None,
    ) -> str:
        """Send one frame; returns its request id. Waits while max_in_flight frames are unanswered."""
        if self._reader is None:
            raise RuntimeError("use the session inside `async with client.stream(...)`")
        if self._done_sending:
            raise RuntimeError("done_sending() was called: no more frames on this stream")
        rid = request_id or f"{self._prefix}-{next(self._ids)}"
        if rid in self._unanswered:  # checked again once a slot is ours
            raise ValueError(f"request id {rid!r} is already in flight on this stream")
        request = tensors.build_request(
            self._model,
            inputs,
            version=self._version,
            request_id=rid,
            priority=self._priority if priority is None else priority,
            outputs=self._outputs,
        )
        tensors.set_timeout(request, self._frame_timeout_s)
        size = request.ByteSize()
        if self._max_message_bytes is not None and size > self._max_message_bytes:
            # Refused here, the stream going on: sent, it ended the whole stream INTERNAL ("Internal
            # error from Core"), taking the frames in flight with it.
            raise MessageTooLarge(
                f"frame {rid!r} is {size} bytes, over max_message_bytes ({self._max_message_bytes}); "
                "not sent",
                request_id=rid,
            )
        await self._slots.acquire()  # back-pressure: released when this frame is answered
        async with self._write_lock:
            if self._failure is not None:
                self._slots.release()
                raise _copy(self._failure)
            if self._done_sending:  # called while this send waited for a slot
                self._slots.release()
                raise RuntimeError("done_sending() was called: no more frames on this stream")
            if rid in self._unanswered:
                self._slots.release()
                raise ValueError(f"request id {rid!r} is already in flight on this stream")
            future: asyncio.Future[StreamResult] = asyncio.get_running_loop().create_future()
            # Registered before writing: the answer may arrive before write() returns.
            self._unanswered[rid] = future
            self._order.append(future)
            self._sent.set()
            try:
                await self._call.write(request)
            except (grpc.RpcError, asyncio.InvalidStateError) as exc:
                error = await self._write_error(exc)
                # Not sent: its error is this raise alone (it was also yielded as a result).
                if self._unanswered.pop(rid, None) is not None:
                    self._slots.release()
                with contextlib.suppress(ValueError):
                    self._order.remove(future)
                raise error from exc
            self._timers[rid] = asyncio.get_running_loop().call_later(
                self._frame_timeout_s + FRAME_GRACE_S, self._expire, rid
            )
        return rid

    async def _write_error(self, exc: grpc.RpcError | asyncio.InvalidStateError) -> SluicewayError:
        """Why a write failed. InvalidStateError says only that the call is over (done_sending() is
        ruled out above): its status is the reader's to record, and the reader may not have run
        yet. A refused stream's frame failed CANCELLED "the stream ended" instead of Overloaded."""
        if isinstance(exc, grpc.RpcError):
            return from_rpc_error(exc)
        if self._reader is not None and self._failure is None:
            # The call is done, so its last read returns at once; bounded all the same.
            await asyncio.wait({self._reader}, timeout=CLOSE_GRACE_S)
        return _copy(self._ended())

    def _expire(self, rid: str) -> None:
        """No answer within the frame's timeout (and a grace for the server's own answer): fail the
        frame here. A frozen server answered nothing, and recv() waited out the stream's hour."""
        self._timers.pop(rid, None)
        if rid in self._unanswered:
            self._expired.add(rid)
            error = DeadlineExceeded(
                f"no answer within the frame's timeout ({self._frame_timeout_s:g} s) and "
                f"{FRAME_GRACE_S:g} s more",
                request_id=rid,
            )
            self._resolve(StreamResult(rid, None, error))

    # -- receiving ------------------------------------------------------------------------------

    async def recv_result(self) -> StreamResult:
        """The next result in sending order. When none is left: the stream's error if it ended
        before done_sending() (it had ended the iteration silently), else EOFError after
        done_sending()."""
        async with self._recv_lock:
            while not self._order:
                if self._failure is not None and self._cut_short:
                    raise _copy(self._failure)
                if self._done_sending:
                    raise EOFError("no frames left on this stream")
                self._sent.clear()
                await self._sent.wait()
            future = self._order[0]
            # Shielded: a cancelled receiver leaves the frame at the head for the next one.
            result = await asyncio.shield(future)
            self._order.popleft()
            return result

    async def recv(self) -> dict[str, tensors.Array]:
        """The next frame's outputs in sending order, or raise that frame's error."""
        return (await self.recv_result()).unwrap()

    def __aiter__(self) -> StreamSession:
        return self

    async def __anext__(self) -> StreamResult:
        try:
            return await self.recv_result()
        except EOFError:
            raise StopAsyncIteration from None

    # -- the reader task ------------------------------------------------------------------------

    async def _read(self) -> None:
        error: SluicewayError | None = None
        try:
            while (response := await self._call.read()) is not grpc.aio.EOF:
                result = _result_of(response)
                if not self._resolve(result) and not self._late(result.request_id):
                    log.warning("stream answer for unknown request id %r dropped", result.request_id)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            self._report(error.code)
        except asyncio.CancelledError:
            error = SluicewayError("the stream was closed", grpc.StatusCode.CANCELLED)
            raise
        finally:
            self._finish(error or self._ended())

    def _resolve(self, result: StreamResult) -> bool:
        timer = self._timers.pop(result.request_id, None)
        if timer is not None:
            timer.cancel()
        future = self._unanswered.pop(result.request_id, None)
        if future is None:
            return False
        if not future.done():  # never resolve a done future
            future.set_result(result)
        self._slots.release()
        return True

    def _finish(self, error: SluicewayError) -> None:
        """The call ended: fail what is unanswered, wake a waiting receiver, refuse new frames."""
        self._failure = error
        self._cut_short = not self._done_sending
        self._expired.clear()
        for rid in list(self._unanswered):
            self._resolve(StreamResult(rid, None, _for_frame(error, rid)))
        self._sent.set()

    def _late(self, rid: str) -> bool:
        """An answer to a frame failed here for want of one (_expire): dropped quietly."""
        if rid in self._expired:
            self._expired.discard(rid)
            return True
        return False

    def _ended(self) -> SluicewayError:
        """The stream's error; a call that ended with status OK before done_sending() is one too."""
        if self._failure is not None:
            return self._failure
        why = (
            "the stream ended" if self._done_sending else "the server ended the stream before done_sending()"
        )
        return SluicewayError(why, grpc.StatusCode.CANCELLED)


def _result_of(response: pb.ModelStreamInferResponse) -> StreamResult:
    rid = response.infer_response.id
    if response.error_message:
        return StreamResult(rid, None, from_stream_message(response.error_message, rid))
    try:
        return StreamResult(rid, tensors.decode_response(response.infer_response))
    except ValueError as exc:  # a malformed answer fails its frame, not the stream
        return StreamResult(rid, None, InternalError(f"undecodable answer: {exc}", request_id=rid))


def _for_frame(error: SluicewayError, request_id: str) -> SluicewayError:
    return _copy(error, request_id)


def _copy(error: SluicewayError, request_id: str | None = None) -> SluicewayError:
    """A fresh exception of the same class for each raise: one instance raised again and again
    would grow its traceback with every receiver."""
    copy = type(error)(error.message, error.code, request_id, error.retry_after_s, error.reason)
    copy.__cause__ = error.__cause__
    return copy
