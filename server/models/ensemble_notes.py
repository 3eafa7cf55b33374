"""What an ensemble request's steps leave for its observers: its failure lines' fields and, when
traced, each step's run (server/models/ensemble.py notes them; the server's tracing reads them)."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from batcher.types import Tensors
from server.observability.logs import request_fields, trace_fields


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
    request naming none, and nothing tied them to a trace), and, when traced, its steps' runs."""

    version: str
    steps: list[StepRun] | None = None  # None: not traced

    def log_fields(self, request: object) -> dict[str, str]:
        fields = request_fields(request) if request is not None else {}
        fields.setdefault("version", self.version)
        fields.update(trace_fields(fields.get("request_id", "")))  # the request's own, when traced
        return fields


async def recorded(record: StepRun, work: Coroutine[Any, Any, tuple[Tensors, bool]]) -> tuple[Tensors, bool]:
    """`work`, a step's run, with its end and outcome noted on `record`."""
    try:
        return await work
    except BaseException as exc:
        record.error = exc
        raise
    finally:
        record.end_ns = time.perf_counter_ns()
