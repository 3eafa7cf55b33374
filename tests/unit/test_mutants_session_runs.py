"""The session host's runs (server/backends/hosted_session.py), continued from
test_mutants_shared_sessions.py (a module's 400 lines): what each batch of a run gets back, how a
model whose outputs do not follow the rows is told, a run's failure, the padded size's edges and a
GPU's second runner. Each test is what a worker sees; tests/MUTANTS.md lists the mutants they kill."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from batcher.errors import RunTimedOut
from server.backends import hosted_session
from server.backends.batch_padding import StickySize, batch_rows
from server.backends.hosted_session import HostCounts, HostedSession, Job
from server.backends.onnxruntime_backend import OrtBackend
from tests.unit.test_mutants_shared_sessions import _model, _open, _rows_taken
from tests.unit.test_session_host import _double, _rows, _session


def _twice(path: Path) -> Path:
    """x FP32 [N, 2] -> y FP32 [2N, 2] (x twice): outputs that do not follow the rows."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 2])
    return _model(path, [helper.make_node("Concat", ["x", "x"], ["y"], axis=0)], [x], [y])


def _total(path: Path) -> Path:
    """x FP32 [N] -> t FP32 [] (the sum of every row): a 0-d output."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])
    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, [])
    return _model(path, [helper.make_node("ReduceSum", ["x"], ["t"], keepdims=0)], [x], [t])


def _run_all(session: HostedSession, jobs: list[Job]) -> None:
    session._running += 1
    session._run(jobs)
    session._finished()


def test_a_batch_run_alone_gets_its_outputs_whole(tmp_path: Path) -> None:
    """Alone, a batch's outputs are its own whatever their rows (its worker's scatter judges them);
    only a merged run's are cut by rows."""
    session = _open(_twice(tmp_path / "twice.onnx"), 8)
    job = session.submit({"x": np.array([[1, 2]], np.float32)})
    _run_all(session, session._take() or [])
    assert job.outputs is not None
    np.testing.assert_array_equal(job.outputs["y"], [[1, 2], [1, 2]])
    assert session.counts() == HostCounts(runs=1, rows=1, merged=0)
    session.close()


def test_a_merged_run_with_a_0d_output_runs_each_batch_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 0-d output has no rows to hand out: each batch is run alone and gets its own sum, and the
    session says once, naming the model, the rows and the shapes, that it merges no more."""
    session = _open(_total(tmp_path / "total.onnx"), 8, name="total")
    mine = session.submit({"x": np.array([1, 2], np.float32)})
    theirs = session.submit({"x": np.array([100], np.float32)})
    with caplog.at_level(logging.WARNING, logger="server.backends.session_host"):
        _run_all(session, session._take() or [])
        # Another merged run, taken before the first ended (two runners on a GPU): no second line.
        again = [Job({"x": np.array([5], np.float32)}, 1), Job({"x": np.array([6], np.float32)}, 1)]
        _run_all(session, again)
    assert mine.outputs is not None and float(mine.outputs["t"]) == 3.0
    assert theirs.outputs is not None and float(theirs.outputs["t"]) == 100.0
    assert [float(job.outputs["t"]) for job in again if job.outputs is not None] == [5.0, 6.0]
    assert session.max_rows == 0
    lines = [r.getMessage() for r in caplog.records if "merged run" in r.getMessage()]
    assert lines == [
        "session host: model total: a merged run of 3 rows gave outputs {'t': ()}, not one row per input "
        "row: its workers' batches run alone from now"
    ]
    session.close()


def test_each_batch_is_told_as_its_run_starts_even_if_one_worker_is_gone(tmp_path: Path) -> None:
    """on_start (its worker's watchdog) is called for every batch of the run before it runs; a
    worker gone (OSError telling it) fails neither the run nor the others' starts."""
    session = _session(tmp_path, max_rows=8)
    told: list[str] = []

    def gone() -> None:
        told.append("gone")
        raise OSError("broken pipe")

    first = session.submit(_rows(1), on_start=gone)
    second = session.submit(
        _rows(2), on_start=lambda: told.append("second" if session.running_since(time.monotonic()) else "?")
    )
    third = session.submit(_rows(1))
    _run_all(session, session._take() or [])
    assert told == ["gone", "second"]
    for job, n in ((first, 1), (second, 2), (third, 1)):
        assert job.done.is_set() and job.error is None and job.outputs is not None
        np.testing.assert_array_equal(job.outputs["y"], 2 * _rows(n)["x"])
    assert not session.running_since(time.monotonic())  # the run ended: not in progress
    session.close()


def test_the_tensors_that_cannot_cross_shared_memory_are_named(tmp_path: Path) -> None:
    s_in = helper.make_tensor_value_info("s", TensorProto.STRING, ["N"])
    s_out = helper.make_tensor_value_info("same", TensorProto.STRING, ["N"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])
    nodes = [helper.make_node("Identity", ["s"], ["same"]), helper.make_node("Identity", ["x"], ["y"])]
    session = _open(_model(tmp_path / "strings.onnx", nodes, [s_in, x], [s_out, y]), 8)
    assert session.unhostable() == ["s", "same"]
    plain = _session(tmp_path, 8)
    assert plain.unhostable() == []
    plain.close()
    session.close()


def test_a_run_stopped_by_an_abandon_says_which_model_and_why(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=8)
    job = Job(_rows(1), 1)

    def terminated(feed: object) -> None:
        raise RuntimeError("terminate flag")

    session.abandon()
    session.backend.run_blocking = terminated  # type: ignore[method-assign, assignment]
    _run_all(session, [job])
    assert isinstance(job.error, RunTimedOut)
    assert str(job.error) == (
        "model 'double': a run in the session host that held this batch passed run_timeout_s and was stopped"
    )
    assert session._take() is None  # abandoned: closed, nothing waits


def test_a_padded_session_that_stopped_merging_runs_each_batch_alone(tmp_path: Path) -> None:
    """max_batch_size 0 (never merged, or stopped): no cut at the padded size merges them again."""
    session = _session(tmp_path, max_rows=0)
    session._sticky = StickySize(64)
    session._sticky.current = 16
    for _ in range(2):
        session.submit(_rows(2))
    assert _rows_taken(session) == [2]
    session.close()


def test_a_padded_size_of_one_row_cuts_runs_at_one_row(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=64)
    session._sticky = StickySize(64)
    session._sticky.current = 1
    for _ in range(3):
        session.submit(_rows(1))
    assert _rows_taken(session) == [1]
    session.close()


def test_a_batch_whose_start_by_is_now_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """start_by is the time *past* which a batch is answered unrun: at it, it runs."""
    session = _session(tmp_path, max_rows=8)
    monkeypatch.setattr(hosted_session, "time", type("Clock", (), {"monotonic": staticmethod(lambda: 100.0)}))
    due = session.submit(_rows(1), start_by=100.0)
    assert session._take() == [due] and session.expired == 0
    session.close()


def test_a_run_that_fails_gives_every_batch_the_runs_own_error(tmp_path: Path) -> None:
    """Not abandoned, a failure is the run's (not a 'stopped' timeout), for each batch in it."""
    session = _session(tmp_path, max_rows=8)
    boom = RuntimeError("out of device memory")

    def failing(feed: object) -> None:
        raise boom

    session.backend.run_blocking = failing  # type: ignore[method-assign, assignment]
    jobs = [session.submit(_rows(1)), session.submit(_rows(2))]
    _run_all(session, session._take() or [])
    assert [job.error for job in jobs] == [boom, boom] and all(job.done.is_set() for job in jobs)
    session.close()


def test_a_merged_feed_tells_the_backend_its_rows_before_it_is_gathered(tmp_path: Path) -> None:
    """A padded or pinned runner reads the rows of a merged batch without gathering it."""
    session = _session(tmp_path, max_rows=8)
    seen: list[int | None] = []

    def run(feed: object) -> dict[str, np.ndarray]:
        seen.append(batch_rows(feed))  # type: ignore[arg-type]
        return {"y": np.zeros((3, 4), np.float32)}

    session.backend.run_blocking = run  # type: ignore[method-assign, assignment]
    session.submit(_rows(1))
    session.submit(_rows(2))
    _run_all(session, session._take() or [])
    assert seen == [3]
    session.close()


def test_a_merged_run_of_one_dimensional_outputs_is_cut_by_rows(tmp_path: Path) -> None:
    """Outputs [N] follow the rows as well as [N, D]: the session goes on merging."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])
    session = _open(_model(tmp_path / "id.onnx", [helper.make_node("Neg", ["x"], ["y"])], [x], [y]), 8)
    a = session.submit({"x": np.array([1, 2], np.float32)})
    b = session.submit({"x": np.array([3], np.float32)})
    _run_all(session, session._take() or [])
    assert a.outputs is not None and a.outputs["y"].tolist() == [-1, -2]
    assert b.outputs is not None and b.outputs["y"].tolist() == [-3]
    assert session.max_rows == 8 and session.merged == 1
    session.close()


def test_a_sessions_errors_name_the_model_it_was_opened_as(tmp_path: Path) -> None:
    """The workers' name for the model (not its file's folder, nor its graph's name)."""
    session = _open(_double(tmp_path / "d.onnx"), 8, name="alias")
    job = session.submit({"x": np.zeros((1, 4), np.float64)})  # not FP32: refused
    _run_all(session, session._take() or [])
    assert "'alias'" in str(job.error)
    session.close()


def test_a_gpu_session_has_a_second_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU (its backend's device 'cuda') a full run may start beside the one in progress."""
    monkeypatch.setattr(OrtBackend, "device", property(lambda self: type("D", (), {"kind": "cuda"})()))
    session = _session(tmp_path, max_rows=4)
    session.submit(_rows(1))
    assert _rows_taken(session) == [1]
    session.submit(_rows(4))
    assert session._may_start()
    session.close()
