"""The session host's merging (server/backends/session_host.py): which waiting batches one run
takes, and that each batch gets its own rows back; the shared segments batches cross in."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from batcher.watchdog import ExpiredUnrun, _unless_expired
from server.backends.batch_padding import Padding, ShapeChanges, StickySize
from server.backends.host_wire import Segment, TensorPlace, read_arrays
from server.backends.hosted_session import GROW_AFTER, HostedSession, OpenRequest
from server.backends.onnxruntime_backend import OrtOptions
from server.backends.session_host import SessionHost
from server.errors import ModelRefusedInput, ModelRunFailed


def _double(path: Path) -> Path:
    """x FP32 [N, D] -> y FP32 [N, D] = 2 x (D free, so per-row shapes can differ)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "D"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"])],
        [numpy_helper.from_array(np.float32(2.0), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _session(tmp_path: Path, max_rows: int) -> HostedSession:
    path = _double(tmp_path / "double.onnx")
    providers = (("CPUExecutionProvider", {}),)
    request = OpenRequest(str(path), OrtOptions(intra_op_threads=1), providers, "double", 0, max_rows)
    return HostedSession(request, start=False)  # batches taken and run by the test


def _take(session: HostedSession) -> list | None:
    """One run's batches, as a runner takes them, the run then counted as ended (not run here)."""
    taken = session._take()
    if taken is not None:
        session._finished()
    return taken


def _rows(n: int, d: int = 4, start: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": (np.arange(n * d, dtype=np.float32) + start).reshape(n, d)}


def test_a_run_takes_the_waiting_batches_in_order_up_to_max_batch_size(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=8)
    jobs = [session.submit(_rows(n)) for n in (3, 4, 5, 1)]
    first = _take(session)
    second = _take(session)
    assert first is not None and [j.rows for j in first] == [3, 4]  # 3 + 4 + 5 > 8
    assert second is not None and [j.rows for j in second] == [5, 1]
    assert [*first, *second] == jobs
    session.close()


def test_batches_of_other_per_row_shapes_or_types_are_not_merged(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=64)
    session.submit(_rows(2, d=4))
    session.submit(_rows(2, d=4))
    session.submit(_rows(2, d=5))  # other columns: its own run, and the one after it waits its turn
    session.submit({"x": np.zeros((2, 5), np.float64)})
    taken = [_take(session) for _ in range(3)]
    assert [[j.rows for j in t] for t in taken if t] == [[2, 2], [2], [2]]
    session.close()


def test_without_max_batch_size_each_batch_runs_alone(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=0)
    for n in (1, 1, 1):
        session.submit(_rows(n))
    assert [len(t or []) for t in (_take(session), _take(session), _take(session))] == [1, 1, 1]
    session.close()


def test_a_merged_run_gives_each_batch_its_own_rows(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=16)
    inputs = [_rows(n, start=100.0 * i) for i, n in enumerate((3, 1, 5))]
    jobs = [session.submit(x) for x in inputs]
    taken = _take(session)
    assert taken == jobs
    session._run(taken)
    for job, x in zip(jobs, inputs, strict=True):
        assert job.done.is_set() and job.error is None and job.outputs is not None
        np.testing.assert_array_equal(job.outputs["y"], 2 * x["x"])
    assert (session.runs, session.rows, session.merged) == (1, 9, 1)
    session.close()


def test_a_merged_run_that_fails_fails_every_batch_in_it(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=16)
    jobs = [session.submit({"x": np.zeros((2, 3), np.float64)}) for _ in range(2)]  # not FP32
    taken = _take(session)
    assert taken == jobs
    session._run(taken)
    for job in jobs:
        assert isinstance(job.error, ModelRefusedInput), job.error
        assert "double" in str(job.error)
    session.close()


def test_a_closed_session_takes_no_batch(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=16)
    session.close()
    with pytest.raises(Exception, match="shared session was closed"):
        session.submit(_rows(1))
    assert _take(session) is None


def test_a_segment_carries_arrays_between_two_mappings(tmp_path: Path) -> None:
    writer = Segment(tmp_path / "seg", 4096, create=True)
    place = TensorPlace("x", 256, (2, 3), np.dtype(np.int32).str)
    writer.array(place)[...] = np.arange(6, dtype=np.int32).reshape(2, 3)
    reader = Segment.attach(tmp_path / "seg", 4096)
    np.testing.assert_array_equal(read_arrays(reader, [place])["x"], np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="'y' lies past the end"):
        reader.array(TensorPlace("y", 4000, (100,), np.dtype(np.float32).str))
    reader.close()
    writer.close()


def test_an_open_request_pickles_with_its_padding_count_fresh() -> None:
    changes = ShapeChanges()
    changes.add()
    padding = Padding(max_rows=64, changes=changes)
    request = OpenRequest("m.onnx", OrtOptions(padding=padding), (), "m", 0, 64)
    copy = pickle.loads(pickle.dumps(request))
    assert copy.options.padding is not None and copy.options.padding.max_rows == 64
    assert copy.options.padding.changes.count == 0  # the host counts its own
    assert copy.key() == request.key()  # the same key in every worker, whatever their counts


def test_a_padded_session_cuts_its_runs_at_the_size_it_pads_to(tmp_path: Path) -> None:
    """Runs of 40 waiting rows padded to 64 ran 24 copies; cut at 32, every row run is a real one."""
    session = _session(tmp_path, max_rows=64)
    session._sticky = StickySize(64)  # as a CUDA convolution model's (a CPU session never pads)
    session._sticky.current = 32
    for _ in range(5):
        session.submit(_rows(8))
    first = _take(session)
    assert first is not None and sum(j.rows for j in first) == 32  # 8 rows left for the next run
    assert [j.rows for j in _take(session) or []] == [8]  # all that waits fits: taken, no limit
    session.close()


def test_a_padded_session_grows_only_once_the_load_has_outgrown_its_size(tmp_path: Path) -> None:
    session = _session(tmp_path, max_rows=64)
    session._sticky = StickySize(64)
    session._sticky.current = 16
    sizes = []
    for _ in range(GROW_AFTER):
        jobs = [session.submit(_rows(8)) for _ in range(4)]  # 32 rows wait, the size holds 16
        taken = _take(session)
        assert taken is not None
        sizes.append(sum(j.rows for j in taken))
        session._jobs.clear()  # the rest: not this test's
        assert all(job in jobs for job in taken)
    assert sizes == [16] * (GROW_AFTER - 1) + [32]  # the 32nd run in a row may take them all
    session.close()


def test_an_abandoned_session_is_made_afresh_for_the_workers_still_using_it(tmp_path: Path) -> None:
    """Worker A's watchdog abandons the shared session; worker B's next run gets a fresh one, and
    B's own late abandon of the old session (its run was stuck there too) leaves the fresh one."""
    host = SessionHost()
    path = _double(tmp_path / "double.onnx")
    request = OpenRequest(
        str(path), OrtOptions(intra_op_threads=1), (("CPUExecutionProvider", {}),), "d", 0, 8
    )
    opened = [host._answer(("open", request), {}) for _ in range(2)]  # workers A and B
    key, first = opened[0][1], opened[0][2]
    assert [o[:3] for o in opened] == [("opened", key, first)] * 2
    old = host._slots[key].session
    host._answer(("abandon", key, first), {})  # A's watchdog
    assert host._slots[key].session is None and host._slots[key].users == 1
    fresh = host._session(key)  # B's next run
    assert fresh is not old and host._slots[key].generation == first + 1
    np.testing.assert_array_equal(fresh.run(_rows(2))["y"], 2 * _rows(2)["x"])
    assert host._answer(("open", request), {})[2] == first + 1  # A's replacement attaches to it
    host._answer(("abandon", key, first), {})  # B's watchdog, late: about the old one
    assert host._slots[key].session is fresh and host._slots[key].users == 1
    host._answer(("close", key), {})  # the last user: closed and gone
    assert key not in host._slots
    with pytest.raises(ModelRunFailed, match="closed"):
        host._session(key)


def test_a_batch_whose_turn_comes_past_its_start_by_is_left_unrun(tmp_path: Path) -> None:
    """Queued behind other workers' runs, a batch past its deadlines is answered ExpiredUnrun (its
    batcher answers DEADLINE_EXCEEDED), never computed; the others run."""
    session = _session(tmp_path, max_rows=16)
    late = session.submit(_rows(2), start_by=time.monotonic() - 0.001)
    timely = session.submit(_rows(3), start_by=time.monotonic() + 60)
    open_ended = session.submit(_rows(1))
    taken = _take(session)
    assert taken == [timely, open_ended]
    assert late.done.is_set() and isinstance(late.error, ExpiredUnrun) and late.outputs is None
    assert session.expired == 1
    session.close()


def test_the_batcher_hands_a_queueing_backend_its_start_by_on_the_monotonic_clock() -> None:
    """The batcher's clock may be another (a test's); the time handed on is time.monotonic's."""
    seen: list[float] = []

    class Queueing:
        executor = None

        def run_blocking(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            raise AssertionError("run_blocking_before is the one called")

        def run_blocking_before(
            self, inputs: dict[str, np.ndarray], start_by: float
        ) -> dict[str, np.ndarray]:
            seen.append(start_by)
            return dict(inputs)

    before = time.monotonic()
    outputs, _ = _unless_expired(lambda: 1000.0, 1000.5, Queueing(), _rows(1))  # 0.5 s left
    assert before + 0.5 <= seen[0] <= time.monotonic() + 0.5
    assert set(outputs) == {"x"}
    with pytest.raises(ExpiredUnrun):
        _unless_expired(lambda: 1001.0, 1000.5, Queueing(), _rows(1))


def test_a_second_runner_starts_early_only_with_a_full_run(tmp_path: Path) -> None:
    """On a GPU a second runner gathers the next run while one runs on the device, but only a full
    one: started with what had arrived, it would be small, and so would the one after it."""
    session = _session(tmp_path, max_rows=8)
    session._runners = 2  # as on a GPU
    session.submit(_rows(3))
    assert session._may_start()  # nothing runs: any batch starts
    first = session._take()
    assert first is not None and [j.rows for j in first] == [3]
    session.submit(_rows(4))
    assert not session._may_start()  # 4 of 8 rows wait while a run is in progress: they wait more
    session.submit(_rows(4))
    assert session._may_start()  # a full run of 8: gathered now, beside the run in progress
    second = session._take()
    assert second is not None and [j.rows for j in second] == [4, 4]
    session.submit(_rows(8))
    assert not session._may_start()  # two runs in progress: a third waits whatever it holds
    session._finished()
    assert session._may_start()
    session._finished()
    session.close()
