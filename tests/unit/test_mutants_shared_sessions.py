"""What the mutation run of the session host's merging (server/backends/hosted_session.py) found
untested: which requests share a session, the counts /metrics reads, where a run's batches are cut,
a batch's outputs when it runs alone, and how a model that does not follow the rows is told. Each
test is what a worker (or /metrics) sees; tests/MUTANTS.md lists the mutants they kill."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from batcher.watchdog import ExpiredUnrun
from server.backends import hosted_session
from server.backends.batch_padding import Padding, StickySize
from server.backends.hosted_session import GROW_AFTER, HostCounts, HostedSession, Job, OpenRequest
from server.backends.onnxruntime_backend import OrtBackend, OrtOptions
from tests.unit.test_session_host import _double, _rows, _session

CPU = (("CPUExecutionProvider", {}),)


def _model(path: Path, nodes: list, inputs: list, outputs: list) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _open(path: Path, max_rows: int, name: str = "m", options: OrtOptions | None = None) -> HostedSession:
    request = OpenRequest(str(path), options or OrtOptions(intra_op_threads=1), CPU, name, 0, max_rows)
    return HostedSession(request, start=False)


def test_an_open_requests_key_is_equal_only_for_the_same_slot_of_the_same_load(tmp_path: Path) -> None:
    """Workers' instances of one slot share a session; any other argument opens one of its own."""
    base = OpenRequest("m.onnx", OrtOptions(), CPU, "m", 0, 8, "v1")
    assert dataclasses.replace(base).key() == base.key()
    others = [
        dataclasses.replace(base, path="n.onnx"),
        dataclasses.replace(base, options=OrtOptions(intra_op_threads=3)),
        dataclasses.replace(base, providers=()),
        dataclasses.replace(base, name="n"),
        dataclasses.replace(base, slot=1),
        dataclasses.replace(base, max_batch_size=4),
        dataclasses.replace(base, fingerprint="v2"),
    ]
    keys = {base.key(), *(other.key() for other in others)}
    assert len(keys) == 8
    assert OpenRequest("m.onnx", OrtOptions(), CPU, "m", 0, 8).fingerprint == ""


def test_host_counts_start_at_zero_and_add_field_by_field() -> None:
    """/metrics sums every shared session's counts: all five start at 0 and add one by one."""
    assert HostCounts() == (0, 0, 0, 0, 0)
    total = HostCounts(1, 2, 3, 4, 5) + HostCounts(10, 20, 30, 40, 50)
    assert isinstance(total, HostCounts) and total == (11, 22, 33, 44, 55)
    with pytest.raises(ValueError):  # a count missing is an error, not a sum cut short
        HostCounts(1, 2, 3, 4, 5) + (1, 2)  # noqa: RUF005 (the sum itself is under test)


def test_batches_of_scalars_or_of_other_inputs_never_merge() -> None:
    """A 0-d input has no rows to concatenate; batches naming other inputs cannot be one run."""
    scalar = Job({"x": np.float32(1.0)}, 0)
    assert not scalar.fits_with(Job({"x": np.float32(2.0)}, 0))
    rows = Job({"x": np.zeros((2, 3), np.float32)}, 2)
    assert rows.fits_with(Job({"x": np.ones((5, 3), np.float32)}, 5))
    assert not rows.fits_with(Job({"y": np.zeros((2, 3), np.float32)}, 2))
    assert not rows.fits_with(Job({"x": np.zeros((2, 3), np.float32), "y": np.zeros((2,), np.float32)}, 2))


def test_a_batch_with_no_rows_counts_none(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=8)
    assert session.submit({}).rows == 0
    assert session.submit({"x": np.float32(1.0)}).rows == 0
    assert session.submit(_rows(3)).rows == 3
    session.close()


def test_the_counts_follow_the_runs_and_the_versions_shape_changes(tmp_path: Path) -> None:
    """runs, rows, runs of more than one batch, batches left unrun, and the padding's count."""
    padding = Padding(max_rows=64)
    padding.changes.add()
    padding.changes.add()
    session = _open(_double(tmp_path / "d.onnx"), 8, options=OrtOptions(intra_op_threads=1, padding=padding))
    assert session.counts() == HostCounts(0, 0, 0, 0, 2)
    session.submit(_rows(3), start_by=time.monotonic() - 1)  # its turn comes too late
    session.submit(_rows(2), start_by=time.monotonic() - 1)
    merged = [session.submit(_rows(n, start=10.0 * n)) for n in (1, 2)]
    taken = session._take()
    assert taken == merged
    session._run(taken)
    session._finished()
    for job, n in zip(merged, (1, 2), strict=True):  # each its own rows of the run of 3
        assert job.outputs is not None
        np.testing.assert_array_equal(job.outputs["y"], 2 * _rows(n, start=10.0 * n)["x"])
    session.submit(_rows(4))
    taken = session._take()
    assert taken is not None
    session._run(taken)
    session._finished()
    assert session.counts() == HostCounts(runs=2, rows=7, merged=1, expired=2, shape_changes=2)
    assert session.max_rows == 8  # its outputs follow the rows: it goes on merging
    plain = _open(_double(tmp_path / "e.onnx"), 8)
    assert plain.counts().shape_changes == 0  # no padding
    plain.close()
    session.close()


def test_on_the_cpu_a_second_run_never_starts_beside_one_in_progress(tmp_path: Path) -> None:
    """A second run there would only take the first's cores: even a full one waits its turn."""
    session = _session(tmp_path, max_rows=4)
    session.submit(_rows(2))
    assert session._take() is not None  # in progress
    session.submit(_rows(4))  # a full run waits
    assert not session._may_start()
    session._finished()
    assert session._may_start()
    session.close()


def test_the_sessions_runners_run_batches_and_end_at_close(tmp_path: Path) -> None:
    """Started (start=True), its threads take what workers submit, never hold the process open
    (daemons), and end once it closes."""
    request = OpenRequest(str(_double(tmp_path / "d.onnx")), OrtOptions(intra_op_threads=1), CPU, "dd", 0, 8)
    session = HostedSession(request)
    runners = [t for t in threading.enumerate() if t.name == "merge-dd-0"]
    assert len(runners) == 1 and runners[0].daemon
    told: list[bool] = []
    outputs = session.run(_rows(2), on_start=lambda: told.append(session.running_since(time.monotonic())))
    np.testing.assert_array_equal(outputs["y"], 2 * _rows(2)["x"])
    assert told == [True]  # told as its run started, the run then in progress
    session.close()
    runners[0].join(30)
    assert not runners[0].is_alive()


class _RecordedWaits(threading.Event):
    """A job's `done` that notes each wait's timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        return super().wait(timeout)


def test_a_batch_already_past_its_start_by_is_answered_at_once(tmp_path: Path) -> None:
    """No runner takes it: it is answered unrun as it is waited for, with no wait of its own (a
    timeout of 0, not a second), and each such batch is counted."""
    session = _session(tmp_path, max_rows=8)  # (no runner threads: nothing takes the job meanwhile)
    for expected in (1, 2):
        job = session.submit(_rows(1), start_by=time.monotonic() - 5.0)
        job.done = waits = _RecordedWaits()
        session._wait(job)
        assert isinstance(job.error, ExpiredUnrun) and waits.timeouts[0] == 0.0
        assert session.expired == expected and not session._jobs
    session.close()


def test_a_run_that_started_at_the_moment_asked_about_counts_as_running_since(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=8)
    session._starts.append(100.0)
    assert session.running_since(100.0) and session.running_since(100.5)
    assert not session.running_since(99.5)
    session.close()


def test_without_merging_a_second_runner_takes_any_batch(tmp_path: Path) -> None:
    """max_batch_size 0: every batch is a run of its own, so each is a full one."""
    session = _session(tmp_path, max_rows=0)
    session._runners = 2  # as on a GPU
    session.submit(_rows(1))
    assert _rows_taken(session) == [1]
    session.submit(_rows(1))
    assert session._may_start()
    session.close()


def _rows_taken(session: HostedSession) -> list[int]:
    taken = session._take()
    assert taken is not None
    return [job.rows for job in taken]


def test_a_batch_that_does_not_fit_ends_what_a_run_counts_behind_the_first(tmp_path: Path) -> None:
    """4 rows, then other columns, then 4 more: the run would take 4 only, so a second runner does
    not start early with it (the rows past the misfit are not the first's run)."""
    session = _session(tmp_path, max_rows=8)
    session._runners = 2
    session.submit(_rows(1))
    assert _rows_taken(session) == [1]  # in progress
    session.submit(_rows(4))
    session.submit(_rows(4, d=5))
    session.submit(_rows(4))
    assert not session._may_start()
    session.close()


def test_the_padded_size_holds_while_the_waiting_rows_fit_it_exactly(tmp_path: Path) -> None:
    """Runs that leave nothing waiting past the size (rows equal to it) reset the count of runs
    outgrown: 10 outgrown runs, one that fits, and 31 more do not grow it yet."""
    session = _session(tmp_path, max_rows=64)
    session._sticky = StickySize(64)
    session._sticky.current = 16

    def run_of(batches: int) -> int:
        for _ in range(batches):
            session.submit(_rows(8))
        taken = session._take()
        session._finished()
        session._jobs.clear()
        return sum(j.rows for j in taken or [])

    assert [run_of(3) for _ in range(10)] == [16] * 10
    assert run_of(2) == 16  # exactly the size: not outgrown
    assert [run_of(3) for _ in range(GROW_AFTER - 1)] == [16] * (GROW_AFTER - 1)
    assert run_of(3) == 24  # the 32nd outgrown run in a row takes all that fits max_batch_size
    # and the count starts again: the next growth takes another GROW_AFTER runs
    assert [run_of(3) for _ in range(GROW_AFTER - 1)] == [16] * (GROW_AFTER - 1)
    assert run_of(3) == 24
    session.close()


def test_a_padded_session_shrinks_to_the_half_its_runs_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its runs are cut at the size, so under a steady load they take about half of it: a run of
    half the size is a small one (not a quarter, as a worker's own padding counts)."""

    def padded(backend: object) -> StickySize | None:  # as a CUDA convolution model's backend
        return StickySize(64, shrink_after=1) if isinstance(backend, OrtBackend) else None

    monkeypatch.setattr(hosted_session, "sticky_size", padded)
    session = _session(tmp_path, max_rows=64)
    assert session._sticky is not None
    assert session._sticky.size_for(64) == 64
    assert session._sticky.size_for(32) == 32
    session.close()
