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
import contextlib
import errno
import logging
import pickle
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from batcher.errors import InstanceClosed
from server.backends.host_wire import HostGone, PruningReceiver, SegmentMaps, read_arrays, send
from server.backends.hosted_session import HostCounts, HostedSession, Moved, OpenRequest
from server.errors import ModelRunFailed

log = logging.getLogger("server.backends.session_host")  # (not __main__: it runs as -m)
READY_LINE = "session host ready"  # host_process.py waits for it
STOP_LIMIT_S = 60.0  # after a stop signal, how long the workers' connections are waited for
MOVES = 3  # times a batch follows its slot to a fresh session (each an abandon meanwhile)
MAX_REFUSALS = 256  # keys remembered as refused (a reload of a changed version has a new key)


def _sendable(err: BaseException) -> BaseException:
    """The error as the worker can unpickle it, else its text as a ModelRunFailed."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return ModelRunFailed(f"{type(err).__name__}: {err}")


@dataclass
class Slot:
    """One key's session (a model version's instance slot, as every worker opens it): how many
    workers' instances use it (an open counts from its start, so a close meanwhile cannot remove
    the slot under it), and the session now (None after an abandon, until the next run or open
    makes a fresh one)."""

    request: OpenRequest
    users: int = 0
    session: HostedSession | None = None
    retired: HostCounts = field(default_factory=HostCounts)  # abandoned sessions': counters never go down
    opening: threading.Lock = field(default_factory=threading.Lock)  # one load at a time

    def counts(self) -> HostCounts:
        session = self.session
        return self.retired if session is None else self.retired + session.counts()


def _closed_slot() -> InstanceClosed:
    """A run for a slot its last worker closed meanwhile (an unload, a reload): as a closed
    OrtBackend answers, so the batcher sends it to the version serving now, else UNAVAILABLE."""
    return InstanceClosed("its shared session was closed: its version was retired before this batch ran")


class SessionHost:
    """The sessions by key, and one thread per worker connection serving its requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[bytes, Slot] = {}
        self._refused: dict[bytes, str] = {}  # keys whose models run in the workers, and why
        self._connections = 0
        self._idle = threading.Condition(self._lock)

    def serve(self, listener: socket.socket) -> None:
        """Each worker connection `listener` accepts on a thread of its own, until it is closed."""
        while True:
            try:
                conn, _ = listener.accept()
            except OSError as err:
                # Closed, or shut down (stop_listening: what wakes an accept blocked here): no more
                # workers, not a traceback.
                if listener.fileno() == -1 or err.errno == errno.EINVAL:
                    return
                raise
            with self._lock:
                self._connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def wait_for_workers(self, limit_s: float) -> bool:
        """Until every worker's connection has closed (they drain first), at most `limit_s`."""
        with self._lock:
            return self._idle.wait_for(lambda: self._connections == 0, limit_s)

    def _connection(self, conn: socket.socket) -> None:
        maps = SegmentMaps()  # this connection's worker's segments, mapped once
        messages = PruningReceiver(conn, maps)  # (idle: lets go of trimmed segments)
        try:
            while True:
                message = messages.receive()
                try:
                    reply = self._answer(message, maps, conn)
                except Exception as err:
                    reply = ("failed", _sendable(err))
                send(conn, reply)
        except (HostGone, OSError):
            pass  # the worker closed it (or stopped)
        finally:
            conn.close()
            maps.close()
            with self._lock:
                self._connections -= 1
                self._idle.notify_all()

    def _answer(
        self, message: tuple[Any, ...], maps: SegmentMaps, conn: socket.socket | None = None
    ) -> tuple[Any, ...]:
        kind = message[0]
        if kind == "run":
            _, key, path, size, places, start_by = message
            segment = maps.get(path, size)
            # The worker's watchdog times the run from its start here, not from its wait for a turn.
            on_start = partial(send, conn, ("started",)) if conn is not None else None
            arrays = read_arrays(segment, places)
            for _ in range(MOVES):
                try:
                    return ("ok", self._session(key).run(arrays, start_by, on_start))
                except Moved:  # its session abandoned while it waited: the slot's fresh one runs it
                    continue
            raise _closed_slot()
        if kind == "open":
            return self._open(message[1])
        if kind == "close":
            self._release(message[1])
            return ("ok",)
        if kind == "abandon":
            self._abandon(message[1], message[2])
            return ("ok",)
        if kind == "counts":
            with self._lock:
                slot = self._slots.get(message[1])
            return ("ok", None if slot is None else slot.counts())
        raise ValueError(f"unknown message {kind!r}")

    def _session(self, key: bytes) -> HostedSession:
        """The key's session; after an abandon, a fresh one (the other workers' runs go on)."""
        with self._lock:
            slot = self._slots.get(key)
        if slot is None:
            raise _closed_slot()
        session = slot.session
        return session if session is not None else self._made(key, slot)

    def _made(self, key: bytes, slot: Slot) -> HostedSession:
        """The slot's session, made now when it has none (at its first open, after an abandon)."""
        with slot.opening:
            session = slot.session
            if session is not None:
                return session
            session = HostedSession(slot.request)  # seconds on a GPU: other slots go on meanwhile
            with self._lock:
                current = self._slots.get(key) is slot
                if current:
                    slot.session = session
            if not current:  # its last worker closed it meanwhile: not kept, and not served
                session.close()
                raise _closed_slot()
            if not session.unhostable():  # (a refused one is closed by its open, and said there)
                name, index, device = slot.request.name, slot.request.slot, session.backend.device
                log.info("session host: model %s instance %d: shared session on %s", name, index, device)
            return session

    def _open(self, request: OpenRequest) -> tuple[Any, ...]:
        key = request.key()
        with self._lock:
            refusal = self._refused.get(key)
            if refusal is not None:  # said already: no session loaded again to say it
                return ("refused", refusal)
            slot = self._slots.setdefault(key, Slot(request))
            slot.users += 1  # from now: a close meanwhile cannot take the slot away
        try:
            session = self._made(key, slot)
        except BaseException:
            self._release(key)
            raise
        refused = session.unhostable()
        if refused:
            refusal = f"tensors {refused} are not plain arrays"
            with self._lock:
                self._refused[key] = refusal
                while len(self._refused) > MAX_REFUSALS:
                    del self._refused[next(iter(self._refused))]
            self._release(key)
            return ("refused", refusal)
        held = session.backend
        io = (held.io.mode, held.io.padded)
        return ("opened", key, held.inputs, held.outputs, held.active_providers, held.device, io)

    def _release(self, key: bytes) -> None:
        """A worker's instance is done (an unload, a reload, its stop, a failed open): the last one
        closes the session."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return
            slot.users -= 1
            if slot.users > 0:
                return
            del self._slots[key]
            session, slot.session = slot.session, None
        if session is not None:
            session.close()
            _log_counts(session)

    def _abandon(self, key: bytes, started: float) -> None:
        """A worker's watchdog gave up on a run of its that started in the host at `started`
        (time.monotonic): the slot's session is abandoned if a run it has in progress started then
        or before (the stuck one; the batches waiting there move to the fresh session, the others in
        the stuck run are answered RunTimedOut), and the next run or open makes a fresh one. A
        session whose runs all began later is not the stuck one: another worker's abandon replaced
        it already, and it is left alone."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return
            session = slot.session
            stuck = session if session is not None and session.running_since(started) else None
            if stuck is not None:
                slot.session = None
                slot.retired = slot.retired + stuck.counts()
        if stuck is not None:
            stuck.abandon()
            _log_counts(stuck)
        self._release(key)  # the stuck instance; its replacement opened (or opens) anew

    def log_counts(self) -> None:
        with self._lock:
            sessions = [slot.session for slot in self._slots.values() if slot.session is not None]
        for session in sessions:
            _log_counts(session)


def _log_counts(session: HostedSession) -> None:
    """The rows the host ran per run, for the check and the benchmarks (the workers' statistics
    count their own batches, before merging)."""
    if session.runs or session.expired:
        changes = session.padding.changes.count if session.padding is not None else 0
        log.info(
            "session host: model %s: shared session ran %d batches of %d rows (%.2f a run), %d of them "
            "merged; %d padded shape changes; %d batches left unrun past their deadlines",
            session.name, session.runs, session.rows, session.rows / max(session.runs, 1), session.merged,
            changes, session.expired,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.backends.session_host")
    parser.add_argument("socket", type=Path, help="the Unix socket to listen on (in a 0700 directory)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    from server.observability.logs import configure_logging

    configure_logging(args.log_level, args.log_format)  # the workers' format (their `[worker N]` aside)
    from server.runtime_check import ensure_runtime
    from server.workers import die_with_parent

    die_with_parent()
    # As a worker does at `serve`: the GPU wheel's NVIDIA libraries loaded before any CUDA session
    # (onnxruntime's provider finds them through the dynamic loader, which misses site-packages).
    problem = ensure_runtime(preload=True)
    if problem is not None:
        log.error("%s", problem)
        return 2
    host = SessionHost()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(args.socket))
    listener.listen(256)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.set())
    serving = threading.Thread(target=host.serve, args=(listener,), daemon=True)
    serving.start()
    log.info("session host: listening on %s", args.socket)
    print(READY_LINE, flush=True)
    while not stop.wait(0.5):
        pass
    # A stop to the whole process group reaches the workers too: their draining batches still
    # run here, so the host ends once they have gone (the parent stops it after them anyway).
    host.wait_for_workers(STOP_LIMIT_S)
    host.log_counts()
    stop_listening(listener)  # its thread ends here, not at the process's exit (a test's main)
    serving.join(STOP_LIMIT_S)
    return 0


def stop_listening(listener: socket.socket) -> None:
    """Shut `listener` down and close it: on Linux a close alone leaves an accept blocked on it
    (its thread then ran until the process exited), a shutdown wakes it and `serve` returns."""
    with contextlib.suppress(OSError):  # not listening, or closed already
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


if __name__ == "__main__":
    sys.exit(main())
