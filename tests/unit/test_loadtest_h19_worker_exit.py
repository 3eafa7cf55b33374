"""A load worker that dies mid-run is named with how it ended and the step it died in (a bare EOFError
traceback had been all), the steps measured before it are written with "interrupted": true and the
exit status is 1 (they had been lost: run() kept them only on Ctrl-C); workers ignore Ctrl-C, which
the coordinator takes (each had printed a CancelledError ... KeyboardInterrupt traceback)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from loadtest import cli
from loadtest import runner as runner_module
from loadtest.runner import LoadWorkerFailed, RunRecord, WorkerPool, plan_step
from loadtest.scenario import Scenario, Step, Target
from loadtest.start import ProcessExited, wait_connected
from loadtest.stats import Recorder
from loadtest.worker import worker_main

TARGET = Target("sluiceway", "127.0.0.1:1", "mlp")
SCENARIO = Scenario(targets=(TARGET,), steps=(Step("closed", 2),), processes=2, warmup_s=0.0, duration_s=0.01)


class DyingWorker(threading.Thread):
    """Takes a plan, says connected, takes the start, then closes its pipe: a worker killed mid-step."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(daemon=True)
        self.conn = conn

    def run(self) -> None:
        assert self.conn.poll(30), "no plan"
        self.conn.recv()
        self.conn.send(("connected", None))
        assert self.conn.poll(30), "no start time"
        self.conn.recv()
        self.conn.close()


@dataclass
class DeadProcess:
    exitcode: int

    def join(self, timeout: float | None = None) -> None:
        return None


def _pool_with(workers: list[Callable[[Connection], threading.Thread]]) -> WorkerPool:
    pool = WorkerPool(0)  # no processes: the threads hold the other ends of the pipes
    for make in workers:
        ours, theirs = Pipe()
        pool.conns.append(ours)
        make(theirs).start()
    return pool


def test_a_worker_that_dies_mid_step_is_named_with_its_signal_and_step() -> None:
    pool = _pool_with([DyingWorker])
    pool.processes.append(DeadProcess(-signal.SIGKILL))  # type: ignore[arg-type]
    plans = plan_step(SCENARIO, SCENARIO.steps[0], TARGET, (b"x",), seed=1, start_at=time.monotonic() + 60)
    with pytest.raises(LoadWorkerFailed) as failed:
        pool.run(plans[:1], lambda edge: None, "step 2 (closed c=4)")
    assert str(failed.value) == "load worker 1 exited (signal 9, SIGKILL) during step 2 (closed c=4)"


def test_a_worker_whose_pipe_closes_before_it_connects_is_named_not_an_eoferror() -> None:
    good_ours, good_theirs = Pipe()
    good_theirs.send(("connected", None))
    ours, theirs = Pipe()
    theirs.close()
    with pytest.raises(ProcessExited, match="load process 2 exited") as exited:
        wait_connected([good_ours, ours])
    assert exited.value.index == 1


def _record(index: int) -> RunRecord:
    recorder = Recorder((10.0, 20.0), deadline_s=None)
    for i in range(50):
        recorder.record(10.0 + i * 0.1, 10.001 + i * 0.1, "OK", sent=10.0 + i * 0.1)
    return RunRecord(index, Step("closed", 4), TARGET, 0, recorder.counts(0.1), 10.0, 1, None)


@pytest.fixture
def sigterm_kept() -> Iterator[None]:
    """cli.main takes SIGTERM as Ctrl-C: put the test process's handler back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def _main_with(monkeypatch: pytest.MonkeyPatch, out: Path, failure: BaseException, steps_done: int) -> int:
    def run_scenario(
        scenario: Scenario, tick: Any, on_record: Callable[[RunRecord], None]
    ) -> list[RunRecord]:
        for index in range(steps_done):
            on_record(_record(index))
        raise failure

    monkeypatch.setattr(runner_module, "run_scenario", run_scenario)
    argv = ["--target", TARGET.address, "--concurrency", "4,4", "--out", str(out), "--no-plots", "--quiet"]
    return cli.main(argv)


@pytest.mark.usefixtures("sigterm_kept")
def test_the_steps_measured_before_a_worker_died_are_written_and_the_exit_is_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    died = LoadWorkerFailed("load worker 1 exited (signal 9, SIGKILL) during step 2 (closed c=4)")
    assert _main_with(monkeypatch, tmp_path, died, steps_done=1) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["interrupted"] is True
    assert results["stopped_by"] == {"kind": "load_worker", "message": str(died)}
    assert len(results["results"]) == 1
    err = capsys.readouterr().err
    assert f"sluiceway-loadtest: {died}; the steps measured before it are above" in err
    assert "Traceback" not in err


@pytest.mark.usefixtures("sigterm_kept")
def test_a_worker_that_failed_before_any_step_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = LoadWorkerFailed(
        "load worker 2 failed (ValueError: x) during step 1 (closed c=4)", "Traceback ..."
    )
    assert _main_with(monkeypatch, tmp_path, failed, steps_done=0) == 1
    assert f"sluiceway-loadtest: {failed}; no step was measured" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def _ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigIgn line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")
def test_a_worker_ignores_ctrl_c_and_ends_quietly_when_told(capfd: pytest.CaptureFixture[str]) -> None:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=worker_main, args=(theirs,), daemon=True)
    process.start()
    theirs.close()
    try:
        assert ours.poll(60), "the worker did not start"
        assert ours.recv() == ("ready", None)
        assert process.pid is not None
        assert _ignored_signals(process.pid) & (1 << (signal.SIGINT - 1)), "SIGINT is not ignored"
        os.kill(process.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches the whole group
        ours.send(None)  # the coordinator's end of the run
        process.join(30)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)
    assert "Traceback" not in capfd.readouterr().err
