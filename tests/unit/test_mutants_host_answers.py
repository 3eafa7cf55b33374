"""What the mutation run of a worker's end of a shared session (server/backends/hosted_backend.py)
found untested: the messages it sends the session host (open, run, counts, close, abandon), what it
makes of the replies, and how it answers when the host is gone. The worker's side here talks to a
scripted host on a Unix socket that records every message. tests/MUTANTS.md lists the mutants."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from batcher.errors import InstanceClosed
from server.backends.host_wire import Segment, read_arrays, receive, send
from server.backends.hosted_backend import HostedBackend, HostedIo, Unhostable
from server.backends.hosted_session import HostCounts, OpenRequest
from server.backends.io_binding import Device
from server.backends.onnxruntime_backend import OrtOptions
from server.errors import ModelRunFailed, ShuttingDown

KEY = b"slot-key"
WAIT_S = 30.0  # a bound on every wait for the other side (a failure, not a hang)
Answer = Callable[[tuple[Any, ...], socket.socket], Any]


def _opened(message: tuple[Any, ...], conn: socket.socket) -> Any:
    """A host that opens every session and doubles each run's `x` into `y`."""
    if message[0] == "open":
        return ("opened", KEY, ["in"], ["out"], ["CPUExecutionProvider"], Device("cpu"), ("plain", 1))
    if message[0] == "run":
        _, _, path, size, places, _ = message
        segment = Segment.attach(Path(path), size)
        try:
            return ("ok", {"y": 2 * read_arrays(segment, places)["x"]})
        finally:
            segment.close()
    return ("ok", HostCounts(1, 2, 3, 4, 5)) if message[0] == "counts" else ("ok",)


class ScriptedHost:
    """The session host's socket: each message recorded with its connection's number (in the order
    connected), answered with `answer`'s reply (none for None)."""

    def __init__(self, where: Path, answer: Answer = _opened) -> None:
        self.path = where / "host.sock"
        self.answer = answer
        self.messages: list[tuple[int, tuple[Any, ...]]] = []
        self.said = threading.Condition()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen()
        self._conns: list[socket.socket] = []
        self._server = threading.Thread(target=self._serve, daemon=True)
        self._server.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            number = len(self._conns)
            self._conns.append(conn)
            threading.Thread(target=self._connection, args=(conn, number), daemon=True).start()

    def _connection(self, conn: socket.socket, number: int) -> None:
        try:
            while True:
                message = receive(conn)
                with self.said:
                    self.messages.append((number, message))
                    self.said.notify_all()
                reply = self.answer(message, conn)
                if reply is not None:
                    send(conn, reply)
        except OSError:
            pass

    def kinds(self) -> list[str]:
        return [message[0] for _, message in self.messages]

    def wait_for(self, kind: str) -> tuple[int, tuple[Any, ...]]:
        with self.said:
            assert self.said.wait_for(lambda: kind in self.kinds(), WAIT_S), self.messages
            return next(m for m in self.messages if m[1][0] == kind)

    def close(self) -> None:
        # A close alone does not wake a thread blocked in accept or recv on Linux: a shutdown does,
        # so no thread of this host outlives its test (daemon threads still running Python at the
        # interpreter's exit had crashed mutmut's stats run: tests/MUTANTS.md, forty-fifth session).
        for sock in (self._listener, *self._conns):
            with contextlib.suppress(OSError):  # not connected, or closed already
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._server.join(WAIT_S)


class Executor:
    """An executor that records how it was shut down."""

    def __init__(self) -> None:
        self.shutdowns: list[tuple[bool, bool]] = []

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.shutdowns.append((wait, cancel_futures))


@pytest.fixture
def where() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sw-hb-", dir="/dev/shm"))  # (a short socket path)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _request() -> OpenRequest:
    return OpenRequest("m.onnx", OrtOptions(), (), "m", 0, 8)


def _backend(host: ScriptedHost, executor: Any = None, **kw: Any) -> HostedBackend:
    return HostedBackend(host.path, _request(), executor or Executor(), **kw)


def test_an_open_is_sent_once_and_its_reply_is_the_instance_s_facts(where: Path) -> None:
    """The request goes as is; key, tensors, providers, device and I/O mode come from the reply."""
    host = ScriptedHost(where)
    try:
        backend = _backend(host)
        assert host.messages == [(0, ("open", _request()))]
        assert backend.key == KEY and backend.hosted is True and backend.prepared is None
        assert backend.inputs == ["in"] and backend.outputs == ["out"]
        assert backend.active_providers == ["CPUExecutionProvider"] and backend.device == Device("cpu")
        assert backend.io == HostedIo("plain", True)
        assert HostedIo("x") == HostedIo("x", False)
        backend.close()
    finally:
        host.close()


def test_an_open_the_host_refuses_raises_unhostable_with_its_reason(where: Path) -> None:
    host = ScriptedHost(where, lambda m, c: ("refused", "tensors ['s'] are not plain arrays"))
    try:
        with pytest.raises(Unhostable, match=r"^tensors \['s'\] are not plain arrays$"):
            _backend(host)
    finally:
        host.close()


def test_an_open_with_no_host_listening_is_shutting_down_naming_the_model(where: Path) -> None:
    """The host gone: UNAVAILABLE saying so (the server stops), not a traceback."""
    with pytest.raises(ShuttingDown, match=r"^model 'm': the session host is gone, the server stops \("):
        HostedBackend(where / "none.sock", _request(), Executor())


def test_a_host_that_closes_the_connection_mid_call_is_shutting_down(where: Path) -> None:
    def hang_up(message: tuple[Any, ...], conn: socket.socket) -> Any:
        conn.shutdown(socket.SHUT_RDWR)

    host = ScriptedHost(where, hang_up)
    try:
        with pytest.raises(ShuttingDown, match="session host is gone"):
            _backend(host)
    finally:
        host.close()


def test_a_run_sends_its_inputs_placed_in_a_segment_and_returns_the_host_s_outputs(where: Path) -> None:
    host = ScriptedHost(where)
    try:
        backend = _backend(host)
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        out = backend.run_blocking({"x": x})
        np.testing.assert_array_equal(out["y"], 2 * x)
        _, (kind, key, path, size, places, start_by) = host.messages[-1]
        assert (kind, key, start_by) == ("run", KEY, None)
        assert Path(path).parent == where and size >= x.nbytes
        assert [(p.name, p.shape, p.dtype) for p in places] == [("x", (2, 3), "<f4")]
        assert backend.run_blocking_before({"x": x}, 123.5)["y"].shape == (2, 3)
        assert host.messages[-1][1][-1] == 123.5  # the start-by handed on
        assert [n for n, _ in host.messages] == [0, 0, 0]  # one connection, kept between calls
        backend.close()
    finally:
        host.close()


def test_a_reshape_applies_to_the_inputs_sent_and_the_outputs_returned(where: Path) -> None:
    """As OrtBackend applies a model's `reshape`s: on this side of the host."""
    host = ScriptedHost(where)
    try:
        plan = SimpleNamespace(
            to_model=lambda x: {"x": x["x"].reshape(2, 2)}, to_wire=lambda y: {"y": y["y"].reshape(4)}
        )
        backend = _backend(host, reshape=plan)
        out = backend.run_blocking({"x": np.arange(4, dtype=np.float32)})
        assert host.messages[-1][1][4][0].shape == (2, 2)
        np.testing.assert_array_equal(out["y"], [0, 2, 4, 6])
        backend.close()
    finally:
        host.close()


def test_a_run_the_host_failed_raises_its_error_and_the_connection_is_kept(where: Path) -> None:
    def failing(message: tuple[Any, ...], conn: socket.socket) -> Any:
        if message[0] == "run":
            return ("failed", ModelRunFailed("bad input"))
        return _opened(message, conn)

    host = ScriptedHost(where, failing)
    try:
        backend = _backend(host)
        with pytest.raises(ModelRunFailed, match=r"^bad input$"):
            backend.run_blocking({"x": np.zeros((1, 2), np.float32)})
        assert backend.host_counts() == HostCounts(1, 2, 3, 4, 5)
        assert [n for n, _ in host.messages] == [0, 0, 0]  # the failed run's connection used again
        backend.close()
    finally:
        host.close()


def test_host_counts_are_the_reply_s_and_none_once_closed_or_the_host_gone(where: Path) -> None:
    """/metrics: the shared session's counts, or a page without them (never an error)."""
    host = ScriptedHost(where)
    try:
        backend = _backend(host)
        assert backend.host_counts() == HostCounts(1, 2, 3, 4, 5)
        assert host.messages[-1][1] == ("counts", KEY)
        host.answer = lambda m, c: ("failed", ShuttingDown("stopping"))
        assert backend.host_counts() is None
        host.close()  # the host gone: its connections closed
        assert backend.host_counts() is None
        backend.close()
        assert backend.host_counts() is None
    finally:
        host.close()


def test_the_longest_idle_connection_is_used_first(where: Path) -> None:
    """Two runs at once open two connections; the next call goes on the one idle longest."""
    both = threading.Barrier(2, timeout=WAIT_S)
    order: dict[int, threading.Event] = {0: threading.Event(), 1: threading.Event()}

    def paired(message: tuple[Any, ...], conn: socket.socket) -> Any:
        if message[0] == "run":
            both.wait()
            number = message[5]  # (the start-by carries the run's number here)
            order[int(number)].wait(WAIT_S)
        return _opened(message, conn)

    host = ScriptedHost(where, paired)
    try:
        backend = _backend(host)
        x = {"x": np.zeros((1, 2), np.float32)}
        done = [threading.Event(), threading.Event()]

        def run(number: int) -> None:
            backend.run_blocking_before(x, float(number))
            done[number].set()

        threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in (0, 1)]
        for thread in threads:
            thread.start()
        order[0].set()
        assert done[0].wait(WAIT_S)
        order[1].set()
        assert done[1].wait(WAIT_S)
        first = next(n for n, m in host.messages if m[0] == "run" and m[5] == 0.0)
        assert backend.host_counts() is not None
        assert host.messages[-1][0] == first  # the connection the first run ended on
        backend.close()
    finally:
        host.close()


def test_a_run_s_start_notes_go_to_started_and_a_closed_instance_runs_nothing(where: Path) -> None:
    """The host's ("started",) notes are told to `started` (the watchdog's clock) before the reply."""

    def starting(message: tuple[Any, ...], conn: socket.socket) -> Any:
        if message[0] == "run":
            send(conn, ("started",))
        return _opened(message, conn)

    host = ScriptedHost(where, starting)
    try:
        backend = _backend(host)
        told: list[str] = []
        backend.run_blocking_before({"x": np.ones((1, 2), np.float32)}, None, lambda: told.append("s"))
        assert told == ["s"]
        backend.run_blocking({"x": np.ones((1, 2), np.float32)})  # no `started`: the note ignored
        assert backend._started == {}  # (each run's start forgotten once it is answered)
        backend.close()
        with pytest.raises(InstanceClosed, match="'m'"):
            backend.run_blocking({"x": np.ones((1, 2), np.float32)})
    finally:
        host.close()


class Counting(ThreadPoolExecutor):
    """The instance's executor, counting what is submitted to it."""

    submitted = 0

    def submit(self, *args: Any, **kw: Any) -> Any:
        self.submitted += 1
        return super().submit(*args, **kw)


async def test_an_async_run_runs_on_the_instance_s_executor(where: Path) -> None:
    host = ScriptedHost(where)
    executor = Counting(1)
    try:
        backend = _backend(host, executor)
        out = await backend.run({"x": np.ones((1, 2), np.float32)})
        np.testing.assert_array_equal(out["y"], [[2.0, 2.0]])
        assert executor.submitted == 1 and host.kinds() == ["open", "run"]
        backend.close()
    finally:
        executor.shutdown()
        host.close()


def test_two_instances_of_one_process_place_their_batches_in_segments_of_their_own(where: Path) -> None:
    host = ScriptedHost(where)
    try:
        one, other = _backend(host), _backend(host)
        for backend in (one, other):
            backend.run_blocking({"x": np.ones((1, 2), np.float32)})
        paths = [m[2] for _, m in host.messages if m[0] == "run"]
        assert len(set(paths)) == 2
        one.close()
        other.close()
    finally:
        host.close()
