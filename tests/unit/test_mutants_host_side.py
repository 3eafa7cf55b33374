"""What the mutation run of the session host's side (server/backends/session_host.py) found untested:
the replies to each message (run, open, close, abandon, counts, an unknown one), the errors a
connection answers with, the refusals it remembers, and the counts it logs. The sessions here are
fakes that record what the host asked of them. tests/MUTANTS.md lists the mutants they kill."""

from __future__ import annotations

import logging
import pickle
import re
import signal
import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from batcher.errors import InstanceClosed
from server.backends import session_host
from server.backends.host_wire import Segment, SegmentMaps, TensorPlace, receive, send
from server.backends.hosted_session import HostCounts, Moved, OpenRequest
from server.backends.io_binding import Device
from server.backends.onnxruntime_backend import OrtOptions
from server.backends.session_host import SessionHost, Slot, _sendable, stop_listening
from server.errors import ModelRunFailed
from tests.support.server_process import wait_until

WAIT_S = 30.0


class FakeSession:
    """A HostedSession's surface as the host uses it; `made` lists every one made."""

    made: list[FakeSession] = []
    refuse: list[str] = []  # the tensors the next sessions cannot host
    fail: BaseException | None = None  # raised by the next session's making

    def __init__(self, request: OpenRequest) -> None:
        if FakeSession.fail is not None:
            raise FakeSession.fail
        self.request = request
        self.name = request.name
        io = SimpleNamespace(mode="plain", padded=True)
        self.backend = SimpleNamespace(
            inputs=["in"], outputs=["out"], active_providers=["P"], device=Device("cpu"), io=io
        )
        self.runs = self.rows = self.merged = self.expired = 0
        self.padding: Any = None
        self.closed = self.abandoned = False
        self.since: float | None = None  # a run in progress since then
        self.moves = 0  # runs that raise Moved before one runs
        self.ran: list[tuple[Any, ...]] = []
        FakeSession.made.append(self)

    def counts(self) -> HostCounts:
        return HostCounts(self.runs, self.rows, self.merged, self.expired, 0)

    def unhostable(self) -> list[str]:
        return list(FakeSession.refuse)

    def run(self, arrays: dict, start_by: float | None, on_start: Any) -> dict:
        self.ran.append((dict(arrays), start_by, on_start))
        if self.moves:
            self.moves -= 1
            raise Moved()
        if on_start is not None:
            on_start()
        return {"y": arrays["x"] * 2}

    def running_since(self, started: float) -> bool:
        return self.since is not None and self.since <= started

    def close(self) -> None:
        self.closed = True

    def abandon(self) -> None:
        self.abandoned = self.closed = True


@pytest.fixture(autouse=True)
def fake_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_host, "HostedSession", FakeSession)
    monkeypatch.setattr(FakeSession, "made", [])
    monkeypatch.setattr(FakeSession, "refuse", [])
    monkeypatch.setattr(FakeSession, "fail", None)


def _request(fingerprint: str = "v1", name: str = "m") -> OpenRequest:
    return OpenRequest("m.onnx", OrtOptions(), (), name, 0, 8, fingerprint)


def test_an_open_replies_the_session_s_facts_and_counts_its_user(caplog: pytest.LogCaptureFixture) -> None:
    host = SessionHost()
    with caplog.at_level(logging.INFO, logger="server.backends.session_host"):
        reply = host._answer(("open", _request()), SegmentMaps())
    assert caplog.messages == ["session host: model m instance 0: shared session on cpu"]
    key = _request().key()
    assert reply == ("opened", key, ["in"], ["out"], ["P"], Device("cpu"), ("plain", True))
    assert host._answer(("open", _request()), SegmentMaps())[0] == "opened"
    assert host._slots[key].users == 2 and len(FakeSession.made) == 1  # one session, shared


def test_an_unhostable_model_is_refused_once_and_its_refusal_remembered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The refusal is said without loading the session again; no slot is left behind."""
    FakeSession.refuse = ["s", "t"]
    host = SessionHost()
    expected = ("refused", "tensors ['s', 't'] are not plain arrays")
    with caplog.at_level(logging.INFO, logger="server.backends.session_host"):
        assert host._answer(("open", _request()), SegmentMaps()) == expected
    assert caplog.messages == []  # no "shared session on" line for a session not kept
    assert host._slots == {} and FakeSession.made[0].closed
    assert host._answer(("open", _request()), SegmentMaps()) == expected
    assert len(FakeSession.made) == 1


def test_the_refusals_remembered_are_the_latest_max_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_host, "MAX_REFUSALS", 2)
    FakeSession.refuse = ["s"]
    host = SessionHost()
    for version in ("v1", "v2", "v3"):
        host._answer(("open", _request(version)), SegmentMaps())
    assert list(host._refused) == [_request("v2").key(), _request("v3").key()]
    assert session_host.MAX_REFUSALS == 2


def test_an_open_whose_session_fails_to_load_leaves_no_slot() -> None:
    FakeSession.fail = RuntimeError("no such file")
    host = SessionHost()
    with pytest.raises(RuntimeError, match="no such file"):
        host._answer(("open", _request()), SegmentMaps())
    assert host._slots == {}


def test_the_last_close_closes_the_session_and_logs_its_counts(caplog: pytest.LogCaptureFixture) -> None:
    host = SessionHost()
    key = host._answer(("open", _request()), SegmentMaps())[1]
    host._answer(("open", _request()), SegmentMaps())
    session = FakeSession.made[0]
    session.runs, session.rows, session.merged, session.expired = 4, 10, 1, 2
    assert host._answer(("close", key), SegmentMaps()) == ("ok",)
    assert not session.closed and host._slots[key].users == 1
    with caplog.at_level(logging.INFO, logger="server.backends.session_host"):
        assert host._answer(("close", key), SegmentMaps()) == ("ok",)
    assert session.closed and key not in host._slots
    assert (
        "session host: model m: shared session ran 4 batches of 10 rows (2.50 a run), 1 of them merged; "
        "0 padded shape changes; 2 batches left unrun past their deadlines"
    ) in caplog.messages
    assert host._answer(("close", key), SegmentMaps()) == ("ok",)  # a late one: nothing there


def test_counts_are_the_slot_s_none_for_a_key_not_open() -> None:
    """The live session's counts plus those of the sessions abandoned before it."""
    host = SessionHost()
    assert host._answer(("counts", b"nothing"), SegmentMaps()) == ("ok", None)
    key = host._answer(("open", _request()), SegmentMaps())[1]
    host._answer(("open", _request()), SegmentMaps())
    first = FakeSession.made[0]
    first.runs, first.rows, first.since = 3, 7, 10.0
    host._answer(("abandon", key, 10.5), SegmentMaps())
    assert first.abandoned and host._slots[key].session is None
    assert host._answer(("counts", key), SegmentMaps()) == ("ok", HostCounts(3, 7, 0, 0, 0))
    fresh = host._session(key)
    fresh.runs, fresh.rows = 1, 2
    assert host._answer(("counts", key), SegmentMaps()) == ("ok", HostCounts(4, 9, 0, 0, 0))
    assert Slot(_request()).counts() == HostCounts()


def test_an_abandon_about_a_run_before_the_session_s_leaves_it_and_releases_the_user() -> None:
    host = SessionHost()
    key = host._answer(("open", _request()), SegmentMaps())[1]
    host._answer(("open", _request()), SegmentMaps())
    session = FakeSession.made[0]
    session.since = 20.0  # its run began after the abandoned one
    assert host._answer(("abandon", key, 10.0), SegmentMaps()) == ("ok",)
    assert not session.abandoned and host._slots[key].session is session
    assert host._slots[key].users == 1
    session.since = 10.0  # a run begun exactly then is the stuck one
    host._answer(("abandon", key, 10.0), SegmentMaps())
    assert session.abandoned and key not in host._slots
    assert host._answer(("abandon", b"gone", 1.0), SegmentMaps()) == ("ok",)


def _segment(where: Path) -> tuple[Segment, TensorPlace]:
    segment = Segment(where / "seg", 4096, create=True)
    place = TensorPlace("x", 0, (2,), "<f4")
    segment.array(place)[...] = [1.0, 2.0]
    return segment, place


def test_a_run_is_told_started_on_its_connection_and_answered_ok(tmp_path: Path) -> None:
    host = SessionHost()
    key = host._answer(("open", _request()), SegmentMaps())[1]
    segment, place = _segment(tmp_path)
    here, there = socket.socketpair()
    try:
        reply = host._answer(("run", key, str(segment.path), 4096, [place], 5.0), SegmentMaps(), here)
        assert reply[0] == "ok" and list(reply[1]["y"]) == [2.0, 4.0]
        assert receive(there) == ("started",)
        ((arrays, start_by, _),) = FakeSession.made[0].ran
        assert list(arrays["x"]) == [1.0, 2.0] and start_by == 5.0
        host._answer(("run", key, str(segment.path), 4096, [place], None), SegmentMaps())  # no conn
        assert FakeSession.made[0].ran[-1][2] is None
    finally:
        here.close()
        there.close()
        segment.close()


def test_a_run_that_keeps_moving_is_answered_as_its_slot_closed(tmp_path: Path) -> None:
    """A batch follows its slot to a fresh session MOVES times, then goes to the version serving now."""
    host = SessionHost()
    key = host._answer(("open", _request()), SegmentMaps())[1]
    FakeSession.made[0].moves = session_host.MOVES
    segment, place = _segment(tmp_path)
    try:
        with pytest.raises(InstanceClosed, match=r"^its shared session was closed: its version was retired"):
            host._answer(("run", key, str(segment.path), 4096, [place], None), SegmentMaps())
        assert len(FakeSession.made[0].ran) == 3 == session_host.MOVES
        FakeSession.made[0].moves = 2
        assert host._answer(("run", key, str(segment.path), 4096, [place], None), SegmentMaps())[0] == "ok"
        with pytest.raises(InstanceClosed):
            host._answer(("run", b"other", str(segment.path), 4096, [place], None), SegmentMaps())
    finally:
        segment.close()


def test_errors_cross_the_socket_as_they_are_or_as_their_text() -> None:
    """The worker unpickles the error: one that cannot be is sent as ModelRunFailed with its text."""
    plain = ValueError("bad")
    assert _sendable(plain) is plain

    class Local(Exception):  # a class pickle cannot find by name
        pass

    sent = _sendable(Local("stuck"))
    assert isinstance(sent, ModelRunFailed) and str(sent) == "Local: stuck"
    pickle.dumps(sent)


def test_a_run_on_a_connection_is_told_started_there_before_its_reply(tmp_path: Path) -> None:
    host = SessionHost()
    key = host._answer(("open", _request()), SegmentMaps())[1]
    segment, place = _segment(tmp_path)
    here, there = socket.socketpair()
    thread = threading.Thread(target=host._connection, args=(here,), daemon=True)
    thread.start()
    try:
        send(there, ("run", key, str(segment.path), 4096, [place], None))
        assert receive(there) == ("started",)
        kind, outputs = receive(there)
        assert kind == "ok" and list(outputs["y"]) == [2.0, 4.0]
    finally:
        there.close()
        thread.join(WAIT_S)
        segment.close()


def test_a_connection_answers_each_message_and_an_error_as_failed() -> None:
    """An unknown message, or one that raises, is answered ("failed", error); the connection goes on
    and, once the worker closes it, the host counts it gone."""
    host = SessionHost()
    here, there = socket.socketpair()
    with host._lock:
        host._connections += 1  # as `serve` counts it
    thread = threading.Thread(target=host._connection, args=(here,), daemon=True)
    thread.start()
    try:
        send(there, ("bogus", 1))
        kind, err = receive(there)
        assert kind == "failed" and isinstance(err, ValueError) and str(err) == "unknown message 'bogus'"
        send(there, ("counts", b"k"))
        assert receive(there) == ("ok", None)
        assert not host.wait_for_workers(0.01)
    finally:
        there.close()
    assert host.wait_for_workers(WAIT_S)
    thread.join(WAIT_S)
    assert not thread.is_alive()


def test_serve_counts_each_worker_s_connection(tmp_path: Path) -> None:
    assert SessionHost().wait_for_workers(0.0)  # none yet: no wait
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "h.sock"))
    listener.listen()
    host = SessionHost()
    threading.Thread(target=host.serve, args=(listener,), daemon=True).start()
    worker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    worker.connect(str(tmp_path / "h.sock"))
    try:
        send(worker, ("counts", b"k"))
        assert receive(worker) == ("ok", None)
        assert host._connections == 1
        serving = [t for t in threading.enumerate() if "_connection" in t.name]
        assert serving and all(t.daemon for t in serving)  # a stop never waits for a worker's thread
    finally:
        worker.close()
        assert host.wait_for_workers(WAIT_S) and host._connections == 0
        stop_listening(listener)  # its serve thread ends with the test


def test_log_counts_says_each_live_session_that_ran(caplog: pytest.LogCaptureFixture) -> None:
    host = SessionHost()
    host._answer(("open", _request(name="a")), SegmentMaps())
    host._answer(("open", _request(name="b")), SegmentMaps())
    host._answer(("open", _request(name="c")), SegmentMaps())
    ran, _idle, expired = FakeSession.made
    ran.runs, ran.rows = 2, 2
    expired.expired = 1
    expired.padding = SimpleNamespace(changes=SimpleNamespace(count=3))
    with caplog.at_level(logging.INFO, logger="server.backends.session_host"):
        host.log_counts()
    assert len(caplog.messages) == 2
    assert (
        "model a: shared session ran 2 batches of 2 rows (1.00 a run), 0 of them merged" in caplog.messages[0]
    )
    assert "ran 0 batches of 0 rows (0.00 a run)" in caplog.messages[1]
    assert "3 padded shape changes; 1 batches left unrun" in caplog.messages[1]


class Signals:
    """The `signal` module as main uses it: the handlers recorded, none installed."""

    SIGTERM, SIGINT, SIGHUP = signal.SIGTERM, signal.SIGINT, signal.SIGHUP

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {}

    def signal(self, sig: int, handler: Any) -> None:
        self.handlers[sig] = handler


def test_main_serves_on_its_socket_until_a_stop_signal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ready once listening (the line host_process.py waits for); SIGTERM, SIGINT or SIGHUP ends it, 0."""
    import server.observability.logs
    import server.runtime_check
    import server.workers

    configured: list[tuple[Any, ...]] = []
    monkeypatch.setattr(server.observability.logs, "configure_logging", lambda *a: configured.append(a))
    monkeypatch.setattr(server.workers, "die_with_parent", lambda: configured.append(("die",)))
    monkeypatch.setattr(server.runtime_check, "ensure_runtime", lambda preload: None if preload else "no")
    signals = Signals()
    monkeypatch.setattr(session_host, "signal", signals)
    waited: list[float | None] = []
    wait = SessionHost.wait_for_workers
    monkeypatch.setattr(
        SessionHost, "wait_for_workers", lambda h, limit: waited.append(limit) or wait(h, limit)
    )
    daemons: list[Any] = []  # each thread the host starts: daemons, so a stop never waits for them
    printed: list[dict[str, Any]] = []  # the ready line flushed: a pipe's reader waits for it

    def started(*args: Any, **kw: Any) -> threading.Thread:
        daemons.append(kw.get("daemon"))
        return threading.Thread(*args, **kw)

    def ready(*args: Any, **kw: Any) -> None:
        printed.append(kw)
        print(*args, **kw)

    monkeypatch.setattr(session_host, "threading", SimpleNamespace(**{**vars(threading), "Thread": started}))
    monkeypatch.setattr(session_host, "print", ready, raising=False)
    path = tmp_path / "h.sock"
    said: list[int] = []
    thread = threading.Thread(
        target=lambda: said.append(session_host.main([str(path), "--log-level", "DEBUG"])), daemon=True
    )
    caplog.set_level(logging.INFO, logger="server.backends.session_host")
    thread.start()
    wait_until(lambda: len(signals.handlers) == 3 and path.exists(), "the host to listen", WAIT_S)
    worker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    worker.connect(str(path))
    try:
        send(worker, ("counts", b"k"))
        assert receive(worker) == ("ok", None)
    finally:
        worker.close()
    signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
    thread.join(WAIT_S)
    assert said == [0]
    assert configured == [("DEBUG", "text"), ("die",)]
    assert capsys.readouterr().out == "session host ready\n"
    assert f"session host: listening on {path}" in caplog.messages
    assert waited == [session_host.STOP_LIMIT_S]  # the workers' connections waited for, bounded
    assert daemons == [True, True] and printed == [{"flush": True}]  # (serve's thread, the connection's)


def test_main_without_its_runtime_says_why_and_returns_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import server.observability.logs
    import server.runtime_check
    import server.workers

    monkeypatch.setattr(server.observability.logs, "configure_logging", lambda *a: None)
    monkeypatch.setattr(server.workers, "die_with_parent", lambda: None)
    monkeypatch.setattr(server.runtime_check, "ensure_runtime", lambda preload: "two onnxruntime wheels")
    with caplog.at_level(logging.ERROR, logger="server.backends.session_host"):
        assert session_host.main([str(tmp_path / "h.sock"), "--log-format", "json"]) == 2
    assert caplog.messages == ["two onnxruntime wheels"]
    assert not (tmp_path / "h.sock").exists()


def test_a_session_of_one_run_logs_that_run_s_rows_as_its_average(caplog: pytest.LogCaptureFixture) -> None:
    """The average a run is rows over runs, one run included (a floor of 2 had halved it)."""
    host = SessionHost()
    host._answer(("open", _request(name="one")), SegmentMaps())
    (one,) = FakeSession.made
    one.runs, one.rows = 1, 3
    with caplog.at_level(logging.INFO, logger="server.backends.session_host"):
        host.log_counts()
    assert "shared session ran 1 batches of 3 rows (3.00 a run)" in caplog.messages[0]


def test_a_stop_waits_for_every_worker_s_connection_not_only_the_first(tmp_path: Path) -> None:
    """Two workers connected count two; with one of them gone the host still waits for the other."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "h.sock"))
    listener.listen()
    host = SessionHost()
    threading.Thread(target=host.serve, args=(listener,), daemon=True).start()
    workers = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for worker in workers:
            worker.connect(str(tmp_path / "h.sock"))
            send(worker, ("counts", b"k"))
            assert receive(worker) == ("ok", None)  # its connection's thread serves it
        assert host._connections == 2
        workers[0].close()
        with host._idle:  # (notified at each connection's end)
            assert host._idle.wait_for(lambda: host._connections == 1, WAIT_S)
        assert not host.wait_for_workers(0.0)
    finally:
        for worker in workers:
            worker.close()
        assert host.wait_for_workers(WAIT_S) and host._connections == 0
        stop_listening(listener)  # its serve thread ends with the test


def test_main_s_arguments_their_defaults_and_its_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logging at INFO in text unless told; json is a format, xml is not; --help names the module
    and the socket (main returns at the runtime check here: nothing listens)."""
    import server.observability.logs
    import server.runtime_check
    import server.workers

    configured: list[tuple[Any, ...]] = []
    monkeypatch.setattr(server.observability.logs, "configure_logging", lambda *a: configured.append(a))
    monkeypatch.setattr(server.workers, "die_with_parent", lambda: None)
    monkeypatch.setattr(server.runtime_check, "ensure_runtime", lambda preload: "stop here")
    sock = str(tmp_path / "h.sock")
    assert session_host.main([sock]) == 2 and session_host.main([sock, "--log-format", "json"]) == 2
    assert session_host.main([sock, "--log-format", "text"]) == 2
    assert configured == [("INFO", "text"), ("INFO", "json"), ("INFO", "text")]
    with pytest.raises(SystemExit) as refused:
        session_host.main([sock, "--log-format", "xml"])
    assert refused.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as helped:
        session_host.main(["--help"])
    usage = capsys.readouterr().out
    assert helped.value.code == 0 and usage.startswith("usage: python -m server.backends.session_host ")
    assert re.search(r"^\s+socket\s+the Unix socket to listen on \(in a 0700 directory\)$", usage, re.M)
