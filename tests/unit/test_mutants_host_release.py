"""The worker's end of a shared session let go (server/backends/hosted_backend.py): a close or an
abandon told to the session host (which message, once, on a fresh connection, with the oldest
stuck run's start), the executor shut down, and a version's counts read through its instances.
The helpers and the scripted host are test_mutants_host_answers.py's. tests/MUTANTS.md lists the
mutants these kill."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from server.backends import hosted_backend
from server.backends.host_wire import send
from server.backends.hosted_backend import hosted, version_host_counts
from server.backends.hosted_session import HostCounts
from server.backends.segment_pool import TRIM_EVERY_S
from tests.unit.test_mutants_host_answers import KEY, WAIT_S, Executor, ScriptedHost, _backend, _opened


@pytest.fixture
def where() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sw-hr-", dir="/dev/shm"))  # (a short socket path)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _runs_stuck_until(release: threading.Event) -> Any:
    """A host's answers where each run is told started, then held until `release` (at most WAIT_S)."""

    def answer(message: tuple[Any, ...], conn: socket.socket) -> Any:
        if message[0] == "run":
            send(conn, ("started",))
            release.wait(WAIT_S)
            return ("ok", {})
        return _opened(message, conn)

    return answer


def test_a_close_tells_the_host_once_on_a_fresh_connection(where: Path) -> None:
    host = ScriptedHost(where)
    executor = Executor()
    try:
        backend = _backend(host, executor)
        backend.host_counts()
        backend.close()
        backend.close()
        backend.abandon()  # (closed already: nothing more)
        assert host.kinds() == ["open", "counts", "close"]
        assert host.messages[-1] == (1, ("close", KEY))  # not on the idle connection 0
        assert executor.shutdowns == [(False, False)]  # queued runs still run
    finally:
        host.close()


def test_an_abandon_with_no_run_started_is_a_close_and_cancels_the_queued_runs(where: Path) -> None:
    """Nothing was stuck in the host (a fault of this worker's): the shared session is left alone."""
    host = ScriptedHost(where)
    executor = Executor()
    try:
        backend = _backend(host, executor)
        backend.abandon()
        assert host.messages[-1][1] == ("close", KEY)
        assert executor.shutdowns == [(False, True)]
    finally:
        host.close()


def test_an_abandon_names_the_oldest_run_started_in_the_host_a_little_after(
    where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs started in the host (at 100 and 101 on the shared clock), both stuck: the host is
    told the older one's start, plus the slack by which the worker heard it late."""
    clock = iter([100.0, 101.0])
    monkeypatch.setattr(hosted_backend, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    release = threading.Event()
    started = threading.Semaphore(0)

    host = ScriptedHost(where, _runs_stuck_until(release))
    try:
        backend = _backend(host)
        runs = [
            threading.Thread(
                target=backend.run_blocking_before,
                args=({"x": np.ones((1, 2), np.float32)}, None, started.release),
                daemon=True,
            )
            for _ in range(2)
        ]
        for run in runs:
            run.start()
        assert started.acquire(timeout=WAIT_S) and started.acquire(timeout=WAIT_S)
        backend.abandon()
        assert host.messages[-1][1] == ("abandon", KEY, 100.0 + hosted_backend.CLOCK_SLACK_S)
        assert hosted_backend.CLOCK_SLACK_S == 0.001
        release.set()
        for run in runs:
            run.join(WAIT_S)
    finally:
        release.set()
        host.close()


def test_a_close_with_a_run_started_is_still_a_close(where: Path) -> None:
    release = threading.Event()
    started = threading.Event()

    host = ScriptedHost(where, _runs_stuck_until(release))
    try:
        backend = _backend(host)
        run = threading.Thread(
            target=backend.run_blocking_before,
            args=({"x": np.ones((1, 2), np.float32)}, None, started.set),
            daemon=True,
        )
        run.start()
        assert started.wait(WAIT_S)
        backend.close()
        assert host.messages[-1][1] == ("close", KEY)
        release.set()
        run.join(WAIT_S)
        assert not run.is_alive()
        assert backend._idle == []  # the run answered after the close: its connection not kept
    finally:
        release.set()
        host.close()


def test_one_run_answered_leaves_the_other_s_start_for_an_abandon(where: Path) -> None:
    """Two runs started in the host; the first answered, the second stuck: an abandon names the
    second's start (each run's start is its own: one key for all had let the first's answer forget
    the second's, and the abandon went as a close). Once both are answered, an abandon is a close."""
    holds = [threading.Event(), threading.Event()]
    turns = iter(holds)

    def each_held_until_its_own_release(message: tuple[Any, ...], conn: socket.socket) -> Any:
        if message[0] == "run":
            send(conn, ("started",))
            hold = next(turns, None)  # (a third run is not held)
            if hold is not None:
                hold.wait(WAIT_S)
        return _opened(message, conn)

    host = ScriptedHost(where, each_held_until_its_own_release)
    try:
        backend = _backend(host)
        started = threading.Semaphore(0)
        runs = []
        for _ in holds:  # one after the other, so the first sent is the first held
            run = threading.Thread(
                target=backend.run_blocking_before,
                args=({"x": np.ones((1, 2), np.float32)}, None, started.release),
                daemon=True,
            )
            run.start()
            assert started.acquire(timeout=WAIT_S)
            runs.append(run)
        holds[0].set()
        runs[0].join(WAIT_S)
        assert not runs[0].is_alive()
        backend.abandon()
        assert host.messages[-1][1][0] == "abandon"
        holds[1].set()
        runs[1].join(WAIT_S)
        again = _backend(host)
        again.run_blocking_before({"x": np.ones((1, 2), np.float32)}, None)  # told started, answered
        again.abandon()
        assert host.messages[-1][1] == ("close", KEY)
    finally:
        for hold in holds:
            hold.set()
        host.close()


def test_the_worker_s_segments_are_trimmed_while_idle_too(
    where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance's segment pool trims every TRIM_EVERY_S, not only at its next batch."""
    given: list[float | None] = []
    pool = hosted_backend.SegmentPool

    class Recorded(pool):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, trim_every_s: float | None = None, **kw: Any) -> None:
            given.append(trim_every_s)
            super().__init__(*args, trim_every_s=trim_every_s, **kw)

    monkeypatch.setattr(hosted_backend, "SegmentPool", Recorded)
    host = ScriptedHost(where)
    try:
        backend = _backend(host)
        assert given == [TRIM_EVERY_S] and TRIM_EVERY_S > 0
        backend.close()
    finally:
        host.close()


def test_a_close_the_host_never_answers_returns_after_the_tell_timeout(
    where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told from the event loop: a host that takes the message and says nothing does not block it."""
    monkeypatch.setattr(hosted_backend, "TELL_TIMEOUT_S", 0.05)
    host = ScriptedHost(where, lambda m, c: _opened(m, c) if m[0] == "open" else None)
    try:
        backend = _backend(host)
        backend.close()  # returns (the pytest timeout would fail it otherwise)
        host.wait_for("close")  # (unanswered: the host's thread may note it after close returned)
        assert host.kinds() == ["open", "close"]
    finally:
        host.close()


def test_a_close_after_the_host_went_is_quiet(where: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing to release there: no error, a debug line naming the model and the message."""
    host = ScriptedHost(where)
    backend = _backend(host)
    host.close()
    (where / "host.sock").unlink()
    with caplog.at_level(logging.DEBUG, logger="server.backends.hosted_backend"):
        backend.close()
    (message,) = caplog.messages
    assert message.startswith("model m: close not told to the session host (") and message.endswith(")")
    assert "No such file or directory" in message


class Wrapper:
    def __init__(self, inner: object) -> None:
        self.inner = inner


def test_a_version_s_host_counts_add_each_shared_session_once(where: Path) -> None:
    """Through wrappers (`inner`); two instances of one slot (one key) count once."""
    host = ScriptedHost(where)
    try:
        one, same = _backend(host), _backend(host)
        assert version_host_counts([Wrapper(Wrapper(one)), same, object()]) == HostCounts(1, 2, 3, 4, 5)
        assert version_host_counts([object()]) is None
        assert version_host_counts([Wrapper(one)]) == HostCounts(1, 2, 3, 4, 5)  # its only instance wrapped
        one.close()
        assert version_host_counts([one]) is None  # none could say
        assert hosted([object(), Wrapper(one), one]) and not hosted([object()])
        same.close()
    finally:
        host.close()
