"""The server's exceptions and the one table that maps every exception to a gRPC status.

Handlers raise; the servicer answers with `status_for(exc)`. Messages of mapped exceptions are
written for the caller (they name the field at fault); anything unmapped answers INTERNAL with a
generic message and its details go to the log only.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import grpc

from batcher import errors as batcher_errors
from batcher import sequence_types


class ServiceError(Exception):
    """Base of the server's own request errors."""


class ModelNotFound(ServiceError):
    """No such model, or no such version of it."""


class ModelNotReady(ServiceError):
    """The model exists but cannot serve now (failed to load, loading, unloaded)."""


class InvalidRequest(ServiceError):
    """The request does not fit the model: names, datatypes, shapes, sizes, parameters."""


class WrongDatatype(InvalidRequest):
    """An input in another datatype than the model's: `name`, and the datatypes `sent` and the
    `model`'s (KServe strings), for an ensemble to tell a reloaded step's misfit from a client's."""

    def __init__(self, message: str, name: str = "", sent: str = "", model: str = "") -> None:
        super().__init__(message)
        self.name, self.sent, self.model = name, sent, model


class WrongShape(InvalidRequest):
    """An input whose shape the model's dims do not take: `name`, for an ensemble to tell a reloaded
    step's misfit from a client's (ensemble_fit.reshaped)."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class ShuttingDown(ServiceError):
    """The server has stopped admitting requests."""


class WorkCancelled(ServiceError):
    """A CancelledError that was not the call's own cancellation reached its handler: a future or
    task the server cancelled (a model unloaded or replaced, the server stopping) was awaited there.
    grpc.aio sends no status for a handler ending so: its client waited for its deadline, for good
    without one. UNAVAILABLE: nothing says the request was at fault, and a retry may be served."""


class ChangedByReload(ServiceError):
    """A queued request a reload handed to the new version, whose inputs or outputs no longer fit
    it: valid when admitted, so UNAVAILABLE (retryable), not INVALID_ARGUMENT (InferJob.retarget)."""


class StreamLimitReached(ServiceError):
    """Opening one more stream would pass a stream limit (the message names it)."""


class StreamIdle(ServiceError):
    """A stream read nothing for stream_idle_timeout_s and had nothing in flight."""


class StreamStalled(StreamIdle):
    """A stream's client read no answer and sent nothing for stream_idle_timeout_s while answers
    waited to be written: the server ended its call."""


class FrameDropped(ServiceError):
    """Latest-frame-wins: a newer frame of the same stream and model superseded this one before it
    started computing. A stream answers it with the `frame_dropped` parameter, never an error."""


class RegionNotFound(ServiceError):
    """No shared memory region of that name is registered."""


class RegionExists(ServiceError):
    """A shared memory region of that name is already registered."""


class SharedMemoryLimit(ServiceError):
    """Registering the region would pass max_shm_regions or max_shm_bytes (the message says which)."""


class AnswerTooLarge(ServiceError):
    """A stream answer over the server's message limit: its frame fails alone, the stream goes on
    (sent, it ended the whole stream RESOURCE_EXHAUSTED and left the later frames unanswered).
    The message holds gRPC's words, "message larger than max", which clients match."""


class Unsupported(ServiceError):
    """A feature this server cannot serve as configured (client shared memory off, CUDA without a GPU)."""


class RepositoryError(ServiceError):
    """A repository operation failed (bad config, missing files) for a reason the caller can fix."""


class LoadOutOfResources(RepositoryError):
    """A load failed for want of the server's own resources (open files, memory), not for anything
    in the repository: UNAVAILABLE, which clients retry (it had been INVALID_ARGUMENT)."""


# The OS errors that say the server is short of something, whatever file it was reading.
SHORTAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
# ... and their words, in the messages of C++ code that reports them as text (onnxruntime's).
_SHORTAGE_WORDS = (*(os.strerror(code) for code in SHORTAGE_ERRNOS), "system error number 24")


def failure_chain(exc: BaseException, depth: int = 8) -> Iterator[BaseException]:
    """`exc` and what led to it, at most `depth` deep: its cause, else its context (`raise ... from
    None` keeps the original as __context__: wrapped errors are still seen)."""
    seen: BaseException | None = exc
    for _ in range(depth):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__ or seen.__context__


def load_failure(message: str, exc: BaseException) -> RepositoryError:
    """The error a failed load answers with: LoadOutOfResources when `exc` or what led to it is an
    OSError of SHORTAGE_ERRNOS (or says one in words), else RepositoryError."""
    for seen in failure_chain(exc):
        if isinstance(seen, OSError) and seen.errno in SHORTAGE_ERRNOS:
            return LoadOutOfResources(message)
        if any(words in str(seen) for words in _SHORTAGE_WORDS):
            return LoadOutOfResources(message)
    return RepositoryError(message)


class FilesNotStored(ServiceError):
    """The files sent with a RepositoryModelLoad could not be written (cache_dir read-only, say)."""


class FilesNoSpace(FilesNotStored):
    """As FilesNotStored, for want of space: a retry may find room."""


class ModelControlDisabled(ServiceError):
    """RepositoryModelLoad/Unload under model control mode none or poll (Triton refuses them too)."""


class ModelLoadTimeout(ServiceError):
    """A lazy model's first request: the load did not finish within its deadline (it goes on)."""


class MemoryBudgetExceeded(ServiceError):
    """Loading would pass model_memory_budget_mb and not enough idle lazy models can be evicted."""


class OutgrowsMemoryBudget(MemoryBudgetExceeded):
    """The model needs more than the whole model_memory_budget_mb: no eviction can ever make room,
    so the refusal says not to send it again (ErrorInfo OUTGROWS_MEMORY_BUDGET)."""

    # The google.rpc.ErrorInfo reason its answer carries (server/protocol/answers.py `status_of`).
    error_reason = "OUTGROWS_MEMORY_BUDGET"


class RolloutRefused(ServiceError):
    """A rollout change that would leave a model with no version taking requests."""


class RolloutRetry(ServiceError):
    """Under --workers: other workers' rollout changes kept taking the next number; nothing changed,
    a retry is expected to get in (ABORTED: a conflict with concurrent changes)."""


class RolloutShareLost(ServiceError):
    """Under --workers: the workers' shared change directory is gone or cannot be written, so a
    rollout change could not reach the other workers; nothing changed."""


class EnsembleStepFailed(Exception):
    """An ensemble step failed unexpectedly: INTERNAL, as any unexpected error, but naming the step
    (its message holds nothing else; the details are in the log). Not a ServiceError: those are
    never INTERNAL."""


class ModelRefusedInput(InvalidRequest, batcher_errors.InputsRefused):
    """onnxruntime refused a run's inputs (its INVALID_ARGUMENT): shapes or values that the config
    lets through and the graph does not. Its message is onnxruntime's (server/backends/run_errors.py).
    A batch so refused has its halves run again, halved while refused (InputsRefused): only the
    culprits fail."""


class ModelRunFailed(Exception):
    """onnxruntime failed a run: INTERNAL with onnxruntime's message, as Triton's onnxruntime backend
    answers (logged once per batch where it happened). Not a ServiceError: those are never INTERNAL."""


STATUS_BY_EXCEPTION: dict[type[BaseException], grpc.StatusCode] = {
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    ChangedByReload: grpc.StatusCode.UNAVAILABLE,
    WorkCancelled: grpc.StatusCode.UNAVAILABLE,
    RepositoryError: grpc.StatusCode.INVALID_ARGUMENT,
    LoadOutOfResources: grpc.StatusCode.UNAVAILABLE,
    StreamLimitReached: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StreamIdle: grpc.StatusCode.DEADLINE_EXCEEDED,
    FilesNoSpace: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FilesNotStored: grpc.StatusCode.FAILED_PRECONDITION,
    ModelControlDisabled: grpc.StatusCode.UNAVAILABLE,  # Triton's code for it
    ModelLoadTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    MemoryBudgetExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RolloutRefused: grpc.StatusCode.FAILED_PRECONDITION,
    RolloutRetry: grpc.StatusCode.ABORTED,
    RolloutShareLost: grpc.StatusCode.UNAVAILABLE,
    EnsembleStepFailed: grpc.StatusCode.INTERNAL,  # server/models/ensemble.py
    ModelRunFailed: grpc.StatusCode.INTERNAL,  # onnxruntime's own message (backends/run_errors.py)
    FrameDropped: grpc.StatusCode.CANCELLED,  # never sent as an error (server/protocol/latest_frame.py)
    RegionNotFound: grpc.StatusCode.NOT_FOUND,
    RegionExists: grpc.StatusCode.ALREADY_EXISTS,
    SharedMemoryLimit: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    AnswerTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    batcher_errors.TooManyRows: grpc.StatusCode.INVALID_ARGUMENT,
    # Triton's UNSUPPORTED for an output its responder cannot split by the requests' rows.
    batcher_errors.OutputNotSplit: grpc.StatusCode.UNIMPLEMENTED,
    sequence_types.SequenceError: grpc.StatusCode.INVALID_ARGUMENT,  # UnknownSequence too
    sequence_types.SequenceLimitReached: grpc.StatusCode.RESOURCE_EXHAUSTED,
    batcher_errors.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,  # our byte budgets
    batcher_errors.QueueSizeReached: grpc.StatusCode.UNAVAILABLE,  # Triton's code for max_queue_size
    batcher_errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    batcher_errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    batcher_errors.QueueTimedOut: grpc.StatusCode.UNAVAILABLE,  # Triton's code for it
    batcher_errors.BatcherStopped: grpc.StatusCode.UNAVAILABLE,
    # A stuck instance, not a bad request: the replacement (or another replica) can serve a retry.
    batcher_errors.RunTimedOut: grpc.StatusCode.UNAVAILABLE,
}

INTERNAL_MESSAGE = "internal error while serving the request (details are in the server log)"


# A status message's bound, in UTF-8 bytes. Messages echo what the caller sent (names, versions,
# sequence ids); grpc-message is percent-encoded (up to 3 bytes a byte), and clients refuse
# metadata past 8-16 KiB: a 20 KB model name turned NOT_FOUND into the client's RESOURCE_EXHAUSTED.
MESSAGE_MAX_BYTES = 2000


def for_caller(message: str) -> str:
    """`message`, cut to MESSAGE_MAX_BYTES (saying so) where longer."""
    data = message.encode("utf-8", "replace")
    if len(data) <= MESSAGE_MAX_BYTES:
        return message
    return data[:MESSAGE_MAX_BYTES].decode("utf-8", "ignore") + f"... (cut: {len(data)} bytes)"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, bool]:
    """(status code, message for the caller, whether it was expected) for an exception."""
    for cls in type(exc).__mro__:
        code = STATUS_BY_EXCEPTION.get(cls)
        if code is not None:
            return code, for_caller(str(exc)), True
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, False
