"""A streaming session over one ModelStreamInfer call: ordered results, bounded frames in flight.

The server answers frames in completion order, each with its request's id; the session hands
results back in the order frames were sent (a reorder buffer of one future per frame, matched by
id). A failed frame is a result holding that frame's error; the stream goes on. `send` waits
while `max_in_flight` frames are sent and not yet received (answered or not): results are bounded.
A write the server does not take within `frame_timeout_s` (frozen, or a port that never answers)
cuts the stream Unavailable: grpc alone had held `send()` 20 s, then failed INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from clients import tensors
from clients.errors import DeadlineExceeded, MessageTooLarge, SluicewayError, Unavailable
from clients.stream_results import (
    CORE_ERROR,
    StreamResult,
    check_id,
    copy_error,
    expire_later,
    for_frame,
    result_of,
    within,
    write_failure,
    written,
)

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "StreamResult", "StreamSession"]

log = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 64
# A frame with no answer this long after its timeout fails here (the server's own answer comes first).
FRAME_GRACE_S = 1.0
# How long a clean close waits for the server to end the call before cancelling it.
CLOSE_GRACE_S = 5.0

# (deadline) -> (grpc.aio stream-stream call, report(status) of the endpoint's failure)
OpenStream = Callable[[float], Awaitable[tuple[Any, Callable[[grpc.StatusCode], None]]]]


class StreamSession:
    """`async with client.stream(model) as s:` then `await s.send(...)` and `await s.recv()`.

    - `send(inputs, request_id=None) -> request_id` (ids are generated when not given, and must be
      unique among unanswered frames, and not one whose frame failed here for want of an answer
      until that answer came); waits while `max_in_flight` frames are sent and not yet received:
      receive while sending (another task), or send at most `max_in_flight` before receiving.
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
        latest_frame_wins: bool | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._open = open_stream
        self._model, self._version = model, version
        self._priority, self._outputs, self._wins = priority, list(outputs or ()), latest_frame_wins
        self._frame_timeout_s, self._timeout_s = frame_timeout_s, timeout_s
        self._max_message_bytes = max_message_bytes
        self._timers: dict[str, asyncio.TimerHandle] = {}  # per frame: fails it when no answer comes
        self._expired: set[str] = set()  # frames failed by their timer whose answer may still come
        self.max_in_flight = max_in_flight
        self._held = 0  # slots: frames sent (or being sent) and not yet received by the caller
        self._room = asyncio.Event()  # set when a slot is freed or the stream ended
        self._cut: SluicewayError | None = None  # why this client cancelled the call, if it did
        self._heard = 0.0  # loop time of the last answer (or the open): the server is alive
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

    @property
    def unreceived(self) -> int:
        """Frames sent and not yet received by the caller, answered or not (<= max_in_flight)."""
        return len(self._order)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> StreamSession:
        self._call, self._report = await self._open(self._timeout_s)
        self._heard = asyncio.get_running_loop().time()
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
                # A failure here is the call's end, which the reader reports (grpc core's own error
                # on a call that never connected had escaped `async with` as ExecuteBatchError).
                with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError, CORE_ERROR):
                    await self._bounded(self._call.done_writing(), "done_sending()")

    # -- sending --------------------------------------------------------------------------------

    async def send(
        self,
        inputs: Mapping[str, tensors.Array],
        request_id: str | None = None,
        *,
        priority: int | None = None,
        latest_frame_wins: bool | None = None,
    ) -> str:
        """Send one frame; returns its request id. Waits while max_in_flight frames are unanswered."""
        if self._reader is None:
            raise RuntimeError("use the session inside `async with client.stream(...)`")
        if self._done_sending:
            raise RuntimeError("done_sending() was called: no more frames on this stream")
        rid = request_id or f"{self._prefix}-{next(self._ids)}"
        check_id(rid, self._unanswered, self._expired)  # checked again once a slot is ours
        request = tensors.build_request(
            self._model,
            inputs,
            version=self._version,
            request_id=rid,
            priority=self._priority if priority is None else priority,
            outputs=self._outputs,
            latest_frame_wins=self._wins if latest_frame_wins is None else latest_frame_wins,
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
        async with self._writing():
            try:
                if self._failure is not None:
                    raise copy_error(self._failure)
                if self._done_sending:  # called while this send waited for a slot
                    raise RuntimeError("done_sending() was called: no more frames on this stream")
                check_id(rid, self._unanswered, self._expired)
            except BaseException:
                self._free_slot()
                raise
            future: asyncio.Future[StreamResult] = asyncio.get_running_loop().create_future()
            # Registered before writing: the answer may arrive before write() returns.
            self._unanswered[rid] = future
            self._order.append(future)
            self._sent.set()
            try:
                await self._bounded(self._call.write(request), f"frame {rid!r}")
            except (grpc.RpcError, asyncio.InvalidStateError) as exc:
                error = await self._write_error(exc, rid)
                # Not sent: its error is this raise alone (it was also yielded as a result).
                self._unanswered.pop(rid, None)
                with contextlib.suppress(ValueError):
                    self._order.remove(future)
                    self._free_slot()  # unless a receiver took its result (and freed it) already
                raise error from exc
            finally:  # sent (a cancelled send's write ended first) and not answered while it ran
                if rid in self._unanswered and rid not in self._timers:
                    self._timers[rid] = expire_later(self._frame_timeout_s + FRAME_GRACE_S, self._expire, rid)
        return rid

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """A slot (back-pressure: freed when the caller receives the frame's result), then the
        write lock; the slot is freed again if the wait for the lock is cancelled."""
        await self._take_slot()
        try:
            await self._write_lock.acquire()
        except BaseException:
            self._free_slot()
            raise
        try:
            yield
        finally:
            self._write_lock.release()

    async def _take_slot(self) -> None:
        while self._held >= self.max_in_flight and self._failure is None:
            self._room.clear()
            if not await within(self._room.wait(), self._frame_timeout_s) and not self._unanswered:
                # A slow receiver, or a task that sends all before it receives: that one waits for good.
                log.warning(
                    "send() has waited %g s for a slot: %d frames are answered and not received; "
                    "receive (recv() or `async for`, in another task) while sending",
                    self._frame_timeout_s,
                    self._held,
                )
        if self._failure is not None:  # woken by the stream's end, or it had ended already
            raise copy_error(self._failure)
        self._held += 1

    def _free_slot(self) -> None:
        self._held -= 1
        self._room.set()

    async def _bounded(self, operation: Awaitable[None], what: str) -> None:
        """A write, cut when the stream hears no answer for frame_timeout_s while it waits (frozen,
        a silent port): the call is cancelled, the stream Unavailable (a busy server that answers
        earlier frames is not cut)."""

        def cut() -> None:
            if self._cut is None:
                self._cut = Unavailable(
                    f"the server took no data for {what} and answered nothing for frame_timeout_s "
                    f"({self._frame_timeout_s:g} s): the stream was cancelled"
                )
                self._report(grpc.StatusCode.UNAVAILABLE)
            self._call.cancel()

        if not await written(operation, self._frame_timeout_s, lambda: self._heard, cut):
            raise asyncio.InvalidStateError("the call was cancelled") from None

    async def _write_error(self, exc: grpc.RpcError | asyncio.InvalidStateError, rid: str) -> SluicewayError:
        """Why a write failed. InvalidStateError says only that the call is over (done_sending() is
        ruled out above): its status is the reader's to record, and the reader may not have run
        yet. A refused stream's frame failed CANCELLED "the stream ended" instead of Overloaded."""
        if isinstance(exc, grpc.RpcError):
            return write_failure(exc, rid)
        if self._reader is not None and self._failure is None:
            # The call is done, so its last read returns at once; bounded all the same.
            await asyncio.wait({self._reader}, timeout=CLOSE_GRACE_S)
        return copy_error(self._ended())

    def _expire(self, rid: str) -> None:
        """No answer within the frame's timeout (and a grace for the server's own answer): fail the
        frame here. A frozen server answered nothing, and recv() waited out the stream's hour. While
        other answers still come, wait on: the server may read it late (a busy one stops reading
        while it holds a stream's bytes) and its own deadline answers it (OK answers were dropped)."""
        self._timers.pop(rid, None)
        loop, limit = asyncio.get_running_loop(), self._frame_timeout_s + FRAME_GRACE_S
        if rid in self._unanswered and loop.time() - self._heard < limit:
            self._timers[rid] = expire_later(self._heard + limit - loop.time(), self._expire, rid)
        elif rid in self._unanswered:
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
                    raise copy_error(self._failure)
                if self._done_sending:
                    raise EOFError("no frames left on this stream")
                self._sent.clear()
                await self._sent.wait()
            future = self._order[0]
            # Shielded: a cancelled receiver leaves the frame at the head for the next one.
            result = await asyncio.shield(future)
            if self._order and self._order[0] is future:  # a failed send may have taken it out
                self._order.popleft()
                self._free_slot()
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
                self._heard = asyncio.get_running_loop().time()
                result = result_of(response)
                # A late answer first: its id may be in flight again only once it came (_check_id).
                if not self._late(result.request_id) and not self._resolve(result):
                    log.warning("stream answer for unknown request id %r dropped", result.request_id)
        except grpc.RpcError as exc:
            error = write_failure(exc)
            self._report(error.code)
        except asyncio.CancelledError:
            error = SluicewayError("the stream was closed", grpc.StatusCode.CANCELLED)
            raise
        finally:
            self._finish(self._cut or error or self._ended())

    def _resolve(self, result: StreamResult) -> bool:
        timer = self._timers.pop(result.request_id, None)
        if timer is not None:
            timer.cancel()
        future = self._unanswered.pop(result.request_id, None)
        if future is None:
            return False
        if not future.done():  # never resolve a done future
            future.set_result(result)
        return True

    def _finish(self, error: SluicewayError) -> None:
        """The call ended: fail what is unanswered, wake a waiting receiver, refuse new frames."""
        self._failure = error
        self._cut_short = not self._done_sending
        self._expired.clear()
        for rid in list(self._unanswered):
            self._resolve(StreamResult(rid, None, for_frame(error, rid)))
        self._sent.set()
        self._room.set()  # a send waiting for a slot raises the error

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
        if self._cut is not None:
            return self._cut
        why = (
            "the stream ended" if self._done_sending else "the server ended the stream before done_sending()"
        )
        return SluicewayError(why, grpc.StatusCode.CANCELLED)
