"""A worker's model instance whose session lives in the session host (session_host.py).

It stands where an OrtBackend would (the batcher, warm-up and the watchdog see the same methods):
a batch's inputs are gathered straight into a shared segment of this instance's (one copy, as into
a CUDA instance's pinned buffer), the host is asked to run them, and the outputs come back in its
reply. Reshapes are applied here, on this side, as OrtBackend applies them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batcher.errors import InstanceClosed
from batcher.types import Array, Tensors
from server.backends.host_wire import HostGone, TensorPlace, receive, send
from server.backends.hosted_session import HostCounts, OpenRequest
from server.backends.io_binding import Device
from server.backends.pinned import fill, layout, spec_of
from server.backends.segment_pool import TRIM_EVERY_S, SegmentPool
from server.backends.session_facts import SessionFacts
from server.errors import ShuttingDown
from server.models.config_tensors import ReshapePlan
from server.models.onnx_completion import OnnxTensor

log = logging.getLogger(__name__)
CLOCK_SLACK_S = 0.001  # a run's start as the worker heard it is a little after the host's


class Unhostable(Exception):
    """The host will not hold this model's session (its tensors are not plain arrays)."""


@dataclass(frozen=True)
class HostedIo:
    """How the host's session runs batches, for the load's log line (instance_groups.describe)."""

    mode: str
    padded: bool = False


class HostedBackend(SessionFacts):
    """One instance slot of a model version, run in the session host's shared session."""

    def __init__(
        self,
        socket_path: Path,
        request: OpenRequest,
        executor: ThreadPoolExecutor,
        *,
        reshape: ReshapePlan | None = None,
    ) -> None:
        self._socket_path = socket_path
        self._name = request.name
        self._executor = executor
        self._reshape = reshape
        self._lock = threading.Lock()
        self._idle: list[socket.socket] = []  # connections between runs (one per concurrent run)
        # Segments between runs, trimmed to the recent batches' sizes, idle too (segment_pool.py).
        prefix = f"seg-{os.getpid()}-{id(self):x}"
        self._segments = SegmentPool(socket_path.parent, prefix, trim_every_s=TRIM_EVERY_S)
        self._serial = itertools.count()
        self._closed = False
        self._started: dict[int, float] = {}  # runs started in the host, not yet answered: when
        self.prepared = None  # OrtBackend's: nothing prepared is kept on this side
        try:
            reply = self._call(("open", request))
        except BaseException:
            self._drop_connections()  # (the pool's trim thread with them)
            raise
        if reply[0] == "refused":
            self._drop_connections()
            raise Unhostable(reply[1])
        key, inputs, outputs, providers, device, (mode, padded) = reply[1:]
        self._key: bytes = key
        self._inputs: list[OnnxTensor] = list(inputs)
        self._outputs: list[OnnxTensor] = list(outputs)
        self._active_providers: list[str] = list(providers)
        self._device: Device = device
        self.io = HostedIo(str(mode), bool(padded))

    @property
    def device(self) -> Device:
        return self._device

    @property
    def hosted(self) -> bool:
        return True

    @property
    def key(self) -> bytes:
        """The shared session's key in the host (every worker's instance of this slot has it)."""
        return self._key

    async def run(self, inputs: Tensors) -> Tensors:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run_blocking, inputs)

    def run_blocking(self, inputs: Tensors, *, log_failure: bool = True) -> dict[str, Array]:
        return self.run_blocking_before(inputs, None)

    def run_blocking_before(
        self, inputs: Tensors, start_by: float | None, started: Callable[[], None] | None = None
    ) -> dict[str, Array]:
        """Run the batch in the host, unless its turn there comes past `start_by` (time.monotonic's
        clock, which the host shares): then ExpiredUnrun, as the batcher's own check raises it.
        `started` is called when the host starts the run (the watchdog times it from then)."""
        if self._closed:
            raise InstanceClosed.of(self._name)
        if self._reshape is not None:
            inputs = self._reshape.to_model(inputs)
        offsets, size = layout(inputs)
        segment = self._segments.take(size)
        try:
            places = []
            for name, offset in offsets.items():
                shape, dtype = spec_of(inputs, name)
                place = TensorPlace(name, offset, tuple(int(d) for d in shape), np.dtype(dtype).str)
                fill(segment.array(place), inputs, name)
                places.append(place)
            run = next(self._serial)

            def began() -> None:  # the host started it: noted for an abandon, told to the watchdog
                with self._lock:
                    self._started.setdefault(run, time.monotonic())
                if started is not None:
                    started()

            try:
                where = (str(segment.path), segment.size, places)
                reply = self._call(("run", self._key, *where, start_by), began)
            finally:
                with self._lock:
                    self._started.pop(run, None)
        finally:
            self._segments.give_back(segment)
        outputs: dict[str, Array] = reply[1]
        return outputs if self._reshape is None else self._reshape.to_wire(outputs)

    def host_counts(self) -> HostCounts | None:
        """The shared session's counts (for /metrics), or None when the host cannot say."""
        if self._closed:
            return None
        try:
            reply = self._call(("counts", self._key))
        except Exception:  # the host gone, or stopping: a page without these figures
            return None
        counts: HostCounts | None = reply[1]
        return counts

    def _call(self, message: tuple[Any, ...], started: Callable[[], None] | None = None) -> tuple[Any, ...]:
        """Send one message on an idle connection (a new one when none is) and wait for its reply
        (a run's ("started",) notes on the way go to `started`). The host gone: the server stops
        (the parent takes it down), so UNAVAILABLE, not a traceback per request."""
        with self._lock:
            # The longest idle first: each connection's host thread looks at its mappings as it
            # runs (host_wire.SegmentMaps; an idle one looks each second too).
            conn = self._idle.pop(0) if self._idle else None
        try:
            if conn is None:
                conn = _connect(self._socket_path)
            send(conn, message)
            reply: tuple[Any, ...] = receive(conn)
            while reply[0] == "started":
                if started is not None:
                    started()
                reply = receive(conn)
        except BaseException as err:  # a connection in an unknown state is not used again
            if conn is not None:
                conn.close()
            if not isinstance(err, (HostGone, OSError)):
                raise
            raise ShuttingDown(
                f"model '{self._name}': the session host is gone, the server stops ({err})"
            ) from None
        with self._lock:
            closed = self._closed
            if not closed:
                self._idle.append(conn)
        if closed:  # (a run that ended after close: its connection is not kept)
            conn.close()
        if reply[0] == "failed":
            raise reply[1]
        return reply

    def _drop_connections(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        self._segments.close()

    def _release(self, abandon: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Only a run stuck in the host is the host's: one stuck here (a fault injected in this
            # worker) had abandoned the healthy shared session of every worker. The oldest started
            # there tells the host which session holds it.
            since = min(self._started.values()) if abandon and self._started else None
        self._executor.shutdown(wait=False, cancel_futures=abandon)
        # A fresh connection: a stuck run holds its own.
        message = ("close", self._key) if since is None else ("abandon", self._key, since + CLOCK_SLACK_S)
        _tell(self._socket_path, message, self._name)
        self._drop_connections()

    def close(self) -> None:
        """Detach from the shared session (the host closes it when its last worker has)."""
        self._release(abandon=False)

    def abandon(self) -> None:
        """A run outlived the watchdog. Stuck in the host: the host abandons the shared session if
        the run this instance heard start is in progress there (the run's other batches are answered
        RunTimedOut, those waiting move to the fresh session the next run or open makes). Stuck
        here: only this instance is let go."""
        self._release(abandon=True)


def version_host_counts(instances: Sequence[object]) -> HostCounts | None:
    """A version's shared sessions' counts, each session once (its instance slots are one each),
    or None when none of its instances runs in the host. Reads through wrappers (`inner`)."""
    found: dict[bytes, HostCounts] = {}
    for instance in instances:
        while hasattr(instance, "inner"):
            instance = instance.inner
        if isinstance(instance, HostedBackend) and instance.key not in found:
            counts = instance.host_counts()
            if counts is not None:
                found[instance.key] = counts
    return sum(found.values(), HostCounts()) if found else None


def hosted(instances: Sequence[object]) -> bool:
    """Whether any of a version's instances runs in the session host."""
    return any(getattr(instance, "hosted", False) for instance in instances)


def _connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        raise
    return conn


TELL_TIMEOUT_S = 5.0  # a close or an abandon, told from the event loop: never blocked longer


def _tell(path: Path, message: tuple[Any, ...], name: str) -> None:
    try:
        conn = _connect(path)
        conn.settimeout(TELL_TIMEOUT_S)
        try:
            send(conn, message)
            receive(conn)
        finally:
            conn.close()
    except (HostGone, OSError) as err:  # the host stopped first: nothing to release there
        log.debug("model %s: %s not told to the session host (%s)", name, message[0], err)
