"""One instance slot's onnxruntime session in the session host (session_host.py), shared by every
`--workers` process, and the thread that runs the batches they send it.

Each run takes the batches that wait for the session and fit together (the same inputs, of the
same per-row shapes and types), in arrival order, up to max_batch_size rows, runs them as one, and
hands each its own rows of the outputs. On a padded CUDA session (batch_padding.py) the runs are
cut at the size it pads to (`_limit`); on a GPU a second thread gathers a full next run while one
runs on the device (`_take`).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from batcher.errors import InputsRefused, InstanceClosed, RunTimedOut
from batcher.scatter import Gathered, offsets_of
from batcher.types import Array, Tensors
from batcher.watchdog import ExpiredUnrun
from server.backends.batch_padding import sticky_size
from server.backends.onnxruntime_backend import OrtBackend, OrtOptions, Provider

log = logging.getLogger("server.backends.session_host")  # the host's lines, one logger
RUNNERS_ON_GPU = 2  # threads taking runs of one session on a GPU (the second gathers meanwhile)
GROW_AFTER = 32  # runs in a row that left rows waiting before a padded session may grow its size
UNHOSTABLE_TYPES = ("tensor(string)", "tensor(bfloat16)")  # not plain bytes in shared memory


@dataclass(frozen=True)
class OpenRequest:
    """What a worker's instance asks the host to open: the same arguments its OrtBackend takes."""

    path: str
    options: OrtOptions
    providers: tuple[Provider, ...]
    name: str
    slot: int  # the instance's place in its model's plan: each slot is one shared session
    max_batch_size: int  # rows one merged run may hold (0: never merged)
    # What the version's load read (its config's text, its files' sizes and times: repository.py's
    # version_fingerprint): a reload of changed files or config opens a session of its own. Without
    # it, a reload's open met the old session, still held by the old instances, and kept serving it.
    fingerprint: str = ""

    def key(self) -> bytes:
        """Equal for every worker's instance of one slot of one load of a version, else different."""
        return pickle.dumps(
            (
                self.path,
                self.options,
                self.providers,
                self.name,
                self.slot,
                self.max_batch_size,
                self.fingerprint,
            )
        )


class HostCounts(NamedTuple):
    """What a shared session did, for /metrics (every worker reads the same): runs, the rows they
    held, runs that merged batches of several workers', batches left unrun past their start-by,
    and padded shape changes (each a cuDNN plan build)."""

    runs: int = 0
    rows: int = 0
    merged: int = 0
    expired: int = 0
    shape_changes: int = 0

    def __add__(self, other: tuple[int, ...]) -> HostCounts:  # type: ignore[override]
        return HostCounts(*(a + b for a, b in zip(self, other, strict=True)))


@dataclass(eq=False)  # each batch is itself (its arrays compare by element)
class Job:
    """One worker's batch, waiting to run (alone or merged with others)."""

    inputs: dict[str, Array]
    rows: int
    start_by: float | None = None  # time.monotonic() past which it is answered unrun (ExpiredUnrun)
    on_start: Callable[[], None] | None = None  # told when its run starts (the worker's watchdog)
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, Array] | None = None
    error: BaseException | None = None

    def fits_with(self, other: Job) -> bool:
        """Whether the two batches can be one: the same inputs, of the same per-row shapes and types."""
        if self.inputs.keys() != other.inputs.keys():
            return False
        return all(
            a.dtype == b.dtype and a.shape[1:] == b.shape[1:] and a.ndim > 0
            for a, b in ((self.inputs[n], other.inputs[n]) for n in self.inputs)
        )


class HostedSession:
    """One instance slot's session, shared by the workers, with the thread that runs its batches:
    each run takes every waiting batch that fits (in arrival order, up to max_batch_size rows)."""

    def __init__(self, request: OpenRequest, *, start: bool = True) -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"host-{request.name}")
        self.backend = OrtBackend(
            Path(request.path), request.options, list(request.providers), executor, model_name=request.name
        )
        self.name = request.name
        self.padding = request.options.padding
        # A padded session (a CUDA convolution model, batch_padding.py): its runs are cut at the size
        # it pads to, so the rows run are real rows, not copies of the last (see _limit).
        self._sticky = sticky_size(self.backend)
        if self._sticky is not None:
            self._sticky.shrink = 2
        self._outgrown = 0  # runs in a row that left rows waiting past the padded size
        self.max_rows = request.max_batch_size
        self.runs = 0
        self.rows = 0
        self.merged = 0  # runs that held more than one worker's batch
        self.expired = 0  # batches answered unrun: their turn came past their start-by time
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # On a GPU a second thread gathers the next run into its pinned buffer while one runs on
        # the device (see _take); on the CPU a second run would only take the first's cores.
        self._runners = RUNNERS_ON_GPU if self.backend.device.kind == "cuda" else 1
        self._running = 0  # runs taken and not yet ended
        self._starts: list[float] = []  # when each run in progress started (time.monotonic)
        self._abandoned = False
        if start:  # (the tests take and run batches themselves)
            for i in range(self._runners):
                threading.Thread(target=self._loop, name=f"merge-{request.name}-{i}", daemon=True).start()

    def counts(self) -> HostCounts:
        changes = self.padding.changes.count if self.padding is not None else 0
        return HostCounts(self.runs, self.rows, self.merged, self.expired, changes)

    def unhostable(self) -> list[str]:
        """Tensors that cannot cross shared memory as plain arrays (strings, BF16)."""
        tensors = [*self.backend.inputs, *self.backend.outputs]
        return [t.name for t in tensors if t.type in UNHOSTABLE_TYPES]

    def run(
        self,
        inputs: dict[str, Array],
        start_by: float | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> dict[str, Array]:
        """Run one worker's batch (alone or merged with others'); blocks until it has run, or until
        its turn came past `start_by` (ExpiredUnrun: every request of it was past its deadline).
        `on_start` is called as its run starts."""
        job = self.submit(inputs, start_by, on_start)
        self._wait(job)
        if job.error is not None:
            raise job.error
        assert job.outputs is not None
        return job.outputs

    def _wait(self, job: Job) -> None:
        """Until `job` is done. One still waiting for its turn when its start_by passes is answered
        unrun then (ExpiredUnrun), not when its turn comes: behind another worker's run of seconds
        (a CPU's) its requests' DEADLINE_EXCEEDED had come that much after their deadlines (a
        tester's: up to 2.9 s, 1.5 s without shared sessions)."""
        if job.start_by is not None and not job.done.wait(max(0.0, job.start_by - time.monotonic())):
            with self._cond:
                if job in self._jobs:  # no run has taken it: its turn has not come
                    self._jobs.remove(job)
                    job.error = ExpiredUnrun()
                    self.expired += 1
                    job.done.set()
        job.done.wait()  # taken by a run meanwhile: it runs, bounded by its worker's watchdog

    def submit(
        self,
        inputs: dict[str, Array],
        start_by: float | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> Job:
        first = next(iter(inputs.values()), None)
        job = Job(inputs, int(first.shape[0]) if first is not None and first.ndim else 0, start_by, on_start)
        with self._cond:
            if self._abandoned:  # (submitted as it was abandoned: to the fresh session)
                raise Moved()
            if self._closed:  # as a closed OrtBackend: the batcher sends it to the version serving now
                raise InstanceClosed.of(self.name)
            self._jobs.append(job)
            self._cond.notify_all()  # (runners wait on different conditions: see _take)
        return job

    def _take(self) -> list[Job] | None:
        """The next run's batches, once a run may start (None: closed, nothing waits): when no run
        is in progress, or, with a second runner (a GPU's), when a full run waits. A full run then
        has its inputs gathered while the other runs on the device; a run started early with what
        had arrived would be small, and the one after it too (each is what arrived meanwhile)."""
        with self._cond:
            while True:
                self._drop_expired()
                if not self._jobs:
                    if self._closed:
                        return None
                elif self._may_start():
                    self._running += 1
                    return self._cut()
                self._cond.wait()

    def _finished(self) -> None:
        with self._cond:
            self._running -= 1
            self._cond.notify_all()

    def running_since(self, started: float) -> bool:
        """Whether a run in progress started at `started` (time.monotonic) or before: the stuck run
        a worker's watchdog gave up on, and not a run a fresh session began since."""
        with self._cond:
            return any(start <= started for start in self._starts)

    def _may_start(self) -> bool:
        """With batches waiting: whether a runner takes a run now."""
        return self._running == 0 or (self._running < self._runners and self._full())

    def _full(self) -> bool:
        """Whether the waiting batches that fit the first fill a run (max_batch_size, or the size
        a padded session pads to now); without merging (max_batch_size 0) any batch is a run."""
        limit = self._padded_size() or self.max_rows
        first, *behind = self._jobs
        return limit <= 0 or _rows_that_fit(first, behind) >= limit

    def _padded_size(self) -> int:
        """The size a padded session pads its runs to now (0: it does not pad, or has not run)."""
        return self._sticky.current if self._sticky is not None else 0

    def _cut(self) -> list[Job]:
        taken = [self._jobs.popleft()]
        rows = taken[0].rows
        limit = self._limit(taken[0])
        while self._jobs and rows + self._jobs[0].rows <= limit and self._jobs[0].fits_with(taken[0]):
            rows += self._jobs[0].rows
            taken.append(self._jobs.popleft())
        return taken

    def _drop_expired(self) -> None:
        """Answer the waiting batches whose turn came too late unrun (their worker's batcher answers
        DEADLINE_EXCEEDED): never compute for requests whose deadlines have passed."""
        now = time.monotonic()
        expired = [job for job in self._jobs if job.start_by is not None and now > job.start_by]
        for job in expired:
            self._jobs.remove(job)
            job.error = ExpiredUnrun()
            self.expired += 1
            job.done.set()

    def _limit(self, first: Job) -> int:
        """The rows this run may take (its first batch is taken whatever its rows): max_batch_size,
        or, on a padded session, the size it pads to now. Under a closed loop of N in flight the
        runs alternate at about N/2 rows: run at max_batch_size they crossed the power of two (33 of
        64 padded to 64, twice the device's time for the rows); cut at the size, the size settles
        at the half (shrink 2) and holds. The size grows only after GROW_AFTER runs in a row left
        more rows waiting than it holds (a load that grew), never at one burst (a plan build)."""
        size = self._padded_size()
        if self.max_rows <= 0 or size <= 0:
            return self.max_rows
        if _rows_that_fit(first, self._jobs) <= size:
            self._outgrown = 0
            return size
        self._outgrown += 1
        if self._outgrown < GROW_AFTER:
            return size
        self._outgrown = 0
        return self.max_rows

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            try:
                self._run(taken)
            finally:
                self._finished()
                taken.clear()  # not held while the next is awaited: inputs map workers' segments

    def _run(self, taken: list[Job]) -> None:
        rows = [job.rows for job in taken]
        began = time.monotonic()
        with self._cond:
            self._starts.append(began)
        for job in taken:
            if job.on_start is not None:
                with contextlib.suppress(OSError):  # its worker gone: its answer will not arrive either
                    job.on_start()
        try:
            self._run_merged(taken, rows)
        finally:
            with self._cond:  # (two runners on a GPU)
                self._starts.remove(began)
                self.runs += 1
                self.rows += sum(rows)
                self.merged += len(taken) > 1
        for job in taken:
            job.done.set()

    def _run_merged(self, taken: list[Job], rows: list[int]) -> None:
        feed: Tensors = taken[0].inputs if len(taken) == 1 else Gathered([j.inputs for j in taken], sum(rows))
        try:
            outputs = self.backend.run_blocking(feed)
            if len(taken) > 1 and not _row_wise(outputs, sum(rows)):
                self._stop_merging(outputs, sum(rows))
                for job in taken:  # each alone: its worker's scatter judges its outputs, as without
                    self._run_merged([job], [job.rows])
                return
            offsets = offsets_of(rows)
            for job, start, end in zip(taken, offsets, offsets[1:], strict=False):
                job.outputs = _rows_of(outputs, start, end, len(taken) > 1)
        except InputsRefused as refused:
            if len(taken) == 1:
                _fail_all(taken, refused)
            else:  # one worker's inputs refused: each batch alone, so only its own gets the refusal
                for job in taken:  # (its worker's batcher then halves it to find the culprit)
                    self._run_merged([job], [job.rows])
        except BaseException as err:  # every batch of the run gets the run's error
            # Ended by an abandon: the run that held them passed run_timeout_s (a raw onnxruntime
            # "terminate flag" error had reached other workers' callers as INTERNAL).
            _fail_all(taken, _stopped_run(self.name) if self._abandoned else err)

    def _stop_merging(self, outputs: Tensors, rows: int) -> None:
        """A model whose outputs do not follow the rows (a sum over the batch): a merged run cut
        by rows handed one worker's request another's data (a tester's). Never merged again."""
        with self._cond:
            if self.max_rows == 0:
                return
            self.max_rows = 0
        shapes = {name: array.shape for name, array in outputs.items()}
        log.warning(
            "session host: model %s: a merged run of %d rows gave outputs %s, not one row per input "
            "row: its workers' batches run alone from now",
            self.name, rows, shapes,
        )  # fmt: skip

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.backend.close()

    def abandon(self) -> None:
        """The run in progress passed run_timeout_s: the batches waiting for a turn move to the
        slot's fresh session (Moved: the host submits them there), none of theirs at fault; the
        runs in progress are stopped (onnxruntime's terminate flag)."""
        with self._cond:
            self._abandoned = True
            self._closed = True
            waiting, self._jobs = list(self._jobs), deque()
            self._cond.notify_all()
        for job in waiting:
            job.error = Moved()
            job.done.set()
        self.backend.abandon()


class Moved(Exception):
    """A batch that waited in a session abandoned meanwhile: the host runs it in the fresh one."""


def _stopped_run(name: str) -> RunTimedOut:
    return RunTimedOut(
        f"model '{name}': a run in the session host that held this batch passed run_timeout_s and was stopped"
    )


def _fail_all(jobs: list[Job], err: BaseException) -> None:
    """Each batch of a run gets the run's error."""
    for job in jobs:
        job.error = err


def _rows_that_fit(first: Job, behind: Iterable[Job]) -> int:
    """The rows of `first` and of the batches behind it that a run takes with it: those that fit it,
    up to the first that does not (runs keep the arrival order, as _cut takes them)."""
    rows = first.rows
    for job in behind:
        if not job.fits_with(first):
            break
        rows += job.rows
    return rows


def _row_wise(outputs: Tensors, rows: int) -> bool:
    """Whether every output has one row per input row, so a merged run's can be cut by rows."""
    return all(array.ndim > 0 and array.shape[0] == rows for array in outputs.values())


def _rows_of(outputs: Tensors, start: int, end: int, merged: bool) -> dict[str, Array]:
    return {output: array[start:end] for output, array in outputs.items()} if merged else dict(outputs)
