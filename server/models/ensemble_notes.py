"""What an ensemble request's steps leave for its observers: its failure lines' fields and, when
traced, each step's run (server/models/ensemble.py notes them; the server's tracing reads them);
and a failed step's error as its caller hears it (`named_failure`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from batcher.types import Tensors
from server.errors import STATUS_BY_EXCEPTION, EnsembleStepFailed, ModelNotFound, ModelNotReady
from server.models.ensemble_config import Step
from server.observability.logs import failure_message, request_fields, trace_fields

log = logging.getLogger("server.models.ensemble")  # the failure lines' logger, as before the move


@dataclass(slots=True, eq=False)
class StepRun:
    """One step of a traced ensemble request as an observer (the server's tracing) sees it."""

    ensemble: str  # the ensemble whose step it is (a nested ensemble's steps are noted too)
    index: int
    model: str
    start_ns: int  # perf_counter_ns
    version: str = ""  # the version that served it ("": it could not be resolved)
    end_ns: int = 0
    error: BaseException | None = None  # its (named) error, or CancelledError; None: it succeeded


@dataclass(slots=True, eq=False)
class EnsembleNotes:
    """Per ensemble request: the fields its failure lines carry besides the request's own (the
    version serving it, and its trace's ids when traced: these lines had carried no version for a
    request naming none, and nothing tied them to a trace), when traced its steps' runs, and its
    sender."""

    version: str
    steps: list[StepRun] | None = None  # None: not traced
    # Who sent the request (a stream): its sequence steps' starts are that stream's, so they are
    # released when it ends, as a start sent to the sequence model directly (they had stayed live
    # until their idle timeout).
    owner: object | None = None

    def log_fields(self, request: object) -> dict[str, str]:
        fields = request_fields(request) if request is not None else {}
        fields.setdefault("version", self.version)
        fields.update(trace_fields(fields.get("request_id", "")))  # the request's own, when traced
        return fields


def named_failure(
    exc: Exception, ensemble: str, step: Step, request: object = None, notes: EnsembleNotes | None = None
) -> Exception:
    """`exc` again (same class: the same gRPC status) in Triton's words, "in ensemble 'E', <the
    step's error>", then the step after `; `; an unexpected error is logged (with the request's
    model, version, id and trace, as a plain request's failure line) and answered INTERNAL, naming
    the step only. A step model gone from the index is UNAVAILABLE, as one not ready."""
    where = f"step {step.index} (model '{step.model}')"
    if isinstance(exc, ModelNotFound):  # left the index since the ensemble loaded: not the caller's
        exc = ModelNotReady(f"model '{step.model}' is not ready (unavailable: {exc})")
    if not any(cls in STATUS_BY_EXCEPTION for cls in type(exc).__mro__):
        if notes is not None:
            fields = notes.log_fields(request)
        else:
            fields = request_fields(request) if request is not None else {}
        log.error(
            failure_message(f"ensemble '{ensemble}' {where} failed", fields), exc_info=exc, extra=fields
        )
        return EnsembleStepFailed(
            f"in ensemble '{ensemble}', {where} failed: internal error (details are in the server log)"
        )
    try:
        renamed = type(exc)(f"in ensemble '{ensemble}', {exc}; {where}")
    except Exception:  # a class whose constructor takes something else: keep it as it is
        return exc
    renamed.__cause__ = exc
    return renamed


async def recorded(record: StepRun, work: Coroutine[Any, Any, tuple[Tensors, bool]]) -> tuple[Tensors, bool]:
    """`work`, a step's run, with its end and outcome noted on `record`."""
    try:
        return await work
    except BaseException as exc:
        record.error = exc
        raise
    finally:
        record.end_ns = time.perf_counter_ns()
