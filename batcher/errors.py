"""Why the batcher refused or failed a request. Messages are for clients: no internals.

The server maps each class to a gRPC status in one table; anything else raised through `submit`
(a backend's own exception) is unexpected and answers INTERNAL; outputs that do not hold the
batch's rows are the model's, OutputRowsWrong (UNIMPLEMENTED).
"""

from __future__ import annotations

import asyncio


class BatcherError(Exception):
    """Base of every error the batcher raises on purpose."""

    default_message = "the request could not be batched"

    def __init__(self, message: str | None = None, *, retry_after_s: float | None = None) -> None:
        super().__init__(message or self.default_message)
        # For refusals under load: about when the work ahead will have drained (a retry hint).
        self.retry_after_s = retry_after_s


class QueueFull(BatcherError):
    """The queue already holds max_queue_size requests."""

    default_message = "queue is full"


class QueueSizeReached(QueueFull):
    """The model's queue holds its config's `max_queue_size` requests: Triton answers that UNAVAILABLE
    "Exceeds maximum queue size" (its clients and QA match the words), which clients retry."""

    default_message = "Exceeds maximum queue size"


class Overloaded(QueueFull):
    """The work queued ahead cannot finish before the request's deadline: shed at admission."""

    default_message = "overloaded: the request cannot be answered before its deadline"


class DeadlineExceeded(BatcherError):
    """The request expired before compute, or cannot finish by its deadline."""

    default_message = "deadline exceeded before the request was computed"


class ComputedLate(DeadlineExceeded):
    """Computed, but its run ended after its deadline (counted `late`, not `expired`): an ensemble
    tells its own deadline outcome from its step's error by it (server/models/ensemble.py)."""

    default_message = "deadline exceeded while the request was being computed"


class QueueTimedOut(DeadlineExceeded):
    """Its queue-policy timeout (timeout_action REJECT) passed while it waited: Triton answers it
    UNAVAILABLE "Request timeout expired", so that clients may send it elsewhere."""

    default_message = "request timeout expired"


class RunTimedOut(BatcherError):
    """The batch's run outlived the model's run timeout (the watchdog, batcher/watchdog.py): its
    requests fail, and the instance gets a fresh backend."""

    default_message = "the model instance did not finish the batch in time; it is being replaced"
    # The google.rpc.ErrorInfo reason its answer carries (server/protocol/answers.py `status_of`):
    # the request was computing and may hang any instance it is sent to, so never send it again.
    error_reason = "RUN_TIMED_OUT"


class BatcherStopped(BatcherError):
    """The model is shutting down (or not started) and takes no more requests."""

    default_message = "model is not accepting requests (shutting down)"


class NotAccepting(BatcherStopped):
    """Refused at the door: the batcher had stopped admitting before this request reached it.

    Nothing of the request was queued or computed, so a caller whose model has a newer batcher
    (a reload retired this one) may submit it there instead."""


class InstanceClosed(NotAccepting):
    """A batch that reached a model instance after it was closed: its version was retired (a
    reload, an unload) while the batch waited to run past the retirement's grace. Nothing was
    computed, so it goes to the version serving now, else UNAVAILABLE (it had answered INTERNAL)."""

    @classmethod
    def of(cls, model: str) -> InstanceClosed:
        return cls(f"model '{model}': its version was retired before this batch ran")


class TooManyRows(BatcherError):
    """The request alone has more rows than one batch may hold."""

    default_message = "request has more rows than the model's max_batch_size"


class ComputedThenCancelled(asyncio.CancelledError):
    """The caller went away after the run had answered its request, before its await resumed: it
    was computed and counted in the run's statistics (queue, compute, inference_count), so the
    caller counts it a success; a plain CancelledError had left it in neither success nor fail."""


class CancelledInRun(asyncio.CancelledError):
    """The caller went away after its batch's run had started (boarded it), before the run answered
    it: the run computes it anyway (and counts it `late` there when it was cut at its deadline). An
    ensemble tells its own deadline outcome of a call cut at its deadline by it: a step in its run
    -> `late`, else `expired` (server/models/ensemble.py)."""


class OutputNotSplit(BatcherError):
    """A ragged model answered one output row per request, and this request has several rows:
    which of them is its answer cannot be told, so it fails (UNSUPPORTED, in Triton's words first)
    and the requests of one row in its run get their own rows (batcher/scatter.py)."""

    default_message = "failed to split the output tensor in responses"


class OutputRowsWrong(OutputNotSplit, ValueError):
    """An output whose first dim is not the run's rows (nor, ragged, one row per request): the
    model's outputs do not follow the batch (NonZero's count first, a reduction over the batch),
    so no request's rows can be told apart and the whole run fails, UNSUPPORTED as in Triton
    ("failed to split the output tensor"), naming the output and its shape. It had been INTERNAL,
    the output named only in the server log. A ValueError too: the batch contract was broken."""

    default_message = "the model's outputs do not hold the batch's rows"


class InputsRefused(Exception):
    """Base for a backend's refusal of a run for its inputs' values (a zero divisor), not for the
    run itself: a batch so refused has its halves run again, halved while refused (run_batch.py), so
    that only those at fault get the refusal. Not a BatcherError: the backend's class says how the
    server answers it."""


def cannot_be_met(
    rows: int, run_s: float, hop_s: float, left_s: float, where: str = "", basis: str | None = None
) -> DeadlineExceeded:
    """The answer to a request past its give-up point (`give_up_at`), naming both parts of what it
    needed: the compute, with what that figure is (`basis`, the estimator's `floor_basis`; None: the
    fastest recent run of its rows or fewer), and the margin."""
    run_ms, hop_ms, left_ms = run_s * 1e3, hop_s * 1e3, left_s * 1e3
    # One decimal, or as many (up to 3) as show the need past what is left ("about 0.1 ms ... plus
    # a 1.2 ms margin, 1.3 ms left" had read as met; a tester, session 59); none do: one.
    digits = next((d for d in (1, 2, 3) if round(run_ms, d) + round(hop_ms, d) > round(left_ms, d)), 1)
    margin = f" plus a {hop_ms:.{digits}f} ms margin" if hop_s > 0.0 else ""
    what = f"the fastest recent run of {rows} rows or fewer" if basis is None else basis
    return DeadlineExceeded(
        f"deadline cannot be met: about {run_ms:.{digits}f} ms of compute needed ({what}){margin}, "
        f"{left_ms:.{digits}f} ms left{where}"
    )
