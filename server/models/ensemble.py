"""The ensemble scheduler: run an ensemble's steps as a DAG, each through its model's own batcher.

A step starts as soon as the tensors it reads exist, so independent steps run side by side; it is
admitted to the step model's batcher like any request to that model, so it batches with that
model's other traffic (other ensemble requests' steps included) and counts in its statistics.
Tensors pass between steps as the arrays scatter gave (no copies). The request's hard deadline
applies to every step: a step is not started once it has passed, and each step's admission carries
it. A request with a deadline is first checked against its whole path of steps
(server/models/ensemble_admission.py): refused there, no step runs; admitted, its steps' rows are
pledged at their models and its steps queue in the order of its admission. A step's error keeps
its class (so its gRPC status) and names the step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from batcher.admission import Admission
from batcher.batch_io import left_ns, refusal
from batcher.dynamic import DynamicBatcher
from batcher.errors import BatcherError, CancelledInRun, DeadlineExceeded
from batcher.sequence import SequenceBatcher
from batcher.stats import ModelStats
from batcher.types import Array, Tensors
from protos import model_config_pb2 as mc
from server import triton_text
from server.backends.identity_backend import paired_input
from server.errors import InvalidRequest, WrongDatatype, WrongShape
from server.models.config import IDENTITY
from server.models.ensemble_admission import PathEnd, Pledges, admit_whole, path_ends
from server.models.ensemble_config import EnsemblePlan, Step, fit_batch_dim
from server.models.ensemble_fit import reshaped, retyped, step_inputs
from server.models.ensemble_notes import EnsembleNotes, StepRun, named_failure, recorded
from server.models.response_cache import ResponseCache, request_key
from server.models.sequence_routing import Routed
from server.observability.metrics_reasons import (
    past_deadline,
    record_cut,
    record_ensemble_outcome,
    record_failed,
)
from server.protocol.sequence_params import SequenceParams
from server.protocol.validate import Signature

if TYPE_CHECKING:
    from server.models.routing_key import RoutedRequest


class StepModel(Protocol):
    """The part of a ModelVersion (models/manager.py) a step uses."""

    @property
    def signature(self) -> Signature: ...

    @property
    def batcher(self) -> DynamicBatcher: ...

    @property
    def stats(self) -> ModelStats: ...

    @property
    def labels(self) -> Mapping[str, tuple[str, ...]]: ...

    @property
    def name(self) -> str: ...

    @property
    def version_str(self) -> str: ...

    @property
    def response_cache(self) -> ResponseCache | None: ...

    @property
    def ensemble(self) -> EnsembleScheduler | None: ...

    @property
    def config(self) -> mc.ModelConfig: ...

    @property
    def sequences(self) -> SequenceBatcher | None: ...


# (model, version "", the request a traffic policy routes when the step names no version, with its
# sequence as parsed once: sequence_routing.Routed) -> the
# version serving it now: a step naming none is routed as a request naming none (a weighted split,
# sticky keys, a rollback), never sent to the newest past a rollout.
Resolve = Callable[[str, str, "Routed | None"], StepModel]


class EnsembleScheduler:
    def __init__(
        self, plan: EnsemblePlan, resolve: Resolve, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.plan = plan
        self._resolve = resolve  # resolved per request: a step model's reload is picked up
        self._clock = clock
        # Requests running now, from their start to their end: each keeps every step model from
        # eviction meanwhile (server/models/eviction_guard.py), between its steps too.
        self.in_flight = 0

    def output_labels(self) -> dict[str, tuple[str, ...]]:
        """Each ensemble output's classification labels: those of the step output that makes it
        (the versions serving now), as Triton's ensembles take their step models' labels. An
        identity step passes its input's labels on (its output is its input)."""
        labels: dict[str, tuple[str, ...]] = {}
        for name in self.plan.outputs:
            found = self._labels_of(name, len(self.plan.steps))
            if found:
                labels[name] = found
        return labels

    def _labels_of(self, tensor: str, hops: int) -> tuple[str, ...] | None:
        made = next(((s, o) for s in self.plan.steps for o, t in s.output_map.items() if t == tensor), None)
        if made is None or hops <= 0:  # an ensemble input, or a (refused) cycle
            return None
        step, model_output = made
        try:
            served = self._resolve(step.model, step.version, None)
        except Exception:  # the step model is gone: no labels (the run itself says why)
            return None
        found = served.labels.get(model_output)
        if not found and served.ensemble is not None:  # a nested ensemble's step makes it
            found = served.ensemble.output_labels().get(model_output)
        if not found and served.config.backend == IDENTITY:
            source = paired_input(served.config, model_output)
            if source is not None and source in step.input_map:
                found = self._labels_of(step.input_map[source], hops - 1)
        return found or None

    async def run_counted(
        self,
        stats: ModelStats,
        inputs: Tensors,
        admission: Admission,
        priority: int,
        sequence: SequenceParams | None = None,
        routed: RoutedRequest | None = None,
        notes: EnsembleNotes | None = None,
        pledges: Pledges | None = None,
    ) -> Tensors:
        """`run`, counted in the ensemble's own statistics as one execution of the request's rows,
        its compute times the sums of its steps' (Triton's EnsembleContext reports them so; the
        whole run as compute_infer had put every step's queue and the hops between steps there).
        Admitted whole first (`admit_whole`: refused there, counted as a model's refusal at its
        admission), unless `pledges` says an outer ensemble admitted it as its step."""
        spent = [0, 0, 0]  # gather, run, scatter ns of the runs that answered its steps
        steps = admission._replace(computed=lambda ns: _add(spent, ns))
        if pledges is None:
            now = self._clock()
            try:
                pledges = admit_whole(self.plan, self._resolve, admission, priority, now)
            except BatcherError as exc:
                if admission.counted:
                    stats.record_refusal(exc, False, left_ns(admission.hard, self._clock()))
                raise
            if admission.hard is not None:  # its steps queue as of now (Admission.since)
                steps = steps._replace(since=now)
        try:
            outputs = await self.run(inputs, steps, priority, sequence, routed, notes, pledges)
        except Exception as exc:  # in one deadline outcome of its own, by what ended it
            if admission.counted:
                record_ensemble_outcome(stats, exc)
            raise
        except asyncio.CancelledError as cut:
            # gRPC cut the call at its deadline: a miss, as a direct call cut so (a step in its run
            # -> `late`, else `expired`); it had been in none of the ensemble's outcomes. A caller
            # that went well before its deadline is in none, as a direct call.
            if admission.counted and past_deadline(admission.hard, self._clock()):
                if isinstance(cut, CancelledInRun):
                    stats.late += 1
                else:
                    stats.expired += 1
            raise
        refused = refusal(admission.accept, outputs)
        if refused is not None:  # not its answer (Admission.accept): counted in `fail` only, by its caller
            try:
                raise refused
            finally:  # this frame, in its traceback, must not hold it: a cycle (batch_io.refusal)
                del refused
        stats.record_batch(admission.rows, 1, *spent)
        if admission.computed is not None:  # a nested ensemble's: its parent's sums include it
            admission.computed((spent[0], spent[1], spent[2]))
        # Triton's ensembles count queue as their successes (no queue of their own: no wait).
        # perf_analyzer picks the version whose queue count moved, so with 0 it could not profile
        # an ensemble ("failed to find the requested model version").
        stats.record_queue(0)
        return outputs

    async def run(
        self,
        inputs: Tensors,
        admission: Admission,
        priority: int,
        sequence: SequenceParams | None = None,
        routed: RoutedRequest | None = None,
        notes: EnsembleNotes | None = None,
        pledges: Pledges | None = None,
    ) -> Tensors:
        """The ensemble's outputs for one request; raises the first failing step's error. `routed`:
        the ensemble's request, which routes the steps naming no version (Resolve). `notes`: its
        failure lines' fields, and where its steps' runs are noted when it is traced. `pledges`:
        its steps' rows pledged at its admission, released as each starts and when it ends."""
        pledges = Pledges() if pledges is None else pledges
        self.in_flight += 1
        try:
            return await self._run(inputs, admission, priority, sequence, routed, notes, pledges)
        finally:
            self.in_flight -= 1
            pledges.release_all()

    def path_end(
        self, a: Admission, priority: int, now: float, pledges: Pledges, ready: PathEnd
    ) -> tuple[PathEnd, dict[int, PathEnd]]:
        """As a nested ensemble's step: when its outputs and steps would end (ensemble_admission)."""
        return path_ends(self.plan, self._resolve, a, priority, now, pledges, ready)

    async def _run(
        self,
        inputs: Tensors,
        admission: Admission,
        priority: int,
        sequence: SequenceParams | None,
        routed: RoutedRequest | None,
        notes: EnsembleNotes | None,
        pledges: Pledges,
    ) -> Tensors:
        plan = self.plan
        tensors = dict(inputs) if plan.reshape is None else plan.reshape.to_model(inputs)
        batched = dict.fromkeys(inputs, plan.batching)  # tensor -> leads with a batch dim
        left = list(self.plan.steps)
        running: dict[asyncio.Task[tuple[Tensors, bool]], Step] = {}
        # Set when a step failed: the steps still running are stopped by us, not by the caller, so
        # they are not counted CANCELED ("the caller went away") in their models' statistics.
        abandoned = [False]
        in_run = [False]  # set by a step whose run had started (boarded it) when the call was cut
        try:
            while left or running:
                for step in [s for s in left if all(t in tensors for t in s.input_map.values())]:
                    left.remove(step)
                    record = self._record(step, notes)
                    work = self._step(
                        step,
                        tensors,
                        batched,
                        admission,
                        priority,
                        sequence,
                        routed,
                        abandoned,
                        in_run,
                        notes,
                        record,
                        pledges,
                    )
                    task = asyncio.ensure_future(work if record is None else recorded(record, work))
                    running[task] = step
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    outputs, step_batches = task.result()  # raises the step's (named) error
                    for model_output, tensor in step.output_map.items():
                        tensors[tensor] = outputs[model_output]
                        batched[tensor] = step_batches
        except asyncio.CancelledError:  # its call was cut: its steps see the cut first
            await _stop(running)
            if in_run[0]:  # (a nested ensemble's caller learns it so too)
                raise CancelledInRun() from None
            raise
        except Exception:
            abandoned[0] = True
            raise
        finally:
            await _stop(running)
        answer = {
            name: fit_batch_dim(tensors[name], batched[name], dims, plan.batching)
            for name, dims in zip(plan.outputs, plan.output_dims, strict=True)
        }
        return answer if plan.reshape is None else plan.reshape.to_wire(answer)

    async def _step(
        self,
        step: Step,
        tensors: dict[str, Array],
        batched: dict[str, bool],
        ensemble: Admission,  # the ensemble request's: its deadline, where its steps' times go
        priority: int,
        sequence: SequenceParams | None,
        routed: RoutedRequest | None,
        abandoned: list[bool],
        in_run: list[bool],
        notes: EnsembleNotes | None,
        record: StepRun | None,
        pledges: Pledges,
    ) -> tuple[Tensors, bool]:
        pledges.release(step.index)  # its rows are queued from here on (or it fails)
        try:
            to_route = None if routed is None else Routed(routed, sequence)  # its sequence, parsed once
            served = self._resolve(step.model, step.version, to_route)
        except Exception as exc:
            raise named_failure(exc, self.plan.name, step, routed, notes) from None
        if record is not None:
            record.version = served.version_str
        signature = served.signature
        batches = signature.max_batch_size > 0
        start_ns, hard = time.perf_counter_ns(), ensemble.hard
        stats = served.stats
        try:
            if hard is not None and self._clock() >= hard:
                raise DeadlineExceeded("deadline exceeded before the step started (it was not run)")
            # ChangedByReload (named below) when the version serving it no longer fits the step
            max_rows = self.plan.max_batch_size
            inputs = step_inputs(step, signature, served.version_str, max_rows, tensors, batched)
            try:
                rows = signature.check_inputs(inputs)
            except WrongDatatype as wrong:
                raise retyped(step, served.version_str, wrong) from None
            except WrongShape as wrong:
                loaded = self.plan.step_dims.get(step.index, {}).get(wrong.name)
                shape = inputs[wrong.name].shape
                raise reshaped(step, signature, served.version_str, wrong, loaded, shape) from None
            batcher = served.batcher
            a = batcher.admission(rows, deadline=hard, priority=priority)
            a = a._replace(computed=ensemble.computed, since=ensemble.since)
            nested = served.ensemble
            outputs: Tensors | None
            if nested is not None:  # an ensemble step: its own steps, under this request's deadline
                held = pledges.nested(step.index)  # admitted whole with this request
                outputs = await nested.run_counted(stats, inputs, a, priority, sequence, routed, notes, held)
            elif served.sequences is not None:  # a sequence step: the request's sequence, its turn
                if sequence is None:
                    raise InvalidRequest(triton_text.no_correlation_id(signature.model))
                owner = None if notes is None else notes.owner
                outputs = await served.sequences.infer(
                    sequence.sid, inputs, a, start=sequence.start, end=sequence.end, owner=owner
                )
            else:  # (a step without sequence_batching ignores the sequence, as in Triton)
                outputs = await self._run_cached(served, inputs, a)
        except asyncio.CancelledError as cut:
            if not abandoned[0]:  # its call ended (a sibling step's failure is not that)
                in_run[0] = in_run[0] or isinstance(cut, CancelledInRun)
                # gRPC cut it at the deadline: a miss, with the `late` its run counts, as a direct
                # call's (it had counted CANCELED: late exceeded fail on the step)
                record_cut(stats, time.perf_counter_ns() - start_ns, hard, self._clock())
            raise
        except Exception as exc:
            record_failed(stats, time.perf_counter_ns() - start_ns, exc)
            raise named_failure(exc, self.plan.name, step, routed, notes) from None
        stats.record_success(time.perf_counter_ns() - start_ns)
        return outputs, batches

    def _record(self, step: Step, notes: EnsembleNotes | None) -> StepRun | None:
        """A traced request's note of a step's run, begun now (None: not traced)."""
        if notes is None or notes.steps is None:
            return None
        record = StepRun(self.plan.name, step.index, step.model, time.perf_counter_ns())
        notes.steps.append(record)
        return record

    @staticmethod
    async def _run_cached(served: StepModel, inputs: dict[str, Array], a: Admission) -> Tensors:
        """The step model's outputs, from its response cache when it has one, as Triton's steps
        use theirs (a step's cache was never consulted inside an ensemble)."""
        cache, stats = served.response_cache, served.stats
        key = b""
        if cache is not None:
            start = time.perf_counter_ns()
            key = request_key(served.name, served.version_str, inputs)
            hit = cache.lookup(key)
            if hit is not None:
                stats.record_cache_hit(time.perf_counter_ns() - start)
                return hit
            lookup_ns = time.perf_counter_ns() - start
        outputs = served.batcher.run_now(inputs, a)
        if outputs is None:
            outputs = await served.batcher.enqueue(inputs, a)
        if cache is not None:
            start = time.perf_counter_ns()
            if served.response_cache is not None:  # None once the version was retired meanwhile
                served.response_cache.insert(key, served.name, outputs)
            stats.cache_miss.add(lookup_ns + time.perf_counter_ns() - start)
        return outputs


def _add(spent: list[int], ns: tuple[int, int, int]) -> None:
    for i, value in enumerate(ns):
        spent[i] += value


async def _stop(running: dict[asyncio.Task[tuple[Tensors, bool]], Step]) -> None:
    """Cancel the request's step tasks still running (their requests leave their queues), and wait
    for them to end."""
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)
        running.clear()
