"""Start-up signals: a SIGTERM whose `Terminated` was lost on the way (raised in a `__del__` or a
weakref callback, "Exception ignored"; wrapped by an extension's init and caught) still stops the
server before it reports ready; SIGHUP during the imports ends the start as SIGTERM does (exit 0,
one line), as it drains the server once it serves. No real signal is sent: the start-up handler's
flag is set as the handler sets it, or the handler is called as the interpreter would."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

import server.__main__
import server.app
import server.cli
from server.settings import ServerSettings
from server.start_signals import StartUpSigterm, Terminated, raise_on_sigterm, terminated_line
from server.workers import run_workers

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@pytest.fixture(autouse=True)
def restore_handlers() -> Iterator[None]:
    """The test process's own handlers come back, whatever the code under test installed."""
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _lost_sigterm() -> None:
    """As after a SIGTERM whose Terminated nobody saw: the handler noted it, nothing raised."""
    handler = raise_on_sigterm()
    handler.received = True


def test_serve_stops_before_ready_after_a_lost_start_up_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lines: list[str] = []

    def announce(line: str, json_lines: bool) -> None:
        lines.append(line)
        if "ready on" in line:  # before the fix: stop the server this test started
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(server.app, "announce", announce)
    settings = ServerSettings(port=0, metrics=False, model_repository=tmp_path, cache_dir=tmp_path)
    _lost_sigterm()
    caplog.set_level("INFO", logger="server.app")
    asyncio.run(asyncio.wait_for(server.app.serve(settings), 60))
    assert not any("ready on" in line for line in lines), lines
    assert "shutting down during start-up" in caplog.text


def test_the_workers_parent_starts_none_after_a_lost_start_up_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_spawn(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a worker was started after the stop")

    monkeypatch.setattr(subprocess, "Popen", must_not_spawn)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its share directory, and the stale-dir scan
    settings = ServerSettings(port=0, workers=2, metrics_port=0, cache_dir=tmp_path)
    _lost_sigterm()
    assert run_workers(settings, tmp_path) == 0
    assert capsys.readouterr().err.strip() == terminated_line(False)
    assert not list(tmp_path.glob("sluiceway-rollout-*"))  # removed at exit


def test_sighup_during_the_imports_exits_0_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # SIGHUP's default action had ended an importing process: exit 129, no line.
    def hang_up_while_importing() -> int:
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler), handler
        handler(signal.SIGHUP, None)  # what the interpreter does when the signal arrives
        raise AssertionError("the handler returned")

    monkeypatch.delenv("SLUICEWAY_LOG_FORMAT", raising=False)
    monkeypatch.setattr("sys.argv", ["sluiceway", "serve"])
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    monkeypatch.setattr(server.cli, "main", hang_up_while_importing)
    assert server.__main__.main() == 0
    line = capsys.readouterr().err.strip()
    assert line == "sluiceway: SIGHUP during start-up: exiting before serving (nothing to drain)"


def test_an_ignored_sighup_stays_ignored_at_start_up() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup: a hang-up is to be ignored, as asked
    handler = raise_on_sigterm()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert isinstance(signal.getsignal(signal.SIGTERM), StartUpSigterm)
    with pytest.raises(Terminated):
        handler(signal.SIGTERM, None)
    assert handler.received and handler.signal_name == "SIGTERM"
