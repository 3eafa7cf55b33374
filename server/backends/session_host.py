"""The session host: one process that holds the onnxruntime sessions of every `--workers` process
(`serve --workers N --shared-sessions gpu|all`) and runs their batches together.

Without it each worker holds its own session per instance: on a GPU, N CUDA contexts that take
turns on the device, each running the few rows its worker batched (on an H200, 8 workers served
resnet at 0.46 of raw onnxruntime's best batch, BENCHMARKS section 16b). Here the workers still
take requests in, check them and batch them (their deadlines and queues as ever); a batch's inputs
go through shared memory (host_wire.py) to this process, where the batches that wait for one
instance's session are run as one: up to max_batch_size rows from several workers in one
onnxruntime run, then split back by rows. One session per instance slot (an instance_group's
`count` on each GPU, as each worker would make), shared by every worker, on one CUDA context.

Run by the `--workers` parent (server/workers.py), which starts it before the workers and stops
it after them: `python -m server.backends.session_host SOCKET`.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import signal
import socket
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batcher.scatter import Gathered, offsets_of
from batcher.types import Array, Tensors
from server.backends.batch_padding import sticky_size
from server.backends.host_wire import HostGone, Segment, read_arrays, receive, send
from server.backends.onnxruntime_backend import OrtBackend, OrtOptions, Provider
from server.errors import ModelRunFailed

log = logging.getLogger("sluiceway.session_host")
READY_LINE = "session host ready"  # host_process.py waits for it
GROW_AFTER = 32  # runs in a row that left rows waiting before a padded session may grow its size
STOP_LIMIT_S = 60.0  # after a stop signal, how long the workers' connections are waited for
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

    def key(self) -> bytes:
        return pickle.dumps((self.path, self.options, self.providers, self.name, self.slot))


@dataclass(eq=False)  # each batch is itself (its arrays compare by element)
class Job:
    """One worker's batch, waiting to run (alone or merged with others)."""

    inputs: dict[str, Array]
    rows: int
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
        self.users = 0  # workers' instances attached
        self.runs = 0
        self.rows = 0
        self.merged = 0  # runs that held more than one worker's batch
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"merge-{request.name}", daemon=True)
        if start:  # (the tests take and run batches themselves)
            self._thread.start()

    def unhostable(self) -> list[str]:
        """Tensors that cannot cross shared memory as plain arrays (strings, BF16)."""
        tensors = [*self.backend.inputs, *self.backend.outputs]
        return [t.name for t in tensors if t.type in UNHOSTABLE_TYPES]

    def run(self, inputs: dict[str, Array]) -> dict[str, Array]:
        """Run one worker's batch (alone or merged with others'); blocks until it has run."""
        job = self.submit(inputs)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.outputs is not None
        return job.outputs

    def submit(self, inputs: dict[str, Array]) -> Job:
        first = next(iter(inputs.values()), None)
        job = Job(inputs, int(first.shape[0]) if first is not None and first.ndim else 0)
        with self._cond:
            if self._closed:
                raise ModelRunFailed(f"model '{self.name}': its shared session was closed")
            self._jobs.append(job)
            self._cond.notify()
        return job

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            taken = [self._jobs.popleft()]
            rows = taken[0].rows
            limit = self._limit(taken[0])
            while self._jobs and rows + self._jobs[0].rows <= limit and self._jobs[0].fits_with(taken[0]):
                rows += self._jobs[0].rows
                taken.append(self._jobs.popleft())
            return taken

    def _limit(self, first: Job) -> int:
        """The rows this run may take (its first batch is taken whatever its rows): max_batch_size,
        or, on a padded session, the size it pads to now. Under a closed loop of N in flight the
        runs alternate at about N/2 rows: run at max_batch_size they crossed the power of two (33 of
        64 padded to 64, twice the device's time for the rows); cut at the size, the size settles
        at the half (shrink 2) and holds. The size grows only after GROW_AFTER runs in a row left
        more rows waiting than it holds (a load that grew), never at one burst (a plan build)."""
        size = self._sticky.current if self._sticky is not None else 0
        if self.max_rows <= 0 or size <= 0:
            return self.max_rows
        waiting = first.rows + sum(job.rows for job in self._jobs if job.fits_with(first))
        if waiting <= size:
            self._outgrown = 0
            return size
        self._outgrown += 1
        if self._outgrown < GROW_AFTER:
            return size
        self._outgrown = 0
        return self.max_rows

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            self._run(taken)

    def _run(self, taken: list[Job]) -> None:
        rows = [job.rows for job in taken]
        feed: Tensors = taken[0].inputs if len(taken) == 1 else Gathered([j.inputs for j in taken], sum(rows))
        try:
            outputs = self.backend.run_blocking(feed)
            offsets = offsets_of(rows)
            for job, start, end in zip(taken, offsets, offsets[1:], strict=False):
                job.outputs = _rows_of(outputs, start, end, len(taken) > 1, self.name)
        except BaseException as err:  # every batch of the run gets the run's error
            for job in taken:
                job.error = err
        self.runs += 1
        self.rows += sum(rows)
        self.merged += len(taken) > 1
        for job in taken:
            job.done.set()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.backend.close()

    def abandon(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.backend.abandon()


def _rows_of(outputs: Tensors, start: int, end: int, merged: bool, name: str) -> dict[str, Array]:
    if not merged:
        return dict(outputs)
    parts = {}
    for output, array in outputs.items():
        if array.ndim == 0:
            raise ModelRunFailed(f"model '{name}': output '{output}' has no batch dimension to split")
        parts[output] = array[start:end]
    return parts


def _sendable(err: BaseException) -> BaseException:
    """The error as the worker can unpickle it, else its text as a ModelRunFailed."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return ModelRunFailed(f"{type(err).__name__}: {err}")


class SessionHost:
    """The sessions by key, and one thread per worker connection serving its requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[bytes, HostedSession] = {}
        self._opening: dict[bytes, threading.Lock] = {}
        self._connections = 0
        self._idle = threading.Condition(self._lock)

    def serve(self, listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            with self._lock:
                self._connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def wait_for_workers(self, limit_s: float) -> bool:
        """Until every worker's connection has closed (they drain first), at most `limit_s`."""
        with self._lock:
            return self._idle.wait_for(lambda: self._connections == 0, limit_s)

    def _connection(self, conn: socket.socket) -> None:
        segments: dict[str, Segment] = {}
        try:
            while True:
                message = receive(conn)
                try:
                    reply = self._answer(message, segments)
                except Exception as err:
                    reply = ("failed", _sendable(err))
                send(conn, reply)
        except (HostGone, OSError):
            pass  # the worker closed it (or stopped)
        finally:
            conn.close()
            for segment in segments.values():
                segment.close()
            with self._lock:
                self._connections -= 1
                self._idle.notify_all()

    def _answer(self, message: tuple[Any, ...], segments: dict[str, Segment]) -> tuple[Any, ...]:
        kind = message[0]
        if kind == "run":
            _, key, path, size, places = message
            segment = segments.get(path)
            if segment is None or segment.size != size:
                if segment is not None:
                    segment.close()
                segment = segments[path] = Segment.attach(Path(path), size)
            return ("ok", self._session(key).run(read_arrays(segment, places)))
        if kind == "open":
            return self._open(message[1])
        if kind == "close":
            self._release(message[1], abandon=False)
            return ("ok",)
        if kind == "abandon":
            self._release(message[1], abandon=True)
            return ("ok",)
        raise ValueError(f"unknown message {kind!r}")

    def _session(self, key: bytes) -> HostedSession:
        with self._lock:
            session = self._sessions.get(key)
        if session is None:
            raise ModelRunFailed("its shared session is gone (abandoned after a stuck run)")
        return session

    def _open(self, request: OpenRequest) -> tuple[Any, ...]:
        key = request.key()
        with self._lock:
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:  # one load per key: the other workers' opens wait for it and share it
            with self._lock:
                session = self._sessions.get(key)
            if session is None:
                session = HostedSession(request)
                refused = session.unhostable()
                if refused:
                    session.close()
                    return ("refused", f"tensors {refused} are not plain arrays")
                with self._lock:
                    self._sessions[key] = session
                device = session.backend.device
                log.info("model %s instance %d: shared session on %s", request.name, request.slot, device)
            session.users += 1
            held = session.backend
            io = (held.io.mode, held.io.padded)
            return ("opened", key, held.inputs, held.outputs, held.active_providers, held.device, io)

    def _release(self, key: bytes, *, abandon: bool) -> None:
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return
            session.users -= 1
            if not abandon and session.users > 0:
                return
            del self._sessions[key]  # abandoned: the next open makes a fresh one
        if abandon:
            session.abandon()
        else:
            session.close()
        _log_counts(session)

    def log_counts(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            _log_counts(session)


def _log_counts(session: HostedSession) -> None:
    """The rows the host ran per run, for the check and the benchmarks (the workers' statistics
    count their own batches, before merging)."""
    if session.runs:
        changes = session.padding.changes.count if session.padding is not None else 0
        log.info(
            "model %s: shared session ran %d batches of %d rows (%.2f a run), %d of them merged; "
            "%d padded shape changes",
            session.name, session.runs, session.rows, session.rows / session.runs, session.merged, changes,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.backends.session_host")
    parser.add_argument("socket", type=Path, help="the Unix socket to listen on (in a 0700 directory)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s session host: %(message)s")
    from server.workers import die_with_parent

    die_with_parent()
    host = SessionHost()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(args.socket))
    listener.listen(256)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.set())
    threading.Thread(target=host.serve, args=(listener,), daemon=True).start()
    log.info("listening on %s", args.socket)
    print(READY_LINE, flush=True)
    while not stop.wait(0.5):
        pass
    # A stop to the whole process group reaches the workers too: their draining batches still
    # run here, so the host ends once they have gone (the parent stops it after them anyway).
    host.wait_for_workers(STOP_LIMIT_S)
    host.log_counts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
