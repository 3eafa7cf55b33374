"""One ModelStreamInfer call: read requests, admit each, answer each exactly once, close.

A reader task takes requests off the stream while fewer than `max_in_flight` are unanswered
(beyond that it stops reading and HTTP/2 flow control pushes back on the sender). A request that
needs no waiting (a cache hit, the batcher's fast path) is answered inline by the reader, without
a task; the others get a task each. Answers leave through one queue as they complete, except for
models with `preserve_ordering`: their answers leave in request order, each waiting for the one
before it. A failed request is answered with an error message and its id; the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from protos import grpc_service_pb2 as pb
from server.errors import status_for
from server.protocol.infer_job import InferJob, RequestPath

log = logging.getLogger(__name__)

Response = pb.ModelStreamInferResponse
Event = asyncio.Event


class StreamSession:
    """The state of one stream. `answers()` yields its responses; iterate it once."""

    def __init__(
        self,
        requests: AsyncIterator[pb.ModelInferRequest],
        path: RequestPath,
        *,
        max_in_flight: int,
        deadline: float | None,  # the call's gRPC deadline, absolute time.monotonic()
    ) -> None:
        self._requests = requests
        self._path = path
        self._deadline = deadline
        self._answers: asyncio.Queue[Response | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: set[asyncio.Task[None]] = set()
        # Set once the latest order-preserving request has been answered: the next one waits on it.
        self._ordered_tail: asyncio.Event | None = None

    async def answers(self) -> AsyncIterator[Response]:
        reader = asyncio.create_task(self._read())
        try:
            while (response := await self._answers.get()) is not None:
                yield response
            await reader  # re-raise a reader failure (a broken request stream)
        finally:
            reader.cancel()
            for task in list(self._pending):
                task.cancel()

    async def _read(self) -> None:
        try:
            async for request in self._requests:
                await self._slots.acquire()
                self._admit(request)
            if self._pending:
                await asyncio.gather(*self._pending)
        finally:
            self._answers.put_nowait(None)  # the end of the answers, after every request's own

    def _admit(self, request: pb.ModelInferRequest) -> None:
        """Answer `request` inline if it needs no waiting, else hand it to a task of its own."""
        start_ns = time.perf_counter_ns()
        after, done = self._place_in_order(request)
        job: InferJob | None = None
        if after is None or after.is_set():  # nothing earlier to wait for
            try:
                job, now = self._path.start(request, self._left_s(), start_ns)
            except Exception as exc:
                self._send(_error(request, exc), done)
                return
            if now is not None:
                self._send(Response(infer_response=now), done)
                return
        task = asyncio.create_task(self._answer_later(request, job, start_ns, after, done))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _place_in_order(
        self, request: pb.ModelInferRequest
    ) -> tuple[asyncio.Event | None, asyncio.Event | None]:
        """(the answer to wait for, the event to set once answered) for order-preserving models."""
        if not self._path.preserves_order(request):
            return None, None
        after, done = self._ordered_tail, asyncio.Event()
        self._ordered_tail = done
        return after, done

    async def _answer_later(
        self,
        request: pb.ModelInferRequest,
        job: InferJob | None,  # None: not started yet (it waited for an earlier answer)
        start_ns: int,
        after: asyncio.Event | None,
        done: asyncio.Event | None,
    ) -> None:
        response: Response | None = None
        try:
            try:
                if job is None:
                    result = await self._path.infer(request, self._left_s())
                else:
                    result = await self._path.finish(job, start_ns)
                response = Response(infer_response=result)
            except Exception as exc:
                response = _error(request, exc)
            if after is not None:
                await after.wait()
        finally:  # also when cancelled (the call ended): free the slot and the requests after it
            self._send(response, done)

    def _send(self, response: Response | None, done: asyncio.Event | None) -> None:
        if response is not None:
            self._answers.put_nowait(response)
        if done is not None:
            done.set()
        self._slots.release()

    def _left_s(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()


def _error(request: pb.ModelInferRequest, exc: Exception) -> Response:
    """A stream answers a failed request with an error message and its id, and keeps going."""
    code, message, expected = status_for(exc)
    if not expected:
        log.error("stream request failed", exc_info=exc)
    return Response(
        error_message=f"{code.name}: {message}",
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )
