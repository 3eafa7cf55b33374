"""A batch's way in and out (batcher/dynamic.py): its inputs gathered from its requests, each
request's outcome set from the run (its outputs, or the error for a late or stopped request, and a
traced request's record of the run), and the CPU an executor run cost."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from batcher.errors import BatcherStopped, ComputedLate, NotAccepting, OutputNotSplit, OutputRowsWrong
from batcher.form import NO_MARGIN, WakeMargin
from batcher.queue import Request
from batcher.ragged import gather_ragged
from batcher.scatter import Part, gather
from batcher.stats import ModelStats
from batcher.types import Accept, BatchingPolicy, BatchRun, QueueTrace, Tensors


def late(hard: float | None, now: float) -> bool:
    """Past its hard deadline: a run that took longer than predicted. Never answered as a success
    (the caller has given up, or asked for no answer after its timeout)."""
    return hard is not None and now > hard


def left_ns(hard: float | None, now: float) -> int:
    """The time a hard deadline leaves now, in ns (0: none left, or no deadline)."""
    return 0 if hard is None else max(0, int((hard - now) * 1e9))


def cut_at_deadline(p: Request, now: float, margin: WakeMargin) -> bool:
    """Whether `p`, counted and gone (its caller cancelled it), may have gone for its deadline: by
    `now` its caller's copy of the deadline may have passed (the server's less `margin`: gRPC sends
    a deadline rounded up, and the call takes time to arrive). Then it is a deadline outcome
    (`expired` unrun, `late` computed), not a cancellation: such requests had been in no outcome
    (8 of 105 in an overload run)."""
    by = margin.start_by(p, 0.0)
    return p.counted and by is not None and now >= by


def cpu_timed(run: Callable[[Tensors], Tensors], inputs: Tensors) -> tuple[Tensors, float]:
    """Run on an executor thread; its outputs and the CPU seconds this thread spent (not wall time:
    that includes waiting for the GIL held by the event loop, which is what inline runs avoid)."""
    start = time.thread_time()
    outputs = run(inputs)
    return outputs, time.thread_time() - start


def computed_late() -> ComputedLate:
    return ComputedLate("deadline exceeded while the request was being computed")


def stopped() -> BatcherStopped:
    return BatcherStopped("model stopped before the request was computed")


def handed_over() -> NotAccepting:
    return NotAccepting("model version retired by a reload before the request was computed")


def record_run(
    run: BatchRun | None, trace: QueueTrace, rows: int, requests: int, ns: tuple[int, int, int, int]
) -> BatchRun:
    """Note a traced request's run on its QueueTrace (the run made once per batch, when first needed)."""
    if run is None:
        run = BatchRun(rows, requests, ns[0], ns[1], ns[2], ns[3], traced=[])
    run.traced.append(trace)
    trace.run = run
    return run


def note_taken(batch: Sequence[Request], ns: int) -> None:
    """Note on each traced request of a batch that its run begins now (QueueTrace.taken_ns)."""
    for p in batch:
        if p.handle.trace is not None:
            p.handle.trace.taken_ns = ns


def alone_rows(inputs: Tensors, policy: BatchingPolicy) -> int:
    """A request run alone: its rows, when the model has a batch dimension (else 1)."""
    if not policy.alone_with_rows:
        return 1
    return next((a.shape[0] for a in inputs.values() if a.ndim > 0), 1)


def check_rows(outputs: Tensors, rows: int, policy: BatchingPolicy) -> None:
    """Raise OutputRowsWrong (a ValueError) unless each output holds the run's `rows` rows, for a
    run whose outputs are not split (a request run alone: no dynamic batching, or the fast path),
    where the model has a batch dimension: passed through whole, an output of 1 row for a request
    of 3 (or 6 for 3) had been answered OK; split by `scatter`, the same outputs fail the run
    (UNIMPLEMENTED, naming the output)."""
    if policy.max_batch_size <= 0 and not policy.alone_with_rows:
        return  # no batch dimension: the outputs are the model's, whatever their shape
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise OutputRowsWrong(
                f"backend returned output {name!r} with shape {array.shape} for a batch of {rows} rows"
            )


def batch_inputs(batch: Sequence[Request], policy: BatchingPolicy) -> tuple[Tensors, list[int]]:
    """The model's inputs for `batch` and each request's first row in them (offsets, with the
    total rows last)."""
    if policy.ragged is not None:  # batched or not: the model takes ragged inputs flat, with batch inputs
        # Run alone (no dynamic batching), a request was admitted as 1 row; its arrays hold its own.
        rows = [p.rows for p in batch] if policy.max_batch_size > 0 else [alone_rows(batch[0].inputs, policy)]
        return gather_ragged([p.inputs for p in batch], rows, policy.ragged)
    if policy.max_batch_size > 0:
        return gather([p.inputs for p in batch], [p.rows for p in batch])
    # One request alone (no batch dimension, or no dynamic batching): its own rows still count,
    # as Triton's inference_count and batch statistics count them.
    return batch[0].inputs, [0, alone_rows(batch[0].inputs, policy)]


def splits_outputs(policy: BatchingPolicy) -> bool:
    """Whether a run's outputs are split by its requests' rows (else a request run alone without a
    batch dimension gets them whole). A ragged model has a batch dimension even run alone (no
    dynamic batching), and its outputs may hold one row per request rather than per row: split,
    a request of several rows that such outputs cannot answer fails (OutputNotSplit)."""
    return policy.max_batch_size > 0 or policy.ragged is not None


def settle_batch(
    batch: Sequence[Request],
    parts: Sequence[Part],
    rows: int,  # the run's rows
    done_at: float,
    stats: ModelStats,
    ns: tuple[int, int, int, int],  # perf_counter_ns at: start, gathered, run, scattered
    margin: WakeMargin = NO_MARGIN,
) -> None:
    """Answer each request of a run with its part of the outputs, unless it is past its hard
    deadline (then DeadlineExceeded) or its caller has gone (nothing; counted `late` when the run
    ended past its caller's deadline, by `margin`: `cut_at_deadline`). Only a request answered
    with its outputs counts its rows, compute and queue (the run itself is `record_run`'s)."""
    run: BatchRun | None = None
    compute = (ns[1] - ns[0], ns[2] - ns[1], ns[3] - ns[2])
    alone = len(batch) == 1  # its rows are the run's (a model without dynamic batching counts them)
    answered = answered_rows = 0  # counted once after the loop: no await in it, so no reader
    # between an answer and its count but the metrics thread, to which the figures only grow
    for p, part in zip(batch, parts, strict=True):
        own_rows = rows if alone else p.rows
        if not p.counted:
            stats.count_copy(own_rows)
        if p.handle.future.done():
            if p.counted and p.handle.future.cancelled():  # its caller went away during the run
                stats.late += cut_at_deadline(p, done_at, margin)  # computed, not in time
            continue
        if p.handle.trace is not None:
            run = record_run(run, p.handle.trace, rows, len(batch), ns)
        if late(p.hard, done_at):
            stats.late += p.counted
            p.handle.future.set_exception(computed_late())
        elif isinstance(part, OutputNotSplit):  # the outputs hold no rows for it: `fail` only
            p.handle.future.set_exception(part)
        elif (refused := refusal(p.accept, part)) is not None:  # not its answer: `fail` only
            p.handle.future.set_exception(refused)
        else:
            if p.counted:
                answered += 1
                answered_rows += own_rows
                stats.count_queue(p.queued_ns)
            if p.computed is not None:
                p.computed(compute)
            p.handle.future.set_result(part)
    if answered:
        stats.record_computed(answered_rows, compute, answered)


def refusal(accept: Accept | None, outputs: Tensors) -> Exception | None:
    """Why `accept` (Admission.accept) refuses `outputs` as its request's answer (None: it does not)."""
    if accept is None:
        return None
    try:
        accept(outputs)
    except Exception as exc:
        # Without its traceback: its frames (this one's caller holds the batch, whose futures get
        # the exception) made a reference cycle that kept a failed request's job, and the shared-
        # memory regions it holds, until a garbage collection. The message says what was wrong.
        return exc.with_traceback(None)
    return None
