"""The answers a stream made and never wrote because its call ended first: counted, and said once.

A stream counts each request's outcome (success or fail) when its answer is made, not when it is
written: counted when written, a success taken back would make `nv_inference_request_success` go
down between scrapes. So when grpc ends the call with answers made and not yet written (queued, in
grpc's write, or made by a task the end cancelled), each is counted once more, as unsent, in the
statistics its outcome was counted in (`sluiceway_stream_answers_dropped_total{reason}`), and one
log line per stream end says how many and why. They had been lost silently while counted successes.

grpc.aio gives a handler no status when the call ends under it: a client's cancel, a lost
connection and grpc's own refusal of a frame over its hard ceiling (twice `max_message_bytes`: the
client sees RESOURCE_EXHAUSTED) all cancel the handler alike, so they share the reason `cancelled`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from batcher.stats import ModelStats
from server.observability.metrics_reasons import past_deadline

log = logging.getLogger(__name__)

# What each reason (batcher/stats.py UNSENT_REASONS) means, for the log line.
_WHY = {
    "cancelled": "grpc cancelled the call: its client cancelled it or went away, or sent a frame over "
    "grpc's hard ceiling of {ceiling} (twice max_message_bytes; that client saw RESOURCE_EXHAUSTED)",
    "deadline": "the call's deadline passed (DEADLINE_EXCEEDED)",
    "stalled": "its client read no answer and sent nothing for {idle_s:g} s (stream_idle_timeout_s)",
    "shutdown": "the server stopped before they were written (the shutdown grace ended)",
    "error": "its request stream failed",
}


def end_reason(failed: bool, ended_by: str | None, deadline: float | None, now: float | None = None) -> str:
    """Why a stream's call ended before all its answers were written. `failed`: its request stream
    raised (not a cancel); `ended_by`: the session's own end ("stalled", "drain", "idle" or None);
    `deadline`: the call's gRPC deadline (absolute time.monotonic())."""
    if ended_by == "stalled":
        return "stalled"
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
    uncounted: int = 0  # refusals counted in no model's statistics (a malformed frame, an unknown model)
    reported: bool = False

    @property
    def total(self) -> int:
        return self.successes + self.failures + self.uncounted

    def ended(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason

    def drop(self, counted_in: ModelStats | None, success: bool) -> None:
        """An answer never written; `counted_in`: the statistics its outcome was counted in."""
        if counted_in is None:
            self.uncounted += 1
            return
        counted_in.record_unsent(self.reason or "cancelled")
        if success:
            self.successes += 1
        else:
            self.failures += 1

    def report(self, peer: str, ceiling: int | None, idle_s: float) -> None:
        """Log one line, once, when any answer went unsent. `ceiling`: grpc's receive limit (None:
        none); `idle_s`: stream_idle_timeout_s."""
        if self.reported or not self.total:
            return
        self.reported = True
        bound = "(none)" if ceiling is None else f"{ceiling} bytes"
        why = _WHY.get(self.reason, self.reason).format(ceiling=bound, idle_s=idle_s)
        log.warning(
            "stream from %s ended with %d answers not written (%d counted successes, %d counted "
            "failures, %d counted in no model): %s; counted in sluiceway_stream_answers_dropped_total"
            '{reason="%s"}',
            peer,
            self.total,
            self.successes,
            self.failures,
            self.uncounted,
            why,
            self.reason or "cancelled",
        )
