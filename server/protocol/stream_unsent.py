"""The answers a stream made and never wrote because its call ended first: counted, and said once.

A stream counts each request's outcome (success or fail) when its answer is made, not when it is
written: counted when written, a success taken back would make `nv_inference_request_success` go
down between scrapes. So when grpc ends the call with answers made and not yet written (queued, in
grpc's write, or made by a task the end cancelled), each is counted once more, as unsent, in the
statistics its outcome was counted in (`sluiceway_stream_answers_dropped_total{reason}`), and one
log line per stream end says how many and why. They had been lost silently while counted successes.
A latest-frame-wins frame's `frame_dropped` answer (counted in `dropped`, neither a success nor a
failure) never written is counted under the reason `frame_dropped`, whatever ended its call: it had
been counted nowhere, so answers made and not written could not be told from the counters.

grpc.aio gives a handler no status when the call ends under it: a client's cancel, a lost
connection and grpc's own refusal of a frame over its hard ceiling (twice `max_message_bytes`: the
client sees RESOURCE_EXHAUSTED) all cancel the handler alike, so they share the reason `cancelled`.

The lines are rationed (`UnsentLines`, one per server): a client that opened streams, sent work
and cancelled them in a loop wrote 122 lines (55 KB) a second. Past a burst, the stream ends not
logged are summed into the next line; the counter counts every answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from batcher.stats import ModelStats
from protos import grpc_service_pb2 as pb
from server.observability.metrics_reasons import past_deadline
from server.protocol.latest_frame import FRAME_DROPPED

log = logging.getLogger(__name__)


class Timer(Protocol):
    def cancel(self) -> None: ...


# Runs a callback after a delay in seconds (the event loop's call_later).
Schedule = Callable[[float, Callable[[], None]], Timer]

# What each reason (batcher/stats.py UNSENT_REASONS) means, for the log line.
_WHY = {
    "cancelled": "grpc cancelled the call: its client cancelled it or went away, or sent a frame over "
    "grpc's hard ceiling of {ceiling} (twice max_message_bytes; that client saw RESOURCE_EXHAUSTED)",
    "deadline": "the call's deadline passed (DEADLINE_EXCEEDED)",
    "stalled": "its client read no answer and sent nothing for {idle_s:g} s (stream_idle_timeout_s)",
    "shutdown": "the server stopped before they were written (the shutdown grace ended)",
    "error": "its request stream failed",
    "grpc_error_ended": "an error answer ended the call with its status (the call set triton_grpc_error: "
    "true; that answer was delivered as the status), so the answers after it could not be sent",
}


def end_reason(failed: bool, ended_by: str | None, deadline: float | None, now: float | None = None) -> str:
    """Why a stream's call ended before all its answers were written. `failed`: its request stream
    raised (not a cancel); `ended_by`: the session's own end ("stalled", "grpc_error", "drain",
    "idle" or None); `deadline`: the call's gRPC deadline (absolute time.monotonic())."""
    if ended_by == "stalled":
        return "stalled"
    if ended_by == "grpc_error":  # its first error answer ends the call (triton_grpc_error)
        return "grpc_error_ended"
    if failed:
        return "error"
    if past_deadline(deadline, now):
        return "deadline"
    if ended_by == "drain":  # cancelled while the server drained: grpc's stop at the grace's end
        return "shutdown"
    return "cancelled"


@dataclass(slots=True)
class Unsent:
    """One stream's unsent answers, counted as they are found (at its end, and as the tasks its end
    cancelled finish); `report` logs them once."""

    reason: str = ""  # set by `ended`; nothing is unsent before
    successes: int = 0
    failures: int = 0
    # Latest-frame-wins frames superseded (in the model's `dropped`): counted as `frame_dropped`.
    superseded: int = 0
    # Answers in no model's statistics: refusals of no model (a malformed frame, an unknown model).
    uncounted: int = 0
    reported: bool = False

    @property
    def total(self) -> int:
        return self.successes + self.failures + self.superseded + self.uncounted

    def ended(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason

    def drop_answer(self, counted_in: ModelStats | None, response: pb.ModelStreamInferResponse) -> None:
        """`response` was never written; `counted_in`: the statistics its outcome was counted in."""
        dropped = FRAME_DROPPED in response.infer_response.parameters  # `in` adds no entry
        self.drop(counted_in, not response.error_message, frame_dropped=dropped)

    def drop(self, counted_in: ModelStats | None, success: bool, frame_dropped: bool = False) -> None:
        """An answer never written; `counted_in`: the statistics its outcome was counted in;
        `frame_dropped`: a superseded frame's answer (counted in `dropped`, not success or fail)."""
        if counted_in is None:
            self.uncounted += 1
            return
        if frame_dropped:
            counted_in.record_unsent("frame_dropped")
            self.superseded += 1
            return
        counted_in.record_unsent(self.reason or "cancelled")
        if success:
            self.successes += 1
        else:
            self.failures += 1

    def line(self, peer: str, ceiling: int | None, idle_s: float) -> str:
        """What `UnsentLines` logs for this stream. `ceiling`: grpc's receive limit (None: none);
        `idle_s`: stream_idle_timeout_s."""
        bound = "(none)" if ceiling is None else f"{ceiling} bytes"
        reason = self.reason or "cancelled"
        why = _WHY.get(reason, reason).format(ceiling=bound, idle_s=idle_s)
        counted = self.successes + self.failures
        metric = 'sluiceway_stream_answers_dropped_total{{reason="{}"}}'
        where = f"; {counted} counted in {metric.format(reason)}" if counted else ""
        if self.superseded:
            where += f"; {self.superseded} in {metric.format('frame_dropped')}"
        return (
            f"stream from {peer} ended with {self.total} answers not written ({self.successes} counted "
            f"successes, {self.failures} counted failures, {self.uncounted} counted in neither: "
            f"refusals of no model; {self.superseded} frames superseded, latest_frame_wins): {why}{where}"
        )


class UnsentLines:
    """The server's lines for streams that ended with answers not written: up to `burst` at once,
    then one per `every_s`; the stream ends not logged meanwhile are summed into the next line, or,
    when none comes within the ration, into a line of their own once it allows one (a timer on the
    event loop: the last of a flood had waited for the next stream end, for good if none came), and
    at the server's stop (`close`)."""

    def __init__(
        self,
        burst: int = 10,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,  # call_later on the running loop unless given (tests)
    ) -> None:
        self._burst = burst
        self._every_s = every_s
        self._clock = clock
        self._schedule = schedule
        self._tokens = float(burst)
        self._last = clock()
        self._skipped_streams = 0
        self._skipped_answers = 0
        self._flush: Timer | None = None  # armed while stream ends wait unlogged
        self._closed = False  # the server stopped: a stream end still reported is logged at once

    def report(self, unsent: Unsent, peer: str, ceiling: int | None, idle_s: float) -> None:
        """Log `unsent` once, when any answer went unsent, if the ration allows; else sum it."""
        if unsent.reported or not unsent.total:
            return
        unsent.reported = True
        if not self._take() and not self._closed:
            self._skipped_streams += 1
            self._skipped_answers += unsent.total
            self._arm_flush()
            return
        line = unsent.line(peer, ceiling, idle_s)
        if self._skipped_streams:
            line += f" (and {self._summary()})"
        log.warning("%s", line)

    def close(self) -> None:
        """The server stops: log what waits unlogged now, whatever the ration, and disarm."""
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._skipped_streams:
            log.warning("%s", self._summary())

    def _take(self) -> bool:
        """One line's worth of the ration, if there is one now."""
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._last) / self._every_s)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _arm_flush(self) -> None:
        if self._flush is not None:
            return
        schedule = self._schedule
        if schedule is None:
            try:
                schedule = asyncio.get_running_loop().call_later
            except RuntimeError:  # no loop (a bare test): the next line or `close` logs them
                return
        due_s = max(0.0, (1.0 - self._tokens) * self._every_s)  # once the ration allows a line
        self._flush = schedule(due_s, self._flush_due)

    def _flush_due(self) -> None:
        self._flush = None
        if not self._skipped_streams:  # a stream end's line took them meanwhile
            return
        if not self._take():  # not yet (a clock that ran slow): look again when it may
            self._arm_flush()
            return
        log.warning("%s", self._summary())

    def _summary(self) -> str:
        """The stream ends not logged since the last line; counted from zero again."""
        text = (
            f"{self._skipped_streams} more streams ended with {self._skipped_answers} answers not "
            f"written since the last line, not logged: more than {self._burst} lines at once, then "
            f"one per {self._every_s:g} s"
        )
        self._skipped_streams = self._skipped_answers = 0
        return text
